// Routing trace files.
#include "placement/routing_trace.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/file_io.h"
#include "placement/proto/routing_trace.pb.h"

namespace switchyard::placement {

void write_routing_trace(const std::string& path, const RoutingTrace& trace, const TraceInfo& info) {
  proto::RoutingTrace m;
  m.set_version(1);
  m.set_step(static_cast<uint64_t>(info.step));
  m.set_num_experts(static_cast<uint32_t>(trace.num_experts));
  m.set_ep_size(static_cast<uint32_t>(trace.ep_size));
  m.set_world_size(static_cast<uint32_t>(info.world_size));
  m.set_ranks_per_node(static_cast<uint32_t>(info.ranks_per_node));
  m.set_d_model(static_cast<uint32_t>(info.d_model));
  m.set_activation_bytes(static_cast<uint32_t>(info.activation_bytes));
  for (size_t l = 0; l < trace.layers.size(); ++l) {
    const auto& layer = trace.layers[l];
    auto* out = m.add_layers();
    out->set_moe_layer(static_cast<uint32_t>(l));
    out->set_top_k(static_cast<uint32_t>(layer.top_k));
    *out->mutable_experts() = {layer.experts.begin(), layer.experts.end()};
    *out->mutable_gates() = {layer.gates.begin(), layer.gates.end()};
    *out->mutable_source_rank() = {layer.source_rank.begin(), layer.source_rank.end()};
  }
  std::string bytes;
  SY_CHECK_AS(DataError, m.SerializeToString(&bytes), path, ": cannot serialize the routing trace");
  core::write_file_atomically(path, bytes);
}

RoutingTrace read_routing_trace(const std::string& path, TraceInfo* info) {
  std::ifstream f(path, std::ios::binary);
  SY_CHECK_AS(DataError, f.good(), path, ": cannot open the routing trace");
  proto::RoutingTrace m;
  SY_CHECK_AS(DataError, m.ParseFromIstream(&f) && m.version() == 1, path, ": not a routing trace (version 1)");
  RoutingTrace trace;
  trace.num_experts = m.num_experts();
  trace.ep_size = m.ep_size();
  SY_CHECK_AS(DataError, trace.num_experts > 0 && trace.ep_size > 0 && m.layers_size() > 0, path,
              ": routing trace without experts, ranks or layers");
  for (const auto& layer : m.layers()) {
    LayerRouting r;
    r.top_k = layer.top_k();
    r.experts.assign(layer.experts().begin(), layer.experts().end());
    r.gates.assign(layer.gates().begin(), layer.gates().end());
    r.source_rank.assign(layer.source_rank().begin(), layer.source_rank().end());
    SY_CHECK_AS(DataError, r.top_k > 0 && static_cast<int64_t>(r.experts.size()) == r.num_tokens() * r.top_k &&
                               r.gates.size() == r.experts.size(),
                path, ": MoE layer ", layer.moe_layer(), " has ", r.experts.size(), " expert ids for ", r.num_tokens(),
                " tokens of top_k ", r.top_k);
    for (int32_t e : r.experts)
      SY_CHECK_AS(DataError, e >= -1 && e < trace.num_experts, path, ": expert id ", e, " out of range");
    for (int32_t s : r.source_rank)
      SY_CHECK_AS(DataError, s >= 0 && s < trace.ep_size, path, ": source rank ", s, " out of range");
    trace.layers.push_back(std::move(r));
  }
  if (info) {
    info->step = static_cast<int64_t>(m.step());
    info->world_size = m.world_size();
    info->ranks_per_node = m.ranks_per_node();
    info->d_model = m.d_model();
    info->activation_bytes = m.activation_bytes();
  }
  return trace;
}

}  // namespace switchyard::placement
