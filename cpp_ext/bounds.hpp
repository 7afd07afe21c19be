// The bounds of every risk limit and order field, in one table. The core validates against it
// (RiskLimits::validate, validate_order, validate_market) and the binding exposes it as
// hean._core.bounds(), so the schemas that check a command at the edge (hean/limits.py) use
// the very same numbers.
#pragma once

#include <array>
#include <string>

#include "fixed_point.hpp"

namespace hean {

// FixedPoint values are in 1e-8 units; Integer values are plain counts; Length bounds a
// string's size in bytes.
enum class BoundKind : std::uint8_t { FixedPoint, Integer, Length };

struct Bound {
  const char* name;
  BoundKind kind;
  i64 min;
  bool min_exclusive;  // "> min" instead of ">= min"
  i64 max;             // always inclusive

  constexpr bool contains(i64 v) const noexcept {
    return (min_exclusive ? v > min : v >= min) && v <= max;
  }
  // "name: must be > 0 and <= 10000000000": the message of a value outside the bound.
  std::string violation() const;
};

namespace bounds {
inline constexpr i64 kHundredPct = 100 * kScale;
inline constexpr i64 kMaxIdBytes = 64;
// A kill switch's reason: the command's 200 characters (hean/commands/params.py), at most 4
// bytes each in UTF-8, so the core keeps every reason the edge accepts whole.
inline constexpr i64 kMaxReasonBytes = 800;

inline constexpr Bound kMinNotional{"min_notional", BoundKind::FixedPoint, 0, false, kMaxCash};
inline constexpr Bound kMaxNotional{"max_notional", BoundKind::FixedPoint, 0, true, kMaxCash};
inline constexpr Bound kMaxOpenOrders{"max_open_orders", BoundKind::Integer, 0, false, 1'000'000};
inline constexpr Bound kMaxOpenPositions{"max_open_positions", BoundKind::Integer, 0, false,
                                         1'000'000};
inline constexpr Bound kMaxLeverage{"max_leverage", BoundKind::FixedPoint, 0, true, 1000 * kScale};
inline constexpr Bound kMaxTradeRiskPct{"max_trade_risk_pct", BoundKind::FixedPoint, 0, true,
                                        kHundredPct};
inline constexpr Bound kStopDistancePct{"stop_distance_pct", BoundKind::FixedPoint, 0, true,
                                        kHundredPct};
inline constexpr Bound kMaxDailyDrawdownPct{"max_daily_drawdown_pct", BoundKind::FixedPoint, 0,
                                            true, kHundredPct};
inline constexpr Bound kKillSwitchDrawdownPct{"kill_switch_drawdown_pct", BoundKind::FixedPoint,
                                              0, true, kHundredPct};
inline constexpr Bound kMaxOrdersPerSecond{"max_orders_per_second", BoundKind::Integer, 0, false,
                                           1'000'000'000};  // 0 = unlimited
inline constexpr Bound kFeeRate{"fee_rate", BoundKind::FixedPoint, 0, false, kScale / 10};

inline constexpr Bound kClientOrderId{"client_order_id", BoundKind::Length, 1, false, kMaxIdBytes};
inline constexpr Bound kSymbol{"symbol", BoundKind::Length, 1, false, kMaxIdBytes};
inline constexpr Bound kQuantity{"quantity", BoundKind::FixedPoint, 0, true, kMaxQuantity};
inline constexpr Bound kPrice{"price", BoundKind::FixedPoint, 0, true, kMaxPrice};
}  // namespace bounds

// In RiskLimits' field order.
inline constexpr std::array<Bound, 11> kRiskLimitBounds = {
    bounds::kMinNotional,         bounds::kMaxNotional,        bounds::kMaxOpenOrders,
    bounds::kMaxOpenPositions,    bounds::kMaxLeverage,        bounds::kMaxTradeRiskPct,
    bounds::kStopDistancePct,     bounds::kMaxDailyDrawdownPct, bounds::kKillSwitchDrawdownPct,
    bounds::kMaxOrdersPerSecond,  bounds::kFeeRate,
};

// An order's fields; a market tick's bid, ask and last share the price bound.
inline constexpr std::array<Bound, 4> kOrderBounds = {
    bounds::kClientOrderId, bounds::kSymbol, bounds::kQuantity, bounds::kPrice,
};

}  // namespace hean
