// Routers: which experts each token goes to, with what gate weight. Math in fp32 whatever the input
// dtype. Equations and decisions: docs/routing.md.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "core/config.h"

namespace switchyard::modules {

/// One routing decision for T tokens. Slots with expert_idx -1 are unused (dropped, or beyond a
/// token's dynamic k) and carry gate 0. Indices >= num_experts name null experts.
struct Routing {
  torch::Tensor expert_idx;  ///< [T, k] int64
  torch::Tensor gates;       ///< [T, k] fp32, differentiable
  torch::Tensor probs;       ///< [T, E + null] fp32 distribution the balance losses use
  std::vector<torch::Tensor> z_logits;  ///< logits the z-loss applies to (empty for hash, random)
  bool learned = true;       ///< false for hash and random: no loss can move them
  // bilevel (SMILE) only:
  torch::Tensor node_probs;   ///< [T, groups]
  torch::Tensor node_idx;     ///< [T, 1]
  torch::Tensor local_probs;  ///< [T, E / groups]
  torch::Tensor local_idx;    ///< [T, k] positions inside the chosen group
  // cosine only:
  torch::Tensor projected;    ///< [T, d'] tokens in the prototype space
};

/// What a router may need besides the hidden states.
struct TokenInfo {
  torch::Tensor ids{};     ///< [T] int64 token ids (the hash router)
  /// [T] int64 >= 0, unique per token of the run: the random and noisy_topk routers draw each token's
  /// noise by this counter (counter_rng.h), so it does not depend on the rank or batch a token is in.
  /// Undefined: 0..T-1 (a standalone layer then draws the same noise on every call).
  torch::Tensor counters{};
};

class RouterImpl : public torch::nn::Module {
 public:
  /// `num_choices` = routed experts + null experts. `noise_key` keys the counter-based draws of the
  /// random and noisy_topk routers (one key per layer).
  RouterImpl(const core::MoEConfig& config, int64_t d_model, double init_std, uint64_t noise_key = 0);

  /// x [T, d] (any float dtype).
  Routing forward(const torch::Tensor& x, const TokenInfo& tokens = {});

  /// sigmoid_bias: b_i += rate * sign(mean(load) - load_i) from the global per-choice load [E + null].
  void update_bias(const torch::Tensor& global_load);

  int64_t num_choices() const { return num_choices_; }
  core::RouterKind kind() const { return config_.router.kind; }
  /// cosine: the expert prototypes [E + null, d'].
  const torch::Tensor& prototypes() const { return prototypes_; }
  /// sigmoid_bias: the load-following selection bias [E + null].
  const torch::Tensor& bias() const { return bias_; }

 private:
  // One function per family (core::RouterFamily); x [T, d].
  Routing route_softmax_topk(const torch::Tensor& x, const TokenInfo& tokens);
  Routing route_sigmoid_bias(const torch::Tensor& x);
  Routing route_expert_choice(const torch::Tensor& x);
  Routing route_top_p(const torch::Tensor& x);
  Routing route_fixed(const torch::Tensor& x, const TokenInfo& tokens);
  Routing route_bilevel(const torch::Tensor& x);
  Routing top_k_of(const torch::Tensor& logits, int64_t k) const;
  /// Each token's run-wide counter (TokenInfo::counters, or 0..T-1) on x's device.
  torch::Tensor token_counters(const torch::Tensor& x, const TokenInfo& tokens) const;

  core::MoEConfig config_;
  int64_t d_model_;
  int64_t num_choices_;
  uint64_t noise_key_;
  torch::Tensor weight_;        ///< [E + null, d] (topk, noisy_topk, sigmoid_bias, expert_choice, top_p)
  torch::Tensor noise_weight_;  ///< [E + null, d] noisy_topk
  torch::Tensor bias_;          ///< [E + null] sigmoid_bias: the selection bias (buffer)
  torch::Tensor eps_;           ///< [E + null] grap: the learned offsets of the fixed gate (parameter)
  torch::Tensor prototypes_;    ///< cosine
  torch::Tensor projection_;    ///< cosine with cosine_dim > 0: [d', d]
  torch::Tensor node_weight_;   ///< bilevel [groups, d]
  torch::Tensor local_weight_;  ///< bilevel [E / groups, d]
};
TORCH_MODULE(Router);

/// fp32 router logits x w^T [T, E] for x [T, d] and a gate w [E, d] (double stays double). Bf16 x on
/// CUDA takes bf16 GEMMs accumulating and writing in fp32, with fp32 operands split into two bf16
/// terms (no fp32 copy of x); elsewhere x and w are cast to fp32 first.
torch::Tensor router_logits(const torch::Tensor& x, const torch::Tensor& w);

/// Capacity per expert: ceil(capacity_factor * k * T / E), or -1 (no limit) when capacity_factor <= 0.
int64_t expert_capacity(double capacity_factor, int64_t top_k, int64_t num_tokens, int64_t num_experts);

/// LocMoE Theorem 1: ec_min = 1 / (E * p_delta), p_delta = 1 - I_{delta^2}(1/2, (d - 1)/2).
double locmoe_min_capacity(double delta, int64_t d_model, int64_t num_experts);

/// Regularized incomplete beta function I_x(a, b) (continued fraction, Numerical Recipes 6.4).
double regularized_incomplete_beta(double x, double a, double b);

/// Drops, per expert among [0, num_experts), the slots beyond `capacity` (gate 0, index -1) and
/// returns how many were dropped (0-dim int64 tensor, no host synchronization). kProbability keeps the highest gates; kPosition keeps the earliest
/// tokens (token order, then choice order). Null-expert slots (index >= num_experts) are never dropped.
torch::Tensor apply_capacity(Routing& routing, int64_t capacity, int64_t num_experts, core::DropPolicy policy);

}  // namespace switchyard::modules
