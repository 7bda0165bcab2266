// Expert placement by optimization (docs/placement.md): per MoE layer, staged node-then-rank
// partitions of the experts (partition.h) that cut the traffic the traffic model predicts from a
// routing trace's statistics, solved by greedy + local search and, with COIN-OR CBC, by an ILP.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "placement/routing_trace.h"
#include "placement/traffic_model.h"

namespace switchyard::placement {

enum class PlanObjective {
  kCoactivation,  ///< co-chosen experts together (training)
  kInterLayer,    ///< ExFlow: a token's experts of consecutive layers together
};
enum class PlanSolver {
  kIlp,     ///< CBC, started from greedy; greedy where CBC is absent
  kGreedy,
};
/// Which placements `PlanReport::bound` holds for.
enum class BoundScope {
  kAnyPlacement,
  kEachLayerGivenThePrevious,
};
const char* name(PlanObjective objective);
const char* name(PlanSolver solver);
const char* name(BoundScope scope);

struct PlannerOptions {
  PlanTopology topology;
  PlanObjective objective = PlanObjective::kCoactivation;
  PlanSolver solver = PlanSolver::kIlp;
  double load_slack = 0.1;         ///< per-rank load <= (1 + slack) * mean
  double time_limit_s = 60;        ///< ILP wall time over all layers
  double relative_gap = 0.01;
  double inter_node_weight = 4.0;  ///< cost of an inter-node row against an intra-node one
  uint64_t seed = 1;
};

struct LayerPlan {
  std::vector<int64_t> owner;  ///< expert -> EP rank
  double objective = 0;        ///< weighted rows per token of this layer's chosen plan
};

/// The plan and the numbers of the JSON report (objectives: weighted rows per traced token, summed
/// over layers; rows: per traced token, summed over layers).
///   objective_plan: the written plan's (per layer the better of greedy and ILP, never worse than
///     contiguous); objective_ilp: the ILP path's alone.
///   bound: a lower bound on the objective, over `bound_scope`: any placement (coactivation: the
///     node stage's bound, or the rank stage's when one node holds every rank), or each layer given
///     the previous (inter_layer places layer after layer, as ExFlow does).
///   gap = (objective_plan - bound) / objective_plan; ilp_optimal: that gap is 0 (proven optimal).
///   stage_gap (coactivation): the ILP path against the sum of its stages' bounds, each stage given
///     the one before (how well each stage was solved, not a bound on the whole problem).
struct PlanReport {
  std::vector<LayerPlan> layers;
  double objective_contiguous = 0, objective_greedy = 0, objective_ilp = -1, objective_plan = 0;
  double bound = -1, gap = -1, stage_bound = 0, stage_gap = -1, solve_s = 0;
  bool ilp_optimal = false;
  BoundScope bound_scope = BoundScope::kAnyPlacement;
  PlanSolver solver_used = PlanSolver::kGreedy;
  double inter_node_rows = 0, intra_node_rows = 0, inter_node_rows_contiguous = 0, intra_node_rows_contiguous = 0;
  double load_max_over_mean = 0, load_max_over_mean_contiguous = 0;
};

/// Plans every layer of `trace` (collective-free, single process).
PlanReport plan_placement(const RoutingTrace& trace, const PlannerOptions& options);

/// What the `switchyard plan` report line adds to a PlanReport: rows become bytes per traced token.
struct PlanReportContext {
  std::string plan_path;
  double bytes_per_row = 0;
  int64_t tokens = 0, moe_layers = 0;
  double best_possible_inter_node_rows = -1;  ///< -1: not computed (--exhaustive)
};
/// The report as one JSON object.
std::string report_json(const PlanReport& report, const PlanReportContext& context);

}  // namespace switchyard::placement
