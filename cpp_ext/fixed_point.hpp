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

__extension__ typedef unsigned __int128 u128;

// Cash value of `qty` at `price`: floor(price * qty / 1e8). Both arguments are >= 0.
// The common case (product below 2^64) divides in 64 bits by a constant, which compiles
// to a multiply; int128 division is a library call and is kept for the rare large case.
inline i128 notional_wide(i64 price, i64 qty) noexcept {
  const u128 p = static_cast<u128>(static_cast<u64>(price)) * static_cast<u64>(qty);
  if ((p >> 64) == 0) return static_cast<i128>(static_cast<u64>(p) / kScale);
  return static_cast<i128>(p / kScale);
}

inline i64 notional(i64 price, i64 qty) noexcept {
  return static_cast<i64>(notional_wide(price, qty));
}

// Fee of one fill: ceil(price * qty * fee_rate / 1e16), i.e. the exact fee rounded up to
// the next 1e-8 USD (never undercharges). All arguments are >= 0.
inline i64 fee_for(i64 price, i64 qty, i64 fee_rate) noexcept {
  if (fee_rate == 0) return 0;
  const u128 n = static_cast<u128>(static_cast<u64>(price)) * static_cast<u64>(qty);
  const u64 s = static_cast<u64>(kScale);
  const u64 r = static_cast<u64>(fee_rate);  // <= 1e7 (validated)
  if ((n >> 64) == 0) {
    // n * r = c * 1e16 + (d * 1e8 + b * r) with n = a * 1e8 + b and a * r = c * 1e8 + d;
    // every step fits in 64 bits (a < 1.9e11, r <= 1e7, the tail < 1.1e16).
    const u64 a = static_cast<u64>(n) / s, b = static_cast<u64>(n) % s;
    const u64 ar = a * r;
    const u64 c = ar / s, d = ar % s;
    const u64 tail = d * s + b * r;
    return static_cast<i64>(c + (tail + s * s - 1) / (s * s));
  }
  const u128 num = n * r;
  const u128 den = static_cast<u128>(s) * s;
  return static_cast<i64>((num + den - 1) / den);
}

}  // namespace hean
