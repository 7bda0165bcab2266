// `switchyard bench layer`: one MoE layer, forward and forward+backward, timed and checked, with the
// presets, routing and FLOP count of the peer script (../shared/bench/peer_moe_layer.py).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "core/config.h"

namespace switchyard::bench {

struct LayerBenchOptions {
  std::string preset = "mixtral_like";  ///< mixtral_like or deepseek_like
  int64_t tokens = 16384;
  std::string device = "cuda";
  int warmup = 5;
  int iters = 20;
  int64_t check_tokens = 512;  ///< 0 = no correctness check
  /// false: gradients accumulate into .grad across iterations, as the peer script's loop does;
  /// true: they are reset before each iteration, as a training step (zero_grad) does.
  bool reset_grads = false;
  /// Non-empty: after timing, profile `profile_iters` forward+backward iterations (Kineto: host ops
  /// and, on CUDA, every kernel) and write the Chrome trace (chrome://tracing, Perfetto) to this file.
  std::string profile_path;
  int profile_iters = 3;
};

/// Prints one JSON line: fwd_ms, fwdbwd_ms, fwd_tflops, fwdbwd_tflops, peak_mem_gib (CUDA), and the
/// check: the largest relative L2 error of the output and gradients (input and every parameter) in
/// the dtype timed (bf16 on CUDA, fp32 on the CPU) against a wider reference (fp32, fp64) on fresh
/// random inputs. Throws when the check fails (> 1e-2 for bf16, > 1e-4 for fp32).
void run_layer_benchmark(const LayerBenchOptions& options);

/// The benchmark's check: the largest relative L2 error of the output and all gradients (input and
/// every parameter) of a `dtype` copy of the layer (the dtype the benchmark times) against a wider
/// reference (fp32 for bf16, fp64 for fp32) with the same weights, on `tokens` fresh random tokens
/// (seeded from the clock). Weights and inputs are `dtype` values in both, so routing decisions match
/// and the error is the arithmetic's.
double check_against_reference(const core::Config& config, const torch::Device& device, torch::Dtype dtype,
                               int64_t tokens);

}  // namespace switchyard::bench
