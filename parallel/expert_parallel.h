// Wiring expert parallelism into the model: dispatchers per MoE layer, global-batch balance counts,
// locality masks, and gradient synchronization.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "modules/moe_layer.h"
#include "modules/transformer.h"
#include "parallel/expert_parallel_dispatcher.h"
#include "parallel/process_groups.h"

namespace switchyard::parallel {

/// Sets, on one MoE layer, the count reducer (sum over all ranks, for losses.load_balance_scope
/// global_batch), the node-local expert mask (locality loss) and the exchange chunks
/// (parallel.overlap_chunks). Collective use: every rank calls the layer's forward in the same order.
void attach(modules::MoELayerImpl& layer, const ExpertParallelDispatcher& dispatcher, const ProcessGroups& groups,
            const core::Config& config);

/// A dispatcher per MoE layer (contiguous placement unless `placements` gives one per MoE layer),
/// remembered in `created` for byte statistics. For TransformerLM's constructor.
modules::DispatcherFactory make_dispatcher_factory(std::shared_ptr<ProcessGroups> groups, const core::Config& config,
                                                   std::vector<std::shared_ptr<ExpertParallelDispatcher>>* created,
                                                   std::vector<placement::ExpertPlacement> placements = {});

/// Whether a parameter (by its name in the model) is a routed expert's weight.
bool is_expert_parameter(const std::string& name);

/// Makes gradients equal those of the single-process model on the global batch when each rank's loss
/// is the mean over its own (equal-sized) share: sums dense gradients over the world and expert
/// gradients over the expert data-parallel group, then divides both by the world size (not by the
/// group size: experts see tokens from every rank of their EP group). Undefined gradients count as
/// zero. Collective over the world, then the expert data-parallel group.
void sync_gradients(torch::nn::Module& model, const ProcessGroups& groups);

/// Sums bytes of every dispatcher and resets them.
ExchangeStats take_exchange_stats(const std::vector<std::shared_ptr<ExpertParallelDispatcher>>& dispatchers);

}  // namespace switchyard::parallel
