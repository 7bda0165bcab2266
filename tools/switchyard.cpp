// The `switchyard` command line: parses arguments, runs the one subcommand parsed (each in its own
// file: tools/command.h), and turns every error into one "error: ..." line on stderr and an exit
// status (2 for bad input, 1 otherwise).
#include <torch/version.h>

#include <memory>
#include <string>

#include "core/build_info.h"
#include "core/error.h"
#include "core/logging.h"
#include "parallel/fatal.h"
#include "tools/command.h"

namespace {

using namespace switchyard;

std::string version_text() {
  auto yes_no = [](bool b) { return b ? "yes" : "no"; };
  return std::string("switchyard ") + SWITCHYARD_VERSION + " (LibTorch " + TORCH_VERSION +
         ", CUDA: " + yes_no(SWITCHYARD_WITH_CUDA) + ", NCCL: " + yes_no(SWITCHYARD_HAS_NCCL) +
         ", CBC: " + yes_no(SWITCHYARD_HAS_CBC) + ", SentencePiece: " + yes_no(SWITCHYARD_HAS_SENTENCEPIECE) + ")";
}

int run(int argc, char** argv, std::unique_ptr<parallel::MpiRuntime>& mpi) {
  CLI::App app{"Switchyard: distributed Mixture-of-Experts training"};
  app.set_version_flag("--version", version_text());
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "debug, info, warn or error");
  app.require_subcommand(1);
  tools::Commands commands;
  tools::add_config_commands(app, commands);
  tools::add_run_commands(app, commands);
  tools::add_plan_command(app, commands);
  tools::add_inspect_command(app, commands);
  tools::add_bench_commands(app, commands);
  tools::add_interop_commands(app, commands);
  tools::add_report_command(app, commands);
  tools::add_tokenize_command(app, commands);
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    throw UsageError(e.what() + std::string(" (see switchyard --help)"));
  }
  core::set_log_level(core::parse_log_level(log_level));
  tools::RankStarter ranks(&argc, &argv, mpi);
  for (auto& [cmd, fn] : commands) {
    if (cmd->parsed()) return fn(ranks);
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
