// Routing traces (`switchyard trace`, train.trace_every) and re-planning the expert placement during
// training (parallel.replan_every): the Trainer's members that gather routing over the ranks.
#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "runtime/autocast.h"
#include "placement/plan_file.h"
#include "placement/planner.h"
#include "placement/routing_trace.h"
#include "trainer/trainer.h"

namespace switchyard::trainer {
namespace fs = std::filesystem;
namespace {

/// One MoE layer's routing over all ranks: each rank's [T, k] expert ids (and gates, if defined; T
/// equal on every rank), gathered in rank order with each token's source EP rank (EP groups are
/// blocks of ep_size consecutive ranks, so world rank w is EP rank w % ep_size). Collective.
placement::LayerRouting gather_routing(parallel::Communicator& world, int64_t ep_size, const torch::Tensor& idx,
                                      const torch::Tensor& gates, int64_t k) {
  const auto all = world.all_gather(idx.to(torch::kInt32).contiguous()).to(torch::kCPU);
  placement::LayerRouting r;
  r.top_k = k;
  r.experts.assign(all.data_ptr<int32_t>(), all.data_ptr<int32_t>() + all.numel());
  if (gates.defined()) {
    const auto all_gates = world.all_gather(gates.to(torch::kFloat32).contiguous()).to(torch::kCPU);
    r.gates.assign(all_gates.data_ptr<float>(), all_gates.data_ptr<float>() + all_gates.numel());
  } else {
    r.gates.assign(all.numel(), 0.0f);
  }
  const int64_t per_rank = idx.size(0);
  for (int64_t w = 0; w < world.size(); ++w)
    r.source_rank.insert(r.source_rank.end(), per_rank, static_cast<int32_t>(w % ep_size));
  return r;
}

}  // namespace

std::pair<double, double> Trainer::replan() {
  const int64_t E = config_.model.moe.num_experts, slots = modules::routing_slots(config_.model.moe);
  // The trace: every rank's recorded routing, in rank order.
  placement::RoutingTrace trace;
  trace.num_experts = E;
  trace.ep_size = groups_->ep_size;
  for (auto& layer_routing : recent_routing_) {
    // Every rank ran the same micro-batches since the last plan, so the shares are equal.
    const auto mine = layer_routing.empty() ? torch::empty({0, slots}, torch::kInt32) : torch::cat(layer_routing, 0);
    trace.layers.push_back(gather_routing(*world_, groups_->ep_size, mine, {}, slots));
    layer_routing.clear();
  }
  placement::PlannerOptions o;
  o.topology = {groups_->ep_size, groups_->ep_ranks_per_node};
  o.time_limit_s = config_.parallel.replan_time_limit_s;
  const auto kind = config_.parallel.dispatcher;
  // Rank 0 plans (CBC stops on time, so ranks could differ); everyone takes its owners.
  auto owners = torch::zeros({static_cast<int64_t>(placements_.size()), E}, torch::kInt64);
  double before = 0, after = 0;
  if (world_->rank() == 0) {
    const auto report = placement::plan_placement(trace, o);
    for (size_t l = 0; l < report.layers.size(); ++l) {
      for (int64_t e = 0; e < E; ++e) owners[l][e] = report.layers[l].owner[e];
      before += placement::predict_rows(trace.layers[l], placements_[l].owners(), o.topology, kind).inter_node;
      after += placement::predict_rows(trace.layers[l], report.layers[l].owner, o.topology, kind).inter_node;
    }
  }
  world_->broadcast(owners, 0);
  auto predicted = torch::tensor({before, after}, torch::kFloat64);
  world_->broadcast(predicted, 0);
  std::vector<placement::ExpertPlacement> next;
  for (int64_t l = 0; l < owners.size(0); ++l) {
    const auto row = owners[l].contiguous();
    next.emplace_back(std::vector<int64_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + E), groups_->ep_size);
  }
  // Through a checkpoint: experts (and their optimizer state) are stored by global id, so loading it
  // on the new placement moves them to their new ranks.
  save_checkpoint();
  const auto dir = checkpoints_->latest().dir;
  SY_ASSERT(dir.has_value(), "no checkpoint after saving one");
  placements_ = std::move(next);
  build_model();
  load_checkpoint(*dir);
  if (world_->rank() == 0) {
    const auto plans = fs::path(config_.train.run_dir) / "plans";
    fs::create_directories(plans);
    char name[32];
    std::snprintf(name, sizeof(name), "step_%08lld.yaml", static_cast<long long>(state_.step));
    placement::save_placement_plan((plans / name).string(), placements_, groups_->ep_size);
  }
  return {predicted[0].item<double>(), predicted[1].item<double>()};
}

placement::RoutingTrace Trainer::trace(int64_t tokens) {
  const int64_t batch_tokens = config_.train.global_batch * config_.model.seq_len;
  const int64_t batches = std::max<int64_t>(1, (tokens + batch_tokens - 1) / batch_tokens);
  const int64_t E = config_.model.moe.num_experts, slots = modules::routing_slots(config_.model.moe);
  std::vector<std::vector<torch::Tensor>> idx(config_.num_moe_layers()), gates(config_.num_moe_layers());
  for_each_validation_forward(batches, [&](const MicroBatch&, const modules::LMOutput& out) {
    for (size_t l = 0; l < out.moe_stats.size(); ++l) {
      idx[l].push_back(out.moe_stats[l].routed_experts(E));
      gates[l].push_back(out.moe_stats[l].gates.to(torch::kCPU, torch::kFloat32));
    }
  });
  placement::RoutingTrace trace;
  trace.num_experts = E;
  trace.ep_size = groups_->ep_size;
  // Every rank routed the same number of tokens: gather in rank order, source = the rank's EP rank.
  for (size_t l = 0; l < idx.size(); ++l) {
    trace.layers.push_back(gather_routing(*world_, groups_->ep_size, torch::cat(idx[l], 0), torch::cat(gates[l], 0), slots));
  }
  return trace;
}

int64_t Trainer::write_trace(const std::string& path, int64_t tokens) {
  const auto t = trace(tokens);
  if (world_->rank() == 0) {
    placement::TraceInfo info;
    info.step = state_.step;
    info.world_size = world_->size();
    info.ranks_per_node = groups_->topology.uniform_ranks_per_node();
    info.d_model = config_.model.d_model;
    // Exchanged rows are activations: bf16 under CUDA autocast, fp32 otherwise.
    info.activation_bytes = activation_bytes();
    placement::write_routing_trace(path, t, info);
  }
  world_->barrier();
  return t.layers.empty() ? 0 : t.layers[0].num_tokens();
}

}  // namespace switchyard::trainer
