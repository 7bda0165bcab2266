// Expert placement plan files: which expert-parallel rank holds each expert of each MoE layer, as
// readable, diffable YAML. Written by the planner; read by `parallel.placement`.
//
//   # switchyard placement plan
//   expert_parallel: 4
//   layers:
//     - [0, 0, 1, 1, 2, 2, 3, 3]   # MoE layer 0: EP rank of expert 0, 1, ...
#pragma once

#include <string>
#include <vector>

#include "placement/expert_placement.h"

namespace switchyard::placement {

/// Reads and validates a plan against the model (MoE layers, experts) and the run (EP size).
/// Throws ConfigError naming the file, the layer and the expert or rank at fault.
std::vector<ExpertPlacement> load_placement_plan(const std::string& path, int64_t num_moe_layers,
                                                 int64_t num_experts, int64_t ep_size);
/// Writes a plan that load_placement_plan reads back to the same placements.
void save_placement_plan(const std::string& path, const std::vector<ExpertPlacement>& placements, int64_t ep_size);

}  // namespace switchyard::placement
