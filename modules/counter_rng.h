// Counter-based random numbers: a draw is a hash of (key, token counter, column), so the routing
// noise of a token is the same whichever rank, micro-batch or position in a batch it lands in, and
// needs no generator state. ATen integer ops only (every product stays below 2^63).
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace switchyard::modules {

/// A stream key from a seed and up to two stream indices (e.g. layer and purpose); host side.
uint64_t counter_key(uint64_t seed, uint64_t a, uint64_t b = 0);

/// Uniform draws in [0, 1), float64 with 53 random bits: [n, columns] for counters [n] int64 (>= 0)
/// under `key`. Same device as `counters`.
torch::Tensor counter_uniform(uint64_t key, const torch::Tensor& counters, int64_t columns);

/// Standard normal draws (Box-Muller over two counter_uniform draws), float32 [n, columns].
torch::Tensor counter_normal(uint64_t key, const torch::Tensor& counters, int64_t columns);

}  // namespace switchyard::modules
