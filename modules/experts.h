// Routed experts stored batched as [E, d, f] weights, so one grouped GEMM can run them all.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "core/config.h"

namespace switchyard::modules {

/// A bf16 copy of an fp32 weight, current while the weight's version counter equals `version`.
struct WeightCopy {
  torch::Tensor bf16;
  int64_t version = -1;
  /// Whether `bf16` is allocated with w's shape on w's device (it can take w's values in place).
  bool fits(const torch::Tensor& w) const { return bf16.defined() && bf16.device() == w.device() && bf16.sizes() == w.sizes(); }
};

/// A weight gradient that a backward inside a CUDA graph capture computed (a grouped GEMM's bf16
/// output) and has not yet added to the weight's fp32 gradient: the next one is summed with it into
/// the gradient in one pass (instead of a cast of the first and an add of the second), and
/// ExpertsImpl::flush_gradients adds a last one alone.
struct PendingWeightGrad : torch::CustomClassHolder {
  torch::Tensor bf16;
};

/// SwiGLU or GeLU MLP experts. Weights:
///   swiglu: w_in [E, d, 2f] (gate | up, fused into one GEMM), w_out [E, f, d]
///   gelu:   w_in [E, d, f],                                  w_out [E, f, d]
class ExpertsImpl : public torch::nn::Module {
 public:
  /// Holds the experts with global ids `expert_ids`; each is initialized from (seed, its global id)
  /// alone, so a rank holding a subset has exactly the weights of the single-process model.
  ExpertsImpl(std::vector<int64_t> expert_ids, int64_t d_model, int64_t hidden, core::ExpertKind kind,
              double init_std, uint64_t seed);

  /// x [S, d] grouped by local expert (tokens_per_expert[i] rows for local expert i, in order);
  /// tokens_per_expert [E_local] int64; expert_ends, if defined, their running sum as int32 on x's
  /// device (the dispatcher's, saving the grouped GEMM path two kernels). Returns [S, d]. Experts
  /// with no rows are skipped.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& tokens_per_expert,
                        const torch::Tensor& expert_ends = {});

  /// The MLP of one local expert on x [n, d] (the reference path; also used by tests).
  torch::Tensor expert_forward(int64_t local_idx, const torch::Tensor& x);

  int64_t num_local() const { return static_cast<int64_t>(expert_ids_.size()); }
  const std::vector<int64_t>& expert_ids() const { return expert_ids_; }
  torch::Tensor w_in, w_out;

  /// The bf16 copies of the fp32 weights that the grouped GEMMs read (on CUDA under bf16 autocast),
  /// with the weight each copies. A copy is cast again only when its weight's version moved (a
  /// checkpoint load); the optimizer keeps them current in its update (AdamW::keep_bf16_copy), so no
  /// step casts the weights. They stay allocated between steps (bf16: half the fp32 weights' bytes).
  std::vector<std::pair<torch::Tensor, std::shared_ptr<WeightCopy>>> weight_copies() const {
    return {{w_in, w_in_copy_}, {w_out, w_out_copy_}};
  }

  /// Adds the weight gradients still pending (PendingWeightGrad: only backwards inside a CUDA graph
  /// capture leave one) to w_in.grad and w_out.grad. Call after the last backward of a step, before
  /// the gradients are read.
  void flush_gradients();
  /// Drops the pending weight gradients (a capture abandoned part way through a step).
  void drop_pending_gradients() { w_in_pending_->bf16 = w_out_pending_->bf16 = torch::Tensor(); }

 private:
  torch::Tensor activate(const torch::Tensor& h) const;
  /// `w` as bf16: `copy` while it is current, else cast into it.
  static torch::Tensor bf16_weight(const torch::Tensor& w, WeightCopy& copy);

  std::shared_ptr<WeightCopy> w_in_copy_ = std::make_shared<WeightCopy>(), w_out_copy_ = std::make_shared<WeightCopy>();
  c10::intrusive_ptr<PendingWeightGrad> w_in_pending_ = c10::make_intrusive<PendingWeightGrad>(),
                                        w_out_pending_ = c10::make_intrusive<PendingWeightGrad>();

  std::vector<int64_t> expert_ids_;
  int64_t hidden_;
  core::ExpertKind kind_;
};
TORCH_MODULE(Experts);

/// A dense MLP of the same kind (for shared experts and non-MoE layers): [.., d] -> [.., d].
class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(int64_t d_model, int64_t hidden, core::ExpertKind kind, double init_std);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor w_in, w_out;  ///< [d, 2f or f], [f, d]

 private:
  int64_t hidden_;
  core::ExpertKind kind_;
};
TORCH_MODULE(Mlp);

}  // namespace switchyard::modules
