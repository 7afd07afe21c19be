// C++ tests of the HEAN core without Python (run by ctest, also under ASan/UBSan).
#include <cmath>
#include <cstring>
#include <memory>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine.hpp"
#include "graph.hpp"
#include "order_json.hpp"
#include "wire.hpp"

using namespace hean;

namespace {

int g_failures = 0;

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                        \
    }                                                                      \
  } while (0)

constexpr i64 S = kScale;

OrderRequest market(const std::string& id, const char* sym, Side side, i64 qty) {
  OrderRequest r;
  r.client_id = id;
  r.symbol = sym;
  r.side = side;
  r.type = OrderType::Market;
  r.quantity = qty;
  return r;
}

OrderRequest limit(const std::string& id, const char* sym, Side side, i64 qty, i64 price,
                   TimeInForce tif = TimeInForce::GTC) {
  OrderRequest r = market(id, sym, side, qty);
  r.type = OrderType::Limit;
  r.price = price;
  r.tif = tif;
  return r;
}

RiskLimits loose() {
  RiskLimits l;
  l.max_orders_per_second = 0;
  l.max_leverage = 1000 * S;
  l.max_trade_risk_pct = 100 * S;
  l.stop_distance_pct = 1;
  l.max_notional = 1'000'000 * S;
  return l;
}

// The fast 64-bit paths of notional() and fee_for() agree with plain int128 arithmetic.
void test_fixed_point() {
  std::mt19937_64 rng(42);
  for (int i = 0; i < 200'000; ++i) {
    const int shape = i % 3;
    const i64 price = static_cast<i64>(rng() % static_cast<u64>(shape == 0 ? 1000 : kMaxPrice)) + 1;
    const i64 qty = static_cast<i64>(rng() % static_cast<u64>(shape == 1 ? 1000 : kMaxQuantity)) + 1;
    const i64 rate = static_cast<i64>(rng() % static_cast<u64>(kScale / 10 + 1));
    const i128 product = static_cast<i128>(price) * qty;
    CHECK(notional_wide(price, qty) == product / kScale);
    const i128 den = static_cast<i128>(kScale) * kScale;
    if (product / kScale <= kMaxCash) {
      CHECK(fee_for(price, qty, rate) == static_cast<i64>((product * rate + den - 1) / den));
    }
  }
  CHECK(fee_for(1, 1, 1) == 1);
  CHECK(fee_for(100 * S, S, 100'000) == 10'000'000);
}

void test_positions_and_flip() {
  Engine e;
  e.set_risk_limits(loose());
  e.start();
  e.update_market({"BTC", 100 * S, 100 * S, 100 * S});
  const std::string a = "a", b = "b", c = "c";
  CHECK(e.submit(market(a, "BTC", Side::Buy, 3 * S)).status == OrderStatus::Filled);
  e.update_market({"BTC", 110 * S, 110 * S, 110 * S});
  // Sell 5: close 3 long at 110 (+30), open 2 short at 110.
  const OrderResult r = e.submit(market(b, "BTC", Side::Sell, 5 * S));
  CHECK(r.status == OrderStatus::Filled);
  CHECK(r.fill_price == 110 * S);
  auto pos = e.positions();
  CHECK(pos.size() == 1);
  CHECK(pos[0].quantity == -2 * S);
  CHECK(pos[0].cost == 220 * S);
  CHECK(pos[0].realized_pnl == 30 * S);
  // Fees 0.1%: 300 * 0.001 + 550 * 0.001.
  CHECK(pos[0].fees == 85 * S / 100);
  e.update_market({"BTC", 100 * S, 100 * S, 100 * S});
  CHECK(e.positions()[0].unrealized_pnl == 20 * S);
  CHECK(e.account().equity == 10'000 * S + 30 * S + 20 * S - 85 * S / 100);
  // Duplicate returns the first outcome and never fills twice.
  const OrderResult d = e.submit(market(c, "BTC", Side::Buy, 2 * S));
  const OrderResult d2 = e.submit(market(c, "BTC", Side::Buy, 2 * S));
  CHECK(d2.duplicate && d2.order_id == d.order_id && d2.filled_qty == d.filled_qty);
  CHECK(e.positions()[0].quantity == 0);
}

void test_rejects_and_kill_switch() {
  Engine e;
  const std::string id = "x";
  CHECK(e.submit(market(id, "ETH", Side::Buy, S)).reason == RejectReason::EngineStopped);
  e.start();
  const std::string id2 = "y";
  CHECK(e.submit(market(id2, "ETH", Side::Buy, S)).reason == RejectReason::NoMarketData);
  e.update_market({"ETH", 10 * S, 10 * S, 10 * S});
  const std::string id3 = "z";
  CHECK(e.submit(market(id3, "ETH", Side::Buy, S / 10)).reason == RejectReason::MinNotional);
  const std::string id4 = "w";
  CHECK(e.submit(limit(id4, "ETH", Side::Buy, S, 5 * S)).status == OrderStatus::Resting);
  const std::string reason(bounds::kMaxReasonBytes, 'r');  // the longest kept whole
  CHECK(e.kill_switch(reason + "cut"));
  CHECK(e.state() == EngineState::Halted);
  CHECK(e.halt_reason() == reason);
  CHECK(e.open_orders().empty());
  const std::string id5 = "v";
  CHECK(e.submit(market(id5, "ETH", Side::Buy, S)).reason == RejectReason::EngineHalted);
  CHECK(!e.start());
  CHECK(e.reset_kill_switch());
  CHECK(e.state() == EngineState::Stopped);
  bool threw = false;
  RiskLimits bad;
  bad.max_leverage = 0;
  try {
    e.set_risk_limits(bad);
  } catch (const InvalidInput&) {
    threw = true;
  }
  CHECK(threw);
}

void test_snapshot_roundtrip_and_corruption() {
  Engine e;
  e.set_risk_limits(loose());
  e.start();
  e.update_market({"BTC", 99 * S, 101 * S, 100 * S});
  std::vector<std::string> ids;
  for (int i = 0; i < 50; ++i) ids.push_back("o" + std::to_string(i));
  for (int i = 0; i < 30; ++i) e.submit(market(ids[i], "BTC", i % 3 ? Side::Buy : Side::Sell, S));
  for (int i = 30; i < 40; ++i) e.submit(limit(ids[i], "BTC", Side::Buy, S, (90 + i % 5) * S));
  const std::string snap = e.snapshot();
  Engine f;
  f.restore(snap);
  CHECK(f.snapshot() == snap);
  CHECK(f.open_orders().size() == 10);
  // Both engines behave identically afterwards.
  const auto fe = e.update_market({"BTC", 91 * S, 92 * S, 91 * S});
  const auto ff = f.update_market({"BTC", 91 * S, 92 * S, 91 * S});
  CHECK(fe.size() == ff.size() && !fe.empty());
  CHECK(e.snapshot() == f.snapshot());
  for (std::size_t cut : {std::size_t{0}, std::size_t{10}, snap.size() / 2, snap.size() - 1}) {
    bool threw = false;
    try {
      f.restore(std::string_view(snap).substr(0, cut));
    } catch (const InvalidInput&) {
      threw = true;
    }
    CHECK(threw);
  }
  std::string flipped = snap;
  flipped[flipped.size() / 2] ^= 0x5A;
  bool threw = false;
  try {
    f.restore(flipped);
  } catch (const InvalidInput&) {
    threw = true;
  }
  CHECK(threw);
  // Format 1 (an FNV-1a checksum, the same bytes otherwise) still restores.
  std::string old = snap.substr(0, snap.size() - 8);
  old[8] = 1;
  const std::uint64_t sum = snapshot_checksum(old, 1);
  CHECK(sum != snapshot_checksum(old, 2));
  for (int i = 0; i < 8; ++i) old.push_back(static_cast<char>((sum >> (8 * i)) & 0xFF));
  Engine g;
  g.restore(old);
  CHECK(g.snapshot() == snap);
}

void test_bounded_idempotency_and_threads() {
  EngineConfig cfg;
  cfg.idempotency_capacity = 1000;
  Engine e(cfg);
  RiskLimits l = loose();
  l.fee_rate = 0;
  e.set_risk_limits(l);
  e.start();
  e.update_market({"BTC", 100 * S, 100 * S, 100 * S});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&e, t] {
      std::vector<std::string> ids;
      for (int i = 0; i < 5000; ++i) ids.push_back("t" + std::to_string(t) + "-" + std::to_string(i));
      std::vector<OrderRequest> batch;
      for (int i = 0; i < 5000; ++i) {
        batch.push_back(market(ids[i], "BTC", i % 2 ? Side::Sell : Side::Buy, S / 10));
      }
      for (int k = 0; k < 5; ++k) {
        std::vector<OrderRequest> part(batch.begin() + k * 1000, batch.begin() + (k + 1) * 1000);
        e.submit_batch(part);
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(e.counters().orders_filled == 20'000);
  CHECK(e.positions().empty());  // flat, no PnL, no fees
  CHECK(e.account().open_positions == 0);
  CHECK(e.snapshot().size() < 200'000);  // only the last 1000 outcomes are remembered
}

void test_lead_lag() {
  PriceGraph g(2048);
  std::mt19937_64 rng(7);
  std::normal_distribution<double> noise(0.0, 0.01);
  std::vector<double> ra(1000);
  for (auto& x : ra) x = noise(rng);
  const int lag = 3;
  double pa = 100, pb = 100;
  for (int t = 0; t < 1000; ++t) {
    pa *= std::exp(ra[t]);
    pb *= std::exp((t >= lag ? ra[t - lag] : 0.0) + noise(rng) * 0.3);
    g.add_price("A", t, pa);
    g.add_price("B", t, pb);
  }
  const LeadLag ab = g.lead_lag("A", "B", 10);
  CHECK(ab.lag == lag);
  CHECK(ab.correlation > 0.8);
  CHECK(g.lead_lag("B", "A", 10).lag == -lag);
  const auto ranked = g.leaders({"B", "A"}, 10);
  CHECK(ranked.front().symbol == "A");
  CHECK(std::fabs(g.correlation("A", "A") - 1.0) < 1e-12);
}

// Plain decimal text reads as fixed-point units exactly where hean.engine.text_units's integer
// path does; the rest is refused (the Python path decides it).
void test_plain_decimal_units() {
  const struct {
    const char* text;
    bool ok;
    i64 units;
  } cases[] = {
      {"0", true, 0},
      {"1", true, S},
      {"0.001", true, S / 1000},
      {"50000.5", true, 50'000 * S + S / 2},
      {"0.00000001", true, 1},
      {"007.10", true, 7 * S + S / 10},
      {"92233720368.54775807", true, INT64_MAX},
      {"92233720368.54775808", false, 0},
      {"9999999999999999999", false, 0},   // 19 digits, beyond int64 once scaled
      {"99999999999999999999", false, 0},  // 20 digits
      {"0.000000001", false, 0},           // 9 decimal places
      {"", false, 0},
      {".5", false, 0},
      {"1.", false, 0},
      {"-1", false, 0},
      {"+1", false, 0},
      {" 1", false, 0},
      {"1e3", false, 0},
      {"1.2.3", false, 0},
      {"1,5", false, 0},
  };
  for (const auto& c : cases) {
    i64 units = -7;
    const bool ok = plain_decimal_units(c.text, units);
    CHECK(ok == c.ok);
    if (ok && c.ok) CHECK(units == c.units);
  }
}

std::string reference_units_text(i64 units) {  // by long division on a wider type
  const i128 v = units;
  const i128 mag = v < 0 ? -v : v;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s%llu.%08llu", v < 0 ? "-" : "",
                static_cast<unsigned long long>(mag / S), static_cast<unsigned long long>(mag % S));
  return buf;
}

void test_wire_text() {
  std::mt19937_64 rng(5);
  std::vector<i64> values = {0, 1, -1, S - 1, S, -S - 1, INT64_MAX, INT64_MIN, INT64_MIN + 1};
  for (int i = 0; i < 20'000; ++i) values.push_back(static_cast<i64>(rng()));
  for (const i64 v : values) {
    std::string out = "x";
    append_units_text(out, v);
    CHECK(out == "x" + reference_units_text(v));
  }
  static constexpr char kRaw[] = "a\"b\\c\n\t\x01\x1f\x7f/\xc3\xa9";
  std::string text;
  append_json_string(text, std::string_view(kRaw, sizeof kRaw - 1));
  CHECK(text == "\"a\\\"b\\\\c\\n\\t\\u0001\\u001f\x7f/\xc3\xa9\"");
  std::string empty;
  append_json_string(empty, "");
  CHECK(empty == "\"\"");
}

// A batch's results as JSON: every field, a reject and a duplicate.
void test_result_json() {
  Engine e;
  RiskLimits l = loose();
  e.set_risk_limits(l);
  e.start();
  e.update_market(MarketUpdate{"BTC", 100 * S, 101 * S, 100 * S});
  const std::string id = "q\"1";
  const BatchOutcome b = e.submit_batch({market(id, "BTC", Side::Buy, S / 2),
                                         market("r", "ETH", Side::Buy, S),
                                         market(id, "BTC", Side::Buy, S / 2)});
  std::string out;
  append_result_json(out, b, 0, id);
  CHECK(out ==
        "{\"client_order_id\":\"q\\\"1\",\"order_id\":1,\"status\":\"FILLED\","
        "\"reject_reason\":null,\"filled_quantity\":\"0.50000000\",\"fill_price\":"
        "\"101.00000000\",\"fee\":\"0.05050000\",\"duplicate\":false}");
  out.clear();
  append_result_json(out, b, 1, "r");
  CHECK(out ==
        "{\"client_order_id\":\"r\",\"order_id\":0,\"status\":\"REJECTED\","
        "\"reject_reason\":\"NO_MARKET_DATA\",\"filled_quantity\":\"0.00000000\","
        "\"fill_price\":null,\"fee\":\"0.00000000\",\"duplicate\":false}");
  out.clear();
  append_result_json(out, b, 2, id);
  CHECK(out.find("\"duplicate\":true}") != std::string::npos);
  CHECK(out.find("\"order_id\":1,") != std::string::npos);
}

// The log's binary form reads back to the same orders; anything cut short or altered is
// refused with InvalidInput, never read out of bounds (this runs under ASan too).
void test_orders_binary() {
  const std::string id_a = "a", long_id(64, 'x'), id_c = "\xc3\xa9\"";  // views below point here
  const std::vector<OrderRequest> orders = {
      market(id_a, "BTC", Side::Buy, S / 1000),
      limit(long_id, "ETHUSDT", Side::Sell, 3 * S, 49'000 * S + 1, TimeInForce::IOC),
      market(id_c, "B", Side::Sell, INT64_MAX)};
  std::string data;
  append_orders_binary(data, orders);
  const std::vector<OrderRequest> back = read_orders_binary(data);
  CHECK(back.size() == orders.size());
  for (std::size_t i = 0; i < back.size() && i < orders.size(); ++i) {
    CHECK(back[i].client_id == orders[i].client_id);
    CHECK(back[i].symbol == orders[i].symbol);
    CHECK(back[i].side == orders[i].side && back[i].type == orders[i].type);
    CHECK(back[i].tif == orders[i].tif);
    CHECK(back[i].quantity == orders[i].quantity && back[i].price == orders[i].price);
  }
  std::string empty;
  append_orders_binary(empty, {});
  CHECK(read_orders_binary(empty).empty());
  auto refused = [](std::string_view bytes) {
    try {
      read_orders_binary(bytes);
    } catch (const InvalidInput&) {
      return true;
    }
    return false;
  };
  for (std::size_t cut = 0; cut < data.size(); ++cut) CHECK(refused(std::string_view(data).substr(0, cut)));
  CHECK(refused(data + "x"));
  std::mt19937 rng(3);
  for (int i = 0; i < 2000; ++i) {  // flipped bytes: read or refused, never out of bounds
    std::string bad = data;
    bad[rng() % bad.size()] = static_cast<char>(rng());
    try {
      read_orders_binary(bad);
    } catch (const InvalidInput&) {
    }
  }
}

// `text` in a heap block of exactly its size: the sanitizers see a read past its end.
template <typename F>
void with_exact_copy(std::string_view text, F&& f) {
  std::unique_ptr<char[]> copy(new char[text.size()]);
  if (!text.empty()) std::memcpy(copy.get(), text.data(), text.size());
  f(std::string_view(copy.get(), text.size()));
}

void test_order_json() {
  const std::string orders =
      R"([{"client_order_id":"c-1","symbol":"BTCUSDT","side":"BUY","quantity":"0.001"},)"
      R"( {"side":"SELL","order_type":"LIMIT","price":"49000.5","time_in_force":"IOC",)"
      R"("quantity":"2","symbol":"ETH","client_order_id":"c-2","x":null}])";
  std::vector<OrderRequest> read;
  CHECK(read_orders_json(orders, read));
  CHECK(read.size() == 2);
  if (read.size() == 2) {
    CHECK(read[0].client_id == "c-1" && read[0].symbol == "BTCUSDT" && read[0].side == Side::Buy);
    CHECK(read[0].type == OrderType::Market && read[0].quantity == S / 1000 && read[0].price == 0);
    CHECK(read[1].client_id == "c-2" && read[1].side == Side::Sell && read[1].type == OrderType::Limit);
    CHECK(read[1].tif == TimeInForce::IOC && read[1].price == 49'000 * S + S / 2);
  }
  CHECK(!read_orders_json(R"([{"client_order_id":"c","symbol":"S","side":"BUY","quantity":1}])", read));
  CHECK(!read_orders_json(R"([{"client_order_id":"c","symbol":"S","side":"B\u0055Y","quantity":"1"}])", read));

  const std::string body = R"([[[{"request_id":"r-1","command":"submit_orders","params":{"orders":)" +
                           orders + R"(},"reply_to":null,"received_at_ms":1.5},)" +
                           R"({"command":"stop","params":{}}]],{},{"chain":null}])";
  std::string stripped;
  std::vector<OrderListCut> cuts;
  CHECK(cut_order_lists(body, stripped, cuts));
  CHECK(cuts.size() == 1);
  if (cuts.size() == 1) {
    CHECK(cuts[0].envelope == 0);
    CHECK(body.substr(cuts[0].begin, cuts[0].end - cuts[0].begin) == orders);
  }
  CHECK(stripped.find("\"orders\":null}") != std::string::npos);
  CHECK(stripped.size() == body.size() - orders.size() + 4);
  // every shorter prefix is refused, and flipped bytes are read or refused, never past the end
  for (const std::string* text : {&orders, &body}) {
    for (std::size_t cut = 0; cut < text->size(); ++cut) {
      with_exact_copy(std::string_view(*text).substr(0, cut), [&](std::string_view prefix) {
        CHECK(!read_orders_json(prefix, read));
        CHECK(!cut_order_lists(prefix, stripped, cuts));
      });
    }
    std::mt19937 rng(7);
    for (int i = 0; i < 3000; ++i) {
      std::string bad = *text;
      bad[rng() % bad.size()] = "\"\\{}[],:0u \x01"[rng() % 12];
      with_exact_copy(bad, [&](std::string_view view) {
        read_orders_json(view, read);
        cut_order_lists(view, stripped, cuts);
      });
    }
  }
  std::string deep = R"([[[{"command":"submit_orders","params":{"orders":[)";
  deep += std::string(200, '[') + std::string(200, ']') + "]}}]],{},{}]";
  CHECK(!cut_order_lists(deep, stripped, cuts));
}

}  // namespace

int main() {
  test_fixed_point();
  test_positions_and_flip();
  test_rejects_and_kill_switch();
  test_snapshot_roundtrip_and_corruption();
  test_bounded_idempotency_and_threads();
  test_lead_lag();
  test_plain_decimal_units();
  test_wire_text();
  test_result_json();
  test_orders_binary();
  test_order_json();
  if (g_failures != 0) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return EXIT_FAILURE;
  }
  std::printf("all C++ engine tests passed\n");
  return EXIT_SUCCESS;
}
