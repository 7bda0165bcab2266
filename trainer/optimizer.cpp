// AdamW and the learning-rate schedule.
#include "trainer/optimizer.h"

#include <cmath>
#include <stdexcept>
#include <vector>

#include "core/build_info.h"
#if SWITCHYARD_WITH_CUDA
#include "trainer/adamw_kernel_cuda.h"
#endif

namespace switchyard::trainer {
namespace {

/// Whether `p` takes the CUDA kernel (adamw_kernel.cu): it, its gradient and its moments fp32,
/// contiguous, on one CUDA device. Elsewhere (the CPU, fp64) the update is a loop of ATen ops.
bool fusable(const torch::Tensor& p, const AdamW::State& s) {
#if SWITCHYARD_WITH_CUDA
  const auto& g = p.grad();
  for (const auto* t : {&p, &g, &s.exp_avg, &s.exp_avg_sq}) {
    if (!t->is_cuda() || t->scalar_type() != torch::kFloat32 || t->device() != p.device() || !t->is_contiguous()) {
      return false;
    }
  }
  return true;
#else
  (void)p;
  (void)s;
  return false;
#endif
}

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

void AdamW::keep_bf16_copy(const torch::Tensor& p, std::shared_ptr<modules::WeightCopy> copy) {
  copies_[p.unsafeGetTensorImpl()] = std::move(copy);
}

modules::WeightCopy* AdamW::kept_copy(const torch::Tensor& p) {
  const auto it = copies_.find(p.unsafeGetTensorImpl());
  if (it == copies_.end()) return nullptr;
  auto& copy = *it->second;
  if (!copy.fits(p)) {
    copy.bf16 = torch::empty(p.sizes(), p.options().dtype(torch::kBFloat16));
    copy.version = -1;
  }
  return &copy;
}

void AdamW::update(const std::string& name, torch::Tensor& p, const DeviceScalars* device, double lr,
                   double grad_multiplier) {
  auto& s = state(name);
  auto* copy = kept_copy(p);
  const bool decay = decays(p);
  if (fusable(p, s)) {
#if SWITCHYARD_WITH_CUDA
    cuda::AdamWScalars k;
    if (device != nullptr) {
      k.lr = device->lr;
      k.count = device->count;
      k.grad_scale = device->grad_scale;
      k.found_inf = device->found_inf;
    }
    k.lr_value = lr;
    k.count_value = static_cast<double>(steps_);
    k.grad_scale_value = 1.0 / grad_multiplier;
    k.beta1 = config_.beta1;
    k.beta2 = config_.beta2;
    k.weight_decay = decay ? config_.weight_decay : 0.0;
    k.eps = config_.adam_eps;
    cuda::adamw_update(p, p.grad(), s.exp_avg, s.exp_avg_sq, copy ? copy->bf16 : torch::Tensor(), k);
    p.unsafeGetTensorImpl()->bump_version();  // written in place by the kernel: caches keyed by version see it
    if (copy) copy->version = static_cast<int64_t>(p._version());
#endif
    return;
  }
  if (device != nullptr) throw std::invalid_argument("AdamW: parameter " + name + " cannot take the update on the device");
  const double b1 = config_.beta1, b2 = config_.beta2;
  const double bias1 = 1 - std::pow(b1, static_cast<double>(steps_));
  const double bias2 = 1 - std::pow(b2, static_cast<double>(steps_));
  auto g = p.grad().to(s.exp_avg.scalar_type());
  if (grad_multiplier != 1.0) g = g * grad_multiplier;
  if (decay) p.mul_(1 - lr * config_.weight_decay);
  s.exp_avg.mul_(b1).add_(g, 1 - b1);
  s.exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2);
  const auto denom = (s.exp_avg_sq / bias2).sqrt_().add_(config_.adam_eps);
  p.add_((s.exp_avg / denom).to(p.scalar_type()), -lr / bias1);
  if (copy) {
    copy->bf16.copy_(p);
    copy->version = static_cast<int64_t>(p._version());
  }
}

void AdamW::step(double lr, double grad_multiplier) {
  torch::NoGradGuard no_grad;
  ++steps_;
  for (auto& [name, p] : params_) {
    if (p.grad().defined()) update(name, p, nullptr, lr, grad_multiplier);
  }
}

void AdamW::step_on_device(const torch::Tensor& lr, const torch::Tensor& grad_scale, const torch::Tensor& found_inf,
                           const torch::Tensor& count) {
  torch::NoGradGuard no_grad;
  const DeviceScalars device{lr, count, grad_scale, found_inf};
  for (auto& [name, p] : params_) {
    if (p.grad().defined()) update(name, p, &device, 0.0, 1.0);
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
