// The exchange between tokens and experts, as the MoE layer sees it. LocalDispatcher (here) is the
// single-process reference; parallel/ implements the distributed dispatchers against it.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace switchyard::modules {

/// What a dispatch hands to the local experts; `state` is the dispatcher's own, for combine_weighted().
struct Dispatched {
  torch::Tensor tokens;             ///< [S, d] rows for this rank's experts, grouped by local expert
  torch::Tensor slot_gates;         ///< [S] fp32 gate of each row (differentiable)
  torch::Tensor tokens_per_expert;  ///< [E_local] int64
  torch::Tensor expert_ends;        ///< [E_local] int32 running sum of tokens_per_expert, or undefined
  std::shared_ptr<void> state;
};

class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;

  /// x [T, d]; expert_idx [T, k] int64 global expert ids, -1 for slots to skip; gates [T, k].
  /// Collective in distributed dispatchers: every rank of the expert-parallel group calls it.
  virtual Dispatched dispatch(const torch::Tensor& x, const torch::Tensor& expert_idx, const torch::Tensor& gates) = 0;

  /// expert_out [S, d] (rows as dispatched), gates [S] -> [T, d], each token the gate-weighted sum
  /// over its slots. Collective like dispatch().
  virtual torch::Tensor combine_weighted(const torch::Tensor& expert_out, const torch::Tensor& gates,
                                         const Dispatched& dispatched) = 0;

  /// Global ids of the experts this rank holds, in local order.
  virtual std::vector<int64_t> local_expert_ids() const = 0;
};

/// Single process: every expert is local. Sorts token-slots by expert (stable), gathers them with
/// the fused permute, and sums the gate-weighted outputs back per token with the fused un-permute
/// (no atomics). With `every_slot_routed` (dropless routing that never skips a slot) it also skips
/// the one host synchronization of finding the routed slots.
class LocalDispatcher : public TokenDispatcher {
 public:
  explicit LocalDispatcher(int64_t num_experts, bool every_slot_routed = false)
      : num_experts_(num_experts), every_slot_routed_(every_slot_routed) {}
  Dispatched dispatch(const torch::Tensor& x, const torch::Tensor& expert_idx, const torch::Tensor& gates) override;
  torch::Tensor combine_weighted(const torch::Tensor& expert_out, const torch::Tensor& gates,
                                 const Dispatched& dispatched) override;
  std::vector<int64_t> local_expert_ids() const override;

 private:
  int64_t num_experts_;
  bool every_slot_routed_;
};

/// The slots of expert_idx [T, k] that go to an expert (index in [0, num_experts)), sorted stably by
/// expert: their token indices and flat slot indices (t * k + j), each slot's row and the rows per
/// expert. Shared by every dispatcher. `every_slot_routed`: the caller knows every slot has an
/// expert (no host sync to find them); on CUDA with up to 1,024 experts that takes the counting sort
/// (two kernels), elsewhere a radix sort of the ids.
struct SortedSlots {
  torch::Tensor token_idx;    ///< [S] int64
  torch::Tensor slot_idx;     ///< [S] int64
  torch::Tensor row_of_slot;  ///< [T, k] int64, -1 for a slot that goes to no expert
  torch::Tensor counts;       ///< [num_experts] int64 rows per expert, on the ids' device
  torch::Tensor ends;         ///< [num_experts] int32 running sum of counts (the counting sort's), or undefined
};
SortedSlots sort_slots_by_expert(const torch::Tensor& expert_idx, int64_t num_experts, bool every_slot_routed = false);

}  // namespace switchyard::modules
