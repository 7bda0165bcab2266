// The rows a placement makes the exchange move (mirroring the dispatchers' row structure), and what
// a row costs in bytes.
#include "placement/traffic_model.h"

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <map>
#include <numeric>
#include <set>

namespace switchyard::placement {

RowCounts predict_rows(const LayerRouting& layer, const std::vector<int64_t>& owner, const PlanTopology& topo,
                       core::DispatcherKind kind) {
  RowCounts rows;
  const int64_t k = layer.top_k, rpn = topo.ranks_per_node;
  std::vector<int64_t> ranks;
  for (int64_t t = 0; t < layer.num_tokens(); ++t) {
    ranks.clear();
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = layer.experts[t * k + j];
      if (e >= 0) ranks.push_back(owner[e]);
    }
    std::sort(ranks.begin(), ranks.end());
    ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
    const int64_t src = layer.source_rank[t];
    if (kind == core::DispatcherKind::kFlat) {
      for (int64_t r : ranks) {
        if (r == src) continue;
        (topo.node_of(r) != topo.node_of(src) ? rows.inter_node : rows.intra_node) += 1;
      }
      continue;
    }
    int64_t last_node = -1;
    for (int64_t r : ranks) {  // ranks sorted, so each node's ranks are adjacent
      const int64_t n = topo.node_of(r);
      if (n != last_node && n != topo.node_of(src)) rows.inter_node += 1;
      last_node = n;
      if (r % rpn != src % rpn) rows.intra_node += 1;  // sent on by the rank with the source's local rank
    }
  }
  const double tokens = std::max<int64_t>(1, layer.num_tokens());
  rows.inter_node /= tokens;
  rows.intra_node /= tokens;
  return rows;
}

double best_inter_node_rows_exhaustive(const LayerRouting& layer, int64_t num_experts, const PlanTopology& topo,
                                       int64_t max_splits) {
  if (topo.nodes() != 2 || num_experts > 62 || num_experts % 2 != 0) return -1;
  // C(E, E/2) / 2 splits (expert 0 fixed on node 0), each with both node labels.
  double splits = 1;
  for (int64_t i = 0; i < num_experts / 2; ++i)
    splits = splits * static_cast<double>(num_experts - i) / static_cast<double>(i + 1);
  if (splits / 2 > static_cast<double>(max_splits)) return -1;
  // Patterns: (source node, expert mask) -> tokens.
  std::map<std::pair<int, uint64_t>, double> patterns;
  for (int64_t t = 0; t < layer.num_tokens(); ++t) {
    uint64_t mask = 0;
    for (int64_t j = 0; j < layer.top_k; ++j) {
      const int32_t e = layer.experts[t * layer.top_k + j];
      if (e >= 0) mask |= uint64_t{1} << e;
    }
    if (mask) patterns[{static_cast<int>(topo.node_of(layer.source_rank[t])), mask}] += 1;
  }
  const int64_t half = num_experts / 2;
  double best = -1;
  // Enumerate masks of node 0 with popcount half containing expert 0 (Gosper's hack over the others).
  const int64_t rest = num_experts - 1;
  for (uint64_t m = (uint64_t{1} << (half - 1)) - 1; m < (uint64_t{1} << rest);) {
    const uint64_t node0 = (m << 1) | 1;
    // Both labelings of the split: tokens pay for the node that is not theirs.
    double rows = 0, swapped = 0;
    for (const auto& [key, count] : patterns) {
      const bool on0 = (key.second & node0) != 0, on1 = (key.second & ~node0) != 0;
      rows += count * ((key.first == 0 ? on1 : on0) ? 1.0 : 0.0);
      swapped += count * ((key.first == 0 ? on0 : on1) ? 1.0 : 0.0);
    }
    rows = std::min(rows, swapped);
    if (best < 0 || rows < best) best = rows;
    if (m == 0) break;
    const uint64_t c = m & (~m + 1), r = m + c;
    m = (((r ^ m) >> 2) / c) | r;
  }
  return best / static_cast<double>(std::max<int64_t>(1, layer.num_tokens()));
}

double bytes_per_row(int64_t d_model, int64_t top_k, int64_t activation_bytes) {
  // Dispatch: rows + fp32 gates forward and their gradients back; int64 metadata (k targets + origin)
  // forward only. Combine: rows forward, gradients back.
  const double row = static_cast<double>(d_model * activation_bytes);
  const double gates = 4.0 * static_cast<double>(top_k);
  return 2 * (row + gates) + 8.0 * static_cast<double>(top_k + 1) + 2 * row;
}

}  // namespace switchyard::placement
