// C++ tests of the HEAN core without Python (run by ctest, also under ASan/UBSan).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine.hpp"
#include "graph.hpp"

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
  CHECK(e.kill_switch("test"));
  CHECK(e.state() == EngineState::Halted);
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

}  // namespace

int main() {
  test_fixed_point();
  test_positions_and_flip();
  test_rejects_and_kill_switch();
  test_snapshot_roundtrip_and_corruption();
  test_bounded_idempotency_and_threads();
  test_lead_lag();
  if (g_failures != 0) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return EXIT_FAILURE;
  }
  std::printf("all C++ engine tests passed\n");
  return EXIT_SUCCESS;
}
