// The MoE layer: router -> capacity -> dispatch -> experts -> gate-weighted combine, plus shared and
// null experts and every routing loss, each reported separately.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "core/config.h"
#include "modules/experts.h"
#include "modules/router.h"
#include "modules/token_dispatcher.h"

namespace switchyard::modules {

/// Whether every slot of every token always names a routed expert (no capacity drops, no null
/// experts, a router that always fills its k slots): dispatch then needs no host synchronization.
bool every_slot_routed(const core::MoEConfig& moe);

/// Slots per token in a routing decision (Routing::expert_idx's width): top_k, k_max for top_p, every
/// choice (experts + null) for expert_choice.
int64_t routing_slots(const core::MoEConfig& moe);

/// Per-layer routing statistics (detached; for metrics).
struct MoEStats {
  torch::Tensor tokens_per_expert;  ///< [E + null] fp32 slots routed to each choice (after drops)
  /// 0-dim int64: slots the router asked for, before capacity drops: T * k for fixed-k routers,
  /// the chosen slots for top_p, T * k (the nominal demand) for expert_choice.
  torch::Tensor routed_slots;
  /// 0-dim int64: asked-for slots that reached no expert: capacity drops; for expert_choice, k per
  /// token that no expert took.
  torch::Tensor dropped_slots;
  torch::Tensor entropy;            ///< 0-dim fp32: mean router entropy (undefined unless collected)
  int64_t capacity = -1;            ///< per-expert capacity used (-1: dropless)
  double capacity_min = 0.0;        ///< LocMoE lower bound ec_min (grap), else 0
  torch::Tensor expert_idx;         ///< [T, k] int64 routed expert per slot after drops (-1: none; null experts >= E)
  torch::Tensor gates;              ///< [T, k] gate weights (detached), for routing traces
  /// Reads the counters (a device synchronization: call at metric points only).
  double dropped_frac() const;
  /// The routing for traces and re-planning: [T, slots] int32 on the CPU, each slot's routed expert,
  /// -1 where it reaches none (dropped, unused, or a null expert).
  torch::Tensor routed_experts(int64_t num_experts) const;
};

struct MoEOutput {
  torch::Tensor y;                              ///< same shape as the input
  std::map<std::string, torch::Tensor> losses;  ///< "load_balance", "z_loss", ... (scalars, weighted)
  MoEStats stats;
};

class MoELayerImpl : public torch::nn::Module {
 public:
  /// `dispatcher` defaults to a LocalDispatcher over all experts; a distributed one decides which
  /// experts this rank holds. `layer_idx` and `seed` fix the expert initialization by global id.
  MoELayerImpl(const core::ModelConfig& model, const core::LossesConfig& losses, int64_t layer_idx, uint64_t seed,
               std::shared_ptr<TokenDispatcher> dispatcher = nullptr);

  /// x [..., d]; `tokens` ids and counters shaped like x's leading dimensions [...].
  MoEOutput forward(const torch::Tensor& x, const TokenInfo& tokens = {});

  /// Sums per-choice slot counts over the ranks whose batches form the balance scope (global_batch
  /// scope); identity by default. Collective when set by parallel/.
  void set_count_reducer(std::function<torch::Tensor(const torch::Tensor&)> reducer) { count_reducer_ = std::move(reducer); }
  /// The per-choice slot counts [E + null] of the whole optimizer step over every rank (global_batch
  /// scope under gradient accumulation; the trainer counts them first). While defined, the load
  /// balance takes f from them instead of this batch's counts. Undefined: off.
  void set_step_counts(torch::Tensor counts) { step_counts_ = std::move(counts); }
  /// Which routed experts are on this rank's node (locality loss); all by default.
  void set_local_expert_mask(torch::Tensor mask) { local_mask_ = std::move(mask); }
  /// Splits the routed tokens into `chunks` (parallel.overlap_chunks): each chunk's dispatch and
  /// combine run on a side CUDA stream while the experts compute the chunk before (same results).
  void set_overlap_chunks(int64_t chunks) { overlap_chunks_ = std::max<int64_t>(1, chunks); }
  /// Recompute the experts' MLP in the backward instead of keeping its activations (train.recompute moe).
  void set_recompute_experts(bool on) { recompute_experts_ = on; }
  /// Whether the forward computes statistics nothing in the step needs (the router entropy; on by
  /// default): a training step turns them off, each costs launches on a host-bound GPU step.
  void set_collect_statistics(bool on) { collect_statistics_ = on; }

  Router router{nullptr};
  Experts experts{nullptr};
  Mlp shared{nullptr};
  torch::Tensor null_constants;  ///< [null, d] for null_expert_kind constant

 private:
  /// The routing losses of a learned router into out.losses (counts: slots per choice, this batch).
  void add_routing_losses(const Routing& routing, const torch::Tensor& counts, const torch::Tensor& x_in,
                          MoEOutput& out) const;
  core::MoEConfig config_;
  core::LossesConfig loss_config_;
  int64_t d_model_;
  std::shared_ptr<TokenDispatcher> dispatcher_;
  std::function<torch::Tensor(const torch::Tensor&)> count_reducer_;
  torch::Tensor step_counts_;
  torch::Tensor local_mask_;
  int64_t overlap_chunks_ = 1;
  bool recompute_experts_ = false;
  bool collect_statistics_ = true;

  /// experts->forward, recomputed in the backward when set_recompute_experts(true).
  torch::Tensor run_experts(const Dispatched& dispatched);

  /// Routed experts of x [T, d]: dispatch, experts, gate-weighted combine -> [T, d].
  torch::Tensor routed_experts(const torch::Tensor& x, const torch::Tensor& expert_idx, const torch::Tensor& gates);
  torch::Tensor routed_experts_overlapped(const torch::Tensor& x, const torch::Tensor& expert_idx,
                                          const torch::Tensor& gates);
};
TORCH_MODULE(MoELayer);

}  // namespace switchyard::modules
