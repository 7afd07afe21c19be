// Fixed-point money for the HEAN core: every price, quantity and cash amount is an
// int64 count of 1e-8 units, so results are exact and reproducible by a Python model.
#pragma once

#include <cstdint>

namespace hean {

using i64 = std::int64_t;
using u64 = std::uint64_t;
// GCC/Clang extension; __extension__ keeps -Wpedantic quiet about it.
__extension__ typedef __int128 i128;

// One unit of price, quantity, cash and of every rate/percentage is 1e-8.
constexpr i64 kScale = 100'000'000;

// Hard bounds on inputs; they keep every intermediate product inside int128 and every
// cash total inside int64 (a price of 1e9 USD times a quantity of 1e9 is 1e18 USD-units).
constexpr i64 kMaxPrice = kScale * 1'000'000'000LL;     // 1e9 (USD per unit)
constexpr i64 kMaxQuantity = kScale * 1'000'000'000LL;  // 1e9 units
constexpr i64 kMaxCash = kScale * 10'000'000'000LL;     // 1e10 USD

// Cash value of `qty` at `price`: floor(price * qty / 1e8). Both arguments are >= 0.
inline i128 notional_wide(i64 price, i64 qty) noexcept {
  return (static_cast<i128>(price) * qty) / kScale;
}

inline i64 notional(i64 price, i64 qty) noexcept {
  return static_cast<i64>(notional_wide(price, qty));
}

// Fee of one fill: ceil(price * qty * fee_rate / 1e16), i.e. the exact fee rounded up to
// the next 1e-8 USD (never undercharges). All arguments are >= 0.
inline i64 fee_for(i64 price, i64 qty, i64 fee_rate) noexcept {
  const i128 num = static_cast<i128>(price) * qty * fee_rate;
  const i128 den = static_cast<i128>(kScale) * kScale;
  return static_cast<i64>((num + den - 1) / den);
}

}  // namespace hean
