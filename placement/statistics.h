// Routing statistics of a trace, the planner's input.
#pragma once

#include <cstdint>
#include <vector>

#include "placement/routing_trace.h"

namespace switchyard::placement {

/// Statistics of one layer: slots per expert, co-activation counts (tokens that chose both e and f,
/// e != f, row-major [E, E]) and, against the next layer, transitions [E, E] (token chose e here and
/// f there; empty for the last layer).
struct LayerStats {
  std::vector<int64_t> load;
  std::vector<int64_t> coactivation;
  std::vector<int64_t> transitions;
};
std::vector<LayerStats> routing_statistics(const RoutingTrace& trace);

}  // namespace switchyard::placement
