// `switchyard bench layer`: one MoE layer, forward and forward+backward, timed and checked, with the
// presets, routing and FLOP count of the peer script (../shared/bench/peer_moe_layer.py).
#pragma once

#include <cstdint>
#include <string>

namespace switchyard::modules {

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
/// check: the largest relative L2 error of the bf16 output and gradients (input and every
/// parameter) against an fp32 reference on fresh random inputs. Throws when the check fails (> 1e-2).
void run_layer_benchmark(const LayerBenchOptions& options);

}  // namespace switchyard::modules
