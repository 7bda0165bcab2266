// The CLI's subcommands: each file adds its options to a CLI::App and registers what it runs
// (tools/switchyard.cpp parses, runs the one parsed, and turns errors into one line).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"
#include "parallel/mpi_runtime.h"

namespace switchyard::tools {

/// Starts the ranks for the commands that run on them: MPI (into an MpiRuntime that main() owns, so
/// that it outlives the top-level catch), the crash handler, rank-prefixed logs, the peer watchdog.
class RankStarter {
 public:
  RankStarter(int* argc, char*** argv, std::unique_ptr<parallel::MpiRuntime>& mpi) : argc_(argc), argv_(argv), mpi_(mpi) {}
  parallel::MpiRuntime& start(const core::ParallelConfig& parallel);

 private:
  int* argc_;
  char*** argv_;
  std::unique_ptr<parallel::MpiRuntime>& mpi_;
};

/// What a parsed subcommand runs; returns the exit status.
using CommandFn = std::function<int(RankStarter&)>;
using Commands = std::vector<std::pair<CLI::App*, CommandFn>>;

/// Options shared by the commands that read a config.
struct ConfigArgs {
  std::string path;
  std::vector<std::string> overrides;
  void add_to(CLI::App* cmd);
  core::Config load() const { return core::load_config(path, overrides); }
};

void add_config_commands(CLI::App& app, Commands& commands);  ///< config check, config reference
void add_run_commands(CLI::App& app, Commands& commands);     ///< train, eval, trace
void add_plan_command(CLI::App& app, Commands& commands);     ///< plan
void add_inspect_command(CLI::App& app, Commands& commands);  ///< inspect
void add_bench_commands(CLI::App& app, Commands& commands);   ///< bench alltoall, bench layer
void add_interop_commands(CLI::App& app, Commands& commands);  ///< export, import, logits
void add_report_command(CLI::App& app, Commands& commands);    ///< report
void add_tokenize_command(CLI::App& app, Commands& commands);  ///< tokenize

}  // namespace switchyard::tools
