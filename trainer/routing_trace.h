// Routing trace files (Protobuf, trainer/proto/routing_trace.proto) to and from the planner's
// in-memory RoutingTrace.
#pragma once

#include <string>

#include "parallel/placement_planner.h"

namespace switchyard::trainer {

struct TraceInfo {
  int64_t step = 0, world_size = 1, ranks_per_node = 1;
  int64_t d_model = 0, activation_bytes = 4;
};

/// Atomic (temporary file, then rename). Throws DataError naming the file.
void write_routing_trace(const std::string& path, const parallel::RoutingTrace& trace, const TraceInfo& info);
/// Throws DataError naming the file when it is missing, not a trace, or inconsistent.
parallel::RoutingTrace read_routing_trace(const std::string& path, TraceInfo* info = nullptr);

}  // namespace switchyard::trainer
