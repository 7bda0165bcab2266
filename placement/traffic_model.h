// The traffic a placement causes: rows per traced token across and inside nodes, bytes per row.
#pragma once

#include <cstdint>
#include <vector>

#include "core/config.h"
#include "placement/routing_trace.h"

namespace switchyard::placement {

/// Where ranks sit: `ranks` EP ranks in nodes of `ranks_per_node` consecutive ranks.
struct PlanTopology {
  int64_t ranks = 1;
  int64_t ranks_per_node = 1;
  int64_t nodes() const { return ranks / ranks_per_node; }
  int64_t node_of(int64_t rank) const { return rank / ranks_per_node; }
};

/// Rows a layer's exchange moves per traced token, as ExpertParallelDispatcher (dedup on) sends them:
/// hierarchical: one row per (token, other node it needs) across nodes, then one per (token, other
/// rank it needs) inside each node, from the rank with the source's local rank; flat: one row per
/// (token, other rank it needs), inter- or intra-node by the pair of ranks.
struct RowCounts {
  double inter_node = 0, intra_node = 0;
};
RowCounts predict_rows(const LayerRouting& layer, const std::vector<int64_t>& owner, const PlanTopology& topo,
                       core::DispatcherKind kind);

/// Bytes one exchanged row costs over a training step (dispatch forward and backward, combine
/// forward and backward, metadata), for activations of `d_model` elements of `activation_bytes`.
double bytes_per_row(int64_t d_model, int64_t top_k, int64_t activation_bytes);

/// The fewest inter-node rows per token any placement of this layer can reach (hierarchical
/// dispatcher, load ignored), by enumerating every split of the experts over two nodes; -1 when the
/// topology has another node count or the enumeration would exceed `max_splits`.
double best_inter_node_rows_exhaustive(const LayerRouting& layer, int64_t num_experts, const PlanTopology& topo,
                                       int64_t max_splits = 2000000);

}  // namespace switchyard::placement
