// HEAN trading core: order intake with risk checks, a paper market, per-symbol books with
// price-time priority, positions, account, kill switch, and exact binary snapshots.
//
// Units: every price, quantity and cash amount is an int64 count of 1e-8 (see
// fixed_point.hpp); rates and percentages are also scaled by 1e8 (1% == 100'000'000,
// a fee rate of 0.1% == 100'000, leverage 3x == 300'000'000).
//
// Semantics (mirrored exactly by the Python reference model in tests/):
//  * Notional of qty at price: floor(price * qty / 1e8). Fee of a fill:
//    ceil(price * qty * fee_rate / 1e16), charged once per fill.
//  * A position keeps a signed quantity and an exact cost basis (sum of the notionals of
//    its open part). Reducing by c of |Q| removes floor(cost * c / |Q|) from the basis
//    (all of it when c == |Q|); realized PnL is the close notional minus the removed
//    basis (longs) or the reverse (shorts). A fill through zero closes |Q| first, then
//    opens the rest with basis notional(price, rest). Average entry is
//    floor(cost * 1e8 / |Q|) and is display-only. Realized PnL excludes fees.
//  * Mark: a symbol's last price. Unrealized PnL = notional(last, |Q|) - cost (longs) or
//    cost - notional(last, |Q|) (shorts); 0 before the first market update.
//  * Equity = starting equity + realized - fees + unrealized.
//  * Market orders fill in full at the ask (buy) or bid (sell). A limit order that
//    crosses (buy >= ask, sell <= bid) fills in full at the ask / bid; otherwise GTC
//    rests and IOC expires. Resting orders execute only against the paper market, never
//    against each other: after a market update, resting buys with price >= ask fill at
//    their own limit price, best price first then oldest first; then resting sells with
//    price <= bid likewise.
//  * Each Engine owns all of its state and guards it with one mutex; no globals.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "bounds.hpp"
#include "fixed_point.hpp"
#include "idempotency.hpp"

namespace hean {

enum class EngineState : std::uint8_t { Stopped = 0, Running = 1, Halted = 2 };
enum class Side : std::uint8_t { Buy = 0, Sell = 1 };
enum class OrderType : std::uint8_t { Market = 0, Limit = 1 };
enum class TimeInForce : std::uint8_t { GTC = 0, IOC = 1 };
// First outcome of a submission: filled in full, resting on the book, expired (IOC that
// did not cross) or rejected. Cancelled is what a resting order becomes when cancelled.
enum class OrderStatus : std::uint8_t {
  Filled = 0,
  Resting = 1,
  Expired = 2,
  Rejected = 3,
  Cancelled = 4
};
// Why an order was rejected, in the order the checks run (None when not rejected).
enum class RejectReason : std::uint8_t {
  None = 0,
  EngineStopped = 1,    // engine is STOPPED
  EngineHalted = 2,     // kill switch engaged (HALTED)
  Throttled = 3,        // per-second order rate reached
  NoMarketData = 4,     // market order on a symbol without bid/ask
  MinNotional = 5,      // notional < min_notional
  MaxNotional = 6,      // notional > max_notional
  MaxOpenOrders = 7,    // order would rest and max_open_orders already rest
  MaxOpenPositions = 8, // flat symbol while max_open_positions symbols are open
  DailyDrawdown = 9,    // exposure-increasing order while daily drawdown >= limit
  MaxTradeRisk = 10,    // opening notional * stop_distance > max_trade_risk * equity
  MaxLeverage = 11      // projected gross exposure > max_leverage * equity
};
constexpr int kRejectReasonCount = 12;

const char* to_string(EngineState state) noexcept;
const char* to_string(RejectReason reason) noexcept;
const char* to_string(OrderStatus status) noexcept;

// Thrown for invalid input; the bindings turn it into ValueError. The message names the field.
class InvalidInput : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Run-time adjustable risk limits. Money in 1e-8 USD; percentages, leverage and rates in 1e-8.
struct RiskLimits {
  i64 min_notional = 5 * kScale;                      // 5 USD
  i64 max_notional = 50'000 * kScale;                 // 50,000 USD per order
  i64 max_open_orders = 20;                           // resting orders
  i64 max_open_positions = 10;                        // symbols with a non-zero position
  i64 max_leverage = 3 * kScale;                      // gross exposure / equity
  i64 max_trade_risk_pct = 1 * kScale;                // % of equity one order may risk
  i64 stop_distance_pct = 2 * kScale;                 // assumed stop distance for trade risk
  i64 max_daily_drawdown_pct = 15 * kScale;           // blocks exposure-increasing orders
  i64 kill_switch_drawdown_pct = 30 * kScale;         // drawdown from peak that halts
  i64 max_orders_per_second = 50'000;                 // 0 = unlimited
  i64 fee_rate = 100'000;                             // 0.1% of notional

  // Throws InvalidInput naming the first offending field.
  void validate() const;
  bool operator==(const RiskLimits& o) const noexcept;
};

struct EngineConfig {
  i64 starting_equity = 10'000 * kScale;  // 10,000 USD
  // Idempotency window: the outcomes of the most recent `idempotency_capacity` distinct
  // client order ids are remembered (FIFO eviction); resting orders are always remembered.
  i64 idempotency_capacity = 100'000;
};

struct OrderRequest {
  std::string_view client_id;
  std::string_view symbol;
  Side side = Side::Buy;
  OrderType type = OrderType::Market;
  TimeInForce tif = TimeInForce::GTC;
  i64 quantity = 0;
  i64 price = 0;  // limit price; ignored (must be 0 or positive) for market orders
};

struct OrderResult {
  u64 order_id = 0;  // engine-assigned, 0 when rejected
  OrderStatus status = OrderStatus::Rejected;
  RejectReason reason = RejectReason::None;
  i64 filled_qty = 0;
  i64 fill_price = 0;  // 0 when nothing filled
  i64 fee = 0;
  bool duplicate = false;  // true when this is the remembered outcome of an earlier submit
};

struct Fill {
  u64 order_id = 0;
  std::string client_id;
  std::string symbol;
  Side side = Side::Buy;
  i64 quantity = 0;
  i64 price = 0;
  i64 fee = 0;
};

struct PositionView {
  std::string symbol;
  i64 quantity = 0;  // signed: > 0 long, < 0 short
  i64 cost = 0;      // cost basis of the open part (>= 0)
  i64 avg_entry_price = 0;
  i64 realized_pnl = 0;
  i64 unrealized_pnl = 0;
  i64 fees = 0;
  i64 last_price = 0;
  i64 bid = 0;
  i64 ask = 0;
};

struct AccountView {
  i64 starting_equity = 0;
  i64 equity = 0;
  i64 realized_pnl = 0;
  i64 unrealized_pnl = 0;
  i64 fees = 0;
  i64 gross_exposure = 0;
  i64 open_order_notional = 0;
  i64 peak_equity = 0;
  i64 day_start_equity = 0;
  i64 open_orders = 0;
  i64 open_positions = 0;
};

struct OpenOrderView {
  u64 order_id = 0;
  std::string client_id;
  std::string symbol;
  Side side = Side::Buy;
  i64 price = 0;
  i64 quantity = 0;
};

struct EngineCounters {
  u64 orders_submitted = 0;  // distinct submissions (duplicates excluded)
  u64 orders_filled = 0;
  u64 orders_rejected = 0;
  u64 duplicates = 0;
  u64 fills = 0;
  u64 cancels = 0;
};

// Result of a batch: one entry per order in input order, plus totals.
struct BatchOutcome {
  std::vector<std::uint8_t> status;
  std::vector<std::uint8_t> reason;
  std::vector<i64> filled_qty;
  std::vector<i64> fill_price;
  std::vector<i64> fee;
  std::vector<u64> order_id;
  std::vector<std::uint8_t> duplicate;
  u64 filled = 0, resting = 0, expired = 0, rejected = 0, duplicates = 0;
  void reserve(std::size_t n);
  void push(const OrderResult& r);
};

struct MarketUpdate {
  std::string_view symbol;
  i64 bid = 0;
  i64 ask = 0;
  i64 last = 0;
};

namespace detail {

struct RestingOrder {
  u64 order_id;
  u64 seq;  // time priority
  std::string client_id;
  Side side;
  i64 price;
  i64 quantity;
  OrderResult first;  // outcome returned to duplicates
};

struct SymbolState {
  std::string name;
  i64 bid = 0, ask = 0, last = 0;
  i64 qty = 0, cost = 0, realized = 0, fees = 0;
  // Cached contributions to account totals (kept in step by refresh_symbol()).
  i64 unrealized = 0, gross = 0;
  // Resting orders; level maps keep price priority, lists keep time priority.
  std::map<i64, std::list<RestingOrder>, std::greater<i64>> bids;
  std::map<i64, std::list<RestingOrder>> asks;
};

struct OpenRef {
  std::uint32_t symbol;
  Side side;
  i64 price;
  std::list<RestingOrder>::iterator it;
};

// All of one engine's state. Movable so restore() can build a new one and swap it in.
struct Core {
  EngineConfig config;
  RiskLimits limits;
  EngineState state = EngineState::Stopped;
  std::string halt_reason;
  u64 command_count = 0;
  u64 next_order_id = 1;
  u64 next_seq = 1;
  EngineCounters counters;

  std::vector<std::unique_ptr<SymbolState>> symbols;
  std::unordered_map<std::string, std::uint32_t> symbol_index;
  std::int64_t last_symbol = -1;  // lookup cache, not state

  std::unordered_map<std::string, OpenRef> open;  // client id -> resting order
  std::string open_key;  // reused to look a client id up in `open` without an allocation; not state
  i64 open_order_notional = 0;
  i64 open_positions = 0;

  // Outcome by client id for the most recent `idempotency_capacity` ids.
  IdempotencyCache<OrderResult, static_cast<std::size_t>(bounds::kMaxIdBytes)> seen{1};

  i64 realized_total = 0, fees_total = 0, unrealized_total = 0, gross_total = 0;
  i64 peak_equity = 0, day_start_equity = 0;

  i64 throttle_second = -1;
  i64 throttle_count = 0;
};

}  // namespace detail

class Engine {
 public:
  explicit Engine(EngineConfig config = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Control commands; each increments command_count and returns true when the state changed.
  bool start();                 // STOPPED -> RUNNING (not from HALTED)
  bool stop();                  // RUNNING -> STOPPED
  // -> HALTED, cancels every resting order; keeps the first bounds::kMaxReasonBytes of `reason`
  // (whole characters)
  bool kill_switch(const std::string& reason);
  bool reset_kill_switch();     // HALTED -> STOPPED; peak equity := current equity
  void set_risk_limits(const RiskLimits& limits);  // validates, then replaces
  void reset_daily();           // day-start equity := current equity

  EngineState state() const;
  std::string halt_reason() const;
  u64 command_count() const;
  RiskLimits risk_limits() const;
  EngineConfig config() const;
  EngineCounters counters() const;

  // now_ns feeds the order-rate throttle; 0 means "use the monotonic clock".
  OrderResult submit(const OrderRequest& req, i64 now_ns = 0);
  // Orders in input order under one lock. Validates every order first: on invalid input
  // it throws and applies nothing.
  BatchOutcome submit_batch(const std::vector<OrderRequest>& orders, i64 now_ns = 0);
  // Cancels a resting order; false when no order with this id rests.
  bool cancel(std::string_view client_id);

  // Feeds the paper market and executes resting orders that now cross.
  std::vector<Fill> update_market(const MarketUpdate& update);
  std::vector<Fill> update_market_batch(const std::vector<MarketUpdate>& updates);

  std::vector<PositionView> positions() const;
  AccountView account() const;
  std::vector<OpenOrderView> open_orders() const;

  std::string snapshot() const;
  void restore(std::string_view data);

 private:
  mutable std::mutex mutex_;
  detail::Core core_;
};

// The checksum that ends a snapshot of format `version` (1: FNV-1a, 2: XXH3), taken over
// everything before it; InvalidInput for a version this build cannot read.
std::uint64_t snapshot_checksum(std::string_view body, std::uint64_t version);

// Validation helpers shared with the bindings (throw InvalidInput naming the field).
void validate_order(const OrderRequest& req);
void validate_market(const MarketUpdate& update);

}  // namespace hean
