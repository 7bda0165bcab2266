// The MoE layer benchmark: the peer's shapes, routing (softmax top-k, renormalized, dropless) and
// FLOP count (useful work: 2 T (k 3 d F + 3 d F_shared + d E) forward, 3x that forward+backward).
#include "bench/layer_benchmark.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <random>
#include <vector>

#include "core/build_info.h"
#include "core/error.h"
#include "modules/moe_layer.h"
#include "runtime/profiler.h"

#if SWITCHYARD_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace switchyard::bench {
using namespace modules;  // NOLINT: the benchmark drives the layer's types throughout
namespace {

struct Preset {
  int64_t d, f, experts, k, shared;  ///< shared: number of shared experts of width f
};

Preset preset_of(const std::string& name) {
  if (name == "mixtral_like") return {4096, 14336, 8, 2, 0};
  if (name == "deepseek_like") return {2048, 1408, 64, 6, 2};
  throw UsageError("--preset: mixtral_like or deepseek_like, got " + name);
}

core::Config layer_config(const Preset& p) {
  core::Config c;
  c.model.d_model = p.d;
  c.model.moe.num_experts = p.experts;
  c.model.moe.top_k = p.k;
  c.model.moe.ffn_hidden = p.f;
  c.model.moe.shared_experts = p.shared;
  c.model.moe.capacity_factor = 0;  // dropless
  c.model.moe.router.kind = core::RouterKind::kTopK;
  c.model.moe.router.normalize_topk = true;
  c.model.init_std = 0.02;
  c.losses = core::LossesConfig{};
  c.losses.load_balance = 0;  // the peer computes no routing loss
  c.losses.z_loss = 0;
  return c;
}

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

/// Median milliseconds of `fn` over `iters` runs after `warmup`, each run fenced by device syncs. On
/// CUDA, the time between events recorded on the stream around the run, as the peer script times
/// (torch.cuda.Event): the card's time, without the host's wake-up after the sync; on the CPU, the
/// wall clock.
double median_ms(const torch::Device& device, int warmup, int iters, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  synchronize(device);
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
#if SWITCHYARD_WITH_CUDA
    if (device.is_cuda()) {
      at::cuda::CUDAEvent start(cudaEventDefault), end(cudaEventDefault);
      start.record();
      fn();
      end.record();
      end.synchronize();
      ms.push_back(start.elapsed_time(end));
      continue;
    }
#endif
    const auto start = std::chrono::steady_clock::now();
    fn();
    synchronize(device);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

double rel_l2(const torch::Tensor& a, const torch::Tensor& ref) {
  const auto r = ref.to(torch::kCPU, torch::kFloat64);
  return (a.to(torch::kCPU, torch::kFloat64) - r).norm().item<double>() / std::max(r.norm().item<double>(), 1e-30);
}

}  // namespace

double check_against_reference(const core::Config& c, const torch::Device& device, torch::Dtype dtype, int64_t tokens) {
  const torch::Dtype wide = dtype == torch::kBFloat16 ? torch::kFloat32 : torch::kFloat64;
  const uint64_t seed = std::random_device{}();
  torch::manual_seed(seed);
  // Weights and inputs are `dtype` values in both, so routing decisions match and the check measures
  // the arithmetic.
  MoELayer ref(c.model, c.losses, 0, seed);
  ref->to(device, wide);
  {
    torch::NoGradGuard no_grad;
    for (auto& w : ref->parameters()) w.copy_(w.to(dtype).to(wide));
  }
  MoELayer low(c.model, c.losses, 0, seed);
  low->to(device, dtype);
  {
    torch::NoGradGuard no_grad;
    auto ref_params = ref->named_parameters();
    for (auto& p : low->named_parameters()) p.value().copy_(ref_params[p.key()]);
  }
  const auto x = torch::randn({tokens, c.model.d_model}, torch::dtype(wide).device(device)).to(dtype).to(wide);
  const auto x_ref = x.clone().requires_grad_(), x_low = x.to(dtype).requires_grad_();
  const auto y_ref = ref->forward(x_ref).y, y_low = low->forward(x_low).y;
  y_ref.square().mean().backward();
  y_low.to(wide).square().mean().backward();
  double worst = std::max(rel_l2(y_low, y_ref), rel_l2(x_low.grad(), x_ref.grad()));
  auto ref_params = ref->named_parameters();
  for (const auto& p : low->named_parameters()) {
    if (!p.value().grad().defined()) continue;
    worst = std::max(worst, rel_l2(p.value().grad(), ref_params[p.key()].grad()));
  }
  return worst;
}

void run_layer_benchmark(const LayerBenchOptions& options) {
  const Preset p = preset_of(options.preset);
  SY_CHECK_AS(UsageError, options.profile_path.empty() || std::ofstream(options.profile_path).good(),
              "--profile: cannot write ", options.profile_path);
  const auto c = layer_config(p);
  SY_CHECK_AS(UsageError, options.device == "cpu" || torch::cuda::is_available(), "--device cuda: no CUDA device");
  const torch::Device device = options.device == "cuda" ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  const torch::Dtype dtype = device.is_cuda() ? torch::kBFloat16 : torch::kFloat32;

  double check = -1;
  if (options.check_tokens > 0) check = check_against_reference(c, device, dtype, options.check_tokens);
  // bf16 keeps 8 significant bits, fp32 24: each limit is far above its dtype's error on these shapes
  // (5.5e-3 and ~1e-6) and far below what a wrong kernel gives.
  const double check_limit = dtype == torch::kBFloat16 ? 1e-2 : 1e-4;

  const int64_t T = options.tokens;
  const double flops = 2.0 * static_cast<double>(T) *
                       static_cast<double>(p.k * 3 * p.d * p.f + 3 * p.d * p.f * p.shared + p.d * p.experts);
  torch::manual_seed(0);
  MoELayer layer(c.model, c.losses, 0, 0);
  layer->to(device, dtype);
  const auto x = torch::randn({T, p.d}, torch::dtype(dtype).device(device)).requires_grad_();
#if SWITCHYARD_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
  const double fwd_ms = median_ms(device, options.warmup, options.iters, [&] {
    torch::NoGradGuard no_grad;
    layer->forward(x);
  });
  const auto fwdbwd = [&] {
    if (options.reset_grads) {
      for (auto& p : layer->parameters()) p.mutable_grad() = torch::Tensor();
      x.mutable_grad() = torch::Tensor();
    }
    layer->forward(x).y.to(torch::kFloat32).square().mean().backward();
  };
  const double fwdbwd_ms = median_ms(device, options.warmup, options.iters, fwdbwd);
  double peak_gib = -1;
#if SWITCHYARD_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    peak_gib = static_cast<double>(stats.allocated_bytes[0].peak) / (1024.0 * 1024.0 * 1024.0);
  }
#endif
  std::printf(
      "{\"bench\":\"layer\",\"preset\":\"%s\",\"device\":\"%s\",\"dtype\":\"%s\",\"tokens\":%lld,\"fwd_ms\":%.4f,"
      "\"fwdbwd_ms\":%.4f,\"fwd_tflops\":%.2f,\"fwdbwd_tflops\":%.2f,\"peak_mem_gib\":%.3f,\"check_tokens\":%lld,"
      "\"check_max_rel_l2\":%.3e,\"grads\":\"%s\"}\n",
      options.preset.c_str(), device.str().c_str(), device.is_cuda() ? "bf16" : "fp32", static_cast<long long>(T), fwd_ms,
      fwdbwd_ms, flops / fwd_ms / 1e9, 3 * flops / fwdbwd_ms / 1e9, peak_gib, static_cast<long long>(options.check_tokens),
      check, options.reset_grads ? "reset" : "accumulate");
  std::fflush(stdout);
  if (!options.profile_path.empty()) {
    runtime::KinetoTrace trace(device);
    for (int i = 0; i < options.profile_iters; ++i) {  // fenced as the timed runs are: their gaps show
      fwdbwd();
      synchronize(device);
    }
    trace.save(options.profile_path);
  }
  SY_CHECK_AS(InternalError, check < check_limit, "bench layer: ", device.is_cuda() ? "bf16" : "fp32",
              " output or gradients differ from the ", device.is_cuda() ? "fp32" : "fp64", " reference by ", check,
              " (relative L2; limit ", check_limit, ")");
}

}  // namespace switchyard::bench
