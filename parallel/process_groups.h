// Topology (rank -> node, local rank), the communicator groups of expert parallelism, and expert
// placement (which rank of the expert-parallel group holds each expert).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "core/config.h"
#include "parallel/communicator.h"

namespace switchyard::parallel {

/// Where each world rank runs. Detected (ranks on one host form a node) or emulated with
/// `parallel.ranks_per_node: N` (nodes of N consecutive ranks).
struct Topology {
  int world_size = 1;
  int rank = 0;
  std::vector<int> node_of_rank;  ///< world rank -> node index (nodes numbered by their lowest rank)
  bool emulated = false;

  int node_idx() const { return node_of_rank[rank]; }
  int num_nodes() const;
  /// Ranks per node when every node has the same number of consecutive ranks, else 0.
  int uniform_ranks_per_node() const;

  /// Collective over `world`.
  static Topology detect(Communicator& world, int64_t ranks_per_node);
};

/// Node index of every rank of `world`: ranks whose hosts have the same name share a node (nodes
/// numbered by their lowest rank). Collective over `world` (one all-gather of host names).
std::vector<int> detect_physical_nodes(Communicator& world);

/// This rank's index among the ranks of its physical node, and how many ranks share that node
/// (emulated nodes play no part: they move no GPU). Collective over `world`.
struct NodeLocal {
  int rank = 0, size = 1;
};
NodeLocal physical_node_local(Communicator& world);

/// The groups of one run. Expert-parallel (EP) groups are blocks of `expert_parallel` consecutive
/// ranks, each holding one copy of all experts; the expert data-parallel group of a rank is the ranks
/// with its EP rank in every EP group. Inside an EP group, nodes hold `ep_ranks_per_node` consecutive
/// EP ranks: `ep_intra_node` connects those, `ep_inter_node` the EP ranks with the same local rank.
struct ProcessGroups {
  std::shared_ptr<Communicator> world, ep, expert_dp, ep_intra_node, ep_inter_node;
  Topology topology;
  int ep_size = 1, ep_rank = 0;
  int ep_ranks_per_node = 1;  ///< G' (0 when nodes do not align with the EP group: flat only)
  int ep_num_nodes = 1;
  int ep_node_idx = 0, ep_local_rank = 0;

  /// Whether EP peer `ep_peer` is on another node than this rank.
  bool ep_peer_is_remote(int ep_peer) const;

  /// Collective over `world`. Throws ConfigError naming the key when the layout does not fit.
  static std::shared_ptr<ProcessGroups> create(std::shared_ptr<Communicator> world, const core::ParallelConfig& config);
};


}  // namespace switchyard::parallel
