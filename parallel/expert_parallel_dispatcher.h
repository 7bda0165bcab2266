// Expert-parallel token exchange: flat (one all-to-all-v) and hierarchical (inter-node among ranks
// with the same local rank, then intra-node). Both deduplicate: a token goes once to each node and
// once to each rank, however many of its k experts live there, and is combined there.
//
// NOTES (buffer layout): tokens become "node rows" (token, destination node), sorted by (node,
// token), then "rank rows" (node row, destination local rank), sorted by (node, local rank, node
// row). Each row carries its slots' gates [k] and targets [k] (-1 for slots bound elsewhere) and the
// key of its origin (rank, token). Flat expands node rows to rank rows at the origin and sends rank
// rows; hierarchical sends node rows across nodes and expands them at the same-local-rank peer. The
// destination sorts rows by origin key, so the experts see the same rows in the same order, and
// every sum runs in the same order (slots by local expert, then local ranks, then nodes): the two
// are bitwise equal, forward and backward. The sums and the permutes' backward are the fused
// gather-sum kernels (modules/moe_kernels.h): no atomics, so the exchange is deterministic on GPUs too.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/config.h"
#include "modules/token_dispatcher.h"
#include "placement/expert_placement.h"
#include "parallel/process_groups.h"

namespace switchyard::parallel {

/// Bytes this rank sent to other ranks, by link (bytes to itself are not counted). Cumulative.
struct ExchangeStats {
  int64_t intra_node_bytes = 0;
  int64_t inter_node_bytes = 0;
  /// Wall time inside the exchanges' collectives (CUDA work queued before each one is finished
  /// first, so compute is not counted as exchange).
  double seconds = 0;
};

class ExpertParallelDispatcher : public modules::TokenDispatcher {
 public:
  /// `dedup` false sends one row per slot (for comparison; results equal, more bytes).
  /// `every_slot_routed`: every slot always names an expert (modules::every_slot_routed); with one
  /// EP rank, where nothing is exchanged, the single-process dispatcher then runs without a host sync.
  ExpertParallelDispatcher(std::shared_ptr<ProcessGroups> groups, placement::ExpertPlacement placement,
                           core::DispatcherKind kind, bool dedup = true, bool every_slot_routed = false);

  /// Collective over the EP group (and its node groups for hierarchical).
  modules::Dispatched dispatch(const torch::Tensor& x, const torch::Tensor& expert_idx,
                               const torch::Tensor& gates) override;
  /// The gate weighting fused into the destination's per-row sum (the un-permute kernel).
  torch::Tensor combine_weighted(const torch::Tensor& expert_out, const torch::Tensor& gates,
                                 const modules::Dispatched& dispatched) override;
  std::vector<int64_t> local_expert_ids() const override;

  /// [E] bool: experts held on this rank's node (the LocMoE locality loss target).
  torch::Tensor node_local_expert_mask() const;
  const ExchangeStats& stats() const { return *stats_; }
  void reset_stats() { *stats_ = {}; }
  const placement::ExpertPlacement& placement() const { return placement_; }

 private:
  std::shared_ptr<ProcessGroups> groups_;
  placement::ExpertPlacement placement_;
  core::DispatcherKind kind_;
  bool dedup_;
  std::shared_ptr<ExchangeStats> stats_;
  /// One EP rank: nothing to exchange; the single-process dispatcher (its fused permute and
  /// un-permute, no sorts by origin, no host waits) does the work.
  std::unique_ptr<modules::LocalDispatcher> single_rank_;

  /// The way back from the destination's per-row sums (canonical order) to this rank's tokens.
  torch::Tensor combine_rows(const torch::Tensor& canonical, const modules::Dispatched& dispatched);
};

}  // namespace switchyard::parallel
