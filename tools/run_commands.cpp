// The commands that run a model on ranks: `switchyard train`, `eval` and `trace`.
#include <cstdio>

#include "core/json_line.h"
#include "tools/command.h"
#include "trainer/trainer.h"

namespace switchyard::tools {

namespace {

void add_train(CLI::App& app, Commands& commands) {
  struct Options {
    ConfigArgs config;
    std::string run_dir, resume = "auto";
    bool overwrite = false;
    trainer::ProfileRequest profile;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("train", "train a model (under mpirun for several ranks)");
  o->config.add_to(cmd);
  cmd->add_option("--run-dir", o->run_dir, "run directory (overrides train.run_dir)");
  cmd->add_option("--resume", o->resume, "auto (newest checkpoint in the run dir), never, or a checkpoint path");
  cmd->add_flag("--overwrite", o->overwrite,
                "with --resume never: delete the run directory's earlier checkpoints and metrics and start over");
  cmd->add_option("--profile", o->profile.path,
                  "write a Kineto trace (host ops, CUDA kernels) of --profile-steps steps on rank 0 to this file");
  cmd->add_option("--profile-steps", o->profile.steps, "training steps in the --profile trace (after two warm-up steps; ten under train.cuda_graph auto)")
      ->check(CLI::PositiveNumber);
  commands.emplace_back(cmd, [o](RankStarter& ranks) {
    if (!o->run_dir.empty()) o->config.overrides.push_back("train.run_dir=" + o->run_dir);
    const core::Config config = o->config.load();
    const auto resume = trainer::ResumeMode::parse(o->resume, o->overwrite);
    ranks.start(config.parallel);
    trainer::Trainer t(config, parallel::open_run_world(config));
    t.train(resume, o->profile);
    return 0;
  });
}

void add_eval(CLI::App& app, Commands& commands) {
  struct Options {
    ConfigArgs config;
    std::string checkpoint;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("eval", "validation loss of a checkpoint (one JSON line)");
  o->config.add_to(cmd);
  cmd->add_option("--checkpoint", o->checkpoint, "checkpoint directory")->required();
  commands.emplace_back(cmd, [o](RankStarter& ranks) {
    const core::Config config = o->config.load();
    const auto& mpi = ranks.start(config.parallel);
    trainer::Trainer t(config, parallel::open_run_world(config));
    t.load_checkpoint(o->checkpoint);
    const double loss = t.evaluate();
    if (mpi.rank() == 0) {
      std::printf("%s\n", core::JsonLine().add("loss", loss).add("tokens", t.eval_tokens()).str().c_str());
    }
    return 0;
  });
}

void add_trace(CLI::App& app, Commands& commands) {
  struct Options {
    ConfigArgs config;
    std::string checkpoint, out;
    int64_t tokens = 65536;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("trace", "record routing decisions of a checkpoint on validation tokens");
  o->config.add_to(cmd);
  cmd->add_option("--checkpoint", o->checkpoint, "checkpoint directory")->required();
  cmd->add_option("--tokens", o->tokens, "validation tokens to route (rounded up to global batches)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--out", o->out, "trace file to write (Protobuf)")->required();
  commands.emplace_back(cmd, [o](RankStarter& ranks) {
    const core::Config config = o->config.load();
    const auto& mpi = ranks.start(config.parallel);
    trainer::Trainer t(config, parallel::open_run_world(config));
    t.load_checkpoint(o->checkpoint);
    const int64_t tokens = t.write_trace(o->out, o->tokens);
    if (mpi.rank() == 0) {
      core::JsonLine line;
      line.add("trace", o->out).add("tokens", tokens).add("moe_layers", config.num_moe_layers());
      line.add("experts", config.model.moe.num_experts).add("ranks", mpi.size());
      std::printf("%s\n", line.str().c_str());
    }
    return 0;
  });
}

}  // namespace

void add_run_commands(CLI::App& app, Commands& commands) {
  add_train(app, commands);
  add_eval(app, commands);
  add_trace(app, commands);
}

}  // namespace switchyard::tools
