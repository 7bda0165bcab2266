// The training loop.
#include "trainer/trainer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <ATen/autocast_mode.h>

#include "core/build_info.h"
#if SWITCHYARD_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <limits>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "core/error.h"
#include "core/fault_injection.h"
#include "core/file_io.h"
#include "core/logging.h"
#include "modules/autocast.h"
#include "modules/profiler.h"
#include "modules/torch_version.h"
#include "parallel/communicator.h"
#include "placement/plan_file.h"
#include "placement/traffic_model.h"
#include "trainer/metrics.h"

namespace switchyard::trainer {
namespace fs = std::filesystem;
namespace {

/// LibTorch's intra-op threads and, when the BLAS is OpenBLAS, its threads (looked up at run time:
/// Debian's LibTorch calls whichever libblas.so.3 the system provides).
void set_cpu_threads(int threads) {
  torch::set_num_threads(threads);
  using SetThreads = void (*)(int);
  if (auto* openblas = reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) openblas(threads);
}

/// Token counters of evaluation and traces live in a stream of their own (this bit set), apart from
/// the training tokens' (routing noise of a validation token never repeats a training token's).
constexpr int64_t kEvalCounterBit = int64_t{1} << 62;

/// Whether every element of every tensor is finite (one device synchronization).
bool all_finite(const std::vector<torch::Tensor>& tensors) {
  if (tensors.empty()) return true;
  std::vector<torch::Tensor> flags;
  for (const auto& t : tensors) flags.push_back(torch::isfinite(t.detach()).all().to(torch::kCPU));
  return torch::stack(flags).all().item<bool>();
}

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof(buf), "%lldh%02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
  else std::snprintf(buf, sizeof(buf), "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
  return buf;
}

/// Peak dense bf16 TFLOP/s of the device for MFU: train.peak_tflops, else known cards by name, else 0.
double peak_tflops(const core::TrainConfig& train, const torch::Device& device) {
  if (train.peak_tflops > 0) return train.peak_tflops;
#if SWITCHYARD_WITH_CUDA
  if (device.is_cuda()) {
    const std::string name = at::cuda::getDeviceProperties(device.index())->name;
    if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos) return 989.4;
    if (name.find("A100") != std::string::npos) return 312.0;
  }
#else
  (void)device;
#endif
  return 0;
}

/// Rank 0's peak of allocated CUDA memory since the start, GiB; -1 on the CPU.
double peak_memory_gib(const torch::Device& device) {
#if SWITCHYARD_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return static_cast<double>(stats.allocated_bytes[0].peak) / (1024.0 * 1024.0 * 1024.0);
  }
#else
  (void)device;
#endif
  return -1;
}

double all_reduce_sum(parallel::Communicator& comm, double x) {
  auto t = torch::tensor({x}, torch::kFloat64);
  comm.all_reduce(t, parallel::ReduceOp::kSum);
  return t.item<double>();
}

/// Sum of the squares of every element of `grads`, a 0-dim fp64 tensor on `device`. On CUDA one
/// multi-tensor kernel (fp32 norm per tensor, squared and summed in fp64); elsewhere per tensor in fp64.
torch::Tensor squared_norm(const std::vector<torch::Tensor>& grads, const torch::Device& device) {
  auto sum = torch::zeros({}, torch::dtype(torch::kFloat64).device(device));
  if (grads.empty()) return sum;
#if SY_TORCH_AT_LEAST(2, 1)
  if (device.is_cuda()) return sum + torch::stack(at::_foreach_norm(grads, 2)).to(torch::kFloat64).square().sum();
#endif
  for (const auto& g : grads) sum += g.to(torch::kFloat64).pow(2).sum();
  return sum;
}

}  // namespace

Trainer::Trainer(const core::Config& config, parallel::RunWorld world)
    : config_(config), world_(std::move(world.comm)), device_(world.device) {
  config_.validate_for_world(world_->size());
  SY_CHECK_AS(ConfigError, (config_.train.device == core::DeviceKind::kCuda) == device_.is_cuda(),
              "train.device: ", core::enum_name(config_.train.device), " but the run world is on ", device_.str());
  groups_ = parallel::ProcessGroups::create(world_, config_.parallel);
  SY_CHECK_AS(ConfigError, config_.parallel.replan_every == 0 || groups_->ep_ranks_per_node > 0,
              "parallel.replan_every: re-planning needs nodes aligned with the expert-parallel group "
              "(parallel.ranks_per_node dividing parallel.expert_parallel)");

  if (config_.train.deterministic) {
    // cuBLAS needs a fixed workspace to be deterministic; it reads this at its first handle.
    setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
    at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/false);
  }

  // CPU threads: the rank's share of its host's cores (physical hosts: emulated nodes share one), for
  // LibTorch's intra-op pool and for the BLAS alike. Left alone, OpenBLAS sizes its own pool from the
  // CPUs the process may run on, which a launcher's binding changes from one launch to the next; a
  // fixed count keeps CPU runs a function of the config and the host (and keeps ranks from
  // oversubscribing the cores).
  const int ranks_here = parallel::physical_node_local(*world_).size;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  set_cpu_threads(std::max(1, cores / std::max(1, ranks_here)));

  const auto seed = static_cast<uint64_t>(config_.train.seed);
  source_ = data::open_token_source(config_.data, seed);
  split_ = data::split_source(*source_, config_.data.val_fraction, config_.model.seq_len);
  train_sampler_ = std::make_unique<data::BatchSampler>(*source_, split_.train_begin, split_.train_end, config_.model.seq_len,
                                                        config_.train.global_batch, seed, config_.model.vocab_size);
  val_sampler_ = std::make_unique<data::BatchSampler>(*source_, split_.val_begin, split_.val_end, config_.model.seq_len,
                                                      config_.train.global_batch, seed + 1, config_.model.vocab_size);
  if (config_.parallel.placement.empty()) {
    for (int64_t l = 0; l < config_.num_moe_layers(); ++l) {
      placements_.push_back(placement::ExpertPlacement::contiguous(config_.model.moe.num_experts, groups_->ep_size));
    }
  } else {
    placements_ = placement::load_placement_plan(config_.parallel.placement, config_.num_moe_layers(),
                                                config_.model.moe.num_experts, groups_->ep_size);
    core::log_info("placement: ", config_.parallel.placement, " (", placements_.size(), " MoE layers)");
  }
  build_model();
  checkpoints_ = std::make_unique<CheckpointManager>((fs::path(config_.train.run_dir) / "checkpoints").string(),
                                                     config_.train.keep_checkpoints, groups_);
  state_.data_seed = seed;
  state_.data_windows = train_sampler_->num_windows();
}

void Trainer::build_model() {
  dispatchers_.clear();
  model_ = modules::TransformerLM(config_.model, config_.losses, static_cast<uint64_t>(config_.train.seed),
                                  parallel::make_dispatcher_factory(groups_, config_, &dispatchers_, placements_));
  size_t d = 0;
  for (auto& layer : model_->moe_layers()) {
    if (!layer.is_empty()) parallel::attach(*layer, *dispatchers_.at(d++), *groups_, config_);
  }
  model_->to(device_);
  if (config_.train.precision == core::Precision::kFp64) model_->to(torch::kFloat64);
  model_->set_recompute(config_.train.recompute);
  for (auto& layer : model_->moe_layers()) {
    if (!layer.is_empty()) layer->set_collect_statistics(false);  // the step reads none of them yet
  }
  std::vector<std::pair<std::string, torch::Tensor>> params;
  for (const auto& item : model_->named_parameters()) params.emplace_back(item.key(), item.value());
  optimizer_ = std::make_unique<AdamW>(params, config_.train);
}

void Trainer::load_checkpoint(const std::string& dir) {
  state_ = checkpoints_->load(dir, *model_, *optimizer_, placements_);
  SY_CHECK_AS(CheckpointError, state_.data_windows == train_sampler_->num_windows(), dir,
              ": the checkpoint's data has ", state_.data_windows, " training windows, this run's data has ",
              train_sampler_->num_windows(), " (data changed?)");
  SY_CHECK_AS(CheckpointError, state_.data_seed == static_cast<uint64_t>(config_.train.seed), dir,
              ": the checkpoint's data order is train.seed ", state_.data_seed, ", this run's is ", config_.train.seed,
              " (resume with the checkpoint's seed)");
  auto generator = at::detail::getDefaultCPUGenerator();
  SY_CHECK_AS(CheckpointError, state_.cpu_rng_state.numel() == generator.get_state().numel(), dir,
              ": the checkpoint's CPU generator state has ", state_.cpu_rng_state.numel(), " bytes, this LibTorch's ",
              generator.get_state().numel());
  generator.set_state(state_.cpu_rng_state);
#if SWITCHYARD_WITH_CUDA
  if (device_.is_cuda() && state_.cuda_rng_state.defined()) {
    auto cuda_generator = at::cuda::detail::getDefaultCUDAGenerator(device_.index());
    cuda_generator.set_state(state_.cuda_rng_state);
  }
#endif
}

void Trainer::save_checkpoint() {
  // A diverged model is never published over the last good checkpoint.
  std::vector<torch::Tensor> params;
  for (const auto& p : model_->parameters()) params.push_back(p);
  SY_CHECK_AS(DataError, all_finite(params), "step ", state_.step, ": parameters are not finite; not checkpointed (",
              "the last good checkpoint stays in ", checkpoints_->root(), ")");
  state_.cpu_rng_state = at::detail::getDefaultCPUGenerator().get_state();
#if SWITCHYARD_WITH_CUDA
  if (device_.is_cuda()) state_.cuda_rng_state = at::cuda::detail::getDefaultCUDAGenerator(device_.index()).get_state();
#endif
  checkpoints_->save(state_, core::dump_config(config_), *model_, *optimizer_, placements_);
}

int64_t Trainer::activation_bytes() const {
  switch (config_.train.precision) {
    case core::Precision::kBf16: return device_.is_cuda() ? 2 : 4;  // autocast runs on CUDA only
    case core::Precision::kFp64: return 8;
    default: return 4;
  }
}

std::vector<int64_t> Trainer::local_expert_ids(size_t moe_layer) const {
  return placements_.at(moe_layer).experts_of(groups_->ep_rank);
}

double Trainer::global_grad_norm() {
  // Dense gradients are identical on every rank after sync; experts are split over the EP group.
  // Squared norms accumulate on the device; one read at the end (not one sync per parameter).
  std::vector<torch::Tensor> dense_grads, expert_grads;
  for (const auto& item : model_->named_parameters()) {
    const auto& g = item.value().grad();
    if (!g.defined()) continue;
    (parallel::is_expert_parameter(item.key()) ? expert_grads : dense_grads).push_back(g);
  }
  const double dense = squared_norm(dense_grads, device_).item<double>();
  const double experts = all_reduce_sum(*groups_->ep, squared_norm(expert_grads, device_).item<double>());
  return std::sqrt(dense + experts);
}

void Trainer::for_each_micro_batch(const data::BatchSampler& sampler, int64_t index, bool eval,
                                   const std::function<void(const MicroBatch&)>& fn) const {
  using torch::indexing::Slice;
  const int64_t per_rank = config_.train.global_batch / world_->size();
  const int64_t micro = config_.train.micro_batch, seq = config_.model.seq_len;
  const auto positions = torch::arange(seq, torch::kInt64).unsqueeze(0);
  for (int64_t first = world_->rank() * per_rank; first < (world_->rank() + 1) * per_rank; first += micro) {
    const auto batch = to_device(sampler.batch(index, first, micro));
    MicroBatch mb;
    mb.inputs = batch.index({Slice(), Slice(0, -1)});
    mb.targets = batch.index({Slice(), Slice(1, torch::indexing::None)});
    // Sequence j of the run (global batch `index`, place `first + b` in it): its tokens count j * seq_len + p.
    const auto sequences = torch::arange(micro, torch::kInt64).unsqueeze(1) + (index * config_.train.global_batch + first);
    auto counters = sequences * seq + positions;
    if (eval) counters = counters.bitwise_or(kEvalCounterBit);
    mb.counters = to_device(counters);
    fn(mb);
  }
}

torch::Tensor Trainer::to_device(const torch::Tensor& host) const {
  // From pinned memory without waiting: a copy from pageable memory would wait for the GPU to
  // finish the work queued before it (the host, which launches the step's kernels, would stall).
  if (!device_.is_cuda()) return host;
  return host.pin_memory().to(device_, /*non_blocking=*/true);
}

void Trainer::count_step_routing(int64_t step) {
  torch::NoGradGuard no_grad;
  auto layers = model_->moe_layers();
  // Placeholder counts while counting: the layers then skip their per-batch count all-reduce.
  for (auto& layer : layers) {
    if (!layer.is_empty()) layer->set_step_counts(torch::zeros({layer->router->num_choices()}, torch::kFloat32));
  }
  std::vector<torch::Tensor> counts;
  for_each_micro_batch(*train_sampler_, step, false, [&](const MicroBatch& mb) {
    modules::Bf16Autocast autocast(config_.train.precision == core::Precision::kBf16);
    const auto out = model_->forward(mb.inputs, mb.counters);
    for (size_t l = 0; l < out.moe_stats.size(); ++l) {
      const auto c = out.moe_stats[l].tokens_per_expert.to(torch::kCPU, torch::kFloat64);
      if (counts.size() <= l) counts.push_back(c);
      else counts[l] += c;
    }
  });
  auto all = torch::cat(counts);
  world_->all_reduce(all, parallel::ReduceOp::kSum);
  int64_t offset = 0;
  for (auto& layer : layers) {
    if (layer.is_empty()) continue;
    const int64_t n = layer->router->num_choices();
    layer->set_step_counts(all.narrow(0, offset, n).to(torch::kFloat32));
    offset += n;
  }
}

Trainer::StepResult Trainer::compute_gradients() {
  const int64_t step = state_.step;
  StepResult r;
  const int64_t micro_steps = config_.micro_steps(world_->size());
  optimizer_->zero_grad();
  // Global-batch balance needs the whole step's counts before the first backward.
  const bool step_counts = config_.losses.load_balance > 0 &&
                           config_.losses.load_balance_scope == core::BalanceScope::kGlobalBatch && micro_steps > 1;
  if (step_counts) count_step_routing(step);
  std::vector<torch::Tensor> loads;
  torch::Tensor lm_sum, aux_sum, dropped_sum, routed_sum;
  std::map<std::string, torch::Tensor> loss_sums;
  const auto add = [](torch::Tensor& sum, const torch::Tensor& v) {
    const auto v64 = v.detach().to(torch::kFloat64);
    sum = sum.defined() ? sum + v64 : v64;
  };
  // One autocast region for the whole step: its cache keeps each weight's bf16 cast for every
  // micro-batch (the backward runs on autograd's device thread, outside autocast).
  modules::Bf16Autocast autocast(config_.train.precision == core::Precision::kBf16);
  for_each_micro_batch(*train_sampler_, step, false, [&](const MicroBatch& mb) {
    const auto out = model_->forward(mb.inputs, mb.counters);
    auto lm = modules::TransformerLMImpl::lm_loss(out.logits, mb.targets);
    if (core::fault_at("nan_at_step", step + 1)) lm = lm * std::numeric_limits<double>::quiet_NaN();
    ((lm + out.aux_loss) / static_cast<double>(micro_steps)).backward();
    // Scalars accumulate as tensors: read once per step, not once per micro-batch and loss.
    add(lm_sum, lm);
    add(aux_sum, out.aux_loss);
    for (const auto& [name, v] : out.losses) add(loss_sums[name], v);
    for (size_t l = 0; l < out.layer_losses.size(); ++l) {
      for (const auto& [name, v] : out.layer_losses[l]) add(loss_sums[name + "_moe" + std::to_string(l)], v);
    }
    if (config_.parallel.replan_every > 0) {
      if (recent_routing_.size() < out.moe_stats.size()) recent_routing_.resize(out.moe_stats.size());
      for (size_t l = 0; l < out.moe_stats.size(); ++l) {
        recent_routing_[l].push_back(out.moe_stats[l].routed_experts(config_.model.moe.num_experts));
        if (recent_routing_[l].size() > 256) recent_routing_[l].erase(recent_routing_[l].begin());  // bounded
      }
    }
    for (size_t l = 0; l < out.moe_stats.size(); ++l) {
      const auto& s = out.moe_stats[l];
      if (loads.size() <= l) loads.push_back(torch::zeros_like(s.tokens_per_expert, torch::kFloat64));
      loads[l] += s.tokens_per_expert.to(torch::kFloat64);
      add(dropped_sum, s.dropped_slots);
      add(routed_sum, s.routed_slots);
    }
  });
  for (auto& layer : model_->moe_layers()) {
    if (layer.is_empty()) continue;
    if (step_counts) layer->set_step_counts({});
    layer->experts->drop_weight_casts();
  }
  // One all-reduce for every scalar of the step (loss names are ordered alike on every rank), one
  // for the loads of every layer.
  std::vector<torch::Tensor> scalars = {lm_sum, aux_sum, dropped_sum.defined() ? dropped_sum : torch::zeros({}, torch::kFloat64),
                                        routed_sum.defined() ? routed_sum : torch::zeros({}, torch::kFloat64)};
  for (const auto& [name, v] : loss_sums) scalars.push_back(v);
  for (auto& s : scalars) s = s.to(torch::kCPU).reshape({1});
  auto packed = torch::cat(scalars);
  world_->all_reduce(packed, parallel::ReduceOp::kSum);
  const double micro_batches = static_cast<double>(world_->size() * micro_steps);
  const auto values = std::vector<double>(packed.data_ptr<double>(), packed.data_ptr<double>() + packed.numel());
  r.lm_loss = values[0] / micro_batches;
  r.aux_loss = values[1] / micro_batches;
  r.dropped = values[2];
  r.routed = values[3];
  size_t i = 4;
  for (const auto& [name, v] : loss_sums) r.losses[name] = values[i++] / micro_batches;
  if (!loads.empty()) {
    std::vector<int64_t> sizes;
    for (auto& l : loads) {
      l = l.to(torch::kCPU);
      sizes.push_back(l.numel());
    }
    auto all = torch::cat(loads);
    world_->all_reduce(all, parallel::ReduceOp::kSum);
    r.loads = all.split_with_sizes(sizes);
  }
  parallel::sync_gradients(*model_, *groups_);
  r.grad_norm = global_grad_norm();
  return r;
}

void Trainer::apply_update(StepResult& r) {
  const int64_t step = state_.step;
  state_.step = step + 1;
  state_.tokens_seen += config_.train.global_batch * config_.model.seq_len;
  if (!std::isfinite(r.grad_norm) || !std::isfinite(r.lm_loss)) {
    SY_CHECK_AS(DataError, config_.train.nan_policy == core::NanPolicy::kSkip, "step ", step + 1,
                ": non-finite loss or gradient (train.nan_policy error)");
    ++consecutive_skips_;
    SY_CHECK_AS(DataError, consecutive_skips_ <= config_.train.max_consecutive_skips, "step ", step + 1, ": ",
                consecutive_skips_, " steps in a row had a non-finite loss or gradient (train.max_consecutive_skips ",
                config_.train.max_consecutive_skips, "): the run diverged; lower train.lr or resume from an earlier checkpoint");
    r.skipped = true;
    ++state_.skipped_steps;
    optimizer_->zero_grad();
    return;
  }
  consecutive_skips_ = 0;
  // Clipping folds into the update (the fused AdamW scales each gradient as it reads it).
  const bool clip = config_.train.grad_clip > 0 && r.grad_norm > config_.train.grad_clip;
  optimizer_->step(learning_rate(config_.train, step), clip ? config_.train.grad_clip / (r.grad_norm + 1e-6) : 1.0);
  // The aux-loss-free bias moves with the global loads (all ranks' tokens).
  if (config_.model.moe.router.kind == core::RouterKind::kSigmoidBias) {
    size_t i = 0;
    for (auto& layer : model_->moe_layers())
      if (!layer.is_empty()) layer->router->update_bias(r.loads.at(i++));
  }
}

int64_t Trainer::eval_tokens() const {
  return config_.train.eval_batches * config_.train.global_batch * config_.model.seq_len;
}

double Trainer::evaluate() {
  torch::NoGradGuard no_grad;
  model_->eval();
  double total = 0;
  for (int64_t b = 0; b < config_.train.eval_batches; ++b) {
    for_each_micro_batch(*val_sampler_, b, true, [&](const MicroBatch& mb) {
      modules::Bf16Autocast autocast(config_.train.precision == core::Precision::kBf16);
      const auto out = model_->forward(mb.inputs, mb.counters);
      total += modules::TransformerLMImpl::lm_loss(out.logits, mb.targets).item<double>();
    });
  }
  model_->train();
  const double count = static_cast<double>(config_.train.eval_batches * config_.micro_steps(world_->size()) * world_->size());
  return all_reduce_sum(*world_, total) / count;
}

void Trainer::train(const ResumeMode& resume, const ProfileRequest& profile) {
  const bool rank0 = world_->rank() == 0;
  const bool profiling = rank0 && !profile.path.empty();
  SY_CHECK_AS(UsageError, profile.steps > 0, "--profile-steps: at least 1, got ", profile.steps);
  SY_CHECK_AS(UsageError, !profiling || std::ofstream(profile.path).good(), "--profile: cannot write ", profile.path);
  if (profiling) modules::KinetoTrace(device_).save(profile.path);  // a LibTorch without Kineto fails here, before any step
  const auto run_dir = fs::path(config_.train.run_dir);
  // One job per run directory: rank 0 holds the lock for the whole run (its refusal ends every rank).
  std::unique_ptr<RunDirLock> lock;
  if (rank0) lock = std::make_unique<RunDirLock>(run_dir.string());
  // Rank 0 decides where the run starts (it alone may delete, with --overwrite); every rank follows.
  std::string start_text;
  if (rank0) {
    const auto start = choose_start(run_dir.string(), *checkpoints_, resume);
    for (const auto& note : start.notes) core::log_warn(note);
    start_text = start.checkpoint.value_or("");
  }
  start_text = parallel::broadcast_bytes(*world_, start_text, 0);
  std::optional<std::string> from;
  if (!start_text.empty()) from = start_text;
  if (auto* synthetic = dynamic_cast<const data::SyntheticCorpus*>(source_.get())) {
    core::log_info("data: ", synthetic->describe());
    core::log_info("unigram entropy of the synthetic corpus: ", synthetic->unigram_entropy(), " nats");
  } else {
    core::log_info("data: ", source_->describe());
  }
  if (from) {
    load_checkpoint(*from);
    core::log_info("resumed from ", *from, " at step ", state_.step, " (", state_.tokens_seen, " tokens seen)");
    if (state_.step >= config_.train.steps) {
      core::log_info("already at train.steps = ", config_.train.steps, ": nothing to do (raise train.steps to go on)");
    }
  }
  // Written only once the checkpoint (if any) loaded: a refused resume changes nothing in the run dir.
  if (rank0) core::write_file_atomically((run_dir / "config.yaml").string(), core::dump_config(config_));
  int64_t params = 0;
  for (const auto& p : model_->parameters()) params += p.numel();
  core::log_info("model: ", params, " parameters on this rank; ", world_->size(), " rank(s), expert_parallel ",
                 groups_->ep_size, ", ", groups_->topology.num_nodes(), " node(s); run dir ", run_dir.string());

  std::unique_ptr<MetricsWriter> metrics;
  if (rank0) metrics = std::make_unique<MetricsWriter>(run_dir.string(), state_.step);
  const bool tty = isatty(fileno(stderr)) != 0;
  const int64_t tokens_per_step = config_.train.global_batch * config_.model.seq_len;
  const double flops_per_token = modules::model_flops_per_token(config_.model);
  const double peak = peak_tflops(config_.train, device_);
  auto window_start = std::chrono::steady_clock::now();
  const auto run_start = window_start;
  int64_t window_steps = 0;
  const int64_t first_step = state_.step;
  // --profile: after two warm-up steps, or as late as still leaves `profile.steps` steps.
  const int64_t profile_from = std::max(first_step, std::min(first_step + 2, config_.train.steps - profile.steps));
  std::unique_ptr<modules::KinetoTrace> trace;
  for (int64_t step = state_.step; step < config_.train.steps; ++step) {
    if (profiling && step == profile_from) trace = std::make_unique<modules::KinetoTrace>(device_);
    // Test hooks (tests/trainer): a chosen rank fails, exits or stops at a chosen step.
    SY_CHECK_AS(DataError, !core::fault_at("throw_at_step", step + 1), "injected failure at step ", step + 1);
    if (core::fault_at("exit_at_step", step + 1)) std::_Exit(3);
    if (core::fault_at("stop_at_step", step + 1)) std::raise(SIGSTOP);
    auto r = compute_gradients();
    apply_update(r);
    if (trace && (step + 1 == profile_from + profile.steps || step + 1 == config_.train.steps)) {
      trace->save(profile.path);
      trace.reset();
      core::log_info("profile: steps ", profile_from + 1, "-", step + 1, " in ", profile.path);
    }
    ++window_steps;
    const bool log = config_.train.log_every > 0 && (state_.step % config_.train.log_every == 0 || state_.step == config_.train.steps);
    const bool eval = config_.train.eval_every > 0 && (state_.step % config_.train.eval_every == 0 || state_.step == config_.train.steps);
    const double val = eval ? evaluate() : NAN;
    if (log || eval) {
      const auto now = std::chrono::steady_clock::now();
      const double secs = std::chrono::duration<double>(now - window_start).count();
      const double tok_s = static_cast<double>(window_steps * tokens_per_step) / std::max(secs, 1e-9);
      double load_ratio = 0;
      for (const auto& l : r.loads) {
        const double mean = l.mean().item<double>();
        if (mean > 0) load_ratio = std::max(load_ratio, l.max().item<double>() / mean);
      }
      const auto bytes = parallel::take_exchange_stats(dispatchers_);
      auto traffic = torch::tensor({static_cast<double>(bytes.intra_node_bytes), static_cast<double>(bytes.inter_node_bytes),
                                    bytes.seconds},
                                   torch::kFloat64);
      world_->all_reduce(traffic, parallel::ReduceOp::kSum);
      if (rank0) {
        MetricsLine line = {{"loss", r.lm_loss + r.aux_loss},
                            {"lm_loss", r.lm_loss},
                            {"aux_loss", r.aux_loss},
                            {"lr", learning_rate(config_.train, step)},
                            {"grad_norm", r.grad_norm},
                            {"tokens_per_s", tok_s},
                            {"tokens_seen", static_cast<double>(state_.tokens_seen)},
                            {"dropped_frac", r.routed > 0 ? r.dropped / r.routed : 0.0},
                            {"expert_load_max_over_mean", load_ratio},
                            {"a2a_bytes_intra_node", traffic[0].item<double>()},
                            {"a2a_bytes_inter_node", traffic[1].item<double>()},
                            {"skipped_steps", static_cast<double>(state_.skipped_steps)},
                            {"exchange_s", traffic[2].item<double>() / static_cast<double>(world_->size())},
                            {"exchange_share", traffic[2].item<double>() / static_cast<double>(world_->size()) / std::max(secs, 1e-9)}};
        // Model TFLOP/s per GPU (the convention of modules::model_flops_per_token), always; MFU
        // where the card's peak is known.
        line.emplace_back("model_tflops", tok_s * flops_per_token / 1e12 / static_cast<double>(world_->size()));
        if (peak > 0) line.emplace_back("mfu", tok_s * flops_per_token / (peak * 1e12 * static_cast<double>(world_->size())));
        const double peak_gib = peak_memory_gib(device_);
        if (peak_gib >= 0) line.emplace_back("peak_mem_gib", peak_gib);
        for (const auto& [name, v] : r.losses) line.emplace_back("loss_" + name, v);
        if (eval) line.emplace_back("val_loss", val);
        if (pending_replan_) {  // the first line after a re-plan: its predicted effect beside the measured bytes
          line.emplace_back("replan_predicted_inter_node_bytes_before", pending_replan_->first);
          line.emplace_back("replan_predicted_inter_node_bytes_after", pending_replan_->second);
        }
        metrics->write(state_.step, line);
        const double elapsed = std::chrono::duration<double>(now - run_start).count();
        const double eta = elapsed / static_cast<double>(state_.step - first_step) *
                           static_cast<double>(config_.train.steps - state_.step);
        char text[320];
        std::snprintf(text, sizeof(text),
                      "step %lld/%lld  loss %.4f  lr %.2e  tok/s %.0f  load max/mean %.2f%s  ETA %s",
                      (long long)state_.step, (long long)config_.train.steps, r.lm_loss + r.aux_loss,
                      learning_rate(config_.train, step), tok_s, load_ratio,
                      eval ? ("  val " + std::to_string(val)).c_str() : "", format_duration(eta).c_str());
        if (tty && !eval) std::fprintf(stderr, "\r%-110s", text);
        else std::fprintf(stderr, "%s%s\n", tty ? "\r" : "", text);
        std::fflush(stderr);
      }
      window_start = now;
      window_steps = 0;
      pending_replan_.reset();
    }
    if (config_.train.trace_every > 0 && state_.step % config_.train.trace_every == 0) {
      // Bounded: one evaluation's worth of validation tokens per trace file.
      fs::create_directories(run_dir / "traces");
      char name[32];
      std::snprintf(name, sizeof(name), "step_%08lld.pb", static_cast<long long>(state_.step));
      write_trace((run_dir / "traces" / name).string(), eval_tokens());
    }
    const bool save = config_.train.checkpoint_every > 0 &&
                      (state_.step % config_.train.checkpoint_every == 0 || state_.step == config_.train.steps);
    if (save) save_checkpoint();
    if (config_.parallel.replan_every > 0 && state_.step % config_.parallel.replan_every == 0 &&
        state_.step < config_.train.steps) {
      const auto [before, after] = replan();
      const double row = placement::bytes_per_row(config_.model.d_model, modules::routing_slots(config_.model.moe),
                                                 activation_bytes());
      core::log_info("re-planned expert placement at step ", state_.step, ": predicted inter-node bytes per token ",
                     before * row, " -> ", after * row, " (", (run_dir / "plans").string(), ")");
      pending_replan_ = {before * row, after * row};
    }
  }
  if (rank0 && tty) std::fprintf(stderr, "\n");
  core::log_info("done: ", state_.step, " steps; metrics in ", (run_dir / "metrics.jsonl").string(),
                 ", checkpoints in ", (run_dir / "checkpoints").string());
}

}  // namespace switchyard::trainer
