// StepSums: a step's statistics summed on the device, then reduced over ranks.
#include "trainer/step_sums.h"

namespace switchyard::trainer {
namespace {

/// sum += v, in fp64 where v is.
void accumulate(torch::Tensor& sum, const torch::Tensor& v) {
  const auto v64 = v.detach().to(torch::kFloat64);
  sum = sum.defined() ? sum + v64 : v64;
}

/// A 0-dim tensor with `opts`: a host scalar becomes a fill (no copy from pageable host memory, which
/// would wait on the host and cannot be captured in a CUDA graph).
torch::Tensor on(const torch::TensorOptions& opts, const torch::Tensor& v) {
  if (v.device() == opts.device() || !v.device().is_cpu() || v.numel() != 1) return v.to(opts);
  return torch::full({}, v.item<double>(), opts);
}

}  // namespace

void StepSums::add(const modules::LMOutput& out, const torch::Tensor& lm_loss) {
  accumulate(lm, lm_loss);
  accumulate(aux, out.aux_loss);
  for (const auto& [name, v] : out.losses) accumulate(losses[name], v);
  for (size_t l = 0; l < out.layer_losses.size(); ++l) {
    for (const auto& [name, v] : out.layer_losses[l]) accumulate(losses[name + "_moe" + std::to_string(l)], v);
  }
  for (size_t l = 0; l < out.moe_stats.size(); ++l) {
    const auto& s = out.moe_stats[l];
    if (loads.size() <= l) {
      loads.push_back(torch::zeros_like(s.tokens_per_expert, torch::kFloat64));
      layer_sums.push_back(torch::zeros({4}, s.tokens_per_expert.options().dtype(torch::kFloat64)));
      capacities.emplace_back();
    }
    loads[l] += s.tokens_per_expert.to(torch::kFloat64);
    accumulate(dropped, s.dropped_slots);
    accumulate(routed, s.routed_slots);
    // The counters may live on the host or the device (dropless routing counts on the host): all
    // on the sums' device.
    const auto& opts = layer_sums[l].options();
    const auto zero = torch::zeros({}, opts);
    const auto entropy = s.entropy.defined() ? s.entropy.detach().to(opts) : zero;
    layer_sums[l] += torch::stack({on(opts, s.dropped_slots), on(opts, s.routed_slots), entropy,
                                   s.entropy.defined() ? torch::ones({}, opts) : zero});
    capacities[l] = {static_cast<double>(s.capacity), s.capacity_min};
  }
}

void StepSums::reduce_into(StepResult& r, parallel::Communicator& world, double micro_batches, bool stop_requested) const {
  const auto zero = torch::zeros({}, torch::kFloat64);
  // The stop flag rides along: every rank learns at the same step that one was signalled.
  const auto stop = torch::full({}, stop_requested ? 1.0 : 0.0, torch::kFloat64);
  std::vector<torch::Tensor> scalars = {lm, aux, dropped.defined() ? dropped : zero, routed.defined() ? routed : zero, stop};
  for (const auto& [name, v] : losses) scalars.push_back(v);
  for (auto& v : scalars) v = v.to(torch::kCPU).reshape({1});
  auto packed = torch::cat(scalars);
  world.all_reduce(packed, parallel::ReduceOp::kSum);
  const auto values = std::vector<double>(packed.data_ptr<double>(), packed.data_ptr<double>() + packed.numel());
  r.lm_loss = values[0] / micro_batches;
  r.aux_loss = values[1] / micro_batches;
  r.dropped = values[2];
  r.routed = values[3];
  r.stop_signal = values[4] > 0;
  size_t i = 5;
  for (const auto& [name, v] : losses) r.losses[name] = values[i++] / micro_batches;
  if (loads.empty()) return;
  // The loads and the per-layer sums of every layer in one all-reduce.
  std::vector<int64_t> sizes;
  std::vector<torch::Tensor> host;
  for (size_t l = 0; l < loads.size(); ++l) {
    host.push_back(loads[l].to(torch::kCPU));
    host.push_back(layer_sums[l].to(torch::kCPU));
    sizes.push_back(loads[l].numel());
    sizes.push_back(4);
  }
  auto all = torch::cat(host);
  world.all_reduce(all, parallel::ReduceOp::kSum);
  const auto parts = all.split_with_sizes(sizes);
  for (size_t l = 0; l < loads.size(); ++l) {
    r.loads.push_back(parts[2 * l]);
    const auto* v = parts[2 * l + 1].data_ptr<double>();
    StepResult::Layer layer;
    layer.dropped = v[0];
    layer.routed = v[1];
    if (v[3] > 0) layer.entropy = v[2] / v[3];
    layer.capacity = capacities[l].first;
    layer.capacity_min = capacities[l].second;
    r.layers.push_back(layer);
  }
}

}  // namespace switchyard::trainer
