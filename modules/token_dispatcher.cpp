// LocalDispatcher: the single-process token exchange every distributed dispatcher is tested against.
#include "modules/token_dispatcher.h"

#include <numeric>

namespace switchyard::modules {
namespace {

struct LocalState {
  torch::Tensor token_idx;
  int64_t num_tokens;
};

}  // namespace

SortedSlots sort_slots_by_expert(const torch::Tensor& expert_idx, int64_t num_experts) {
  const int64_t k = expert_idx.size(1);
  const auto flat = expert_idx.reshape({-1});
  const auto slot_idx = flat.ge(0).logical_and(flat.lt(num_experts)).nonzero().reshape({-1});
  const auto experts = flat.index_select(0, slot_idx);
  const auto order = std::get<1>(experts.sort(/*stable=*/true, 0, /*descending=*/false));
  SortedSlots s;
  s.slot_idx = slot_idx.index_select(0, order);
  s.expert = experts.index_select(0, order);
  s.token_idx = s.slot_idx.div(k, "floor");
  return s;
}

Dispatched LocalDispatcher::dispatch(const torch::Tensor& x, const torch::Tensor& expert_idx,
                                     const torch::Tensor& gates) {
  const auto slots = sort_slots_by_expert(expert_idx, num_experts_);
  Dispatched d;
  d.tokens = x.index_select(0, slots.token_idx);
  d.slot_gates = gates.reshape({-1}).index_select(0, slots.slot_idx);
  d.tokens_per_expert = torch::bincount(slots.expert, {}, num_experts_);
  d.state = std::make_shared<LocalState>(LocalState{slots.token_idx, x.size(0)});
  return d;
}

torch::Tensor LocalDispatcher::combine(const torch::Tensor& weighted, const Dispatched& dispatched) {
  const auto& state = *static_cast<const LocalState*>(dispatched.state.get());
  return torch::zeros({state.num_tokens, weighted.size(1)}, weighted.options()).index_add(0, state.token_idx, weighted);
}

std::vector<int64_t> LocalDispatcher::local_expert_ids() const {
  std::vector<int64_t> ids(num_experts_);
  std::iota(ids.begin(), ids.end(), 0);
  return ids;
}

}  // namespace switchyard::modules
