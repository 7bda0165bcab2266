// AdamW and the learning-rate schedule.
#include "trainer/optimizer.h"

#include <cmath>

namespace switchyard::trainer {

AdamW::AdamW(std::vector<std::pair<std::string, torch::Tensor>> named_params, const core::TrainConfig& config)
    : params_(std::move(named_params)), config_(config) {}

AdamW::State& AdamW::state(const std::string& name) {
  auto it = state_.find(name);
  if (it != state_.end()) return it->second;
  for (const auto& [n, p] : params_) {
    if (n == name) {
      return state_.emplace(name, State{torch::zeros_like(p, torch::kFloat32), torch::zeros_like(p, torch::kFloat32)})
          .first->second;
    }
  }
  throw std::out_of_range("AdamW: no parameter named " + name);
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++steps_;
  const double b1 = config_.beta1, b2 = config_.beta2;
  const double bias1 = 1 - std::pow(b1, static_cast<double>(steps_));
  const double bias2 = 1 - std::pow(b2, static_cast<double>(steps_));
  for (auto& [name, p] : params_) {
    if (!p.grad().defined()) continue;
    auto& s = state(name);
    const auto g = p.grad().to(torch::kFloat32);
    if (config_.weight_decay > 0 && p.dim() > 1) p.mul_(1 - lr * config_.weight_decay);
    s.exp_avg.mul_(b1).add_(g, 1 - b1);
    s.exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2);
    const auto denom = (s.exp_avg_sq / bias2).sqrt_().add_(config_.adam_eps);
    p.add_((s.exp_avg / denom).to(p.scalar_type()), -lr / bias1);
  }
}

void AdamW::zero_grad() {
  for (auto& [name, p] : params_) {
    if (p.grad().defined()) p.mutable_grad().zero_();
  }
}

double learning_rate(const core::TrainConfig& config, int64_t step) {
  if (config.warmup_steps > 0 && step < config.warmup_steps) {
    return config.lr * static_cast<double>(step + 1) / static_cast<double>(config.warmup_steps);
  }
  const double span = std::max<int64_t>(1, config.steps - config.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - config.warmup_steps) / span);
  const double min_lr = config.lr * config.min_lr_ratio;
  return min_lr + 0.5 * (config.lr - min_lr) * (1 + std::cos(M_PI * progress));
}

}  // namespace switchyard::trainer
