// Routing traces: which experts each traced token chose in every MoE layer, in memory and as files
// (Protobuf, placement/proto/routing_trace.proto).
#pragma once

#include <string>

#include <cstdint>
#include <vector>

namespace switchyard::placement {

/// The routing of one MoE layer over traced tokens: token t chose experts[t * k .. t * k + k) (-1 =
/// no expert) and came from EP rank source_rank[t].
struct LayerRouting {
  int64_t top_k = 1;
  std::vector<int32_t> experts;
  std::vector<float> gates;
  std::vector<int32_t> source_rank;
  int64_t num_tokens() const { return static_cast<int64_t>(source_rank.size()); }
};

/// A routing trace: every MoE layer on the same tokens.
struct RoutingTrace {
  int64_t num_experts = 0;
  int64_t ep_size = 1;  ///< EP ranks the source ranks refer to
  std::vector<LayerRouting> layers;
};

struct TraceInfo {
  int64_t step = 0, world_size = 1, ranks_per_node = 1;
  int64_t d_model = 0, activation_bytes = 4;
};

/// Atomic (temporary file, then rename). Throws DataError naming the file.
void write_routing_trace(const std::string& path, const RoutingTrace& trace, const TraceInfo& info);
/// Throws DataError naming the file when it is missing, not a trace, or inconsistent.
RoutingTrace read_routing_trace(const std::string& path, TraceInfo* info = nullptr);

}  // namespace switchyard::placement
