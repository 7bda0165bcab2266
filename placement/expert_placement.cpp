#include "placement/expert_placement.h"

#include "core/error.h"

namespace switchyard::placement {

ExpertPlacement::ExpertPlacement(std::vector<int64_t> owner, int64_t ep_size)
    : owner_(std::move(owner)), local_index_(owner_.size()), ep_size_(ep_size) {
  const int64_t num = num_experts();
  SY_CHECK_AS(ConfigError, num % ep_size == 0, "placement: ", num, " experts do not split over ", ep_size, " ranks");
  experts_per_rank_ = num / ep_size;
  std::vector<int64_t> held(ep_size, 0);
  for (int64_t e = 0; e < num; ++e) {
    SY_CHECK_AS(ConfigError, owner_[e] >= 0 && owner_[e] < ep_size, "placement: expert ", e, " is on rank ", owner_[e],
                ", outside [0, ", ep_size, ")");
    local_index_[e] = held[owner_[e]]++;
  }
  for (int64_t r = 0; r < ep_size; ++r) {
    SY_CHECK_AS(ConfigError, held[r] == experts_per_rank_, "placement: rank ", r, " holds ", held[r],
                " experts, expected ", experts_per_rank_);
  }
}

ExpertPlacement ExpertPlacement::contiguous(int64_t num_experts, int64_t ep_size) {
  std::vector<int64_t> owner(num_experts);
  for (int64_t e = 0; e < num_experts; ++e) owner[e] = e / (num_experts / ep_size);
  return ExpertPlacement(owner, ep_size);
}

std::vector<int64_t> ExpertPlacement::experts_of(int64_t ep_rank) const {
  std::vector<int64_t> ids;
  for (int64_t e = 0; e < num_experts(); ++e)
    if (owner_[e] == ep_rank) ids.push_back(e);
  return ids;
}

}  // namespace switchyard::placement
