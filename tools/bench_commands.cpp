// `switchyard bench alltoall` and `bench layer`: micro-benchmarks, JSON lines on stdout.
#include "bench/layer_benchmark.h"
#include "bench/alltoall_benchmark.h"
#include "tools/command.h"

namespace switchyard::tools {

void add_bench_commands(CLI::App& app, Commands& commands) {
  CLI::App* bench = app.add_subcommand("bench", "micro-benchmarks (JSON lines on stdout)");
  bench->require_subcommand(1);

  auto a2a = std::make_shared<bench::AlltoallBenchOptions>();
  CLI::App* a2a_cmd = bench->add_subcommand("alltoall", "our exchange against the raw library all-to-all (run under mpirun)");
  a2a_cmd->add_option("--ranks-per-node", a2a->ranks_per_node, "emulated ranks per node (0 = detect)")
      ->check(CLI::NonNegativeNumber);
  a2a_cmd->add_option("--bytes", a2a->bytes_per_peer, "bytes per peer, one run each")->delimiter(',');
  a2a_cmd->add_option("--iters", a2a->iters, "timed iterations (median reported)")->check(CLI::PositiveNumber);
  a2a_cmd->add_option("--device", a2a->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  a2a_cmd->add_option("--backend", a2a->backend, "mpi, or nccl (--device cuda; raw ncclSend/ncclRecv as the peer)")
      ->check(CLI::IsMember({"mpi", "nccl"}));
  commands.emplace_back(a2a_cmd, [a2a](RankStarter& ranks) {
    ranks.start(core::ParallelConfig{});
    bench::run_alltoall_benchmark(*a2a);
    return 0;
  });

  auto layer = std::make_shared<bench::LayerBenchOptions>();
  CLI::App* layer_cmd = bench->add_subcommand("layer", "one MoE layer, forward and forward+backward (peer presets)");
  layer_cmd->add_option("--preset", layer->preset, "mixtral_like or deepseek_like")
      ->check(CLI::IsMember({"mixtral_like", "deepseek_like"}));
  layer_cmd->add_option("--tokens", layer->tokens, "tokens per batch")->check(CLI::PositiveNumber);
  layer_cmd->add_option("--device", layer->device, "cuda or cpu")->check(CLI::IsMember({"cpu", "cuda"}));
  layer_cmd->add_option("--iters", layer->iters, "timed iterations (median reported)")->check(CLI::PositiveNumber);
  layer_cmd
      ->add_option("--check-tokens", layer->check_tokens,
                   "tokens of the correctness check: bf16 against fp32 on CUDA, fp32 against fp64 on the CPU (0 = skip)")
      ->check(CLI::NonNegativeNumber);
  layer_cmd->add_flag("--reset-grads", layer->reset_grads,
                      "reset .grad before each iteration (a training step) instead of accumulating (the peer's loop)");
  layer_cmd->add_option("--profile", layer->profile_path,
                        "after timing, write a Chrome trace (Kineto: host ops and CUDA kernels) of forward+backward here");
  layer_cmd->add_option("--profile-iters", layer->profile_iters, "forward+backward iterations in the --profile trace")
      ->check(CLI::PositiveNumber);
  commands.emplace_back(layer_cmd, [layer](RankStarter&) {
    bench::run_layer_benchmark(*layer);
    return 0;
  });
}

}  // namespace switchyard::tools
