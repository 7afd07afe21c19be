// HEAN graph engine: per-symbol price series, time-aligned rolling return correlation,
// lead-lag estimation and leader detection across a set of symbols.
//
// Lead-lag sign convention: lead_lag(a, b, max_lag) returns lag k > 0 when A leads B by
// k steps, i.e. B's return at aligned step t + k correlates with A's return at step t.
#pragma once

#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace hean {

struct LeadLag {
  int lag = 0;          // > 0: A leads B by `lag` steps; < 0: B leads A
  double correlation = 0.0;  // correlation at that lag (NaN when undefined)
  std::size_t samples = 0;   // number of return pairs at that lag
};

struct LeaderScore {
  std::string symbol;
  double score = 0.0;  // sum of |correlation| over the symbols it leads
  int leads = 0;       // how many symbols it leads
};

class PriceGraph {
 public:
  // Each symbol keeps its most recent `capacity` observations.
  explicit PriceGraph(std::size_t capacity = 4096);

  // Timestamps per symbol must not decrease; an equal timestamp replaces the last price.
  void add_price(const std::string& symbol, std::int64_t ts, double price);
  void add_prices(const std::string& symbol, const std::vector<std::int64_t>& ts,
                  const std::vector<double>& prices);

  std::vector<std::string> symbols() const;
  std::size_t length(const std::string& symbol) const;

  // Log returns of a and b between consecutive timestamps both series have.
  std::pair<std::vector<double>, std::vector<double>> aligned_returns(const std::string& a,
                                                                      const std::string& b) const;
  // Pearson correlation of the last `window` aligned returns (0 = all); NaN if undefined.
  double correlation(const std::string& a, const std::string& b, std::size_t window = 0) const;
  // Lag in [-max_lag, max_lag] with the largest |correlation| (ties: smallest |lag|).
  LeadLag lead_lag(const std::string& a, const std::string& b, int max_lag,
                   std::size_t window = 0) const;
  // Every symbol ranked by how strongly it leads the others (pairs with
  // |correlation| < min_abs_corr are ignored); best leader first.
  std::vector<LeaderScore> leaders(const std::vector<std::string>& symbols, int max_lag,
                                   double min_abs_corr = 0.1, std::size_t window = 0) const;

 private:
  struct Series {
    std::deque<std::int64_t> ts;
    std::deque<double> price;
  };
  const Series& series(const std::string& symbol) const;
  LeadLag lead_lag_locked(const std::string& a, const std::string& b, int max_lag,
                          std::size_t window) const;
  std::pair<std::vector<double>, std::vector<double>> aligned_locked(const std::string& a,
                                                                     const std::string& b) const;

  std::size_t capacity_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, Series> series_;
  std::vector<std::string> order_;  // symbols in first-seen order
};

// Pearson correlation of equally long sequences; NaN when n < 3 or a variance is zero.
double pearson(const double* x, const double* y, std::size_t n);

}  // namespace hean
