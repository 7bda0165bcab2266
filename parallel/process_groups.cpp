// Topology detection and group construction.
#include "parallel/process_groups.h"

#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>

#include "core/error.h"

namespace switchyard::parallel {

int Topology::num_nodes() const {
  return static_cast<int>(std::set<int>(node_of_rank.begin(), node_of_rank.end()).size());
}

int Topology::uniform_ranks_per_node() const {
  const int nodes = num_nodes();
  if (world_size % nodes != 0) return 0;
  const int per_node = world_size / nodes;
  for (int r = 0; r < world_size; ++r) {
    if (node_of_rank[r] != r / per_node) return 0;
  }
  return per_node;
}

std::vector<int> detect_physical_nodes(Communicator& world) {
  // Host names, fixed-width and zero-padded, gathered in rank order; a node is named by its lowest rank.
  constexpr int64_t kNameBytes = 256;
  auto mine = torch::zeros({kNameBytes}, torch::kUInt8);
  ::gethostname(reinterpret_cast<char*>(mine.data_ptr<uint8_t>()), kNameBytes - 1);
  const auto all = world.all_gather(mine).view({world.size(), kNameBytes}).contiguous();
  std::vector<std::string> names;
  for (int r = 0; r < world.size(); ++r) names.emplace_back(reinterpret_cast<const char*>(all[r].data_ptr<uint8_t>()));
  std::vector<int> node_of_rank(world.size());
  std::map<std::string, int> node_of_name;
  for (int r = 0; r < world.size(); ++r) {
    node_of_rank[r] = node_of_name.emplace(names[r], static_cast<int>(node_of_name.size())).first->second;
  }
  return node_of_rank;
}

NodeLocal physical_node_local(Communicator& world) {
  const auto node_of_rank = detect_physical_nodes(world);
  const int me = world.rank();
  NodeLocal local{0, 0};
  for (int r = 0; r < world.size(); ++r) {
    if (node_of_rank[r] != node_of_rank[me]) continue;
    if (r < me) ++local.rank;
    ++local.size;
  }
  return local;
}

Topology Topology::detect(Communicator& world, int64_t ranks_per_node) {
  Topology t;
  t.world_size = world.size();
  t.rank = world.rank();
  t.node_of_rank.resize(t.world_size);
  if (ranks_per_node > 0) {
    SY_ASSERT(t.world_size % ranks_per_node == 0, "ParallelConfig::validate_for_world admits only dividing ranks_per_node");
    t.emulated = true;
    for (int r = 0; r < t.world_size; ++r) t.node_of_rank[r] = static_cast<int>(r / ranks_per_node);
  } else {
    t.node_of_rank = detect_physical_nodes(world);
  }
  return t;
}

bool ProcessGroups::ep_peer_is_remote(int ep_peer) const {
  const int base = topology.rank - ep_rank;  // world rank of EP rank 0 of this group
  return topology.node_of_rank[base + ep_peer] != topology.node_idx();
}

std::shared_ptr<ProcessGroups> ProcessGroups::create(std::shared_ptr<Communicator> world,
                                                     const core::ParallelConfig& config) {
  config.validate_for_world(world->size());
  auto g = std::make_shared<ProcessGroups>();
  g->world = world;
  g->topology = Topology::detect(*world, config.ranks_per_node);
  const int rank = world->rank();
  const int ep = static_cast<int>(config.expert_parallel);
  g->ep_size = ep;
  g->ep_rank = rank % ep;
  g->ep = world->split(rank / ep, rank);
  g->expert_dp = world->split(rank % ep, rank);

  // Nodes inside the EP group: whole nodes (EP a multiple of G) or one partial node (G a multiple of EP).
  const int per_node = g->topology.uniform_ranks_per_node();
  if (per_node > 0 && ep % per_node == 0) {
    g->ep_ranks_per_node = per_node;
  } else if (per_node > 0 && per_node % ep == 0) {
    g->ep_ranks_per_node = ep;
  } else {
    g->ep_ranks_per_node = 0;
  }
  if (g->ep_ranks_per_node > 0) {
    g->ep_num_nodes = ep / g->ep_ranks_per_node;
    g->ep_node_idx = g->ep_rank / g->ep_ranks_per_node;
    g->ep_local_rank = g->ep_rank % g->ep_ranks_per_node;
    g->ep_intra_node = g->ep->split(g->ep_node_idx, g->ep_rank);
    g->ep_inter_node = g->ep->split(g->ep_local_rank, g->ep_rank);
  } else {
    // Keep the collective call sequence identical on all ranks.
    g->ep_intra_node = g->ep->split(0, g->ep_rank);
    g->ep_inter_node = g->ep_intra_node;
    SY_CHECK_AS(ConfigError, config.dispatcher != core::DispatcherKind::kHierarchical,
                "parallel.dispatcher: hierarchical needs nodes of equal size that align with the expert-parallel "
                "group (parallel.expert_parallel ", ep, "); set parallel.ranks_per_node or use flat");
  }
  return g;
}

}  // namespace switchyard::parallel
