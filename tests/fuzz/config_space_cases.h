// Random configurations for the config-space differential tester: one seeded draw per case over
// routers, top-k, experts, shared and null experts, capacity, EP and DP sizes, dispatchers, emulated
// nodes, placement plans, overlap chunks, micro-batches, token counts and routing losses.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/config.h"

namespace switchyard::fuzz {

/// One drawn case. Every rank draws the same case from (seed, index).
struct Case {
  uint64_t seed = 0;
  int64_t index = 0;
  int world = 1;                          ///< ranks taking part (the first `world` of the job)
  core::Config config;                    ///< the distributed run's config (CPU, fp32)
  std::vector<std::vector<int64_t>> plan; ///< per MoE layer, expert -> EP rank; empty: contiguous
  std::vector<int64_t> layer_tokens;      ///< layer level: tokens on each rank (0 and 1 included)
  int64_t reference_micro_batch = 1;      ///< the single-process run's micro_batch

  /// Whether the single-process model must give the same losses and gradients (the promise matrix
  /// of docs/parallel.md): every case but the locality loss over an EP group spanning nodes.
  bool invariant() const;
  /// Whether nothing in the model depends on how a step splits into micro-batches (then the
  /// reference may use another micro_batch).
  bool micro_batch_invariant() const;
  /// Whether each token's routing depends on that token alone (no capacity, no expert choice).
  bool per_token_routing() const;
  /// One line: the case's seed and index, and its config as `--set key=value` overrides.
  std::string describe() const;
};

/// Draws case `index` of `seed` for a job of `max_world` ranks.
Case draw_case(uint64_t seed, int64_t index, int max_world);

}  // namespace switchyard::fuzz
