// What one optimizer step computed: the sums over a rank's micro-batches (device tensors, read once
// per step) and their reduction over every rank into a StepResult.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "modules/transformer.h"
#include "parallel/communicator.h"

namespace switchyard::trainer {

/// What one step computed, reduced over every rank.
struct StepResult {
  double lm_loss = 0, aux_loss = 0, grad_norm = 0;  ///< means over the step's micro-batches
  bool skipped = false;
  std::map<std::string, double> losses;  ///< each routing loss, summed over layers and per layer
  std::vector<torch::Tensor> loads;      ///< per MoE layer, [E + null] fp64 slots routed, all ranks
  double dropped = 0, routed = 0;        ///< slots (MoEStats), all ranks and layers
  /// Per MoE layer, all ranks and micro-batches.
  struct Layer {
    double dropped = 0, routed = 0;
    double entropy = -1;                     ///< mean router entropy; < 0 where not collected
    double capacity = -1, capacity_min = 0;  ///< MoEStats' (this rank's last micro-batch)
  };
  std::vector<Layer> layers;
  bool stop_signal = false;  ///< some rank received SIGTERM or SIGUSR1 (train.checkpoint_on_signal)
};

/// A step's sums over this rank's micro-batches. `add` issues device work only (no host wait, no
/// copy from the host: it can be captured in a CUDA graph); `reduce_into` reads them.
struct StepSums {
  torch::Tensor lm, aux, dropped, routed;
  std::map<std::string, torch::Tensor> losses;  ///< ordered alike on every rank
  std::vector<torch::Tensor> loads;             ///< per MoE layer
  /// Per MoE layer: dropped, routed, entropy sum, entropy count (fp64, on the device).
  std::vector<torch::Tensor> layer_sums;
  std::vector<std::pair<double, double>> capacities;  ///< per MoE layer: capacity, capacity_min

  /// Adds one micro-batch's output and its language-model loss.
  void add(const modules::LMOutput& out, const torch::Tensor& lm_loss);
  /// One all-reduce for every scalar (with `stop`, this rank's stop request), one for the loads of
  /// every layer; losses are divided by `micro_batches` (over all ranks). Collective.
  void reduce_into(StepResult& r, parallel::Communicator& world, double micro_batches, bool stop) const;
};

}  // namespace switchyard::trainer
