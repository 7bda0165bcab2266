// Routing statistics of a trace: load, co-activation and layer-to-layer transitions per expert.
#include "placement/statistics.h"

#include <algorithm>

namespace switchyard::placement {

std::vector<LayerStats> routing_statistics(const RoutingTrace& trace) {
  const int64_t E = trace.num_experts;
  std::vector<LayerStats> stats(trace.layers.size());
  for (size_t l = 0; l < trace.layers.size(); ++l) {
    const auto& layer = trace.layers[l];
    auto& s = stats[l];
    s.load.assign(E, 0);
    s.coactivation.assign(E * E, 0);
    const int64_t k = layer.top_k;
    const LayerRouting* next = l + 1 < trace.layers.size() ? &trace.layers[l + 1] : nullptr;
    if (next) s.transitions.assign(E * E, 0);
    for (int64_t t = 0; t < layer.num_tokens(); ++t) {
      for (int64_t a = 0; a < k; ++a) {
        const int32_t e = layer.experts[t * k + a];
        if (e < 0) continue;
        ++s.load[e];
        for (int64_t b = 0; b < k; ++b) {
          const int32_t f = layer.experts[t * k + b];
          if (b != a && f >= 0 && f != e) ++s.coactivation[e * E + f];
        }
        if (next) {
          for (int64_t b = 0; b < next->top_k; ++b) {
            const int32_t f = next->experts[t * next->top_k + b];
            if (f >= 0) ++s.transitions[e * E + f];
          }
        }
      }
    }
  }
  return stats;
}


}  // namespace switchyard::placement
