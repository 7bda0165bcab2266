// train.cuda_graph: the whole training step (every micro-batch's forward and backward, the gradient
// norm, clipping and the AdamW update) captured once as a CUDA graph and replayed each step, so a
// step costs the host one launch instead of thousands (an eager step of a small model is bound by
// the host's launches, not by the card).
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <vector>

#include "core/fault_injection.h"
#include "core/logging.h"
#include "runtime/autocast.h"
#include "trainer/trainer.h"

namespace switchyard::trainer {

std::string Trainer::cuda_graph_unsupported() const {
  const auto& moe = config_.model.moe;
  if (config_.train.cuda_graph == core::CudaGraphMode::kOff) return "train.cuda_graph is off";
  if (!device_.is_cuda()) return "not on CUDA";
  if (world_->size() > 1) return "more than one rank: the exchange sizes its buffers on the host";
  if (config_.train.precision != core::Precision::kBf16) return "train.precision is not bf16: fp32 experts count rows on the host";
  if (!modules::every_slot_routed(moe)) return "routing can drop slots or has null experts: slots are counted on the host";
  if (config_.losses.load_balance > 0 && config_.losses.load_balance_scope == core::BalanceScope::kGlobalBatch &&
      config_.micro_steps(world_->size()) > 1) {
    return "losses.load_balance_scope global_batch routes the whole step on the host first";
  }
  if (config_.parallel.replan_every > 0) return "parallel.replan_every records routing on the host";
  if (config_.parallel.overlap_chunks > 1) return "parallel.overlap_chunks runs exchanges on a second stream";
  return "";
}

Trainer::StepResult Trainer::step_once() {
  last_step_graphed_ = false;
  const bool automatic = config_.train.cuda_graph == core::CudaGraphMode::kAuto;
  // Eager steps first (lazy initialization: optimizer states, library handles, kernel choices). auto
  // times the two eager steps before the capture and the two replays after it (steady state on both
  // sides: a run's first steps are slower, on qwen3_moe_like steps 3-4 still ~15%, cuBLAS meeting
  // new per-expert shapes). A step with an injected fault is never captured or replayed (it would be
  // baked in).
  const bool fault = core::fault_at("nan_at_step", state_.step + 1);
  const bool graph = graph_enabled_ && eager_steps_ >= (automatic ? kAutoCaptureStep - 1 : 1) && !fault;
  const bool timed = graph_enabled_ && automatic && !graph_decided_ && !fault &&
                     (graph ? graph_replays_ >= 1 : eager_steps_ >= kAutoCaptureStep - 3);
  const auto wait_for_device = [&] { torch::cuda::synchronize(device_.index()); };
  if (timed) wait_for_device();
  const auto start = std::chrono::steady_clock::now();
  StepResult r;
  if (graph) {
    try {
      r = graphed_step();
      last_step_graphed_ = true;
      ++graph_replays_;
    } catch (const runtime::CaptureError& e) {
      core::log_warn("train.cuda_graph: the step could not be captured (", e.what(), "); every step runs eagerly");
      leave_graph();
    }
  }
  if (!last_step_graphed_) {
    for (auto& layer : model_->moe_layers()) {
      if (!layer.is_empty()) layer->set_collect_statistics(collect_statistics_);
    }
    r = compute_gradients();
    apply_update(r);
    ++eager_steps_;
  }
  if (timed) {
    wait_for_device();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    (last_step_graphed_ ? replay_step_s_ : eager_step_s_).push_back(seconds);
    if (replay_step_s_.size() == 2) {
      graph_decided_ = true;
      const auto mean = [](const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / std::max<size_t>(1, v.size()); };
      const double replay = mean(replay_step_s_), eager = mean(eager_step_s_);
      const bool keep = eager_step_s_.empty() || replay < eager;
      core::log_info("train.cuda_graph auto: a replayed step took ", replay * 1e3, " ms, an eager one ", eager * 1e3, " ms; ",
                     keep ? "steps replay the graph" : "steps run eagerly");
      if (!keep) leave_graph();
    }
  }
  return r;
}

void Trainer::leave_graph() {
  graph_enabled_ = false;
  step_graph_.reset();
  optimizer_->zero_grad();  // the gradients in the graph's pool
  for (auto& layer : model_->moe_layers()) {
    if (!layer.is_empty()) layer->experts->drop_pending_gradients();  // a capture that failed part way
  }
}

Trainer::StepResult Trainer::graphed_step() {
  const int64_t step = state_.step, micro_steps = config_.micro_steps(world_->size());
  if (!step_graph_) {
    step_graph_ = std::make_unique<StepGraph>();
    const auto opts = torch::dtype(torch::kFloat32).device(device_);
    step_graph_->lr = torch::zeros({}, opts);
    step_graph_->count = torch::zeros({}, opts);
  }
  auto& g = *step_graph_;
  // This step's micro-batches into the buffers the graph reads.
  size_t i = 0;
  for_each_micro_batch(*train_sampler_, step, false, [&](const MicroBatch& mb) {
    const auto fill = [](torch::Tensor& to, const torch::Tensor& from) {
      if (!from.defined()) return;
      if (to.defined()) to.copy_(from);
      else to = from.clone(at::MemoryFormat::Contiguous);
    };
    if (g.inputs.size() <= i) g.inputs.emplace_back();
    fill(g.inputs[i].inputs, mb.inputs);
    fill(g.inputs[i].targets, mb.targets);
    fill(g.inputs[i].counters, mb.counters);
    fill(g.inputs[i].segments, mb.segments);
    ++i;
  });
  g.lr.fill_(learning_rate(config_.train, step));
  g.count.fill_(static_cast<double>(optimizer_->steps()));
  if (!g.graph.captured()) {
    // Every statistic is computed in every replay (the router entropy too: a few kernels in a graph).
    for (auto& layer : model_->moe_layers()) {
      if (!layer.is_empty()) layer->set_collect_statistics(true);
    }
    optimizer_->zero_grad();
    g.graph.capture([&] {
      StepSums sums;
      {
        runtime::Bf16Autocast autocast(true);
        for (const auto& mb : g.inputs) forward_backward(mb, micro_steps, sums);
      }
      flush_expert_gradients();
      // apply_update's rules on the device: no update when the loss or the norm is not finite,
      // clipping as the gradients' divisor (the same IEEE operations as on the host).
      const auto [dense, experts] = squared_grad_norms();
      const auto norm = (dense + experts).sqrt();
      const auto found_inf = norm.isfinite().logical_and(sums.lm.isfinite()).logical_not().to(torch::kFloat32);
      const double clip = config_.train.grad_clip;
      auto grad_scale = torch::ones_like(g.lr);
      if (clip > 0) {
        const auto multiplier = torch::full_like(norm, clip).div(norm + 1e-6);
        grad_scale = torch::where(norm > clip, torch::ones_like(norm).div(multiplier), torch::ones_like(norm)).to(torch::kFloat32);
      }
      g.count.add_(1 - found_inf);
      optimizer_->step_on_device(g.lr, grad_scale, found_inf, g.count);
      g.sums = std::move(sums);
      g.grad_norm = norm;
    });
    core::log_info("train.cuda_graph: step ", step + 1, " captured");
  }
  g.graph.replay();
  StepResult r;
  g.sums.reduce_into(r, *world_, static_cast<double>(world_->size() * micro_steps), stop_requested());
  r.grad_norm = g.grad_norm.item<double>();
  if (count_step(r)) {
    optimizer_->count_step();
    update_router_bias(r);
  }
  return r;
}

}  // namespace switchyard::trainer
