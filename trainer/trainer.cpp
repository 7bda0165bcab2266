// The training loop.
#include "trainer/trainer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <ATen/autocast_mode.h>

#include "core/build_info.h"
#if SWITCHYARD_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#endif

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <limits>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/fault_injection.h"
#include "core/file_io.h"
#include "core/logging.h"
#include "core/router_traits.h"
#include "runtime/autocast.h"
#include "runtime/device_info.h"
#include "runtime/profiler.h"
#include "runtime/torch_version.h"
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

/// The signal that asked this process to stop (train.checkpoint_on_signal), 0 while none did.
volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void on_stop_signal(int sig) {
  g_stop_signal = sig;
  std::signal(sig, SIG_DFL);  // a second one ends the process at once
}

/// While alive: SIGTERM and SIGUSR1 set g_stop_signal instead of ending the process; the previous
/// handlers come back at the end.
class StopSignals {
 public:
  explicit StopSignals(bool on) : on_(on) {
    if (!on_) return;
    g_stop_signal = 0;
    struct sigaction action {};
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, &previous_term_);
    sigaction(SIGUSR1, &action, &previous_usr1_);
  }
  ~StopSignals() {
    if (!on_) return;
    sigaction(SIGTERM, &previous_term_, nullptr);
    sigaction(SIGUSR1, &previous_usr1_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  bool on_;
  struct sigaction previous_term_ {}, previous_usr1_ {};
};

}  // namespace

bool Trainer::stop_requested() { return g_stop_signal != 0; }

namespace {

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

/// Refuses, before anything is allocated, a model whose parameters, gradients and AdamW moments
/// alone (four values of the master dtype per parameter; activations come on top) exceed what the
/// device offers this rank, naming the keys that size each part.
void check_state_fits(const core::Config& config, int64_t expert_parallel, const torch::Device& device, int ranks_sharing) {
  const int64_t capacity = runtime::memory_capacity_bytes(device);
  if (capacity <= 0) return;
  const double offered = static_cast<double>(capacity) / (device.is_cpu() ? std::max(1, ranks_sharing) : 1);
  const auto params = modules::parameters_per_rank(config.model, expert_parallel);
  const double per_param = 4.0 * (config.train.precision == core::Precision::kFp64 ? 8 : 4);
  if (per_param * params.total() <= offered) return;
  const auto gib = [&](double n) {
    std::ostringstream o;
    o << std::fixed << std::setprecision(1) << n / (1024.0 * 1024.0 * 1024.0) << " GiB";
    return o.str();
  };
  std::ostringstream who;
  if (device.is_cpu() && ranks_sharing > 1) who << " to each of this host's " << ranks_sharing << " ranks";
  throw ConfigError("model: its parameters, gradients and AdamW moments need " + gib(per_param * params.total()) +
                    " per rank (embedding, model.vocab_size x model.d_model: " + gib(per_param * params.embedding) +
                    "; routed experts, model.moe.num_experts x model.moe.ffn_hidden x model.d_model / "
                    "parallel.expert_parallel: " + gib(per_param * params.experts) +
                    "; attention, routers and dense layers, model.n_layers x model.d_model^2: " + gib(per_param * params.rest) +
                    ") but " + device.str() + " offers " + gib(offered) + who.str());
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
  check_state_fits(config_, groups_->ep_size, device_, ranks_here);

  const auto seed = static_cast<uint64_t>(config_.train.seed);
  // Each source (one, or data.blend's) split into its train and validation tokens; the samplers draw
  // from them at their weights.
  sources_ = data::open_token_sources(config_.data, seed);
  std::vector<data::BatchSampler::Part> train_parts, val_parts;
  for (const auto& s : sources_) {
    const auto split = data::split_source(*s.source, config_.data.val_fraction, config_.model.seq_len);
    train_parts.push_back({s.source.get(), split.train_begin, split.train_end, s.weight});
    val_parts.push_back({s.source.get(), split.val_begin, split.val_end, s.weight});
  }
  train_sampler_ = std::make_unique<data::BatchSampler>(train_parts, config_.model.seq_len, config_.train.global_batch,
                                                        seed, config_.model.vocab_size);
  val_sampler_ = std::make_unique<data::BatchSampler>(val_parts, config_.model.seq_len, config_.train.global_batch,
                                                      seed + 1, config_.model.vocab_size);
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
  // train.cuda_graph: the run's work on a stream of its own, where steps are captured and replayed.
  const auto why_eager = cuda_graph_unsupported();
  graph_enabled_ = why_eager.empty();
  if (graph_enabled_) own_stream_ = std::make_unique<runtime::OwnStream>(device_);
  else if (config_.train.cuda_graph != core::CudaGraphMode::kOff && device_.is_cuda() && world_->rank() == 0) core::log_info("train.cuda_graph: steps run eagerly (", why_eager, ")");
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
  // The experts' bf16 weight copies (read by their grouped GEMMs under bf16 autocast on CUDA) are
  // written by the update itself.
  if (device_.is_cuda() && config_.train.precision == core::Precision::kBf16) {
    for (auto& layer : model_->moe_layers()) {
      if (layer.is_empty()) continue;
      for (auto& [weight, copy] : layer->experts->weight_copies()) optimizer_->keep_bf16_copy(weight, copy);
    }
  }
}

void Trainer::load_checkpoint(const std::string& dir) {
  state_ = checkpoints_->load(dir, *model_, *optimizer_, placements_);
  if (state_.weights_only) {  // imported weights: this run's own data order and generators from step 0
    state_.data_seed = static_cast<uint64_t>(config_.train.seed);
    state_.data_windows = train_sampler_->num_windows();
    core::log_info("initialized from the weights-only checkpoint ", dir, " (step 0, fresh optimizer state)");
    return;
  }
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

std::pair<torch::Tensor, torch::Tensor> Trainer::squared_grad_norms() {
  // Squared norms accumulate on the device (not one sync per parameter).
  std::vector<torch::Tensor> dense_grads, expert_grads;
  for (const auto& item : model_->named_parameters()) {
    const auto& g = item.value().grad();
    if (!g.defined()) continue;
    (parallel::is_expert_parameter(item.key()) ? expert_grads : dense_grads).push_back(g);
  }
  return {squared_norm(dense_grads, device_), squared_norm(expert_grads, device_)};
}

double Trainer::global_grad_norm() {
  // Dense gradients are identical on every rank after sync; experts are split over the EP group.
  const auto [dense, experts] = squared_grad_norms();
  return std::sqrt(dense.item<double>() + all_reduce_sum(*groups_->ep, experts.item<double>()));
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
    if (config_.data.reset_at_eod) mb.segments = modules::document_segments(mb.inputs, config_.data.eod_id);
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
    runtime::Bf16Autocast autocast(config_.train.precision == core::Precision::kBf16);
    const auto out = model_->forward(mb.inputs, mb.counters, mb.segments);
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

void Trainer::forward_backward(const MicroBatch& mb, int64_t micro_steps, StepSums& sums) {
  const auto out = model_->forward(mb.inputs, mb.counters, mb.segments);
  auto lm = modules::TransformerLMImpl::lm_loss(out.logits, mb.targets);
  if (core::fault_at("nan_at_step", state_.step + 1)) lm = lm * std::numeric_limits<double>::quiet_NaN();
  ((lm + out.aux_loss) / static_cast<double>(micro_steps)).backward();
  sums.add(out, lm);
  if (config_.parallel.replan_every > 0) {
    if (recent_routing_.size() < out.moe_stats.size()) recent_routing_.resize(out.moe_stats.size());
    for (size_t l = 0; l < out.moe_stats.size(); ++l) {
      recent_routing_[l].push_back(out.moe_stats[l].routed_experts(config_.model.moe.num_experts));
      if (recent_routing_[l].size() > 256) recent_routing_[l].erase(recent_routing_[l].begin());  // bounded
    }
  }
}

void Trainer::flush_expert_gradients() {
  for (auto& layer : model_->moe_layers()) {
    if (!layer.is_empty()) layer->experts->flush_gradients();
  }
}

Trainer::StepResult Trainer::compute_gradients() {
  const int64_t step = state_.step;
  const int64_t micro_steps = config_.micro_steps(world_->size());
  optimizer_->zero_grad();
  // Global-batch balance needs the whole step's counts before the first backward.
  const bool step_counts = config_.losses.load_balance > 0 &&
                           config_.losses.load_balance_scope == core::BalanceScope::kGlobalBatch && micro_steps > 1;
  if (step_counts) count_step_routing(step);
  StepSums sums;
  {
    // One autocast region for the whole step: its cache keeps each weight's bf16 cast for every
    // micro-batch (the backward runs on autograd's device thread, outside autocast).
    runtime::Bf16Autocast autocast(config_.train.precision == core::Precision::kBf16);
    for_each_micro_batch(*train_sampler_, step, false, [&](const MicroBatch& mb) { forward_backward(mb, micro_steps, sums); });
  }
  flush_expert_gradients();
  if (step_counts) {
    for (auto& layer : model_->moe_layers()) {
      if (!layer.is_empty()) layer->set_step_counts({});
    }
  }
  StepResult r;
  sums.reduce_into(r, *world_, static_cast<double>(world_->size() * micro_steps), stop_requested());
  parallel::sync_gradients(*model_, *groups_);
  r.grad_norm = global_grad_norm();
  return r;
}

bool Trainer::count_step(StepResult& r) {
  const int64_t step = state_.step;
  state_.step = step + 1;
  state_.tokens_seen += config_.train.global_batch * config_.model.seq_len;
  if (std::isfinite(r.grad_norm) && std::isfinite(r.lm_loss)) {
    consecutive_skips_ = 0;
    return true;
  }
  SY_CHECK_AS(DataError, config_.train.nan_policy == core::NanPolicy::kSkip, "step ", step + 1,
              ": non-finite loss or gradient (train.nan_policy error)");
  ++consecutive_skips_;
  SY_CHECK_AS(DataError, consecutive_skips_ <= config_.train.max_consecutive_skips, "step ", step + 1, ": ",
              consecutive_skips_, " steps in a row had a non-finite loss or gradient (train.max_consecutive_skips ",
              config_.train.max_consecutive_skips, "): the run diverged; lower train.lr or resume from an earlier checkpoint");
  r.skipped = true;
  ++state_.skipped_steps;
  return false;
}

void Trainer::update_router_bias(const StepResult& r) {
  // The aux-loss-free bias moves with the global loads (all ranks' tokens).
  if (!core::router_traits(config_.model.moe.router.kind).bias_update) return;
  size_t i = 0;
  for (auto& layer : model_->moe_layers())
    if (!layer.is_empty()) layer->router->update_bias(r.loads.at(i++));
}

void Trainer::apply_update(StepResult& r) {
  const int64_t step = state_.step;
  if (!count_step(r)) {
    optimizer_->zero_grad();
    return;
  }
  // Clipping folds into the update (the fused AdamW scales each gradient as it reads it).
  const bool clip = config_.train.grad_clip > 0 && r.grad_norm > config_.train.grad_clip;
  optimizer_->step(learning_rate(config_.train, step), clip ? config_.train.grad_clip / (r.grad_norm + 1e-6) : 1.0);
  update_router_bias(r);
}

int64_t Trainer::eval_tokens() const {
  return config_.train.eval_batches * config_.train.global_batch * config_.model.seq_len;
}

void Trainer::for_each_validation_forward(int64_t batches,
                                          const std::function<void(const MicroBatch&, const modules::LMOutput&)>& fn) {
  torch::NoGradGuard no_grad;
  model_->eval();
  runtime::Bf16Autocast autocast(config_.train.precision == core::Precision::kBf16);
  for (int64_t b = 0; b < batches; ++b) {
    for_each_micro_batch(*val_sampler_, b, true, [&](const MicroBatch& mb) { fn(mb, model_->forward(mb.inputs, mb.counters, mb.segments)); });
  }
  model_->train();
}

double Trainer::evaluate() {
  double total = 0;
  for_each_validation_forward(config_.train.eval_batches, [&](const MicroBatch& mb, const modules::LMOutput& out) {
    total += modules::TransformerLMImpl::lm_loss(out.logits, mb.targets).item<double>();
  });
  const double count = static_cast<double>(config_.train.eval_batches * config_.micro_steps(world_->size()) * world_->size());
  return all_reduce_sum(*world_, total) / count;
}

std::unique_ptr<RunDirLock> Trainer::start_run(const ResumeMode& resume) {
  const bool rank0 = world_->rank() == 0;
  const auto run_dir = fs::path(config_.train.run_dir);
  // One job per run directory: rank 0 holds the lock for the whole run (its refusal ends every rank).
  std::unique_ptr<RunDirLock> lock;
  if (rank0) lock = std::make_unique<RunDirLock>(run_dir.string());
  // Rank 0 decides where the run starts (it alone may delete, with --overwrite); every rank follows.
  std::string from;
  if (rank0) {
    const auto start = choose_start(run_dir.string(), *checkpoints_, resume, core::dump_config(config_));
    for (const auto& note : start.notes) core::log_warn(note);
    from = start.checkpoint.value_or("");
  }
  from = parallel::broadcast_bytes(*world_, from, 0);
  double total_weight = 0;
  for (const auto& s : sources_) total_weight += s.weight;
  for (const auto& s : sources_) {
    const std::string share = sources_.size() > 1 ? " (weight " + std::to_string(s.weight / total_weight) + ")" : "";
    core::log_info("data: ", s.source->describe(), share);
    if (auto* synthetic = dynamic_cast<const data::SyntheticCorpus*>(s.source.get())) {
      core::log_info("unigram entropy of the synthetic corpus: ", synthetic->unigram_entropy(), " nats");
    }
  }
  if (!from.empty()) {
    load_checkpoint(from);
    core::log_info("resumed from ", from, " at step ", state_.step, " (", state_.tokens_seen, " tokens seen)");
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
  return lock;
}

StepFigures Trainer::measure_window(const StepResult& r, int64_t step, double seconds, int64_t window_steps) {
  StepFigures f;
  f.step = state_.step;
  f.total_steps = config_.train.steps;
  f.lm_loss = r.lm_loss;
  f.aux_loss = r.aux_loss;
  f.lr = learning_rate(config_.train, step);
  f.grad_norm = r.grad_norm;
  f.tokens_per_s = static_cast<double>(window_steps * config_.train.global_batch * config_.model.seq_len) /
                   std::max(seconds, 1e-9);
  f.tokens_seen = static_cast<double>(state_.tokens_seen);
  f.skipped_steps = static_cast<double>(state_.skipped_steps);
  f.dropped_frac = r.routed > 0 ? r.dropped / r.routed : 0.0;
  for (const auto& l : r.loads) {
    const double mean = l.mean().item<double>();
    if (mean > 0) f.load_max_over_mean = std::max(f.load_max_over_mean, l.max().item<double>() / mean);
  }
  const auto bytes = parallel::take_exchange_stats(dispatchers_);
  auto traffic = torch::tensor({static_cast<double>(bytes.intra_node_bytes), static_cast<double>(bytes.inter_node_bytes),
                                bytes.seconds},
                               torch::kFloat64);
  world_->all_reduce(traffic, parallel::ReduceOp::kSum);
  const double ranks = static_cast<double>(world_->size());
  f.a2a_bytes_intra_node = traffic[0].item<double>();
  f.a2a_bytes_inter_node = traffic[1].item<double>();
  f.exchange_s = traffic[2].item<double>() / ranks;
  f.exchange_share = f.exchange_s / std::max(seconds, 1e-9);
  // Model TFLOP/s per GPU (the convention of modules::model_flops_per_token), always; MFU where the
  // card's peak is known.
  const double flops = f.tokens_per_s * modules::model_flops_per_token(config_.model);
  f.model_tflops = flops / 1e12 / ranks;
  const double peak = config_.train.peak_tflops > 0 ? config_.train.peak_tflops : runtime::known_peak_tflops(device_);
  if (peak > 0) f.mfu = flops / (peak * 1e12 * ranks);
  const double peak_gib = runtime::peak_memory_gib(device_);
  if (peak_gib >= 0) f.peak_mem_gib = peak_gib;
  f.losses = r.losses;
  const double tokens = static_cast<double>(config_.train.global_batch * config_.model.seq_len);
  const int64_t experts = config_.model.moe.num_experts;
  for (size_t l = 0; l < r.layers.size(); ++l) {
    const auto& in = r.layers[l];
    StepFigures::Layer layer;
    const auto load = r.loads.at(l).contiguous();
    layer.load.assign(load.data_ptr<double>(), load.data_ptr<double>() + load.numel());
    layer.dropped = in.dropped;
    layer.experts_per_token = load.narrow(0, 0, experts).sum().item<double>() / tokens;
    if (load.numel() > experts) layer.null_per_token = load.narrow(0, experts, load.numel() - experts).sum().item<double>() / tokens;
    if (in.entropy >= 0) layer.entropy = in.entropy;
    if (in.capacity >= 0) layer.capacity = in.capacity;
    if (in.capacity_min > 0) layer.capacity_min = in.capacity_min;
    f.layers.push_back(std::move(layer));
  }
  f.replan = pending_replan_;
  pending_replan_.reset();
  return f;
}

bool Trainer::run_schedule() {
  const auto run_dir = fs::path(config_.train.run_dir);
  const int64_t step = state_.step;
  if (config_.train.trace_every > 0 && step % config_.train.trace_every == 0) {
    // Bounded: one evaluation's worth of validation tokens per trace file.
    fs::create_directories(run_dir / "traces");
    char name[32];
    std::snprintf(name, sizeof(name), "step_%08lld.pb", static_cast<long long>(step));
    write_trace((run_dir / "traces" / name).string(), eval_tokens());
  }
  const bool last = step == config_.train.steps;
  const bool checkpoint = config_.train.checkpoint_every > 0 && (step % config_.train.checkpoint_every == 0 || last);
  if (checkpoint) save_checkpoint();
  if (config_.parallel.replan_every > 0 && step % config_.parallel.replan_every == 0 && !last) {
    const auto [before, after] = replan();
    const double row = placement::bytes_per_row(config_.model.d_model, modules::routing_slots(config_.model.moe),
                                               activation_bytes());
    core::log_info("re-planned expert placement at step ", step, ": predicted inter-node bytes per token ",
                   before * row, " -> ", after * row, " (", (run_dir / "plans").string(), ")");
    pending_replan_ = {before * row, after * row};
  }
  return checkpoint;
}

void Trainer::train(const ResumeMode& resume, const ProfileRequest& profile) {
  const bool rank0 = world_->rank() == 0;
  const bool profiling = rank0 && !profile.path.empty();
  SY_CHECK_AS(UsageError, profile.steps > 0, "--profile-steps: at least 1, got ", profile.steps);
  SY_CHECK_AS(UsageError, !profiling || std::ofstream(profile.path).good(), "--profile: cannot write ", profile.path);
  if (profiling) runtime::KinetoTrace(device_).save(profile.path);  // a LibTorch without Kineto fails here, before any step
  const auto lock = start_run(resume);
  std::unique_ptr<MetricsWriter> metrics;
  if (rank0) metrics = std::make_unique<MetricsWriter>(config_.train.run_dir, state_.step);
  const bool tty = isatty(fileno(stderr)) != 0;
  auto window_start = std::chrono::steady_clock::now();
  const auto run_start = window_start;
  int64_t window_steps = 0;
  const int64_t first_step = state_.step;
  // --profile: after two warm-up steps (ten with train.cuda_graph auto, which times eager steps and
  // replays first; two with on), or as late as still leaves `profile.steps` steps.
  const int64_t warm_up = graph_enabled_ && config_.train.cuda_graph == core::CudaGraphMode::kAuto ? kAutoCaptureStep + 2 : 2;
  const int64_t profile_from = std::max(first_step, std::min(first_step + warm_up, config_.train.steps - profile.steps));
  std::unique_ptr<runtime::KinetoTrace> trace;
  const StopSignals signals(config_.train.checkpoint_on_signal);
  for (int64_t step = state_.step; step < config_.train.steps; ++step) {
    if (profiling && step == profile_from) trace = std::make_unique<runtime::KinetoTrace>(device_);
    // Test hooks (tests/trainer): a chosen rank fails, exits, stops or is signalled at a chosen step.
    SY_CHECK_AS(DataError, !core::fault_at("throw_at_step", step + 1), "injected failure at step ", step + 1);
    if (core::fault_at("exit_at_step", step + 1)) std::_Exit(3);
    if (core::fault_at("stop_at_step", step + 1)) std::raise(SIGSTOP);
    if (core::fault_at("usr1_at_step", step + 1)) std::raise(SIGUSR1);
    // Router entropy costs a few kernels per layer: collected in the eager steps that are logged.
    set_collect_statistics(config_.train.log_every > 0 &&
                           ((step + 1) % config_.train.log_every == 0 || step + 1 == config_.train.steps));
    auto r = step_once();
    if (trace && (step + 1 == profile_from + profile.steps || step + 1 == config_.train.steps)) {
      trace->save(profile.path);
      trace.reset();
      core::log_info("profile: steps ", profile_from + 1, "-", step + 1, " in ", profile.path);
    }
    ++window_steps;
    if (lock) lock->check_still_held();  // rank 0, before writing anything more into the run directory
    const bool last = state_.step == config_.train.steps;
    const bool log = config_.train.log_every > 0 && (state_.step % config_.train.log_every == 0 || last);
    const bool eval = config_.train.eval_every > 0 && (state_.step % config_.train.eval_every == 0 || last);
    const double val = eval ? evaluate() : NAN;
    if (log || eval) {
      const auto now = std::chrono::steady_clock::now();
      auto f = measure_window(r, step, std::chrono::duration<double>(now - window_start).count(), window_steps);
      if (eval) f.val_loss = val;
      f.eta_s = std::chrono::duration<double>(now - run_start).count() / static_cast<double>(state_.step - first_step) *
                static_cast<double>(config_.train.steps - state_.step);
      if (rank0) {
        metrics->write(state_.step, metrics_line(f), metrics_arrays(f));
        const auto text = progress_line(f);
        if (tty && !eval) std::fprintf(stderr, "\r%-110s", text.c_str());
        else std::fprintf(stderr, "%s%s\n", tty ? "\r" : "", text.c_str());
        std::fflush(stderr);
      }
      window_start = now;
      window_steps = 0;
    }
    const bool saved = run_schedule();
    if (r.stop_signal) {
      // Preemption (train.checkpoint_on_signal): the step is done, so it is saved and the run ends as
      // a success; `train` with the same config resumes from here.
      if (!saved) save_checkpoint();
      if (rank0 && tty) std::fprintf(stderr, "\n");
      core::log_warn("stop signal (SIGTERM or SIGUSR1) received: checkpoint of step ", state_.step, " saved in ",
                     (fs::path(config_.train.run_dir) / "checkpoints").string(), "; exiting");
      return;
    }
  }
  if (rank0 && tty) std::fprintf(stderr, "\n");
  const auto run_dir = fs::path(config_.train.run_dir);
  core::log_info("done: ", state_.step, " steps; metrics in ", (run_dir / "metrics.jsonl").string(),
                 ", checkpoints in ", (run_dir / "checkpoints").string());
}

}  // namespace switchyard::trainer
