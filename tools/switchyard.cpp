// The `switchyard` command line: parses arguments, runs one subcommand, and turns every error into
// one "error: ..." line on stderr and an exit status (2 for bad input, 1 otherwise).
#include <torch/version.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/build_info.h"
#include "core/config.h"
#include "core/error.h"
#include "core/fault_injection.h"
#include "core/logging.h"
#include "modules/layer_benchmark.h"
#include "parallel/alltoall_benchmark.h"
#include "parallel/communicator.h"
#include "parallel/fatal.h"
#include "parallel/mpi_runtime.h"
#include "placement/plan_file.h"
#include "placement/planner.h"
#include "placement/routing_trace.h"
#include "trainer/checkpoint.h"
#include "trainer/trainer.h"

#include <google/protobuf/util/json_util.h>

namespace {

using namespace switchyard;

std::string version_text() {
  auto yes_no = [](bool b) { return b ? "yes" : "no"; };
  return std::string("switchyard ") + SWITCHYARD_VERSION + " (LibTorch " + TORCH_VERSION +
         ", CUDA: " + yes_no(SWITCHYARD_WITH_CUDA) + ", NCCL: " + yes_no(SWITCHYARD_HAS_NCCL) +
         ", CBC: " + yes_no(SWITCHYARD_HAS_CBC) + ")";
}

/// Options shared by the commands that read a config.
struct ConfigArgs {
  std::string path;
  std::vector<std::string> overrides;

  void add_to(CLI::App* cmd) {
    cmd->add_option("--config", path, "YAML config file")->required();
    cmd->add_option("--set", overrides, "override one key: --set model.moe.top_k=2 (repeatable)")
        ->expected(1)
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  }
  core::Config load() const { return core::load_config(path, overrides); }
};

/// What every command that runs on ranks does first: start MPI (into `mpi`, which main() owns so that
/// it outlives the top-level catch), install the crash handler, prefix log lines with the rank, and
/// watch the peers.
parallel::MpiRuntime& start_ranks(int* argc, char*** argv, std::unique_ptr<parallel::MpiRuntime>& mpi,
                                  const core::ParallelConfig& parallel) {
  mpi = std::make_unique<parallel::MpiRuntime>(argc, argv);
  parallel::install_crash_handler(mpi->rank());
  core::set_log_rank(mpi->rank(), mpi->size());
  core::set_fault_rank(mpi->rank());
  mpi->watch_peers(parallel.peer_silence_s);
  return *mpi;
}

int run(int argc, char** argv, std::unique_ptr<parallel::MpiRuntime>& mpi_runtime) {
  CLI::App app{"Switchyard: distributed Mixture-of-Experts training"};
  app.set_version_flag("--version", version_text());
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "debug, info, warn or error");
  app.require_subcommand(1);

  CLI::App* config_cmd = app.add_subcommand("config", "inspect configurations");
  config_cmd->require_subcommand(1);
  ConfigArgs check_args;
  CLI::App* check_cmd = config_cmd->add_subcommand("check", "load and validate a config; print it resolved");
  check_args.add_to(check_cmd);
  CLI::App* reference_cmd =
      config_cmd->add_subcommand("reference", "print every config key with type, default and bounds (Markdown)");

  ConfigArgs train_args;
  std::string run_dir, resume = "auto";
  CLI::App* train_cmd = app.add_subcommand("train", "train a model (under mpirun for several ranks)");
  train_args.add_to(train_cmd);
  train_cmd->add_option("--run-dir", run_dir, "run directory (overrides train.run_dir)");
  train_cmd->add_option("--resume", resume, "auto (newest checkpoint in the run dir), never, or a checkpoint path");
  bool overwrite = false;
  train_cmd->add_flag("--overwrite", overwrite,
                      "with --resume never: delete the run directory's earlier checkpoints and metrics and start over");
  trainer::ProfileRequest train_profile;
  train_cmd->add_option("--profile", train_profile.path,
                        "write a Kineto trace (host ops, CUDA kernels) of --profile-steps steps on rank 0 to this file");
  train_cmd->add_option("--profile-steps", train_profile.steps, "training steps in the --profile trace (after two warm-up steps)")
      ->check(CLI::PositiveNumber);

  ConfigArgs eval_args;
  std::string eval_checkpoint;
  CLI::App* eval_cmd = app.add_subcommand("eval", "validation loss of a checkpoint (one JSON line)");
  eval_args.add_to(eval_cmd);
  eval_cmd->add_option("--checkpoint", eval_checkpoint, "checkpoint directory")->required();

  ConfigArgs trace_args;
  std::string trace_checkpoint, trace_out;
  int64_t trace_tokens = 65536;
  CLI::App* trace_cmd = app.add_subcommand("trace", "record routing decisions of a checkpoint on validation tokens");
  trace_args.add_to(trace_cmd);
  trace_cmd->add_option("--checkpoint", trace_checkpoint, "checkpoint directory")->required();
  trace_cmd->add_option("--tokens", trace_tokens, "validation tokens to route (rounded up to global batches)")
      ->check(CLI::PositiveNumber);
  trace_cmd->add_option("--out", trace_out, "trace file to write (Protobuf)")->required();

  std::string plan_trace, plan_out;
  placement::PlannerOptions plan_opts;
  bool plan_exhaustive = false;
  CLI::App* plan_cmd = app.add_subcommand("plan", "expert placement plan from a routing trace (one JSON report line)");
  plan_cmd->add_option("--trace", plan_trace, "routing trace from `switchyard trace`")->required();
  plan_cmd->add_option("--ranks", plan_opts.topology.ranks, "expert-parallel ranks")->required()->check(CLI::PositiveNumber);
  plan_cmd->add_option("--ranks-per-node", plan_opts.topology.ranks_per_node, "ranks per node")
      ->required()
      ->check(CLI::PositiveNumber);
  plan_cmd->add_option("--objective", plan_opts.objective,
                       "coactivation (co-chosen experts together; training) or inter_layer (ExFlow: consecutive layers)")
      ->transform(CLI::CheckedTransformer(std::map<std::string, placement::PlanObjective>{
          {"coactivation", placement::PlanObjective::kCoactivation},
          {"inter_layer", placement::PlanObjective::kInterLayer}}));
  plan_cmd->add_option("--solver", plan_opts.solver, "ilp (COIN-OR CBC, started from greedy) or greedy")
      ->transform(CLI::CheckedTransformer(std::map<std::string, placement::PlanSolver>{
          {"ilp", placement::PlanSolver::kIlp}, {"greedy", placement::PlanSolver::kGreedy}}));
  plan_cmd->add_option("--time-limit", plan_opts.time_limit_s, "ILP seconds over all layers")->check(CLI::PositiveNumber);
  plan_cmd->add_option("--gap", plan_opts.relative_gap, "ILP relative gap to stop at")->check(CLI::Range(0.0, 1.0));
  plan_cmd->add_option("--load-slack", plan_opts.load_slack, "per-rank load <= (1 + slack) * mean")
      ->check(CLI::NonNegativeNumber);
  plan_cmd->add_option("--inter-node-weight", plan_opts.inter_node_weight, "cost of an inter-node row vs intra-node")
      ->check(CLI::PositiveNumber);
  plan_cmd->add_flag("--exhaustive", plan_exhaustive,
                     "also report the fewest inter-node bytes any placement reaches (2 nodes, small E)");
  plan_cmd->add_option("--out", plan_out, "plan file to write (YAML)")->required();

  std::string inspect_dir;
  bool inspect_json = false;
  CLI::App* inspect_cmd = app.add_subcommand("inspect", "show a checkpoint's manifest and verify its checksums");
  inspect_cmd->add_option("checkpoint", inspect_dir, "checkpoint directory")->required();
  inspect_cmd->add_flag("--json", inspect_json, "print the manifest as JSON");

  CLI::App* bench_cmd = app.add_subcommand("bench", "micro-benchmarks (JSON lines on stdout)");
  bench_cmd->require_subcommand(1);
  parallel::AlltoallBenchOptions a2a;
  CLI::App* a2a_cmd = bench_cmd->add_subcommand("alltoall", "our exchange against the raw library all-to-all (run under mpirun)");
  a2a_cmd->add_option("--ranks-per-node", a2a.ranks_per_node, "emulated ranks per node (0 = detect)")
      ->check(CLI::NonNegativeNumber);
  a2a_cmd->add_option("--bytes", a2a.bytes_per_peer, "bytes per peer, one run each")->delimiter(',');
  a2a_cmd->add_option("--iters", a2a.iters, "timed iterations (median reported)")->check(CLI::PositiveNumber);
  a2a_cmd->add_option("--device", a2a.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  a2a_cmd->add_option("--backend", a2a.backend, "mpi, or nccl (--device cuda; raw ncclSend/ncclRecv as the peer)")
      ->check(CLI::IsMember({"mpi", "nccl"}));

  modules::LayerBenchOptions layer_bench;
  CLI::App* layer_cmd = bench_cmd->add_subcommand("layer", "one MoE layer, forward and forward+backward (peer presets)");
  layer_cmd->add_option("--preset", layer_bench.preset, "mixtral_like or deepseek_like")
      ->check(CLI::IsMember({"mixtral_like", "deepseek_like"}));
  layer_cmd->add_option("--tokens", layer_bench.tokens, "tokens per batch")->check(CLI::PositiveNumber);
  layer_cmd->add_option("--device", layer_bench.device, "cuda or cpu")->check(CLI::IsMember({"cpu", "cuda"}));
  layer_cmd->add_option("--iters", layer_bench.iters, "timed iterations (median reported)")->check(CLI::PositiveNumber);
  layer_cmd->add_option("--check-tokens", layer_bench.check_tokens, "tokens of the correctness check: bf16 against fp32 on CUDA, fp32 against fp64 on the CPU (0 = skip)")
      ->check(CLI::NonNegativeNumber);
  layer_cmd->add_flag("--reset-grads", layer_bench.reset_grads,
                      "reset .grad before each iteration (a training step) instead of accumulating (the peer's loop)");
  layer_cmd->add_option("--profile", layer_bench.profile_path,
                        "after timing, write a Chrome trace (Kineto: host ops and CUDA kernels) of forward+backward here");
  layer_cmd->add_option("--profile-iters", layer_bench.profile_iters, "forward+backward iterations in the --profile trace")
      ->check(CLI::PositiveNumber);

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    throw UsageError(e.what() + std::string(" (see switchyard --help)"));
  }
  core::set_log_level(core::parse_log_level(log_level));

  if (check_cmd->parsed()) {
    const core::Config config = check_args.load();
    std::cout << core::dump_config(config);
    return 0;
  }
  if (reference_cmd->parsed()) {
    std::cout << core::config_reference_markdown();
    return 0;
  }
  if (train_cmd->parsed()) {
    if (!run_dir.empty()) train_args.overrides.push_back("train.run_dir=" + run_dir);
    const core::Config config = train_args.load();
    const auto resume_mode = trainer::ResumeMode::parse(resume, overwrite);
    start_ranks(&argc, &argv, mpi_runtime, config.parallel);
    trainer::Trainer t(config, parallel::open_run_world(config));
    t.train(resume_mode, train_profile);
    return 0;
  }
  if (eval_cmd->parsed()) {
    const core::Config config = eval_args.load();
    const auto& mpi = start_ranks(&argc, &argv, mpi_runtime, config.parallel);
    trainer::Trainer t(config, parallel::open_run_world(config));
    t.load_checkpoint(eval_checkpoint);
    const double loss = t.evaluate();
    if (mpi.rank() == 0) std::printf("{\"loss\":%.6f,\"tokens\":%lld}\n", loss, static_cast<long long>(t.eval_tokens()));
    return 0;
  }
  if (trace_cmd->parsed()) {
    const core::Config config = trace_args.load();
    const auto& mpi = start_ranks(&argc, &argv, mpi_runtime, config.parallel);
    trainer::Trainer t(config, parallel::open_run_world(config));
    t.load_checkpoint(trace_checkpoint);
    const int64_t tokens = t.write_trace(trace_out, trace_tokens);
    if (mpi.rank() == 0) {
      std::printf("{\"trace\":\"%s\",\"tokens\":%lld,\"moe_layers\":%lld,\"experts\":%lld,\"ranks\":%d}\n",
                  trace_out.c_str(), static_cast<long long>(tokens), static_cast<long long>(config.num_moe_layers()),
                  static_cast<long long>(config.model.moe.num_experts), mpi.size());
    }
    return 0;
  }
  if (plan_cmd->parsed()) {
    placement::TraceInfo info;
    const auto trace = placement::read_routing_trace(plan_trace, &info);
    const auto report = placement::plan_placement(trace, plan_opts);
    std::vector<placement::ExpertPlacement> placements;
    for (const auto& layer : report.layers) placements.emplace_back(layer.owner, plan_opts.topology.ranks);
    placement::save_placement_plan(plan_out, placements, plan_opts.topology.ranks);
    placement::PlanReportContext context;
    context.plan_path = plan_out;
    context.bytes_per_row = placement::bytes_per_row(info.d_model, trace.layers.at(0).top_k, info.activation_bytes);
    context.tokens = trace.layers.at(0).num_tokens();
    context.moe_layers = static_cast<int64_t>(trace.layers.size());
    if (plan_exhaustive) {
      context.best_possible_inter_node_rows = 0;
      for (const auto& layer : trace.layers) {
        const double b = placement::best_inter_node_rows_exhaustive(layer, trace.num_experts, plan_opts.topology);
        if (b < 0) {
          context.best_possible_inter_node_rows = -1;
          break;
        }
        context.best_possible_inter_node_rows += b;
      }
    }
    std::printf("%s\n", placement::report_json(report, context).c_str());
    return 0;
  }
  if (inspect_cmd->parsed()) {
    const auto manifest = trainer::read_manifest(inspect_dir);
    trainer::verify_checkpoint(inspect_dir, manifest);
    if (inspect_json) {
      std::string json;
      google::protobuf::util::JsonPrintOptions options;
      options.add_whitespace = false;
      (void)google::protobuf::util::MessageToJsonString(manifest, &json, options);
      std::cout << json << "\n";
      return 0;
    }
    int64_t bytes = 0, experts = 0;
    for (const auto& e : manifest.tensors()) {
      bytes += e.nbytes();
      experts += e.name().find("/expert_") != std::string::npos;
    }
    std::cout << "checkpoint " << inspect_dir << "\n"
              << "  created by       " << manifest.created_by() << "\n"
              << "  step             " << manifest.step() << "\n"
              << "  tokens seen      " << manifest.tokens_seen() << "\n"
              << "  skipped steps    " << manifest.skipped_steps() << "\n"
              << "  world size       " << manifest.world_size() << " (expert_parallel " << manifest.expert_parallel() << ")\n"
              << "  data             seed " << manifest.data_seed() << ", " << manifest.data_windows() << " windows\n"
              << "  MoE layers       " << manifest.placement_size() << "\n"
              << "  tensors          " << manifest.tensors_size() << " (" << experts << " per-expert), " << bytes << " bytes\n"
              << "  checksums        ok (crc32c of the manifest and of every tensor verified)\n";
    for (int l = 0; l < manifest.placement_size(); ++l) {
      std::cout << "  placement[" << l << "]    ";
      for (auto o : manifest.placement(l).owner()) std::cout << o << " ";
      std::cout << "\n";
    }
    return 0;
  }
  if (layer_cmd->parsed()) {
    modules::run_layer_benchmark(layer_bench);
    return 0;
  }
  if (a2a_cmd->parsed()) {
    start_ranks(&argc, &argv, mpi_runtime, core::ParallelConfig{});
    parallel::run_alltoall_benchmark(a2a);
    return 0;
  }
  SY_ASSERT(false, "no subcommand ran");
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  // Declared before the try: MPI must still run when the catch reports the error, so that the abort
  // ends every rank at once (a finalized MPI would leave the peers waiting out parallel.timeout_s).
  std::unique_ptr<switchyard::parallel::MpiRuntime> mpi;
  try {
    return run(argc, argv, mpi);
  } catch (const std::exception& e) {
    return switchyard::parallel::report_fatal(e);
  }
}
