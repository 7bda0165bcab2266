// Routed experts stored batched as [E, d, f] weights, so one grouped GEMM can run them all.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "core/config.h"

namespace switchyard::modules {

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

  /// The bf16 copies of fp32 weights that the grouped GEMMs read are cast once and reused by every
  /// micro-batch until the weights change (their version counter moves: an optimizer step, a
  /// checkpoint load). The trainer drops them after each step's last backward, so they take memory
  /// only while the step runs (where each micro-batch's forward would hold such copies anyway).
  void drop_weight_casts();

 private:
  torch::Tensor activate(const torch::Tensor& h) const;
  /// `w` as bf16: from the cache while w is unchanged.
  torch::Tensor bf16_weight(const torch::Tensor& w, torch::Tensor& cached, int64_t& cached_version);

  torch::Tensor w_in_bf16_, w_out_bf16_;
  int64_t w_in_bf16_version_ = -1, w_out_bf16_version_ = -1;

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
