// Expert placement by optimization (docs/placement.md): routing statistics from a trace, the
// traffic a placement causes (mirroring the dispatchers' row structure), and the planner: staged
// node-then-rank partitions solved by greedy + local search and by an ILP through COIN-OR CBC.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"

namespace switchyard::parallel {

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

/// Statistics of one layer: slots per expert, co-activation counts (tokens that chose both e and f,
/// e != f, row-major [E, E]) and, against the next layer, transitions [E, E] (token chose e here and
/// f there; empty for the last layer).
struct LayerStats {
  std::vector<int64_t> load;
  std::vector<int64_t> coactivation;
  std::vector<int64_t> transitions;
};
std::vector<LayerStats> routing_statistics(const RoutingTrace& trace);

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

struct PlannerOptions {
  PlanTopology topology;
  std::string objective = "coactivation";  ///< coactivation, or inter_layer (ExFlow)
  std::string solver = "ilp";               ///< ilp (CBC; greedy where CBC is absent) or greedy
  double load_slack = 0.1;                  ///< per-rank load <= (1 + slack) * mean
  double time_limit_s = 60;                 ///< ILP wall time over all layers
  double relative_gap = 0.01;
  double inter_node_weight = 4.0;           ///< cost of an inter-node row against an intra-node one
  uint64_t seed = 1;
};

struct LayerPlan {
  std::vector<int64_t> owner;  ///< expert -> EP rank
  double objective = 0;        ///< weighted rows per token of this layer's chosen plan
};

/// The plan and the numbers of the JSON report (objectives: weighted rows per traced token, summed
/// over layers; bytes: per traced token, summed over layers).
///   objective_plan: the written plan's (per layer the better of greedy and ILP, never worse than
///     contiguous); objective_ilp: the ILP path's alone.
///   bound: a lower bound on the objective, over `bound_scope`: "any_placement" (coactivation: the
///     node stage's bound, or the rank stage's when one node holds every rank), or
///     "each_layer_given_the_previous" (inter_layer places layer after layer, as ExFlow does).
///   gap = (objective_plan - bound) / objective_plan; ilp_optimal: that gap is 0 (proven optimal).
///   stage_gap (coactivation): the ILP path against the sum of its stages' bounds, each stage given
///     the one before (how well each stage was solved, not a bound on the whole problem).
struct PlanReport {
  std::vector<LayerPlan> layers;
  double objective_contiguous = 0, objective_greedy = 0, objective_ilp = -1, objective_plan = 0;
  double bound = -1, gap = -1, stage_bound = 0, stage_gap = -1, solve_s = 0;
  bool ilp_optimal = false;
  std::string bound_scope;
  std::string solver_used;
  double inter_node_rows = 0, intra_node_rows = 0, inter_node_rows_contiguous = 0, intra_node_rows_contiguous = 0;
  double load_max_over_mean = 0, load_max_over_mean_contiguous = 0;
};

/// Plans every layer of `trace` (collective-free, single process). Throws UsageError on bad options.
PlanReport plan_placement(const RoutingTrace& trace, const PlannerOptions& options);

/// The fewest inter-node rows per token any placement of this layer can reach (hierarchical
/// dispatcher, load ignored), by enumerating every split of the experts over two nodes; -1 when the
/// topology has another node count or the enumeration would exceed `max_splits`.
double best_inter_node_rows_exhaustive(const LayerRouting& layer, int64_t num_experts, const PlanTopology& topo,
                                       int64_t max_splits = 2000000);

// --- The staged partition problem, exposed for tests. ---

/// Assign items (experts) to `bins` (nodes, or ranks of one node), exactly items / bins each, each
/// bin's load <= max_bin_load, minimizing sum_p weight_p * |{bins b != home_p touched by items_p}|.
struct PartitionProblem {
  int64_t items = 0, bins = 1;
  std::vector<double> load;  ///< per item
  double max_bin_load = 0;
  struct Pattern {
    std::vector<int32_t> items;
    int32_t home = -1;  ///< -1: every touched bin counts
    double weight = 1;
  };
  std::vector<Pattern> patterns;
  double cost(const std::vector<int32_t>& bin_of) const;
  /// Bin `bin`'s share of the cost when it holds `set`: the weight of patterns (home != bin) meeting it.
  /// cost(bin_of) is the sum of every bin's share.
  double bin_cost(int32_t bin, const std::vector<int32_t>& set) const;
  bool feasible(const std::vector<int32_t>& bin_of) const;
};

struct PartitionResult {
  std::vector<int32_t> bin_of;
  double cost = 0;
  double bound = -1;  ///< the ILP's lower bound (-1: none)
  bool optimal = false;
};

/// Greedy construction (heaviest co-activated items first, into the bin that adds least cost) then
/// pairwise-swap local search; deterministic for a seed.
PartitionResult solve_greedy(const PartitionProblem& problem, uint64_t seed);
/// The ILP through CBC, started from `start`; throws when CBC is not built in.
PartitionResult solve_ilp(const PartitionProblem& problem, const PartitionResult& start, double time_limit_s,
                          double relative_gap);
bool ilp_available();

/// The set-partitioning relaxation (a column is one bin's whole content) by column generation, for
/// more than two bins: its Lagrangian bound, and the best assignment among the generated contents
/// (restricted master in CBC) or `start`, whichever costs less. It stops early once `start` is within
/// `relative_gap` of the bound. Throws when CBC is not built in.
PartitionResult solve_set_partition(const PartitionProblem& problem, const PartitionResult& start, double time_limit_s,
                                    double relative_gap);

/// The pricing of the column generation, exposed for tests: the least bin_cost(bin, S) - sum_{i in S}
/// price[i] over contents S of items / bins items within the load cap, by branch and bound. Exact for
/// patterns of one or two items; with larger patterns a lower bound. `complete` is false when the search
/// stopped at its node limit.
struct BinPricing {
  double min_value = 0;
  std::vector<int32_t> best_set;  ///< sorted; empty when no content fits the cap
  bool complete = true;
};
BinPricing price_bin(const PartitionProblem& problem, int32_t bin, const std::vector<double>& price);

}  // namespace switchyard::parallel
