// AdamW with state addressed by name (so checkpoints can store an expert's state by global id and
// load it at any placement), and the warmup + cosine learning-rate schedule.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "modules/experts.h"

namespace switchyard::trainer {

/// Decoupled-weight-decay Adam (Loshchilov & Hutter), the update torch::optim::AdamW makes:
///   p -= lr * wd * p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
///   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
/// Parameters with one dimension (norm weights, biases) get no weight decay. fp32 CUDA parameters take
/// one kernel per parameter (adamw_kernel.cu), which also writes the bf16 copies kept for them.
class AdamW {
 public:
  struct State {
    torch::Tensor exp_avg, exp_avg_sq;
  };

  AdamW(std::vector<std::pair<std::string, torch::Tensor>> named_params, const core::TrainConfig& config);

  /// One update with learning rate `lr` from the parameters' .grad() times `grad_multiplier` (gradient
  /// clipping without a pass over the gradients); undefined grads are skipped.
  void step(double lr, double grad_multiplier = 1.0);
  /// The same update as device work reading its inputs from 0-dim fp32 tensors on the parameters'
  /// device, so it can be captured in a CUDA graph: learning rate `lr`, each gradient divided by
  /// `grad_scale`, no update where `found_inf` is 1; the kernel reads the step count from `count`
  /// (already advanced; steps() is not). Every parameter with a gradient must take the CUDA kernel
  /// (fp32 CUDA tensors): throws std::invalid_argument naming one that does not.
  void step_on_device(const torch::Tensor& lr, const torch::Tensor& grad_scale, const torch::Tensor& found_inf,
                      const torch::Tensor& count);
  /// Counts an update made by step_on_device.
  void count_step() { ++steps_; }
  /// Drops every gradient (set to undefined, as PyTorch's set_to_none): the next backward writes them
  /// instead of adding to zeros, and no pass zeroes them.
  void zero_grad();

  /// After every update `copy` holds `p` in bf16 and p's version (the experts' grouped GEMMs read it
  /// instead of casting the weight again); the CUDA kernel writes it in the same pass as the update.
  void keep_bf16_copy(const torch::Tensor& p, std::shared_ptr<modules::WeightCopy> copy);

  int64_t steps() const { return steps_; }
  /// Whether `p` takes weight decay: matrices only, and only with train.weight_decay > 0.
  bool decays(const torch::Tensor& p) const { return config_.weight_decay > 0 && p.dim() > 1; }
  void set_steps(int64_t steps) { steps_ = steps; }
  /// State per parameter name (created lazily as zeros).
  State& state(const std::string& name);
  const std::vector<std::pair<std::string, torch::Tensor>>& params() const { return params_; }

 private:
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  /// step_on_device's tensors.
  struct DeviceScalars {
    const torch::Tensor &lr, &count, &grad_scale, &found_inf;
  };
  /// One parameter's update: the CUDA kernel where fusable, else the loop of ATen ops (host scalars
  /// only: `device` set there throws).
  void update(const std::string& name, torch::Tensor& p, const DeviceScalars* device, double lr, double grad_multiplier);
  /// p's kept copy, allocated on first use; null where none is kept.
  modules::WeightCopy* kept_copy(const torch::Tensor& p);

  std::map<std::string, State> state_;
  std::map<const c10::TensorImpl*, std::shared_ptr<modules::WeightCopy>> copies_;
  core::TrainConfig config_;
  int64_t steps_ = 0;
};

/// The learning rate of 0-based `step`: linear warmup to lr over warmup_steps, then train.lr_schedule:
/// cosine to lr * min_lr_ratio at `steps`; wsd (warmup-stable-decay) stable at lr, then a decay of
/// decay_shape over the last ceil(decay_fraction * steps) steps, reaching lr * min_lr_ratio at the
/// last step; constant; inverse_sqrt, lr * sqrt(warmup_steps / (step + 1)). A function of the step
/// alone, so a resume in any phase continues it exactly.
double learning_rate(const core::TrainConfig& config, int64_t step);

}  // namespace switchyard::trainer
