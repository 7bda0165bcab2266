// Routing losses: Switch balance, sequence balance, z-loss, ProMoE contrastive, LocMoE locality, SMILE.
#include "losses/routing_losses.h"

#include "core/error.h"

namespace switchyard::losses {
namespace {

/// Mean over the tokens (dim 0), 0 for no tokens (a rank or chunk without tokens adds nothing, where
/// mean() would give NaN).
torch::Tensor token_mean(const torch::Tensor& t) { return t.size(0) == 0 ? t.sum(0) : t.mean(0); }

}  // namespace

torch::Tensor expert_slot_counts(const torch::Tensor& expert_idx, int64_t num_experts) {
  SY_CHECK(expert_idx.dim() == 2, "expert_idx: expected [T, k], got ", expert_idx.sizes());
  const auto flat = expert_idx.reshape({-1});
  const auto valid = flat.ge(0);
  auto counts = torch::zeros({num_experts}, torch::dtype(torch::kFloat32).device(expert_idx.device()));
  counts.index_add_(0, flat.clamp_min(0), valid.to(torch::kFloat32));
  return counts;
}

torch::Tensor load_balance_loss(const torch::Tensor& probs, const torch::Tensor& counts, double alpha) {
  SY_CHECK(probs.dim() == 2 && counts.dim() == 1 && probs.size(1) == counts.size(0),
           "load_balance_loss: probs [T, E] and counts [E] disagree: ", probs.sizes(), " vs ", counts.sizes());
  const int64_t num_experts = probs.size(1);
  const auto f = counts / counts.sum().clamp_min(1.0);
  const auto p = token_mean(at_least_fp32(probs));
  return alpha * static_cast<double>(num_experts) * (f.detach() * p).sum();
}

torch::Tensor sequence_balance_loss(const torch::Tensor& probs, const torch::Tensor& expert_idx, double alpha) {
  SY_CHECK(probs.dim() == 3 && expert_idx.dim() == 3, "sequence_balance_loss: expected probs [B, S, E] and "
           "expert_idx [B, S, k], got ", probs.sizes(), " and ", expert_idx.sizes());
  const int64_t batch = probs.size(0), num_experts = probs.size(2);
  if (batch == 0) return alpha * probs.sum();
  std::vector<torch::Tensor> per_seq;
  per_seq.reserve(batch);
  for (int64_t b = 0; b < batch; ++b) {
    per_seq.push_back(load_balance_loss(probs[b], expert_slot_counts(expert_idx[b], num_experts), alpha));
  }
  return torch::stack(per_seq).mean();
}

torch::Tensor z_loss(const torch::Tensor& logits, double coef) {
  const auto lse = torch::logsumexp(at_least_fp32(logits), /*dim=*/-1);
  return coef * token_mean(lse.pow(2));
}

torch::Tensor contrastive_loss(const torch::Tensor& prototypes, const torch::Tensor& tokens,
                               const torch::Tensor& expert_idx, double tau, double coef) {
  const int64_t num_experts = prototypes.size(0);
  const int64_t k = expert_idx.size(1);
  const auto flat_idx = expert_idx.reshape({-1});
  const auto valid = flat_idx.ge(0);
  const auto slot_tokens = at_least_fp32(tokens).repeat_interleave(k, 0);  // [T*k, d']
  auto sums = torch::zeros({num_experts, tokens.size(1)}, slot_tokens.options());
  sums = sums.index_add(0, flat_idx.clamp_min(0), slot_tokens * valid.unsqueeze(1).to(slot_tokens.scalar_type()));
  const auto counts = expert_slot_counts(expert_idx, num_experts);
  const auto active = counts.gt(0).nonzero().reshape({-1});
  if (active.numel() < 2) return torch::zeros({}, prototypes.options().dtype(torch::kFloat32));
  const auto means = sums.index_select(0, active) / counts.index_select(0, active).unsqueeze(1);
  const auto p = torch::nn::functional::normalize(at_least_fp32(prototypes).index_select(0, active),
                                                  torch::nn::functional::NormalizeFuncOptions().dim(1));
  const auto m = torch::nn::functional::normalize(means, torch::nn::functional::NormalizeFuncOptions().dim(1));
  const auto sim = p.matmul(m.t()) / tau;  // [A, A]: row i = prototype i against every expert's mean
  const auto log_prob = torch::log_softmax(sim, 1);
  return -coef * log_prob.diagonal().mean();
}

torch::Tensor locality_loss(const torch::Tensor& probs, const torch::Tensor& local_mask, double eps, double mu) {
  const int64_t num_experts = probs.size(1);
  SY_CHECK(local_mask.numel() == num_experts, "locality_loss: local_mask has ", local_mask.numel(),
           " entries for ", num_experts, " experts");
  const auto mask = local_mask.to(probs.device(), at_least_fp32(probs).scalar_type());
  // An empty mask would make the target uniform-over-all times eps: callers pass >= 1 local expert.
  const auto target = (1.0 - eps) * mask / mask.sum().clamp_min(1.0) + eps / static_cast<double>(num_experts);
  const auto dc = token_mean(at_least_fp32(probs));
  return mu * (dc * (dc.clamp_min(1e-30).log() - target.log())).sum();
}

BilevelBalance bilevel_balance_loss(const torch::Tensor& node_probs, const torch::Tensor& node_idx,
                                    const torch::Tensor& local_probs, const torch::Tensor& local_idx,
                                    double alpha_node, double alpha_local) {
  return {load_balance_loss(node_probs, expert_slot_counts(node_idx, node_probs.size(1)), alpha_node),
          load_balance_loss(local_probs, expert_slot_counts(local_idx, local_probs.size(1)), alpha_local)};
}

torch::Tensor router_entropy(const torch::Tensor& probs) {
  const auto p = at_least_fp32(probs);
  return token_mean(-(p * p.clamp_min(1e-30).log()).sum(-1));
}

}  // namespace switchyard::losses
