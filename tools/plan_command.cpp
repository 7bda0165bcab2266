// `switchyard plan`: a placement plan from a routing trace, and its report as one JSON line.
#include <cstdio>
#include <map>

#include "placement/plan_file.h"
#include "placement/planner.h"
#include "placement/routing_trace.h"
#include "tools/command.h"

namespace switchyard::tools {
namespace {

/// An option taking one of `values` by its placement::name.
template <class Enum>
void add_enum_option(CLI::App* cmd, const std::string& flag, Enum& out, std::initializer_list<Enum> values,
                     const std::string& help) {
  std::map<std::string, Enum> by_name;
  for (Enum v : values) by_name[placement::name(v)] = v;
  cmd->add_option_function<std::string>(flag, [&out, by_name](const std::string& s) { out = by_name.at(s); }, help)
      ->check(CLI::IsMember(by_name));
}

}  // namespace

void add_plan_command(CLI::App& app, Commands& commands) {
  struct Options {
    std::string trace, out;
    placement::PlannerOptions planner;
    bool exhaustive = false;
  };
  auto o = std::make_shared<Options>();
  auto& p = o->planner;
  CLI::App* cmd = app.add_subcommand("plan", "expert placement plan from a routing trace (one JSON report line)");
  cmd->add_option("--trace", o->trace, "routing trace from `switchyard trace`")->required();
  cmd->add_option("--ranks", p.topology.ranks, "expert-parallel ranks")->required()->check(CLI::PositiveNumber);
  cmd->add_option("--ranks-per-node", p.topology.ranks_per_node, "ranks per node")->required()->check(CLI::PositiveNumber);
  add_enum_option(cmd, "--objective", p.objective,
                  {placement::PlanObjective::kCoactivation, placement::PlanObjective::kInterLayer},
                  "coactivation (co-chosen experts together; training) or inter_layer (ExFlow: consecutive layers)");
  add_enum_option(cmd, "--solver", p.solver, {placement::PlanSolver::kIlp, placement::PlanSolver::kGreedy},
                  "ilp (COIN-OR CBC, started from greedy) or greedy");
  cmd->add_option("--time-limit", p.time_limit_s, "ILP seconds over all layers")->check(CLI::PositiveNumber);
  cmd->add_option("--gap", p.relative_gap, "ILP relative gap to stop at")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--load-slack", p.load_slack, "per-rank load <= (1 + slack) * mean")->check(CLI::NonNegativeNumber);
  cmd->add_option("--inter-node-weight", p.inter_node_weight, "cost of an inter-node row vs intra-node")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--exhaustive", o->exhaustive,
                "also report the fewest inter-node bytes any placement reaches (2 nodes, small E)");
  cmd->add_option("--out", o->out, "plan file to write (YAML)")->required();
  commands.emplace_back(cmd, [o](RankStarter&) {
    const auto& options = o->planner;
    placement::TraceInfo info;
    const auto trace = placement::read_routing_trace(o->trace, &info);
    const auto report = placement::plan_placement(trace, options);
    std::vector<placement::ExpertPlacement> placements;
    for (const auto& layer : report.layers) placements.emplace_back(layer.owner, options.topology.ranks);
    placement::save_placement_plan(o->out, placements, options.topology.ranks);
    placement::PlanReportContext context;
    context.plan_path = o->out;
    context.bytes_per_row = placement::bytes_per_row(info.d_model, trace.layers.at(0).top_k, info.activation_bytes);
    context.tokens = trace.layers.at(0).num_tokens();
    context.moe_layers = static_cast<int64_t>(trace.layers.size());
    if (o->exhaustive) {
      context.best_possible_inter_node_rows = 0;
      for (const auto& layer : trace.layers) {
        const double b = placement::best_inter_node_rows_exhaustive(layer, trace.num_experts, options.topology);
        if (b < 0) {
          context.best_possible_inter_node_rows = -1;
          break;
        }
        context.best_possible_inter_node_rows += b;
      }
    }
    std::printf("%s\n", placement::report_json(report, context).c_str());
    return 0;
  });
}

}  // namespace switchyard::tools
