// HEAN graph engine: implementation of graph.hpp.
#include "graph.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "engine.hpp"

namespace hean {

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
}

double pearson(const double* x, const double* y, std::size_t n) {
  if (n < 3) return kNaN;
  double mx = 0, my = 0;
  for (std::size_t i = 0; i < n; ++i) {
    mx += x[i];
    my += y[i];
  }
  mx /= static_cast<double>(n);
  my /= static_cast<double>(n);
  double sxy = 0, sxx = 0, syy = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double dx = x[i] - mx, dy = y[i] - my;
    sxy += dx * dy;
    sxx += dx * dx;
    syy += dy * dy;
  }
  if (sxx <= 0 || syy <= 0) return kNaN;
  return sxy / std::sqrt(sxx * syy);
}

PriceGraph::PriceGraph(std::size_t capacity) : capacity_(capacity) {
  if (capacity < 3 || capacity > 10'000'000) {
    throw InvalidInput("capacity: must be between 3 and 10000000");
  }
}

void PriceGraph::add_price(const std::string& symbol, std::int64_t ts, double price) {
  add_prices(symbol, {ts}, {price});
}

void PriceGraph::add_prices(const std::string& symbol, const std::vector<std::int64_t>& ts,
                            const std::vector<double>& prices) {
  if (symbol.empty() || symbol.size() > 64) throw InvalidInput("symbol: must be 1..64 bytes");
  if (ts.size() != prices.size()) throw InvalidInput("prices: length differs from timestamps");
  for (std::size_t i = 0; i < ts.size(); ++i) {
    if (!std::isfinite(prices[i]) || prices[i] <= 0) {
      throw InvalidInput("price: must be finite and > 0");
    }
    if (i > 0 && ts[i] < ts[i - 1]) throw InvalidInput("ts: must not decrease");
  }
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = series_.find(symbol);
  if (!ts.empty() && it != series_.end() && !it->second.ts.empty() &&
      ts.front() < it->second.ts.back()) {
    throw InvalidInput("ts: must not decrease");
  }
  if (it == series_.end()) {
    if (ts.empty()) return;
    it = series_.emplace(symbol, Series{}).first;
    order_.push_back(symbol);
  }
  Series& s = it->second;
  for (std::size_t i = 0; i < ts.size(); ++i) {
    if (!s.ts.empty() && s.ts.back() == ts[i]) {
      s.price.back() = prices[i];
      continue;
    }
    s.ts.push_back(ts[i]);
    s.price.push_back(prices[i]);
    if (s.ts.size() > capacity_) {
      s.ts.pop_front();
      s.price.pop_front();
    }
  }
}

std::vector<std::string> PriceGraph::symbols() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return order_;
}

std::size_t PriceGraph::length(const std::string& symbol) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = series_.find(symbol);
  return it == series_.end() ? 0 : it->second.ts.size();
}

const PriceGraph::Series& PriceGraph::series(const std::string& symbol) const {
  auto it = series_.find(symbol);
  if (it == series_.end()) throw InvalidInput("symbol: unknown symbol '" + symbol + "'");
  return it->second;
}

std::pair<std::vector<double>, std::vector<double>> PriceGraph::aligned_locked(
    const std::string& a, const std::string& b) const {
  const Series& sa = series(a);
  const Series& sb = series(b);
  std::vector<double> pa, pb;
  std::size_t i = 0, j = 0;
  while (i < sa.ts.size() && j < sb.ts.size()) {
    if (sa.ts[i] < sb.ts[j]) {
      ++i;
    } else if (sb.ts[j] < sa.ts[i]) {
      ++j;
    } else {
      pa.push_back(sa.price[i++]);
      pb.push_back(sb.price[j++]);
    }
  }
  std::vector<double> ra, rb;
  for (std::size_t k = 1; k < pa.size(); ++k) {
    ra.push_back(std::log(pa[k] / pa[k - 1]));
    rb.push_back(std::log(pb[k] / pb[k - 1]));
  }
  return {std::move(ra), std::move(rb)};
}

std::pair<std::vector<double>, std::vector<double>> PriceGraph::aligned_returns(
    const std::string& a, const std::string& b) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return aligned_locked(a, b);
}

double PriceGraph::correlation(const std::string& a, const std::string& b,
                               std::size_t window) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto [ra, rb] = aligned_locked(a, b);
  const std::size_t n = ra.size();
  const std::size_t w = (window == 0 || window > n) ? n : window;
  return pearson(ra.data() + (n - w), rb.data() + (n - w), w);
}

LeadLag PriceGraph::lead_lag_locked(const std::string& a, const std::string& b, int max_lag,
                                    std::size_t window) const {
  if (max_lag < 0 || max_lag > 100'000) throw InvalidInput("max_lag: must be 0..100000");
  auto [ra, rb] = aligned_locked(a, b);
  std::size_t n = ra.size();
  if (window != 0 && window < n) {
    ra.erase(ra.begin(), ra.begin() + static_cast<std::ptrdiff_t>(n - window));
    rb.erase(rb.begin(), rb.begin() + static_cast<std::ptrdiff_t>(n - window));
    n = window;
  }
  LeadLag best;
  best.correlation = kNaN;
  // Visit lags by increasing |k| so ties keep the smallest lag.
  for (int step = 0; step <= 2 * max_lag; ++step) {
    const int k = (step % 2 == 0) ? step / 2 : -(step + 1) / 2;
    const std::size_t shift = static_cast<std::size_t>(k < 0 ? -k : k);
    if (shift >= n) continue;
    const std::size_t m = n - shift;
    // k > 0: pair A[t] with B[t + k]; k < 0: pair A[t + |k|] with B[t].
    const double* x = k >= 0 ? ra.data() : ra.data() + shift;
    const double* y = k >= 0 ? rb.data() + shift : rb.data();
    const double c = pearson(x, y, m);
    if (std::isnan(c)) continue;
    if (std::isnan(best.correlation) || std::fabs(c) > std::fabs(best.correlation)) {
      best.lag = k;
      best.correlation = c;
      best.samples = m;
    }
  }
  return best;
}

LeadLag PriceGraph::lead_lag(const std::string& a, const std::string& b, int max_lag,
                             std::size_t window) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return lead_lag_locked(a, b, max_lag, window);
}

std::vector<LeaderScore> PriceGraph::leaders(const std::vector<std::string>& symbols,
                                             int max_lag, double min_abs_corr,
                                             std::size_t window) const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<LeaderScore> scores;
  for (const auto& s : symbols) {
    series(s);  // throws for unknown symbols
    scores.push_back(LeaderScore{s, 0.0, 0});
  }
  for (std::size_t i = 0; i < symbols.size(); ++i) {
    for (std::size_t j = i + 1; j < symbols.size(); ++j) {
      const LeadLag ll = lead_lag_locked(symbols[i], symbols[j], max_lag, window);
      if (std::isnan(ll.correlation) || std::fabs(ll.correlation) < min_abs_corr) continue;
      if (ll.lag > 0) {
        scores[i].score += std::fabs(ll.correlation);
        ++scores[i].leads;
      } else if (ll.lag < 0) {
        scores[j].score += std::fabs(ll.correlation);
        ++scores[j].leads;
      }
    }
  }
  std::stable_sort(scores.begin(), scores.end(), [](const LeaderScore& x, const LeaderScore& y) {
    return x.score > y.score;
  });
  return scores;
}

}  // namespace hean
