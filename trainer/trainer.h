// The training loop: data, model, expert parallelism, optimizer, checkpoints and metrics, wired from
// one Config. What `switchyard train` and `switchyard eval` run.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"
#include "data/batch_sampler.h"
#include "data/token_source.h"
#include "modules/transformer.h"
#include "parallel/expert_parallel.h"
#include "parallel/placement_planner.h"
#include "parallel/run_world.h"
#include "trainer/checkpoint.h"
#include "trainer/optimizer.h"

namespace switchyard::trainer {

/// How `train` starts: resume from the newest checkpoint if any (auto), never, or from a path.
struct ResumeMode {
  enum class Kind { kAuto, kNever, kPath } kind = Kind::kAuto;
  std::string path;
  static ResumeMode parse(const std::string& text);
};

/// `train --profile`: rank 0 records `steps` training steps (after two warm-up steps) as a Kineto
/// trace at `path`; an empty path records nothing.
struct ProfileRequest {
  std::string path;
  int64_t steps = 3;
};

class Trainer {
 public:
  /// Collective over `world.comm`: builds groups, data, model (on `world.device`) and optimizer.
  /// Throws ConfigError/DataError.
  Trainer(const core::Config& config, parallel::RunWorld world);

  /// Trains to train.steps, resuming as `resume` says; writes the run directory. Collective.
  void train(const ResumeMode& resume, const ProfileRequest& profile = {});
  /// Loads a checkpoint into the model (collective).
  void load_checkpoint(const std::string& dir);
  /// Mean next-token loss over train.eval_batches global batches of the validation split (collective).
  double evaluate();
  /// Tokens one evaluation reads (all ranks together).
  int64_t eval_tokens() const;
  /// Routes at least `tokens` validation tokens (whole global batches, all ranks together) and returns
  /// every MoE layer's routing with each token's source EP rank, on every rank (collective).
  parallel::RoutingTrace trace(int64_t tokens);
  /// Writes a trace file (rank 0; collective). Returns the token count.
  int64_t write_trace(const std::string& path, int64_t tokens);

  const data::TokenSource& source() const { return *source_; }

 private:
  struct StepResult {
    double lm_loss = 0, aux_loss = 0, grad_norm = 0;
    bool skipped = false;
    std::map<std::string, double> losses;
    std::vector<torch::Tensor> loads;  ///< per MoE layer, global slots per expert
    double dropped = 0, routed = 0;
  };
  StepResult train_step(int64_t step);
  /// Builds model, dispatchers (for placements_) and optimizer; attaches expert parallelism.
  void build_model();
  /// Re-plans placement from the routing recorded since the last plan: saves a checkpoint, plans
  /// (rank 0, broadcast), rebuilds the model on the new placement and reloads the checkpoint, so
  /// experts and their optimizer state move ranks. Returns the predicted inter-node bytes per token
  /// before and after. Collective.
  std::pair<double, double> replan();
  double global_grad_norm();

  core::Config config_;
  std::shared_ptr<parallel::Communicator> world_;
  std::shared_ptr<parallel::ProcessGroups> groups_;
  std::unique_ptr<data::TokenSource> source_;
  data::Split split_;
  std::unique_ptr<data::BatchSampler> train_sampler_, val_sampler_;
  std::vector<parallel::ExpertPlacement> placements_;
  std::vector<std::shared_ptr<parallel::ExpertParallelDispatcher>> dispatchers_;
  std::vector<std::vector<torch::Tensor>> recent_routing_;
  std::optional<std::pair<double, double>> pending_replan_;  ///< predicted bytes for the next metrics line  ///< per MoE layer, [T, k] int32 since the last plan
  modules::TransformerLM model_{nullptr};
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<CheckpointManager> checkpoints_;
  torch::Device device_{torch::kCPU};
  TrainingState state_;
};

}  // namespace switchyard::trainer
