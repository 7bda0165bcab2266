// The planner: staged node-then-rank partitions per layer (or ExFlow's layer-to-layer assignment),
// each solved by greedy + local search and, with CBC, the ILP; the report's numbers.
#include "placement/planner.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <numeric>

#include "core/error.h"
#include "core/json_line.h"
#include "placement/partition.h"
#include "placement/statistics.h"

namespace switchyard::placement {

const char* name(PlanObjective objective) {
  return objective == PlanObjective::kCoactivation ? "coactivation" : "inter_layer";
}
const char* name(PlanSolver solver) { return solver == PlanSolver::kIlp ? "ilp" : "greedy"; }
const char* name(BoundScope scope) {
  return scope == BoundScope::kAnyPlacement ? "any_placement" : "each_layer_given_the_previous";
}

namespace {

/// Patterns of one layer's tokens: the distinct items each token touches (mapped through `item_of`,
/// -1 = not in this problem) with its home bin, aggregated; weight = tokens / total * scale.
std::vector<PartitionProblem::Pattern> token_patterns(const LayerRouting& layer, const std::vector<int32_t>& item_of,
                                                      const std::function<int32_t(int64_t)>& home_of, double scale) {
  std::map<std::pair<int32_t, std::vector<int32_t>>, double> agg;
  const int64_t k = layer.top_k;
  std::vector<int32_t> items;
  for (int64_t t = 0; t < layer.num_tokens(); ++t) {
    items.clear();
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = layer.experts[t * k + j];
      if (e >= 0 && item_of[e] >= 0) items.push_back(item_of[e]);
    }
    if (items.empty()) continue;
    std::sort(items.begin(), items.end());
    items.erase(std::unique(items.begin(), items.end()), items.end());
    agg[{home_of(layer.source_rank[t]), items}] += scale;
  }
  std::vector<PartitionProblem::Pattern> out;
  const double tokens = std::max<int64_t>(1, layer.num_tokens());
  for (auto& [key, w] : agg) out.push_back({key.second, key.first, w / tokens});
  return out;
}

struct StageResult {
  PartitionResult greedy, best;
};

StageResult solve_stage(const PartitionProblem& pb_in, const PlannerOptions& o, bool use_ilp, double time_s) {
  StageResult r;
  r.greedy = solve_greedy(pb_in, o.seed);
  // When no assignment the greedy finds meets the load cap (a few experts carry most tokens), the cap
  // becomes the greedy's heaviest bin: the ILP then cuts traffic without adding imbalance, and has a
  // feasible start.
  PartitionProblem pb = pb_in;
  if (!pb.feasible(r.greedy.bin_of)) {
    std::vector<double> bin_load(pb.bins, 0.0);
    for (int64_t i = 0; i < pb.items; ++i) bin_load[r.greedy.bin_of[i]] += pb.load[i];
    pb.max_bin_load = *std::max_element(bin_load.begin(), bin_load.end()) * (1 + 1e-9);
  }
  const auto t0 = std::chrono::steady_clock::now();
  r.best = use_ilp ? solve_ilp(pb, r.greedy, time_s, o.relative_gap) : r.greedy;
  const double used_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (std::getenv("SWITCHYARD_PLAN_DEBUG")) {
    std::fprintf(stderr, "stage: %lld items, %lld bins, %zu patterns, feasible start %d, greedy %.4f, ilp %.4f, bound %.4f, "
                 "optimal %d, time %.2f of %.2f s\n", (long long)pb.items, (long long)pb.bins, pb.patterns.size(),
                 (int)pb_in.feasible(r.greedy.bin_of), r.greedy.cost, r.best.cost, r.best.bound, (int)r.best.optimal, used_s,
                 time_s);
  }
  return r;
}

double weighted(const RowCounts& rows, double inter_weight) { return inter_weight * rows.inter_node + rows.intra_node; }

double load_ratio(const std::vector<int64_t>& load, const std::vector<int64_t>& owner, int64_t ranks) {
  std::vector<double> per_rank(ranks, 0.0);
  double total = 0;
  for (size_t e = 0; e < owner.size(); ++e) {
    per_rank[owner[e]] += static_cast<double>(load[e]);
    total += static_cast<double>(load[e]);
  }
  return total > 0 ? *std::max_element(per_rank.begin(), per_rank.end()) / (total / static_cast<double>(ranks)) : 1.0;
}

/// A report before any layer: ILP fields -1 when the ILP does not run.
PlanReport start_report(bool use_ilp) {
  PlanReport report;
  report.solver_used = use_ilp ? PlanSolver::kIlp : PlanSolver::kGreedy;
  report.objective_ilp = use_ilp ? 0 : -1;
  report.bound = use_ilp ? 0 : -1;
  return report;
}

/// The plan's objective, and the gap and optimality of the plan against the report's bound.
void finish(PlanReport& report, bool use_ilp) {
  report.objective_plan = 0;
  for (const auto& l : report.layers) report.objective_plan += l.objective;
  if (!use_ilp) return;
  const double slack = report.objective_plan - report.bound;
  report.gap = report.objective_plan > 0 ? slack / report.objective_plan : 0;
  report.ilp_optimal = slack <= 1e-9 * std::max(1.0, report.objective_plan);
}

std::vector<int64_t> contiguous_owner(int64_t experts, int64_t ranks) {
  std::vector<int64_t> owner(experts);
  for (int64_t e = 0; e < experts; ++e) owner[e] = e / (experts / ranks);
  return owner;
}

/// Per-token bytes predictions and load of a finished plan, into the report.
void account(PlanReport& report, const RoutingTrace& trace, const std::vector<LayerStats>& stats,
             const PlanTopology& topo) {
  const int64_t E = trace.num_experts;
  for (size_t l = 0; l < trace.layers.size(); ++l) {
    const auto contiguous = contiguous_owner(E, topo.ranks);
    const auto chosen = predict_rows(trace.layers[l], report.layers[l].owner, topo, core::DispatcherKind::kHierarchical);
    const auto contig = predict_rows(trace.layers[l], contiguous, topo, core::DispatcherKind::kHierarchical);
    report.inter_node_rows += chosen.inter_node;
    report.intra_node_rows += chosen.intra_node;
    report.inter_node_rows_contiguous += contig.inter_node;
    report.intra_node_rows_contiguous += contig.intra_node;
    report.load_max_over_mean = std::max(report.load_max_over_mean, load_ratio(stats[l].load, report.layers[l].owner, topo.ranks));
    report.load_max_over_mean_contiguous =
        std::max(report.load_max_over_mean_contiguous, load_ratio(stats[l].load, contiguous, topo.ranks));
  }
}

/// ExFlow's objective: keep consecutive layers' experts of a token on one rank (for context-coherent
/// dispatch). The first layer stays contiguous; each next layer is an assignment problem against the
/// previous layer's placement: expert f on rank r earns the transitions e -> f per token from experts
/// e on r (full weight) or on r's node (half). As single-item patterns (cost w (1 - x[f][r])) it is a
/// PartitionProblem whose LP is a transportation problem, so the ILP solves it exactly. Objective:
/// the transition distance per token (0 same rank, 0.5 same node, 1 other node), summed over layers.
PlanReport plan_inter_layer(const RoutingTrace& trace, const PlannerOptions& o, const std::vector<LayerStats>& stats) {
  const PlanTopology& topo = o.topology;
  const int64_t E = trace.num_experts, ranks = topo.ranks;
  const bool use_ilp = o.solver == PlanSolver::kIlp && ilp_available();
  PlanReport report = start_report(use_ilp);
  const auto start = std::chrono::steady_clock::now();
  const auto contiguous = contiguous_owner(E, ranks);
  report.layers.push_back({contiguous, 0});
  for (size_t l = 1; l < trace.layers.size(); ++l) {
    const auto& transitions = stats[l - 1].transitions;
    const auto& prev = report.layers[l - 1].owner;
    const double tokens = std::max<int64_t>(1, trace.layers[l].num_tokens());
    PartitionProblem pb;
    pb.items = E;
    pb.bins = ranks;
    pb.load.assign(stats[l].load.begin(), stats[l].load.end());
    pb.max_bin_load = (1 + o.load_slack) * std::accumulate(pb.load.begin(), pb.load.end(), 0.0) / static_cast<double>(ranks);
    // A transition e -> f costs 0 with f on e's rank, 0.5 on its node, 1 elsewhere: 0.5 [f not on
    // rank(e)] + 0.5 [f not on node(e)], and the node term is sum over r' in node(e) of 0.5 [f not on
    // r'] minus the constant 0.5 (ranks_per_node - 1).
    double offset = 0;
    for (int64_t f = 0; f < E; ++f) {
      std::vector<double> earn(ranks, 0.0);
      for (int64_t e = 0; e < E; ++e) {
        const double t = static_cast<double>(transitions[e * E + f]) / tokens;
        if (t == 0) continue;
        offset += 0.5 * t * static_cast<double>(topo.ranks_per_node - 1);
        for (int64_t r = 0; r < ranks; ++r) {
          if (prev[e] == r) earn[r] += t;
          else if (topo.node_of(prev[e]) == topo.node_of(r)) earn[r] += 0.5 * t;
        }
      }
      for (int64_t r = 0; r < ranks; ++r)
        if (earn[r] > 0) pb.patterns.push_back({{static_cast<int32_t>(f)}, static_cast<int32_t>(r), earn[r]});
    }
    // The objective: transition distance per token.
    auto distance = [&](double cost) { return cost - offset; };
    std::vector<int32_t> contig32(contiguous.begin(), contiguous.end());
    const auto greedy = solve_greedy(pb, o.seed);
    auto best = greedy;
    if (use_ilp) {
      const double left = o.time_limit_s - std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      best = solve_ilp(pb, greedy, std::max(0.1, left / static_cast<double>(trace.layers.size() - l)), o.relative_gap);
      report.objective_ilp += distance(best.cost);
      report.bound += distance(best.bound);
    }
    report.objective_contiguous += distance(pb.cost(contig32));
    report.objective_greedy += distance(greedy.cost);
    const auto& chosen = best.cost <= greedy.cost ? best.bin_of : greedy.bin_of;
    LayerPlan plan;
    plan.owner.assign(chosen.begin(), chosen.end());
    plan.objective = distance(pb.cost(chosen));
    report.layers.push_back(std::move(plan));
  }
  report.solve_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  report.bound_scope = BoundScope::kEachLayerGivenThePrevious;
  finish(report, use_ilp);
  account(report, trace, stats, topo);
  return report;
}

}  // namespace

namespace {

/// The ILP's time over the stages: each stage gets its share of what is left (so time a fast stage
/// leaves goes on), the node stage `inter_node_weight` shares and each rank stage one, as their rows
/// weigh in the objective.
class StageClock {
 public:
  StageClock(const PlannerOptions& o, size_t layers)
      : node_share_(o.inter_node_weight),
        units_left_(static_cast<double>(layers) *
                    ((o.topology.nodes() > 1 ? node_share_ : 0.0) + static_cast<double>(o.topology.nodes()))),
        deadline_(std::chrono::steady_clock::now() +
                  std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(o.time_limit_s))) {}
  double node_stage() { return take(node_share_); }
  double rank_stage() { return take(1.0); }

 private:
  double take(double units) {
    const double left = std::chrono::duration<double>(deadline_ - std::chrono::steady_clock::now()).count();
    const double t = std::max(0.1, left * units / std::max(units, units_left_));
    units_left_ -= units;
    return t;
  }
  double node_share_, units_left_;
  std::chrono::steady_clock::time_point deadline_;
};

/// Stage B: within each node, the experts `node_of_expert` puts there to its ranks (intra-node rows,
/// home = the source's local rank). Returns expert -> rank; adds the stages' ILP bounds to `bound`.
std::vector<int64_t> rank_stage(const LayerRouting& layer, const std::vector<int64_t>& load,
                                const std::vector<int32_t>& node_of_expert, const PlannerOptions& o, bool ilp,
                                StageClock& clock, double* bound) {
  const auto& topo = o.topology;
  const int64_t E = static_cast<int64_t>(load.size()), rpn = topo.ranks_per_node;
  const double total_load = std::accumulate(load.begin(), load.end(), 0.0);
  std::vector<int64_t> owner(E, -1);
  for (int64_t n = 0; n < topo.nodes(); ++n) {
    std::vector<int32_t> item_of(E, -1), expert_of_item;
    for (int64_t e = 0; e < E; ++e)
      if (node_of_expert[e] == n) {
        item_of[e] = static_cast<int32_t>(expert_of_item.size());
        expert_of_item.push_back(static_cast<int32_t>(e));
      }
    PartitionProblem pb;
    pb.items = static_cast<int64_t>(expert_of_item.size());
    pb.bins = rpn;
    for (int32_t e : expert_of_item) pb.load.push_back(static_cast<double>(load[e]));
    pb.max_bin_load = (1 + o.load_slack) * total_load / static_cast<double>(topo.ranks);
    pb.patterns = token_patterns(layer, item_of, [&](int64_t src) { return static_cast<int32_t>(src % rpn); }, 1.0);
    const auto b = solve_stage(pb, o, ilp, ilp ? clock.rank_stage() : 0);
    if (bound) *bound += b.best.bound;
    for (int64_t i = 0; i < pb.items; ++i) owner[expert_of_item[i]] = n * rpn + b.best.bin_of[i];
  }
  return owner;
}

/// One layer of the coactivation objective: stage A (experts to nodes: inter-node rows, home = the
/// token's node), stage B per node; greedy and (with the ILP) the best path; the report's sums.
void plan_coactivation_layer(const LayerRouting& layer, const std::vector<int64_t>& load, const PlannerOptions& o,
                             bool use_ilp, StageClock& clock, PlanReport& report) {
  const auto& topo = o.topology;
  const int64_t E = static_cast<int64_t>(load.size()), nodes = topo.nodes();
  const auto kind = core::DispatcherKind::kHierarchical;
  const auto contiguous = contiguous_owner(E, topo.ranks);
  std::vector<int32_t> node_greedy(E, 0), node_best(E, 0);
  double bound_a = 0;
  if (nodes > 1) {
    PartitionProblem pa;
    pa.items = E;
    pa.bins = nodes;
    pa.load.assign(load.begin(), load.end());
    pa.max_bin_load = (1 + o.load_slack) * std::accumulate(load.begin(), load.end(), 0.0) / static_cast<double>(nodes);
    std::vector<int32_t> ident(E);
    std::iota(ident.begin(), ident.end(), 0);
    pa.patterns = token_patterns(layer, ident, [&](int64_t src) { return static_cast<int32_t>(topo.node_of(src)); },
                                 o.inter_node_weight);
    const auto a = solve_stage(pa, o, use_ilp, use_ilp ? clock.node_stage() : 0);
    node_greedy = a.greedy.bin_of;
    node_best = a.best.bin_of;
    bound_a = a.best.bound;
  }
  double bound_b = 0;
  const auto owner_greedy = rank_stage(layer, load, node_greedy, o, false, clock, nullptr);
  const auto owner_best = use_ilp ? rank_stage(layer, load, node_best, o, true, clock, &bound_b) : owner_greedy;

  const double w = o.inter_node_weight;
  const auto rows_contig = predict_rows(layer, contiguous, topo, kind);
  const auto rows_greedy = predict_rows(layer, owner_greedy, topo, kind);
  const auto rows_best = predict_rows(layer, owner_best, topo, kind);
  report.objective_contiguous += weighted(rows_contig, w);
  report.objective_greedy += weighted(rows_greedy, w);
  if (use_ilp) {
    report.objective_ilp += weighted(rows_best, w);
    report.stage_bound += bound_a + bound_b;
    // Valid for every placement: the node stage's bound covers the inter-node rows of any node split;
    // the rank stages' bounds hold only for the node split they were given, unless one node holds
    // all ranks (then stage B is the whole problem). Intra-node rows are otherwise bounded by 0.
    report.bound += nodes > 1 ? bound_a : bound_b;
  }
  // The chosen plan: the better of greedy and ILP; never worse than contiguous.
  LayerPlan plan;
  plan.owner = weighted(rows_best, w) <= weighted(rows_greedy, w) ? owner_best : owner_greedy;
  auto chosen = predict_rows(layer, plan.owner, topo, kind);
  if (weighted(chosen, w) > weighted(rows_contig, w)) {
    plan.owner = contiguous;
    chosen = rows_contig;
  }
  plan.objective = weighted(chosen, w);
  report.layers.push_back(std::move(plan));
}

}  // namespace

PlanReport plan_placement(const RoutingTrace& trace, const PlannerOptions& o) {
  const PlanTopology& topo = o.topology;
  const int64_t E = trace.num_experts, ranks = topo.ranks, rpn = topo.ranks_per_node;
  SY_CHECK_AS(UsageError, ranks > 0 && rpn > 0 && ranks % rpn == 0, "--ranks-per-node (", rpn,
              ") must divide --ranks (", ranks, ")");
  SY_CHECK_AS(UsageError, E % ranks == 0, "--ranks: ", ranks, " does not divide the trace's ", E, " experts");
  SY_CHECK_AS(UsageError, trace.ep_size == ranks, "--ranks: the trace's tokens come from ", trace.ep_size,
              " expert-parallel ranks; plan for the same number (got ", ranks, ")");
  SY_CHECK_AS(UsageError, o.load_slack >= 0, "--load-slack must be >= 0");
  const bool use_ilp = o.solver == PlanSolver::kIlp && ilp_available();
  const auto stats = routing_statistics(trace);
  if (o.objective == PlanObjective::kInterLayer) return plan_inter_layer(trace, o, stats);
  StageClock clock(o, trace.layers.size());
  PlanReport report = start_report(use_ilp);
  const auto start = std::chrono::steady_clock::now();
  for (size_t l = 0; l < trace.layers.size(); ++l) {
    plan_coactivation_layer(trace.layers[l], stats[l].load, o, use_ilp, clock, report);
  }
  report.solve_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (use_ilp) report.stage_gap = report.objective_ilp > 0 ? (report.objective_ilp - report.stage_bound) / report.objective_ilp : 0;
  report.bound_scope = BoundScope::kAnyPlacement;
  finish(report, use_ilp);
  account(report, trace, stats, topo);
  return report;
}

std::string report_json(const PlanReport& r, const PlanReportContext& c) {
  const double b = c.bytes_per_row;
  core::JsonLine j;
  j.add("plan", c.plan_path).add("solver", name(r.solver_used));
  j.add("objective_contiguous", r.objective_contiguous).add("objective_greedy", r.objective_greedy);
  j.add("objective_ilp", r.objective_ilp).add("objective_plan", r.objective_plan);
  j.add("bound", r.bound).add("bound_scope", name(r.bound_scope)).add("gap", r.gap).add("stage_gap", r.stage_gap);
  j.add("ilp_optimal", r.ilp_optimal).add("solve_s", r.solve_s, 4);
  j.add("predicted_inter_node_bytes", r.inter_node_rows * b).add("predicted_intra_node_bytes", r.intra_node_rows * b);
  j.add("predicted_inter_node_bytes_contiguous", r.inter_node_rows_contiguous * b);
  j.add("predicted_intra_node_bytes_contiguous", r.intra_node_rows_contiguous * b);
  j.add("best_possible_inter_node_bytes", c.best_possible_inter_node_rows >= 0 ? c.best_possible_inter_node_rows * b : -1.0);
  j.add("load_max_over_mean", r.load_max_over_mean).add("load_max_over_mean_contiguous", r.load_max_over_mean_contiguous);
  j.add("bytes_per_row", b).add("tokens", c.tokens).add("moe_layers", c.moe_layers);
  return j.str();
}

}  // namespace switchyard::placement
