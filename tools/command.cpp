// What the subcommands share: starting the ranks, and the config options.
#include "tools/command.h"

#include "core/fault_injection.h"
#include "core/logging.h"
#include "parallel/fatal.h"

namespace switchyard::tools {

parallel::MpiRuntime& RankStarter::start(const core::ParallelConfig& parallel) {
  mpi_ = std::make_unique<parallel::MpiRuntime>(argc_, argv_);
  parallel::install_crash_handler(mpi_->rank());
  core::set_log_rank(mpi_->rank(), mpi_->size());
  core::set_fault_rank(mpi_->rank());
  mpi_->watch_peers(parallel.peer_silence_s);
  return *mpi_;
}

void ConfigArgs::add_to(CLI::App* cmd) {
  cmd->add_option("--config", path, "YAML config file")->required();
  cmd->add_option("--set", overrides, "override one key: --set model.moe.top_k=2 (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

}  // namespace switchyard::tools
