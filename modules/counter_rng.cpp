// Counter-based draws: lowbias32 (Wellons' hash prospector) chained over the inputs' 32-bit words.
#include "modules/counter_rng.h"

#include <cmath>

namespace switchyard::modules {
namespace {

constexpr int64_t kLow32 = 0xffffffffLL;

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/// lowbias32 on int64 tensors holding values in [0, 2^32): both multipliers are below 2^31, so every
/// product fits in int64.
torch::Tensor mix32(torch::Tensor x) {
  x = x.bitwise_xor(x.bitwise_right_shift(16));
  x = x.mul(int64_t{0x21f0aaad}).bitwise_and(kLow32);
  x = x.bitwise_xor(x.bitwise_right_shift(15));
  x = x.mul(int64_t{0x735a2d97}).bitwise_and(kLow32);
  return x.bitwise_xor(x.bitwise_right_shift(15));
}

/// 32 random bits [n, columns] for (key, counter, column, lane).
torch::Tensor bits32(uint64_t key, const torch::Tensor& counters, int64_t columns, int64_t lane) {
  const auto c = counters.to(torch::kInt64).reshape({-1, 1});
  const auto col = torch::arange(columns, c.options()).reshape({1, -1}) * 4 + lane;
  const auto lo = static_cast<int64_t>(key & 0xffffffffULL), hi = static_cast<int64_t>(key >> 32);
  auto h = mix32(col.bitwise_xor(lo));
  h = mix32(h.bitwise_xor(c.bitwise_and(kLow32)));
  h = mix32(h.bitwise_xor(c.bitwise_right_shift(32).bitwise_and(kLow32)));
  return mix32(h.bitwise_xor(hi));
}

}  // namespace

uint64_t counter_key(uint64_t seed, uint64_t a, uint64_t b) {
  return splitmix64(splitmix64(splitmix64(seed) ^ a) ^ b);
}

torch::Tensor counter_uniform(uint64_t key, const torch::Tensor& counters, int64_t columns) {
  // 21 bits of one draw and 32 of another: 53 bits, every double in [0, 1) on a 2^-53 grid.
  const auto high = bits32(key, counters, columns, 0).bitwise_right_shift(11);
  const auto low = bits32(key, counters, columns, 1);
  return (high.to(torch::kFloat64) * 4294967296.0 + low.to(torch::kFloat64)) * std::ldexp(1.0, -53);
}

torch::Tensor counter_normal(uint64_t key, const torch::Tensor& counters, int64_t columns) {
  const auto u1 = bits32(key, counters, columns, 2).to(torch::kFloat64).add(1.0).mul(std::ldexp(1.0, -32));  // (0, 1]
  const auto u2 = bits32(key, counters, columns, 3).to(torch::kFloat64).mul(std::ldexp(1.0, -32));
  return (u1.log().mul(-2.0).sqrt() * (u2 * (2.0 * M_PI)).cos()).to(torch::kFloat32);
}

}  // namespace switchyard::modules
