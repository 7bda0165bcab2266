// LocalDispatcher: the single-process token exchange every distributed dispatcher is tested against.
#include "modules/token_dispatcher.h"

#include <numeric>
#include <tuple>

#include "modules/moe_kernels.h"

namespace switchyard::modules {
namespace {

struct LocalState {
  torch::Tensor token_idx, row_of_slot;
  int64_t num_tokens;
};

}  // namespace

SortedSlots sort_slots_by_expert(const torch::Tensor& expert_idx, int64_t num_experts, bool every_slot_routed) {
  const int64_t num_tokens = expert_idx.size(0), k = expert_idx.size(1);
  SortedSlots s;
  if (every_slot_routed && expert_idx.is_cuda() && num_experts <= kernels::kCountingSortMaxExperts) {
    std::tie(s.slot_idx, s.token_idx, s.row_of_slot, s.counts, s.ends) =
        kernels::raw::counting_sort_slots(expert_idx, num_experts);
    return s;
  }
  const auto flat = expert_idx.reshape({-1});
  const auto slot_idx = every_slot_routed ? torch::arange(flat.size(0), flat.options())
                                          : flat.ge(0).logical_and(flat.lt(num_experts)).nonzero().reshape({-1});
  const auto experts = every_slot_routed ? flat : flat.index_select(0, slot_idx);
  // Sorted as the narrowest integer type that holds every id: a radix sort makes one pass per key
  // byte (int64 ids: 8 passes where uint8 needs one). The stable order is the same.
  const auto key_type = num_experts <= 256 ? torch::kUInt8 : num_experts <= 32768 ? torch::kInt16 : torch::kInt32;
  const auto order = std::get<1>(experts.to(key_type).sort(/*stable=*/true, 0, /*descending=*/false));
  s.slot_idx = slot_idx.index_select(0, order);
  s.token_idx = s.slot_idx.div(k, "floor");
  s.row_of_slot = kernels::rows_of_slots(s.slot_idx, num_tokens, k);
  // Rows per expert from the sorted ids by binary search: no atomics, no host sync.
  const auto sorted = experts.index_select(0, order);
  const auto bounds = torch::searchsorted(sorted, torch::arange(num_experts + 1, sorted.options()));
  s.counts = (bounds.narrow(0, 1, num_experts) - bounds.narrow(0, 0, num_experts)).to(torch::kInt64);
  return s;
}

Dispatched LocalDispatcher::dispatch(const torch::Tensor& x, const torch::Tensor& expert_idx,
                                     const torch::Tensor& gates) {
  const auto slots = sort_slots_by_expert(expert_idx, num_experts_, every_slot_routed_);
  Dispatched d;
  d.tokens = kernels::permute(x, slots.token_idx, slots.row_of_slot);
  d.slot_gates = gates.reshape({-1}).index_select(0, slots.slot_idx);
  d.tokens_per_expert = slots.counts;
  d.expert_ends = slots.ends;
  d.state = std::make_shared<LocalState>(LocalState{slots.token_idx, slots.row_of_slot, x.size(0)});
  return d;
}

torch::Tensor LocalDispatcher::combine_weighted(const torch::Tensor& expert_out, const torch::Tensor& gates,
                                                const Dispatched& dispatched) {
  const auto& state = *static_cast<const LocalState*>(dispatched.state.get());
  return kernels::unpermute(expert_out, gates, state.token_idx, state.row_of_slot);
}

std::vector<int64_t> LocalDispatcher::local_expert_ids() const {
  std::vector<int64_t> ids(num_experts_);
  std::iota(ids.begin(), ids.end(), 0);
  return ids;
}

}  // namespace switchyard::modules
