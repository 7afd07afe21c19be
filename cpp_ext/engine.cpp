// HEAN trading core: implementation of the order engine declared in engine.hpp.
#include "engine.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>

#define XXH_INLINE_ALL
#include <xxhash/xxhash.h>

namespace hean {

namespace {

using detail::Core;
using detail::OpenRef;
using detail::RestingOrder;
using detail::SymbolState;

constexpr i64 kNsPerSecond = 1'000'000'000;
using bounds::kHundredPct;
constexpr std::size_t kMaxIdLength = static_cast<std::size_t>(bounds::kMaxIdBytes);
constexpr std::size_t kMaxReasonLength = static_cast<std::size_t>(bounds::kMaxReasonBytes);

i64 abs64(i64 v) noexcept { return v < 0 ? -v : v; }

// Saturates a wide cash value into int64 (only reachable with absurd marks).
i64 clamp_cash(i128 v) noexcept {
  constexpr i128 lim = static_cast<i128>(4'000'000'000'000'000'000LL);
  if (v > lim) return static_cast<i64>(lim);
  if (v < -lim) return static_cast<i64>(-lim);
  return static_cast<i64>(v);
}

i64 monotonic_ns() {
  return static_cast<i64>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                              std::chrono::steady_clock::now().time_since_epoch())
                              .count());
}

void require(bool ok, const char* message) {
  if (!ok) throw InvalidInput(message);
}

void validate_config(const EngineConfig& config) {
  require(config.starting_equity > 0 && config.starting_equity <= kMaxCash,
          "starting_equity: must be > 0 and <= 1e10");
  require(config.idempotency_capacity >= 1 && config.idempotency_capacity <= 10'000'000,
          "idempotency_capacity: must be between 1 and 10000000");
}

i128 equity(const Core& c) noexcept {
  return static_cast<i128>(c.config.starting_equity) + c.realized_total - c.fees_total +
         c.unrealized_total;
}

// Recomputes one symbol's unrealized PnL and gross exposure and their account totals.
void refresh_symbol(Core& c, SymbolState& s) noexcept {
  c.unrealized_total -= s.unrealized;
  c.gross_total -= s.gross;
  if (s.qty == 0) {
    s.unrealized = 0;
    s.gross = 0;
  } else if (s.last > 0) {
    const i64 mark = clamp_cash(notional_wide(s.last, abs64(s.qty)));
    s.gross = mark;
    s.unrealized = s.qty > 0 ? mark - s.cost : s.cost - mark;
  } else {
    s.gross = s.cost;
    s.unrealized = 0;
  }
  c.unrealized_total += s.unrealized;
  c.gross_total += s.gross;
}

// Index of a known symbol or -1. Batches repeat the same few symbols, so the last hit
// is checked first.
std::int64_t find_symbol(Core& c, std::string_view name) {
  if (c.last_symbol >= 0 && c.symbols[static_cast<std::size_t>(c.last_symbol)]->name == name) {
    return c.last_symbol;
  }
  auto it = c.symbol_index.find(std::string(name));
  if (it == c.symbol_index.end()) return -1;
  c.last_symbol = it->second;
  return it->second;
}

std::uint32_t symbol_id(Core& c, std::string_view name) {
  std::string key(name);
  auto it = c.symbol_index.find(key);
  if (it != c.symbol_index.end()) return it->second;
  const auto id = static_cast<std::uint32_t>(c.symbols.size());
  auto s = std::make_unique<SymbolState>();
  s->name = key;
  c.symbols.push_back(std::move(s));
  c.symbol_index.emplace(std::move(key), id);
  return id;
}

// At most `max` bytes of the UTF-8 text `s`, never a character cut in two (a reason is read back
// as text: half a character would make it unreadable).
std::string utf8_prefix(const std::string& s, std::size_t max) {
  if (s.size() <= max) return s;
  std::size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

void halt(Core& c, const std::string& reason) {
  c.state = EngineState::Halted;
  c.halt_reason = reason;
  for (auto& s : c.symbols) {
    s->bids.clear();
    s->asks.clear();
  }
  c.counters.cancels += c.open.size();
  c.open.clear();
  c.open_order_notional = 0;
}

// Raises the peak and engages the kill switch when drawdown from the peak reaches the limit.
void check_equity(Core& c) {
  const i128 eq = equity(c);
  if (eq > c.peak_equity) c.peak_equity = clamp_cash(eq);
  if (c.state == EngineState::Halted || c.peak_equity <= 0) return;
  const i128 dd = static_cast<i128>(c.peak_equity) - eq;
  if (dd > 0 && dd * kHundredPct >=
                    static_cast<i128>(c.limits.kill_switch_drawdown_pct) * c.peak_equity) {
    halt(c, "drawdown");
  }
}

// Applies one fill to the symbol's position (see engine.hpp for the exact rules).
i64 apply_fill(Core& c, SymbolState& s, Side side, i64 qty, i64 price) {
  const i64 fee = fee_for(price, qty, c.limits.fee_rate);
  const bool was_open = s.qty != 0;
  const bool buy = side == Side::Buy;
  if (s.qty == 0 || (s.qty > 0) == buy) {
    s.cost += notional(price, qty);
    s.qty += buy ? qty : -qty;
  } else {
    const i64 held = abs64(s.qty);
    const i64 close = std::min(qty, held);
    const i64 removed =
        close == held ? s.cost
                      : static_cast<i64>(static_cast<i128>(s.cost) * close / held);
    const i64 proceeds = notional(price, close);
    const i64 pnl = s.qty > 0 ? proceeds - removed : removed - proceeds;
    s.realized += pnl;
    c.realized_total += pnl;
    s.cost -= removed;
    s.qty += buy ? close : -close;
    const i64 rest = qty - close;
    if (rest > 0) {
      s.cost = notional(price, rest);
      s.qty = buy ? rest : -rest;
    }
  }
  s.fees += fee;
  c.fees_total += fee;
  if (was_open && s.qty == 0) --c.open_positions;
  if (!was_open && s.qty != 0) ++c.open_positions;
  refresh_symbol(c, s);
  ++c.counters.fills;
  return fee;
}

bool throttle_admits(Core& c, i64 now_ns) {
  const i64 limit = c.limits.max_orders_per_second;
  if (limit <= 0) return true;
  if (now_ns == 0) now_ns = monotonic_ns();
  const i64 second = now_ns / kNsPerSecond;
  if (second != c.throttle_second) {
    c.throttle_second = second;
    c.throttle_count = 0;
  }
  if (c.throttle_count >= limit) return false;
  ++c.throttle_count;
  return true;
}

void remember(Core& c, std::string_view key, std::uint64_t h, const OrderResult& r) {
  c.seen.insert(key, h, r);
}

void rest_order(Core& c, std::uint32_t sym, const std::string& client_id, Side side, i64 price,
                i64 qty, const OrderResult& first) {
  SymbolState& s = *c.symbols[sym];
  RestingOrder o{first.order_id, c.next_seq++, client_id, side, price, qty, first};
  std::list<RestingOrder>::iterator it;
  if (side == Side::Buy) {
    auto& level = s.bids[price];
    it = level.insert(level.end(), std::move(o));
  } else {
    auto& level = s.asks[price];
    it = level.insert(level.end(), std::move(o));
  }
  c.open.emplace(client_id, OpenRef{sym, side, price, it});
  c.open_order_notional += notional(price, qty);
}

// Decides and executes one order; the caller holds the lock and has validated `req`.
OrderResult submit_locked(Core& c, const OrderRequest& req, i64 now_ns) {
  const std::string_view key = req.client_id;
  const std::uint64_t h = decltype(c.seen)::hash(key);
  if (const OrderResult* seen = c.seen.find(key, h)) {
    OrderResult r = *seen;
    r.duplicate = true;
    ++c.counters.duplicates;
    return r;
  }
  if (!c.open.empty()) {
    c.open_key.assign(key.data(), key.size());
    if (auto it = c.open.find(c.open_key); it != c.open.end()) {
      OrderResult r = it->second.it->first;
      r.duplicate = true;
      ++c.counters.duplicates;
      return r;
    }
  }
  ++c.counters.orders_submitted;

  OrderResult r;
  auto reject = [&](RejectReason why) {
    r.status = OrderStatus::Rejected;
    r.reason = why;
    ++c.counters.orders_rejected;
    remember(c, key, h, r);
    return r;
  };
  if (c.state == EngineState::Stopped) return reject(RejectReason::EngineStopped);
  if (c.state == EngineState::Halted) return reject(RejectReason::EngineHalted);
  if (!throttle_admits(c, now_ns)) return reject(RejectReason::Throttled);

  const std::int64_t known = find_symbol(c, req.symbol);
  SymbolState* s = known < 0 ? nullptr : c.symbols[static_cast<std::size_t>(known)].get();
  const bool buy = req.side == Side::Buy;
  bool crosses = false;
  i64 exec_price = 0;
  i64 ref_price = 0;
  if (req.type == OrderType::Market) {
    exec_price = s == nullptr ? 0 : (buy ? s->ask : s->bid);
    if (exec_price == 0) return reject(RejectReason::NoMarketData);
    crosses = true;
    ref_price = exec_price;
  } else {
    ref_price = req.price;
    if (s != nullptr) {
      exec_price = buy ? s->ask : s->bid;
      crosses = exec_price > 0 && (buy ? req.price >= exec_price : req.price <= exec_price);
    }
  }
  const RiskLimits& lim = c.limits;
  const i128 order_notional = notional_wide(ref_price, req.quantity);
  if (order_notional < lim.min_notional) return reject(RejectReason::MinNotional);
  if (order_notional > lim.max_notional) return reject(RejectReason::MaxNotional);
  const bool rests = !crosses && req.type == OrderType::Limit && req.tif == TimeInForce::GTC;
  if (rests && static_cast<i64>(c.open.size()) >= lim.max_open_orders) {
    return reject(RejectReason::MaxOpenOrders);
  }
  const i64 held = s == nullptr ? 0 : s->qty;
  if (held == 0 && c.open_positions >= lim.max_open_positions) {
    return reject(RejectReason::MaxOpenPositions);
  }
  const i64 signed_qty = buy ? req.quantity : -req.quantity;
  const i64 opening = (held == 0 || (held > 0) == buy)
                          ? req.quantity
                          : std::max<i64>(0, req.quantity - abs64(held));
  if (opening > 0) {
    const i128 eq = equity(c);
    const i128 day_loss = static_cast<i128>(c.day_start_equity) - eq;
    if (day_loss > 0 && day_loss * kHundredPct >= static_cast<i128>(lim.max_daily_drawdown_pct) *
                                                      c.day_start_equity) {
      return reject(RejectReason::DailyDrawdown);
    }
    if (eq <= 0 || notional_wide(ref_price, opening) * lim.stop_distance_pct >
                       static_cast<i128>(lim.max_trade_risk_pct) * eq) {
      return reject(RejectReason::MaxTradeRisk);
    }
    const i128 projected = static_cast<i128>(c.gross_total) - (s == nullptr ? 0 : s->gross) +
                           notional_wide(ref_price, abs64(held + signed_qty)) +
                           c.open_order_notional;
    if (projected * kScale > static_cast<i128>(lim.max_leverage) * eq) {
      return reject(RejectReason::MaxLeverage);
    }
  }

  const std::uint32_t sym =
      known < 0 ? symbol_id(c, req.symbol) : static_cast<std::uint32_t>(known);
  r.order_id = c.next_order_id++;
  if (crosses) {
    r.fee = apply_fill(c, *c.symbols[sym], req.side, req.quantity, exec_price);
    r.status = OrderStatus::Filled;
    r.filled_qty = req.quantity;
    r.fill_price = exec_price;
    ++c.counters.orders_filled;
    remember(c, key, h, r);
    check_equity(c);
  } else if (rests) {
    r.status = OrderStatus::Resting;
    rest_order(c, sym, std::string(key), req.side, req.price, req.quantity, r);
    remember(c, key, h, r);
  } else {
    r.status = OrderStatus::Expired;
    remember(c, key, h, r);
  }
  return r;
}

template <typename Levels>
void execute_crossing(Core& c, SymbolState& s, Levels& levels, bool buys,
                      std::vector<Fill>& fills) {
  while (c.state != EngineState::Halted && !levels.empty()) {
    auto level = levels.begin();
    const bool crossed = buys ? (s.ask > 0 && level->first >= s.ask)
                              : (s.bid > 0 && level->first <= s.bid);
    if (!crossed) break;
    RestingOrder o = std::move(level->second.front());
    level->second.pop_front();
    if (level->second.empty()) levels.erase(level);
    c.open.erase(o.client_id);
    c.open_order_notional -= notional(o.price, o.quantity);
    const i64 fee = apply_fill(c, s, o.side, o.quantity, o.price);
    ++c.counters.orders_filled;
    fills.push_back(Fill{o.order_id, std::move(o.client_id), s.name, o.side, o.quantity,
                         o.price, fee});
    check_equity(c);
  }
}

void update_market_locked(Core& c, const MarketUpdate& u, std::vector<Fill>& fills) {
  SymbolState& s = *c.symbols[symbol_id(c, u.symbol)];
  s.bid = u.bid;
  s.ask = u.ask;
  s.last = u.last;
  refresh_symbol(c, s);
  check_equity(c);
  execute_crossing(c, s, s.bids, true, fills);
  execute_crossing(c, s, s.asks, false, fills);
}

// ---- snapshot encoding: little-endian fixed-width integers, length-prefixed strings ----

constexpr char kMagic[8] = {'H', 'E', 'A', 'N', 'S', 'N', 'P', '1'};
// Version 2 is version 1 with its checksum taken by XXH3 (64 bits) instead of FNV-1a: the
// same bytes otherwise. FNV-1a goes a byte at a time, 8.6 of the 12.9 ms it took to write a
// snapshot holding 100,000 client order ids (7.8 MB), on the engine worker's consumer thread.
constexpr std::uint32_t kSnapshotVersion = 2;

u64 fnv1a(const char* data, std::size_t n) noexcept {
  u64 h = 1469598103934665603ULL;
  for (std::size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(data[i]);
    h *= 1099511628211ULL;
  }
  return h;
}

class Writer {
 public:
  void reserve(std::size_t n) { out_.reserve(n); }
  void u8(std::uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u64v(u64 v) {
    // one 8-byte append, not eight push_backs (a 100,000-id snapshot writes ~1.5M of these)
    char bytes[8];
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
    out_.append(bytes, sizeof bytes);
  }
  void i64v(i64 v) { u64v(static_cast<u64>(v)); }
  void str(std::string_view s) {
    u64v(s.size());
    out_.append(s);
  }
  void raw(const char* p, std::size_t n) { out_.append(p, n); }
  void result(const OrderResult& r) {
    u64v(r.order_id);
    u8(static_cast<std::uint8_t>(r.status));
    u8(static_cast<std::uint8_t>(r.reason));
    i64v(r.filled_qty);
    i64v(r.fill_price);
    i64v(r.fee);
  }
  std::string& out() { return out_; }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  std::uint8_t u8() {
    need(1);
    return static_cast<std::uint8_t>(data_[pos_++]);
  }
  u64 u64v() {
    need(8);
    u64 v = 0;
    for (int i = 0; i < 8; ++i) {
      v |= static_cast<u64>(static_cast<unsigned char>(data_[pos_ + i])) << (8 * i);
    }
    pos_ += 8;
    return v;
  }
  i64 i64v() { return static_cast<i64>(u64v()); }
  std::string str(std::size_t max = kMaxIdLength) {
    const u64 n = u64v();
    require(n <= max, "snapshot: string too long (corrupt)");
    need(static_cast<std::size_t>(n));
    std::string s(data_.substr(pos_, static_cast<std::size_t>(n)));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }
  u64 count(u64 max) {
    const u64 n = u64v();
    require(n <= max, "snapshot: count out of range (corrupt)");
    return n;
  }
  OrderResult result() {
    OrderResult r;
    r.order_id = u64v();
    const auto status = u8();
    const auto reason = u8();
    require(status <= static_cast<std::uint8_t>(OrderStatus::Cancelled),
            "snapshot: bad order status (corrupt)");
    require(reason < kRejectReasonCount, "snapshot: bad reject reason (corrupt)");
    r.status = static_cast<OrderStatus>(status);
    r.reason = static_cast<RejectReason>(reason);
    r.filled_qty = i64v();
    r.fill_price = i64v();
    r.fee = i64v();
    return r;
  }
  std::size_t pos() const { return pos_; }

 private:
  void need(std::size_t n) const {
    require(n <= data_.size() - pos_, "snapshot: truncated");
  }
  std::string_view data_;
  std::size_t pos_ = 0;
};

void write_limits(Writer& w, const RiskLimits& l) {
  for (i64 v : {l.min_notional, l.max_notional, l.max_open_orders, l.max_open_positions,
                l.max_leverage, l.max_trade_risk_pct, l.stop_distance_pct,
                l.max_daily_drawdown_pct, l.kill_switch_drawdown_pct, l.max_orders_per_second,
                l.fee_rate}) {
    w.i64v(v);
  }
}

RiskLimits read_limits(Reader& r) {
  RiskLimits l;
  for (i64* p : {&l.min_notional, &l.max_notional, &l.max_open_orders, &l.max_open_positions,
                 &l.max_leverage, &l.max_trade_risk_pct, &l.stop_distance_pct,
                 &l.max_daily_drawdown_pct, &l.kill_switch_drawdown_pct,
                 &l.max_orders_per_second, &l.fee_rate}) {
    *p = r.i64v();
  }
  return l;
}

// Every resting order in book order: symbol, then buys best-first, then sells best-first;
// within a level, oldest first.
template <typename F>
void for_each_resting(const Core& c, F&& f) {
  for (std::size_t i = 0; i < c.symbols.size(); ++i) {
    const SymbolState& s = *c.symbols[i];
    for (const auto& [price, level] : s.bids)
      for (const auto& o : level) f(static_cast<std::uint32_t>(i), o);
    for (const auto& [price, level] : s.asks)
      for (const auto& o : level) f(static_cast<std::uint32_t>(i), o);
  }
}

}  // namespace

const char* to_string(EngineState state) noexcept {
  switch (state) {
    case EngineState::Stopped:
      return "STOPPED";
    case EngineState::Running:
      return "RUNNING";
    case EngineState::Halted:
      return "HALTED";
  }
  return "UNKNOWN";
}

const char* to_string(RejectReason reason) noexcept {
  switch (reason) {
    case RejectReason::None: return "NONE";
    case RejectReason::EngineStopped: return "ENGINE_STOPPED";
    case RejectReason::EngineHalted: return "ENGINE_HALTED";
    case RejectReason::Throttled: return "THROTTLED";
    case RejectReason::NoMarketData: return "NO_MARKET_DATA";
    case RejectReason::MinNotional: return "MIN_NOTIONAL";
    case RejectReason::MaxNotional: return "MAX_NOTIONAL";
    case RejectReason::MaxOpenOrders: return "MAX_OPEN_ORDERS";
    case RejectReason::MaxOpenPositions: return "MAX_OPEN_POSITIONS";
    case RejectReason::DailyDrawdown: return "DAILY_DRAWDOWN";
    case RejectReason::MaxTradeRisk: return "MAX_TRADE_RISK";
    case RejectReason::MaxLeverage: return "MAX_LEVERAGE";
  }
  return "UNKNOWN";
}

const char* to_string(OrderStatus status) noexcept {
  switch (status) {
    case OrderStatus::Filled: return "FILLED";
    case OrderStatus::Resting: return "RESTING";
    case OrderStatus::Expired: return "EXPIRED";
    case OrderStatus::Rejected: return "REJECTED";
    case OrderStatus::Cancelled: return "CANCELLED";
  }
  return "UNKNOWN";
}

namespace {
// A fixed-point value as the shortest decimal text ("0.1", "10000000000").
std::string units_text(i64 units) {
  std::string text = std::to_string(units / kScale);
  i64 frac = units % kScale;
  if (frac != 0) {
    std::string digits = std::to_string(frac);
    digits.insert(0, 8 - digits.size(), '0');
    digits.erase(digits.find_last_not_of('0') + 1);
    text += "." + digits;
  }
  return text;
}
}  // namespace

std::string Bound::violation() const {
  const bool fixed = kind == BoundKind::FixedPoint;
  const std::string lo = fixed ? units_text(min) : std::to_string(min);
  const std::string hi = fixed ? units_text(max) : std::to_string(max);
  if (kind == BoundKind::Length) {
    return std::string(name) + ": must be " + lo + " to " + hi + " bytes long";
  }
  return std::string(name) + ": must be " + (min_exclusive ? "> " : ">= ") + lo + " and <= " + hi;
}

namespace {
void check(const Bound& bound, i64 value) {
  if (!bound.contains(value)) throw InvalidInput(bound.violation());
}
}  // namespace

void RiskLimits::validate() const {
  const i64 values[] = {min_notional,           max_notional,       max_open_orders,
                        max_open_positions,     max_leverage,       max_trade_risk_pct,
                        stop_distance_pct,      max_daily_drawdown_pct, kill_switch_drawdown_pct,
                        max_orders_per_second,  fee_rate};
  static_assert(sizeof(values) / sizeof(values[0]) == kRiskLimitBounds.size(),
                "one bound per risk limit");
  for (std::size_t i = 0; i < kRiskLimitBounds.size(); ++i) check(kRiskLimitBounds[i], values[i]);
  require(min_notional <= max_notional, "min_notional: must not exceed max_notional");
}

bool RiskLimits::operator==(const RiskLimits& o) const noexcept {
  return min_notional == o.min_notional && max_notional == o.max_notional &&
         max_open_orders == o.max_open_orders && max_open_positions == o.max_open_positions &&
         max_leverage == o.max_leverage && max_trade_risk_pct == o.max_trade_risk_pct &&
         stop_distance_pct == o.stop_distance_pct &&
         max_daily_drawdown_pct == o.max_daily_drawdown_pct &&
         kill_switch_drawdown_pct == o.kill_switch_drawdown_pct &&
         max_orders_per_second == o.max_orders_per_second && fee_rate == o.fee_rate;
}

void validate_order(const OrderRequest& req) {
  check(bounds::kClientOrderId, static_cast<i64>(req.client_id.size()));
  check(bounds::kSymbol, static_cast<i64>(req.symbol.size()));
  require(req.side == Side::Buy || req.side == Side::Sell, "side: must be BUY or SELL");
  require(req.type == OrderType::Market || req.type == OrderType::Limit,
          "order_type: must be MARKET or LIMIT");
  require(req.tif == TimeInForce::GTC || req.tif == TimeInForce::IOC,
          "time_in_force: must be GTC or IOC");
  check(bounds::kQuantity, req.quantity);
  if (req.type == OrderType::Limit) {
    check(bounds::kPrice, req.price);
  } else {
    require(req.price >= 0 && req.price <= kMaxPrice,
            "price: must be 0 (unused) for a market order");
  }
}

void validate_market(const MarketUpdate& u) {
  check(bounds::kSymbol, static_cast<i64>(u.symbol.size()));
  for (const auto& [name, value] : {std::pair<const char*, i64>{"bid", u.bid}, {"ask", u.ask},
                                    {"last", u.last}}) {
    Bound price = bounds::kPrice;
    price.name = name;
    check(price, value);
  }
  require(u.bid <= u.ask, "bid: must not exceed ask");
}

void BatchOutcome::reserve(std::size_t n) {
  status.reserve(n);
  reason.reserve(n);
  filled_qty.reserve(n);
  fill_price.reserve(n);
  fee.reserve(n);
  order_id.reserve(n);
  duplicate.reserve(n);
}

void BatchOutcome::push(const OrderResult& r) {
  status.push_back(static_cast<std::uint8_t>(r.status));
  reason.push_back(static_cast<std::uint8_t>(r.reason));
  filled_qty.push_back(r.filled_qty);
  fill_price.push_back(r.fill_price);
  fee.push_back(r.fee);
  order_id.push_back(r.order_id);
  duplicate.push_back(r.duplicate ? 1 : 0);
  if (r.duplicate) ++duplicates;
  switch (r.status) {
    case OrderStatus::Filled: ++filled; break;
    case OrderStatus::Resting: ++resting; break;
    case OrderStatus::Expired: ++expired; break;
    case OrderStatus::Rejected: ++rejected; break;
    case OrderStatus::Cancelled: break;
  }
}

Engine::Engine(EngineConfig config) {
  validate_config(config);
  core_.config = config;
  core_.peak_equity = config.starting_equity;
  core_.day_start_equity = config.starting_equity;
  core_.seen = decltype(core_.seen)(static_cast<std::size_t>(config.idempotency_capacity));
}

Engine::~Engine() = default;

bool Engine::start() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++core_.command_count;
  if (core_.state != EngineState::Stopped) return false;
  core_.state = EngineState::Running;
  return true;
}

bool Engine::stop() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++core_.command_count;
  if (core_.state != EngineState::Running) return false;
  core_.state = EngineState::Stopped;
  return true;
}

bool Engine::kill_switch(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++core_.command_count;
  if (core_.state == EngineState::Halted) return false;
  halt(core_, reason.empty() ? std::string("command") : utf8_prefix(reason, kMaxReasonLength));
  return true;
}

bool Engine::reset_kill_switch() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++core_.command_count;
  if (core_.state != EngineState::Halted) return false;
  core_.state = EngineState::Stopped;
  core_.halt_reason.clear();
  core_.peak_equity = clamp_cash(equity(core_));
  return true;
}

void Engine::set_risk_limits(const RiskLimits& limits) {
  limits.validate();
  std::lock_guard<std::mutex> lock(mutex_);
  ++core_.command_count;
  core_.limits = limits;
}

void Engine::reset_daily() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++core_.command_count;
  core_.day_start_equity = clamp_cash(equity(core_));
}

EngineState Engine::state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return core_.state;
}

std::string Engine::halt_reason() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return core_.halt_reason;
}

u64 Engine::command_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return core_.command_count;
}

RiskLimits Engine::risk_limits() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return core_.limits;
}

EngineConfig Engine::config() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return core_.config;
}

EngineCounters Engine::counters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return core_.counters;
}

OrderResult Engine::submit(const OrderRequest& req, i64 now_ns) {
  validate_order(req);
  require(now_ns >= 0, "now_ns: must be >= 0");
  std::lock_guard<std::mutex> lock(mutex_);
  return submit_locked(core_, req, now_ns);
}

BatchOutcome Engine::submit_batch(const std::vector<OrderRequest>& orders, i64 now_ns) {
  for (const auto& req : orders) validate_order(req);
  require(now_ns >= 0, "now_ns: must be >= 0");
  BatchOutcome out;
  out.reserve(orders.size());
  std::lock_guard<std::mutex> lock(mutex_);
  if (now_ns == 0 && core_.limits.max_orders_per_second > 0) now_ns = monotonic_ns();
  for (const auto& req : orders) out.push(submit_locked(core_, req, now_ns));
  return out;
}

bool Engine::cancel(std::string_view client_id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = core_.open.find(std::string(client_id));
  if (it == core_.open.end()) return false;
  const OpenRef ref = it->second;
  SymbolState& s = *core_.symbols[ref.symbol];
  core_.open_order_notional -= notional(ref.price, ref.it->quantity);
  if (ref.side == Side::Buy) {
    auto level = s.bids.find(ref.price);
    level->second.erase(ref.it);
    if (level->second.empty()) s.bids.erase(level);
  } else {
    auto level = s.asks.find(ref.price);
    level->second.erase(ref.it);
    if (level->second.empty()) s.asks.erase(level);
  }
  core_.open.erase(it);
  ++core_.counters.cancels;
  return true;
}

std::vector<Fill> Engine::update_market(const MarketUpdate& update) {
  validate_market(update);
  std::vector<Fill> fills;
  std::lock_guard<std::mutex> lock(mutex_);
  update_market_locked(core_, update, fills);
  return fills;
}

std::vector<Fill> Engine::update_market_batch(const std::vector<MarketUpdate>& updates) {
  for (const auto& u : updates) validate_market(u);
  std::vector<Fill> fills;
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& u : updates) update_market_locked(core_, u, fills);
  return fills;
}

std::vector<PositionView> Engine::positions() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<PositionView> out;
  for (const auto& sp : core_.symbols) {
    const SymbolState& s = *sp;
    if (s.qty == 0 && s.realized == 0 && s.fees == 0) continue;
    PositionView p;
    p.symbol = s.name;
    p.quantity = s.qty;
    p.cost = s.cost;
    p.avg_entry_price =
        s.qty == 0 ? 0
                   : static_cast<i64>(static_cast<i128>(s.cost) * kScale / abs64(s.qty));
    p.realized_pnl = s.realized;
    p.unrealized_pnl = s.unrealized;
    p.fees = s.fees;
    p.last_price = s.last;
    p.bid = s.bid;
    p.ask = s.ask;
    out.push_back(std::move(p));
  }
  return out;
}

AccountView Engine::account() const {
  std::lock_guard<std::mutex> lock(mutex_);
  AccountView a;
  a.starting_equity = core_.config.starting_equity;
  a.equity = clamp_cash(equity(core_));
  a.realized_pnl = core_.realized_total;
  a.unrealized_pnl = core_.unrealized_total;
  a.fees = core_.fees_total;
  a.gross_exposure = core_.gross_total;
  a.open_order_notional = core_.open_order_notional;
  a.peak_equity = core_.peak_equity;
  a.day_start_equity = core_.day_start_equity;
  a.open_orders = static_cast<i64>(core_.open.size());
  a.open_positions = core_.open_positions;
  return a;
}

std::vector<OpenOrderView> Engine::open_orders() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<OpenOrderView> out;
  for_each_resting(core_, [&](std::uint32_t sym, const RestingOrder& o) {
    out.push_back(OpenOrderView{o.order_id, o.client_id, core_.symbols[sym]->name, o.side,
                                o.price, o.quantity});
  });
  return out;
}

std::string Engine::snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  const Core& c = core_;
  Writer w;
  // what the records below take, give or take: one allocation instead of ~20 regrowths
  w.reserve(4096 + c.symbols.size() * 128 + c.open.size() * 128 + c.seen.size() * 80);
  w.raw(kMagic, sizeof kMagic);
  w.u64v(kSnapshotVersion);
  w.i64v(c.config.starting_equity);
  w.i64v(c.config.idempotency_capacity);
  write_limits(w, c.limits);
  w.u8(static_cast<std::uint8_t>(c.state));
  w.str(c.halt_reason);
  w.u64v(c.command_count);
  w.u64v(c.next_order_id);
  w.u64v(c.next_seq);
  for (u64 v : {c.counters.orders_submitted, c.counters.orders_filled, c.counters.orders_rejected,
                c.counters.duplicates, c.counters.fills, c.counters.cancels}) {
    w.u64v(v);
  }
  w.i64v(c.peak_equity);
  w.i64v(c.day_start_equity);
  w.i64v(c.throttle_second);
  w.i64v(c.throttle_count);
  w.u64v(c.symbols.size());
  for (const auto& sp : c.symbols) {
    const SymbolState& s = *sp;
    w.str(s.name);
    for (i64 v : {s.bid, s.ask, s.last, s.qty, s.cost, s.realized, s.fees}) w.i64v(v);
  }
  w.u64v(c.open.size());
  for_each_resting(c, [&](std::uint32_t sym, const RestingOrder& o) {
    w.u64v(sym);
    w.u64v(o.order_id);
    w.u64v(o.seq);
    w.str(o.client_id);
    w.u8(static_cast<std::uint8_t>(o.side));
    w.i64v(o.price);
    w.i64v(o.quantity);
    w.result(o.first);
  });
  // Idempotency cache, oldest first.
  w.u64v(c.seen.size());
  c.seen.for_each_oldest_first([&](std::string_view key, const OrderResult& res) {
    w.str(key);
    w.result(res);
  });
  w.u64v(snapshot_checksum(w.out(), kSnapshotVersion));
  return std::move(w.out());
}

std::uint64_t snapshot_checksum(std::string_view body, std::uint64_t version) {
  if (version == 1) return fnv1a(body.data(), body.size());
  require(version == kSnapshotVersion, "snapshot: unsupported version");
  return XXH3_64bits(body.data(), body.size());
}

void Engine::restore(std::string_view data) {
  require(data.size() >= sizeof kMagic + 16, "snapshot: truncated");
  require(std::memcmp(data.data(), kMagic, sizeof kMagic) == 0, "snapshot: not a HEAN snapshot");
  const std::string_view body = data.substr(0, data.size() - 8);
  Reader tail(data.substr(data.size() - 8));
  Reader r(body.substr(sizeof kMagic));
  const u64 version = r.u64v();  // versions 1 and 2 differ only in the checksum
  require(snapshot_checksum(body, version) == tail.u64v(), "snapshot: checksum mismatch");
  Core c;
  c.config.starting_equity = r.i64v();
  c.config.idempotency_capacity = r.i64v();
  validate_config(c.config);
  c.limits = read_limits(r);
  c.limits.validate();
  const auto state = r.u8();
  require(state <= static_cast<std::uint8_t>(EngineState::Halted), "snapshot: bad state");
  c.state = static_cast<EngineState>(state);
  c.halt_reason = r.str(kMaxReasonLength);
  c.command_count = r.u64v();
  c.next_order_id = r.u64v();
  c.next_seq = r.u64v();
  for (u64* p : {&c.counters.orders_submitted, &c.counters.orders_filled,
                 &c.counters.orders_rejected, &c.counters.duplicates, &c.counters.fills,
                 &c.counters.cancels}) {
    *p = r.u64v();
  }
  c.peak_equity = r.i64v();
  c.day_start_equity = r.i64v();
  c.throttle_second = r.i64v();
  c.throttle_count = r.i64v();
  const u64 nsym = r.count(10'000'000);
  for (u64 i = 0; i < nsym; ++i) {
    const std::uint32_t id = symbol_id(c, r.str());
    require(id == i, "snapshot: duplicate symbol (corrupt)");
    SymbolState& s = *c.symbols[id];
    for (i64* p : {&s.bid, &s.ask, &s.last, &s.qty, &s.cost, &s.realized, &s.fees}) *p = r.i64v();
    require(s.cost >= 0 && s.fees >= 0 && (s.qty != 0 || s.cost == 0),
            "snapshot: bad position (corrupt)");
    c.realized_total += s.realized;
    c.fees_total += s.fees;
    if (s.qty != 0) ++c.open_positions;
    refresh_symbol(c, s);
  }
  const u64 nopen = r.count(10'000'000);
  for (u64 i = 0; i < nopen; ++i) {
    const u64 sym = r.u64v();
    require(sym < nsym, "snapshot: bad symbol index (corrupt)");
    const u64 order_id = r.u64v();
    const u64 seq = r.u64v();
    std::string client_id = r.str();
    const auto side = r.u8();
    require(side <= 1, "snapshot: bad side (corrupt)");
    const i64 price = r.i64v();
    const i64 qty = r.i64v();
    require(price > 0 && price <= kMaxPrice && qty > 0 && qty <= kMaxQuantity,
            "snapshot: bad resting order (corrupt)");
    const OrderResult first = r.result();
    require(first.order_id == order_id && first.status == OrderStatus::Resting,
            "snapshot: bad resting order (corrupt)");
    require(c.open.count(client_id) == 0, "snapshot: duplicate resting order (corrupt)");
    const u64 saved_seq = c.next_seq;
    c.next_seq = seq;
    rest_order(c, static_cast<std::uint32_t>(sym), client_id, static_cast<Side>(side), price, qty,
               first);
    c.next_seq = saved_seq;
  }
  const u64 nseen = r.count(static_cast<u64>(c.config.idempotency_capacity));
  c.seen = decltype(c.seen)(static_cast<std::size_t>(c.config.idempotency_capacity));
  for (u64 i = 0; i < nseen; ++i) {
    const std::string key = r.str();
    const OrderResult res = r.result();
    const std::uint64_t h = decltype(c.seen)::hash(key);
    require(c.seen.find(key, h) == nullptr, "snapshot: duplicate client id (corrupt)");
    c.seen.insert(key, h, res);
  }
  require(r.pos() == body.size() - sizeof kMagic, "snapshot: trailing bytes (corrupt)");

  std::lock_guard<std::mutex> lock(mutex_);
  core_ = std::move(c);
}

}  // namespace hean
