// Checkpoints: a directory per step with a Protobuf manifest and tensor files. Experts and their
// optimizer state are stored by global expert id, so any later rank count, expert-parallel size or
// placement loads them. Written atomically: temporary directory, fsync, rename, then `latest`.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "modules/transformer.h"
#include "parallel/process_groups.h"
#include "placement/expert_placement.h"
#include "trainer/optimizer.h"
#include "trainer/proto/checkpoint.pb.h"

namespace switchyard::trainer {

/// What the trainer stores beside the tensors.
struct TrainingState {
  int64_t step = 0;
  int64_t tokens_seen = 0;
  int64_t skipped_steps = 0;
  uint64_t data_seed = 0;
  int64_t data_windows = 0;
  torch::Tensor cpu_rng_state;   ///< uint8
  torch::Tensor cuda_rng_state;  ///< uint8, undefined on the CPU
  bool weights_only = false;     ///< loaded from a weights-only checkpoint: no optimizer, data or RNG state
};

/// What `latest` says: the checkpoint it names, or why it names none that exists.
struct LatestPointer {
  std::optional<std::string> dir;  ///< the checkpoint directory it names (exists)
  std::string problem;             ///< empty when `dir` is set or there is no pointer at all
  bool present = false;            ///< a `latest` entry exists (whatever it holds)
  bool outside = false;            ///< it names a path outside this checkpoints directory
};

class CheckpointManager {
 public:
  /// `root` is the run's checkpoints/ directory.
  CheckpointManager(std::string root, int64_t keep, std::shared_ptr<parallel::ProcessGroups> groups);

  /// Collective over the world. Rank 0 writes dense tensors and the manifest; the ranks of the first
  /// expert-parallel group write their experts. Keeps the newest `keep` checkpoints.
  void save(const TrainingState& state, const std::string& config_yaml, modules::TransformerLMImpl& model,
            AdamW& optimizer, const std::vector<placement::ExpertPlacement>& placements);

  /// Collective. Loads the checkpoint at `dir` into the model and optimizer for this rank's placement,
  /// verifying the checksum of every tensor read. Throws CheckpointError naming the file at fault.
  /// A weights-only checkpoint loads the parameters and buffers and leaves the optimizer as it is.
  TrainingState load(const std::string& dir, modules::TransformerLMImpl& model, AdamW& optimizer,
                     const std::vector<placement::ExpertPlacement>& placements);

  /// What `latest` names. Never throws: an empty, unreadable or looping pointer, a directory in
  /// its place, a name that is not a checkpoint of this directory: each is a `problem`.
  LatestPointer latest() const;
  /// Checkpoint directories step_<8 digits> here, oldest first (complete ones: temporaries excluded).
  std::vector<std::string> checkpoints() const;
  const std::string& root() const { return root_; }

 private:
  std::string root_;
  int64_t keep_;
  std::shared_ptr<parallel::ProcessGroups> groups_;
};

/// Writes a weights-only checkpoint (proto field weights_only) of a single-process `model` (every
/// expert local, in global order) into the new directory `dir`, atomically. What `switchyard import`
/// writes; any rank count and expert-parallel size loads it.
void write_weights_checkpoint(const std::string& dir, const std::string& config_yaml, modules::TransformerLMImpl& model);
/// Loads the parameters and buffers of the checkpoint at `dir` (any kind, written at any rank count)
/// into a single-process `model` (every expert local), verifying each tensor's checksum. Not
/// collective: what `switchyard export` and `logits` read.
void load_weights(const std::string& dir, modules::TransformerLMImpl& model);

/// The model a checkpoint holds, built single-process from the config in its manifest and loaded
/// (load_weights), with that config: what `export` and `logits` start from. Not collective.
struct CheckpointModel {
  core::Config config;
  modules::TransformerLM model{nullptr};
};
CheckpointModel load_checkpoint_model(const std::string& dir);

/// Reads `dir`/manifest.pb, verifies its checksum and the consistency of its fields (step against the
/// directory's name, skipped steps, world and expert-parallel sizes, placement, tensor files and
/// extents). Throws CheckpointError naming the file and the field.
proto::CheckpointManifest read_manifest(const std::string& dir);
/// Verifies every tensor's size and checksum. Throws CheckpointError naming the file and tensor.
void verify_checkpoint(const std::string& dir, const proto::CheckpointManifest& manifest);
/// The checkpoint name of expert `global_id`'s slice of parameter (or optimizer moment) `param`:
/// "<param>/expert_<id>", so a checkpoint loads at any expert-parallel size.
std::string expert_tensor_name(const std::string& param, int64_t global_id);
/// Whether a checkpoint tensor is one expert's slice (expert_tensor_name).
bool is_expert_tensor(const std::string& name);
/// The name of checkpoint step s: step_<8 digits>.
std::string checkpoint_dir_name(int64_t step);
/// Whether `name` has that form.
bool is_checkpoint_name(const std::string& name);

}  // namespace switchyard::trainer
