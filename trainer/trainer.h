// The training loop: data, model, expert parallelism, optimizer, checkpoints and metrics, wired from
// one Config. What `switchyard train` and `switchyard eval` run.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"
#include "data/batch_sampler.h"
#include "data/token_source.h"
#include "modules/transformer.h"
#include "parallel/expert_parallel.h"
#include "parallel/run_world.h"
#include "placement/routing_trace.h"
#include "runtime/cuda_graph.h"
#include "trainer/checkpoint.h"
#include "trainer/metrics.h"
#include "trainer/optimizer.h"
#include "trainer/run_dir.h"
#include "trainer/step_sums.h"

namespace switchyard::trainer {

/// `train --profile`: rank 0 records `steps` training steps (after two warm-up steps, ten under train.cuda_graph auto) as a Kineto
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
  placement::RoutingTrace trace(int64_t tokens);
  /// Writes a trace file (rank 0; collective). Returns the token count.
  int64_t write_trace(const std::string& path, int64_t tokens);

  // --- One optimizer step in two halves (step_once runs both; the config-space tester compares the
  // gradients in between with the single-process model's). ---

  using StepResult = trainer::StepResult;
  /// Forward and backward of this rank's micro-batches of the next step's global batch; gradients
  /// synchronized so they equal the single-process model's on the global batch; the global gradient
  /// norm. Collective.
  StepResult compute_gradients();
  /// The update, and the step counted done: NaN policy (throws past train.max_consecutive_skips
  /// skipped steps in a row), clipping, AdamW, the sigmoid_bias router's bias. Collective.
  void apply_update(StepResult& result);
  /// One whole step (compute_gradients, then apply_update): replayed from a CUDA graph where
  /// train.cuda_graph asks for one and the run allows it (see cuda_graph_unsupported), else eagerly.
  /// auto: eager steps before kAutoCaptureStep (the last two timed), the capture there, the two
  /// replays after it timed; the faster way runs the rest.
  StepResult step_once();
  static constexpr int64_t kAutoCaptureStep = 8;
  /// Whether the last step_once was replayed from the CUDA graph.
  bool last_step_graphed() const { return last_step_graphed_; }
  /// Whether eager steps compute the statistics only a logged step needs (the router entropy; on by
  /// default). A replayed step always computes them.
  void set_collect_statistics(bool on) { collect_statistics_ = on; }
  /// Saves a checkpoint of the current state (collective); refuses non-finite parameters.
  void save_checkpoint();
  modules::TransformerLMImpl& model() { return *model_; }
  /// Global ids of the experts this rank holds in MoE layer `moe_layer`, in local order.
  std::vector<int64_t> local_expert_ids(size_t moe_layer) const;
  int64_t step() const { return state_.step; }

 private:
  /// A micro-batch: inputs and targets [micro, seq_len], each input token's run-wide counter.
  struct MicroBatch {
    torch::Tensor inputs, targets, counters;
    torch::Tensor segments;  ///< data.reset_at_eod: each input token's document (undefined otherwise)
  };
  /// Runs `fn` on each micro-batch this rank holds of global batch `index` of `sampler`, in order.
  /// `eval` numbers the tokens in a counter stream of its own.
  void for_each_micro_batch(const data::BatchSampler& sampler, int64_t index, bool eval,
                            const std::function<void(const MicroBatch&)>& fn) const;
  /// Forward passes without gradients (eval mode, the run's autocast) over global batches [0, batches)
  /// of the validation split, `fn` on each of this rank's micro-batches.
  void for_each_validation_forward(int64_t batches,
                                   const std::function<void(const MicroBatch&, const modules::LMOutput&)>& fn);
  /// A host tensor on the run's device, copied without a host wait on CUDA.
  torch::Tensor to_device(const torch::Tensor& host) const;
  /// losses.load_balance_scope global_batch over several micro-batches: routes the whole step first
  /// (forward only) and hands every MoE layer the step's slot counts over all ranks. Collective.
  void count_step_routing(int64_t step);
  /// Builds model, dispatchers (for placements_) and optimizer; attaches expert parallelism.
  void build_model();
  /// Re-plans placement from the routing recorded since the last plan: saves a checkpoint, plans
  /// (rank 0, broadcast), rebuilds the model on the new placement and reloads the checkpoint, so
  /// experts and their optimizer state move ranks. Returns the predicted inter-node bytes per token
  /// before and after. Collective.
  std::pair<double, double> replan();
  double global_grad_norm();
  /// Squared norms of the dense and of the expert gradients of this rank (0-dim fp64, on the device).
  std::pair<torch::Tensor, torch::Tensor> squared_grad_norms();
  /// One micro-batch's forward and backward (its loss scaled by 1 / `micro_steps`), summed into `sums`.
  void forward_backward(const MicroBatch& mb, int64_t micro_steps, StepSums& sums);
  /// After a step's last backward: the experts' pending weight gradients into their .grad.
  void flush_expert_gradients();
  /// The NaN policy and the step counters; false when the step is skipped (throws past
  /// train.max_consecutive_skips).
  bool count_step(StepResult& r);
  /// The sigmoid_bias router's bias moves with the step's global loads.
  void update_router_bias(const StepResult& r);
  /// Why this run cannot replay its step from a CUDA graph, or "" when it can.
  std::string cuda_graph_unsupported() const;
  /// The step from the CUDA graph: captured at its first call, replayed at every call. Throws
  /// runtime::CaptureError when the step cannot be captured.
  StepResult graphed_step();
  /// Every later step runs eagerly: the graph and its pool (the gradients in it too) are dropped.
  void leave_graph();
  /// Whether this process was asked to stop (SIGTERM or SIGUSR1, train.checkpoint_on_signal).
  static bool stop_requested();
  /// The run directory's lock (rank 0), where the run starts (resume policy, broadcast) and that
  /// checkpoint loaded; config.yaml written. Collective.
  std::unique_ptr<RunDirLock> start_run(const ResumeMode& resume);
  /// The figures of a logged step over a window of `window_steps` steps in `seconds` (`step`: the step
  /// just run, 0-based). Collective (the exchange statistics are summed over ranks).
  StepFigures measure_window(const StepResult& r, int64_t step, double seconds, int64_t window_steps);
  /// After a step: traces, checkpoints and re-plans that are due; whether it saved a checkpoint.
  /// Collective.
  bool run_schedule();
  /// Bytes of one exchanged activation element (bf16 under CUDA autocast, fp64, else fp32).
  int64_t activation_bytes() const;

  core::Config config_;
  std::shared_ptr<parallel::Communicator> world_;
  std::shared_ptr<parallel::ProcessGroups> groups_;
  std::vector<data::WeightedSource> sources_;  ///< data.path's, or each of data.blend's
  std::unique_ptr<data::BatchSampler> train_sampler_, val_sampler_;
  std::vector<placement::ExpertPlacement> placements_;
  std::vector<std::shared_ptr<parallel::ExpertParallelDispatcher>> dispatchers_;
  std::vector<std::vector<torch::Tensor>> recent_routing_;   ///< per MoE layer, [T, slots] int32 since the last plan
  std::optional<std::pair<double, double>> pending_replan_;  ///< predicted bytes for the next metrics line
  int64_t consecutive_skips_ = 0;
  /// train.cuda_graph: the captured step, its input buffers and its outputs.
  struct StepGraph {
    runtime::CudaGraph graph;
    std::vector<MicroBatch> inputs;          ///< the step's micro-batches, copied in before each replay
    torch::Tensor lr, count;                 ///< fp32 [] each: the step's learning rate, AdamW's step count
    StepSums sums;                           ///< the captured step's statistics
    torch::Tensor grad_norm;                 ///< fp64 []
  };
  std::unique_ptr<StepGraph> step_graph_;
  std::unique_ptr<runtime::OwnStream> own_stream_;  ///< the stream of a graphed run's work
  bool graph_enabled_ = false;
  bool last_step_graphed_ = false;
  int64_t eager_steps_ = 0;          ///< eager steps run by step_once in this process
  int64_t graph_replays_ = 0;        ///< steps step_once replayed from the graph
  /// train.cuda_graph auto: seconds of the timed eager steps and replays, and whether it chose.
  std::vector<double> eager_step_s_, replay_step_s_;
  bool graph_decided_ = false;
  bool collect_statistics_ = true;   ///< whether eager steps compute the statistics only logs need
  modules::TransformerLM model_{nullptr};
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<CheckpointManager> checkpoints_;
  torch::Device device_{torch::kCPU};
  TrainingState state_;
};

}  // namespace switchyard::trainer
