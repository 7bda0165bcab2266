// Routing losses as pure tensor math (fp32 in, fp32 out); equations in docs/routing.md.
//
// Shapes: T tokens, E experts, k slots per token. `expert_idx` is [T, k] int64 with -1 marking an
// unused slot (dropped, or beyond a token's dynamic k); such slots count nowhere.
#pragma once

#include <torch/torch.h>

namespace switchyard::losses {

/// Routing math runs in fp32 whatever the model dtype; double stays double (gradient checks).
inline torch::ScalarType at_least_fp32_type(const torch::Tensor& t) {
  return t.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat32;
}
inline torch::Tensor at_least_fp32(const torch::Tensor& t) { return t.to(at_least_fp32_type(t)); }

/// Slots routed to each expert: [E] float, from expert_idx [T, k] (-1 ignored).
torch::Tensor expert_slot_counts(const torch::Tensor& expert_idx, int64_t num_experts);

/// Switch load balance: alpha * E * sum_i f_i * P_i, with f_i = counts_i / sum(counts) (each of a
/// token's k choices counts; Megatron's form) and P_i = mean_t probs[t, i]. `counts` may be all-reduced
/// over data-parallel ranks for global-batch scope (then `probs` stays local). probs [T, E].
torch::Tensor load_balance_loss(const torch::Tensor& probs, const torch::Tensor& counts, double alpha);

/// DeepSeek-V3 sequence-level balance: the load-balance product per sequence, averaged over sequences.
/// probs [B, S, E], expert_idx [B, S, k].
torch::Tensor sequence_balance_loss(const torch::Tensor& probs, const torch::Tensor& expert_idx, double alpha);

/// ST-MoE router z-loss: coef * mean_t (logsumexp_j logits[t, j])^2. logits [T, E].
torch::Tensor z_loss(const torch::Tensor& logits, double coef);

/// ProMoE routing contrastive loss: with m_i the mean of the tokens routed to expert i (all k slots)
/// and A the experts that got tokens, -(1/|A|) sum_{i in A} log softmax_{j in A}(cos(p_i, m_j) / tau)_i.
/// prototypes [E, d'], tokens [T, d'] (in the prototype space). Zero when fewer than 2 experts are used.
torch::Tensor contrastive_loss(const torch::Tensor& prototypes, const torch::Tensor& tokens,
                               const torch::Tensor& expert_idx, double tau, double coef);

/// LocMoE locality loss: mu * KL(D_c || D_l), D_c = mean_t probs[t], D_l = (1 - eps) * uniform over the
/// experts with local_mask true + eps * uniform over all. probs [T, E], local_mask [E] bool.
torch::Tensor locality_loss(const torch::Tensor& probs, const torch::Tensor& local_mask, double eps, double mu);

/// SMILE's two balance terms, each a Switch balance loss: node = alpha_node * N * sum f^node P^node
/// (across groups), local = alpha_loc * (E/N) * sum f^loc P^loc (inside the chosen group). node_probs
/// [T, N], node_idx [T, 1]; local_probs [T, E/N] (the in-group router), local_idx [T, k] (positions
/// inside the chosen group). The MoE layer reports them as node_balance and load_balance.
struct BilevelBalance {
  torch::Tensor node, local;
};
BilevelBalance bilevel_balance_loss(const torch::Tensor& node_probs, const torch::Tensor& node_idx,
                                   const torch::Tensor& local_probs, const torch::Tensor& local_idx,
                                   double alpha_node, double alpha_local);

/// Mean over tokens of the entropy of probs [T, E] (a statistic, not a loss).
torch::Tensor router_entropy(const torch::Tensor& probs);

}  // namespace switchyard::losses
