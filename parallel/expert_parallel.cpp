// Expert-parallel wiring and gradient synchronization.
#include "parallel/expert_parallel.h"

#include "core/error.h"
#include "modules/moe_layer.h"

namespace switchyard::parallel {

void attach(modules::MoELayerImpl& layer, const ExpertParallelDispatcher& dispatcher, const ProcessGroups& groups,
            const core::Config& config) {
  layer.set_overlap_chunks(config.parallel.overlap_chunks);
  if (config.losses.load_balance_scope == core::BalanceScope::kGlobalBatch) {
    auto world = groups.world;
    layer.set_count_reducer([world](const torch::Tensor& counts) {
      auto total = counts.clone();
      world->all_reduce(total, ReduceOp::kSum);
      return total;
    });
  }
  auto mask = dispatcher.node_local_expert_mask();
  const int64_t extra = layer.router->num_choices() - mask.numel();
  if (extra > 0) mask = torch::cat({mask, torch::ones({extra}, torch::kBool)});  // null experts never leave the rank
  layer.set_local_expert_mask(mask);
}

modules::DispatcherFactory make_dispatcher_factory(std::shared_ptr<ProcessGroups> groups, const core::Config& config,
                                                   std::vector<std::shared_ptr<ExpertParallelDispatcher>>* created,
                                                   std::vector<placement::ExpertPlacement> placements) {
  SY_CHECK_AS(ConfigError, placements.empty() || static_cast<int64_t>(placements.size()) == config.num_moe_layers(),
              "parallel.placement: the plan has ", placements.size(), " layers, the model ", config.num_moe_layers(),
              " MoE layers");
  return [groups, config, created, placements](int64_t layer_idx) -> std::shared_ptr<modules::TokenDispatcher> {
    const int64_t moe_idx = (layer_idx + 1) / config.model.moe.every - 1;
    auto placement = placements.empty()
                         ? placement::ExpertPlacement::contiguous(config.model.moe.num_experts, groups->ep_size)
                         : placements.at(moe_idx);
    auto d = std::make_shared<ExpertParallelDispatcher>(groups, placement, config.parallel.dispatcher, /*dedup=*/true,
                                                        modules::every_slot_routed(config.model.moe));
    if (created) created->push_back(d);
    return d;
  };
}

bool is_expert_parameter(const std::string& name) {
  return name.find("experts.w_in") != std::string::npos || name.find("experts.w_out") != std::string::npos;
}

namespace {

/// All-reduces the gradients of `params` as one flat buffer, then scales them.
void reduce_flat(std::vector<torch::Tensor>& params, Communicator& comm, double scale) {
  if (params.empty()) return;
  if (comm.size() == 1) {  // nothing to sum: scale in place (no flat copy of every gradient)
    std::vector<torch::Tensor> grads;
    for (auto& p : params) {
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      grads.push_back(p.mutable_grad());
    }
    if (scale != 1.0) at::_foreach_mul_(grads, scale);
    return;
  }
  // Summed in fp32 (fp64 when the parameters are fp64).
  const auto dtype = params.front().scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  std::vector<torch::Tensor> flat;
  flat.reserve(params.size());
  for (auto& p : params) {
    flat.push_back(p.grad().defined() ? p.grad().reshape({-1}).to(dtype) : torch::zeros({p.numel()}, p.options().dtype(dtype)));
  }
  auto buffer = torch::cat(flat);
  comm.all_reduce(buffer, ReduceOp::kSum);
  buffer.mul_(scale);
  int64_t offset = 0;
  for (auto& p : params) {
    auto g = buffer.narrow(0, offset, p.numel()).view(p.sizes()).to(p.scalar_type());
    if (p.grad().defined()) p.mutable_grad().copy_(g);
    else p.mutable_grad() = g.clone();
    offset += p.numel();
  }
}

}  // namespace

void sync_gradients(torch::nn::Module& model, const ProcessGroups& groups) {
  std::vector<torch::Tensor> dense, experts;
  for (const auto& item : model.named_parameters()) {
    if (!item.value().requires_grad()) continue;
    (is_expert_parameter(item.key()) ? experts : dense).push_back(item.value());
  }
  const double scale = 1.0 / groups.world->size();
  reduce_flat(dense, *groups.world, scale);
  reduce_flat(experts, *groups.expert_dp, scale);
}

ExchangeStats take_exchange_stats(const std::vector<std::shared_ptr<ExpertParallelDispatcher>>& dispatchers) {
  ExchangeStats total;
  for (const auto& d : dispatchers) {
    total.intra_node_bytes += d->stats().intra_node_bytes;
    total.inter_node_bytes += d->stats().inter_node_bytes;
    total.seconds += d->stats().seconds;
    d->reset_stats();
  }
  return total;
}

}  // namespace switchyard::parallel
