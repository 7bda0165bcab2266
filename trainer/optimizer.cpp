// AdamW and the learning-rate schedule.
#include "trainer/optimizer.h"

#include <cmath>
#include <optional>
#include <stdexcept>
#include <vector>

#include "runtime/torch_version.h"

// PyTorch's fused AdamW kernels (LibTorch 2.1 and later; Debian's 1.13 takes the loop).
#define SY_FUSED_ADAMW SY_TORCH_AT_LEAST(2, 1)

namespace switchyard::trainer {
namespace {

#if SY_FUSED_ADAMW
bool fusable(const torch::Tensor& p, const AdamW::State& s) {
  const auto& g = p.grad();
  for (const auto* t : {&p, &g, &s.exp_avg, &s.exp_avg_sq}) {
    if (!t->is_cuda() || t->scalar_type() != torch::kFloat32 || t->device() != p.device() || !t->is_contiguous()) {
      return false;
    }
  }
  return true;
}

/// Tensors for one `_fused_adamw_` call.
struct FusedGroup {
  std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs;
  void add(torch::Tensor& p, AdamW::State& s) {
    params.push_back(p);
    grads.push_back(p.grad());
    exp_avgs.push_back(s.exp_avg);
    exp_avg_sqs.push_back(s.exp_avg_sq);
  }
  void step(double lr, double b1, double b2, double weight_decay, double eps, int64_t steps, double grad_multiplier) {
    if (params.empty()) return;
    // The kernels read the step count (already advanced) from a device tensor per parameter, and
    // divide each gradient by `grad_scale` (AMP's unscaling; here the clipping factor's inverse).
    const auto count = torch::full({}, static_cast<double>(steps), params[0].options());
    const std::vector<torch::Tensor> counts(params.size(), count);
    std::optional<torch::Tensor> grad_scale;
    if (grad_multiplier != 1.0) grad_scale = torch::full({}, 1.0 / grad_multiplier, params[0].options());
    at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, counts, lr, b1, b2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false, grad_scale);
  }
  void step(const torch::Tensor& lr, double b1, double b2, double weight_decay, double eps, const torch::Tensor& count,
            const torch::Tensor& grad_scale, const torch::Tensor& found_inf) {
    if (params.empty()) return;
    const std::vector<torch::Tensor> counts(params.size(), count);
    at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, counts, lr, b1, b2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false, grad_scale, found_inf);
  }
};
#else
bool fusable(const torch::Tensor&, const AdamW::State&) { return false; }
struct FusedGroup {
  void add(torch::Tensor&, AdamW::State&) {}
  void step(double, double, double, double, double, int64_t, double) {}
  void step(const torch::Tensor&, double, double, double, double, const torch::Tensor&, const torch::Tensor&,
            const torch::Tensor&) {}
};
#endif

}  // namespace

AdamW::AdamW(std::vector<std::pair<std::string, torch::Tensor>> named_params, const core::TrainConfig& config)
    : params_(std::move(named_params)), config_(config) {}

AdamW::State& AdamW::state(const std::string& name) {
  auto it = state_.find(name);
  if (it != state_.end()) return it->second;
  for (const auto& [n, p] : params_) {
    if (n == name) {
      // fp32 states (fp64 for fp64 parameters).
      const auto dtype = p.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
      return state_.emplace(name, State{torch::zeros_like(p, dtype), torch::zeros_like(p, dtype)}).first->second;
    }
  }
  throw std::out_of_range("AdamW: no parameter named " + name);
}

void AdamW::step(double lr, double grad_multiplier) {
  torch::NoGradGuard no_grad;
  ++steps_;
  const double b1 = config_.beta1, b2 = config_.beta2;
  const double bias1 = 1 - std::pow(b1, static_cast<double>(steps_));
  const double bias2 = 1 - std::pow(b2, static_cast<double>(steps_));
  // fp32 CUDA parameters, gradients and states take PyTorch's fused multi-tensor AdamW kernels (one
  // pass per tensor instead of ten elementwise kernels), in two groups: with and without decay.
  FusedGroup fused[2];
  for (auto& [name, p] : params_) {
    if (!p.grad().defined()) continue;
    auto& s = state(name);
    const bool decay = decays(p);
    if (fusable(p, s)) {
      fused[decay].add(p, s);
      continue;
    }
    auto g = p.grad().to(s.exp_avg.scalar_type());
    if (grad_multiplier != 1.0) g = g * grad_multiplier;
    if (decay) p.mul_(1 - lr * config_.weight_decay);
    s.exp_avg.mul_(b1).add_(g, 1 - b1);
    s.exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2);
    const auto denom = (s.exp_avg_sq / bias2).sqrt_().add_(config_.adam_eps);
    p.add_((s.exp_avg / denom).to(p.scalar_type()), -lr / bias1);
  }
  for (int decay = 0; decay < 2; ++decay) {
    fused[decay].step(lr, b1, b2, decay ? config_.weight_decay : 0.0, config_.adam_eps, steps_, grad_multiplier);
  }
}

void AdamW::step_on_device(const torch::Tensor& lr, const torch::Tensor& grad_scale, const torch::Tensor& found_inf,
                           const torch::Tensor& count) {
  torch::NoGradGuard no_grad;
  FusedGroup fused[2];
  for (auto& [name, p] : params_) {
    if (!p.grad().defined()) continue;
    auto& s = state(name);
    if (!fusable(p, s)) throw std::invalid_argument("AdamW: parameter " + name + " cannot take the fused update on the device");
    fused[decays(p)].add(p, s);
  }
  for (int decay = 0; decay < 2; ++decay) {
    fused[decay].step(lr, config_.beta1, config_.beta2, decay ? config_.weight_decay : 0.0, config_.adam_eps, count,
                      grad_scale, found_inf);
  }
}

void AdamW::zero_grad() {
  for (auto& [name, p] : params_) p.mutable_grad() = torch::Tensor();
}

double learning_rate(const core::TrainConfig& config, int64_t step) {
  if (config.warmup_steps > 0 && step < config.warmup_steps) {
    return config.lr * static_cast<double>(step + 1) / static_cast<double>(config.warmup_steps);
  }
  const double min_lr = config.lr * config.min_lr_ratio;
  switch (config.lr_schedule) {
    case core::LrSchedule::kConstant: return config.lr;
    case core::LrSchedule::kInverseSqrt:
      return config.lr * std::sqrt(static_cast<double>(std::max<int64_t>(1, config.warmup_steps)) /
                                   static_cast<double>(std::max<int64_t>(step + 1, std::max<int64_t>(1, config.warmup_steps))));
    case core::LrSchedule::kWsd: {
      // Stable at lr until the decay starts, then down to min_lr at the last step (step steps - 1).
      const int64_t decay_steps = static_cast<int64_t>(std::ceil(config.decay_fraction * static_cast<double>(config.steps)));
      const int64_t decay_start = std::max(config.warmup_steps, config.steps - decay_steps);
      if (step < decay_start || decay_steps == 0) return config.lr;
      const double span = static_cast<double>(std::max<int64_t>(1, config.steps - 1 - decay_start));
      const double progress = std::min(1.0, static_cast<double>(step - decay_start) / span);
      double left = 1 - progress;  // linear
      if (config.decay_shape == core::DecayShape::kCosine) left = 0.5 * (1 + std::cos(M_PI * progress));
      if (config.decay_shape == core::DecayShape::kOneMinusSqrt) left = 1 - std::sqrt(progress);
      return min_lr + (config.lr - min_lr) * left;
    }
    case core::LrSchedule::kCosine: break;
  }
  const double span = std::max<int64_t>(1, config.steps - config.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - config.warmup_steps) / span);
  return min_lr + 0.5 * (config.lr - min_lr) * (1 + std::cos(M_PI * progress));
}

}  // namespace switchyard::trainer
