// Which expert-parallel rank holds each expert of one MoE layer (docs/placement.md).
#pragma once

#include <cstdint>
#include <vector>

namespace switchyard::placement {

/// Which EP rank holds each expert of one MoE layer, and at which local index.
class ExpertPlacement {
 public:
  /// owner[e] = EP rank holding expert e; every rank must hold the same number of experts.
  ExpertPlacement(std::vector<int64_t> owner, int64_t ep_size);
  static ExpertPlacement contiguous(int64_t num_experts, int64_t ep_size);

  int64_t num_experts() const { return static_cast<int64_t>(owner_.size()); }
  int64_t experts_per_rank() const { return experts_per_rank_; }
  int64_t owner(int64_t expert) const { return owner_[expert]; }
  int64_t local_index(int64_t expert) const { return local_index_[expert]; }
  /// Global ids held by `ep_rank`, ascending (their local order).
  std::vector<int64_t> experts_of(int64_t ep_rank) const;
  const std::vector<int64_t>& owners() const { return owner_; }
  const std::vector<int64_t>& local_indices() const { return local_index_; }

 private:
  std::vector<int64_t> owner_, local_index_;
  int64_t ep_size_, experts_per_rank_;
};

}  // namespace switchyard::placement
