// The typed configuration tree (one struct per YAML section) and its loading, validation and dumping.
//
// Each struct declares its schema once, in `visit`: key, member, documentation and bounds. The YAML
// reader, the YAML writer and `switchyard config reference` are visitors over that one schema, so the
// keys, defaults and checks cannot drift apart. Names users rely on: ../docs/config.md.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace switchyard::core {

enum class RouterKind {
  kTopK, kSigmoidBias, kNoisyTopK, kExpertChoice, kTopP, kHash, kRandom, kCosine, kBilevel, kGrap
};
enum class ExpertKind { kSwiGLU, kGeLU };
enum class NullExpertKind { kZero, kCopy, kConstant };
enum class DropPolicy { kProbability, kPosition };
enum class BalanceScope { kMicroBatch, kGlobalBatch };
enum class DispatcherKind { kFlat, kHierarchical };
enum class BackendKind { kAuto, kMpi, kNccl };
enum class DataSource { kSynthetic, kText, kTokens, kMegatron };
enum class TokenDtype { kUint16, kUint32 };
enum class Precision { kFp32, kBf16, kFp64 };
enum class DeviceKind { kCpu, kCuda };
enum class NanPolicy { kSkip, kError };
enum class RecomputeKind { kNone, kMoE, kFull };
enum class CudaGraphMode { kAuto, kOn, kOff };
enum class LrSchedule { kCosine, kWsd, kConstant, kInverseSqrt };
enum class DecayShape { kLinear, kCosine, kOneMinusSqrt };
enum class QkNorm { kNone, kHead, kFull };
enum class ModelFamily { kCustom, kMixtral, kQwen3Moe, kOlmoe };

/// The YAML spelling of each enum value, in declaration order.
template <class E>
struct EnumNames;

#define SY_ENUM_NAMES(E, ...)                                               \
  template <>                                                               \
  struct EnumNames<E> {                                                     \
    static constexpr std::pair<E, const char*> kValues[] = {__VA_ARGS__};   \
  }

SY_ENUM_NAMES(RouterKind, {RouterKind::kTopK, "topk"}, {RouterKind::kSigmoidBias, "sigmoid_bias"},
              {RouterKind::kNoisyTopK, "noisy_topk"}, {RouterKind::kExpertChoice, "expert_choice"},
              {RouterKind::kTopP, "top_p"}, {RouterKind::kHash, "hash"}, {RouterKind::kRandom, "random"},
              {RouterKind::kCosine, "cosine"}, {RouterKind::kBilevel, "bilevel"},
              {RouterKind::kGrap, "grap"});
SY_ENUM_NAMES(ExpertKind, {ExpertKind::kSwiGLU, "swiglu"}, {ExpertKind::kGeLU, "gelu"});
SY_ENUM_NAMES(NullExpertKind, {NullExpertKind::kZero, "zero"}, {NullExpertKind::kCopy, "copy"},
              {NullExpertKind::kConstant, "constant"});
SY_ENUM_NAMES(DropPolicy, {DropPolicy::kProbability, "probability"}, {DropPolicy::kPosition, "position"});
SY_ENUM_NAMES(BalanceScope, {BalanceScope::kMicroBatch, "micro_batch"},
              {BalanceScope::kGlobalBatch, "global_batch"});
SY_ENUM_NAMES(DispatcherKind, {DispatcherKind::kFlat, "flat"}, {DispatcherKind::kHierarchical, "hierarchical"});
SY_ENUM_NAMES(BackendKind, {BackendKind::kAuto, "auto"}, {BackendKind::kMpi, "mpi"}, {BackendKind::kNccl, "nccl"});
SY_ENUM_NAMES(DataSource, {DataSource::kSynthetic, "synthetic"}, {DataSource::kText, "text"},
              {DataSource::kTokens, "tokens"}, {DataSource::kMegatron, "megatron"});
SY_ENUM_NAMES(TokenDtype, {TokenDtype::kUint16, "uint16"}, {TokenDtype::kUint32, "uint32"});
SY_ENUM_NAMES(Precision, {Precision::kFp32, "fp32"}, {Precision::kBf16, "bf16"}, {Precision::kFp64, "fp64"});
SY_ENUM_NAMES(DeviceKind, {DeviceKind::kCpu, "cpu"}, {DeviceKind::kCuda, "cuda"});
SY_ENUM_NAMES(NanPolicy, {NanPolicy::kSkip, "skip"}, {NanPolicy::kError, "error"});
SY_ENUM_NAMES(RecomputeKind, {RecomputeKind::kNone, "none"}, {RecomputeKind::kMoE, "moe"}, {RecomputeKind::kFull, "full"});
SY_ENUM_NAMES(CudaGraphMode, {CudaGraphMode::kAuto, "auto"}, {CudaGraphMode::kOn, "on"}, {CudaGraphMode::kOff, "off"});
SY_ENUM_NAMES(LrSchedule, {LrSchedule::kCosine, "cosine"}, {LrSchedule::kWsd, "wsd"}, {LrSchedule::kConstant, "constant"},
              {LrSchedule::kInverseSqrt, "inverse_sqrt"});
SY_ENUM_NAMES(DecayShape, {DecayShape::kLinear, "linear"}, {DecayShape::kCosine, "cosine"},
              {DecayShape::kOneMinusSqrt, "1-sqrt"});
SY_ENUM_NAMES(QkNorm, {QkNorm::kNone, "none"}, {QkNorm::kHead, "head"}, {QkNorm::kFull, "full"});
SY_ENUM_NAMES(ModelFamily, {ModelFamily::kCustom, "custom"}, {ModelFamily::kMixtral, "mixtral"},
              {ModelFamily::kQwen3Moe, "qwen3_moe"}, {ModelFamily::kOlmoe, "olmoe"});
#undef SY_ENUM_NAMES

template <class E>
const char* enum_name(E value) {
  for (const auto& [v, name] : EnumNames<E>::kValues) {
    if (v == value) return name;
  }
  return "?";
}

/// Inclusive numeric bounds of a field (lower bound optionally exclusive).
struct Bounds {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false;

  static Bounds any() { return {}; }
  static Bounds at_least(double lo) { return {lo, std::numeric_limits<double>::infinity(), false}; }
  static Bounds positive() { return {0.0, std::numeric_limits<double>::infinity(), true}; }
  static Bounds in(double lo, double hi) { return {lo, hi, false}; }
  static Bounds in_open_lo(double lo, double hi) { return {lo, hi, true}; }
  bool contains(double x) const { return (lo_open ? x > lo : x >= lo) && x <= hi; }
  std::string describe() const;
};

struct RouterConfig {
  RouterKind kind = RouterKind::kTopK;
  bool normalize_topk = true;
  double bias_update_rate = 1e-3;
  double top_p_threshold = 0.4;
  int64_t k_max = 4;
  int64_t groups = 1;
  int64_t cosine_dim = 0;
  double cosine_scale = 10.0;
  double grap_delta = 0.03;

  template <class V>
  void visit(V& v) {
    v.field("kind", kind, "router: topk, sigmoid_bias, noisy_topk, expert_choice, top_p, hash, random, "
                          "cosine, bilevel (SMILE), grap (LocMoE)");
    v.field("normalize_topk", normalize_topk, "renormalize the k selected gate weights to sum to 1 (topk, noisy_topk)");
    v.field("bias_update_rate", bias_update_rate, "sigmoid_bias: gamma of the aux-loss-free bias update",
            Bounds::in(0, 1));
    v.field("top_p_threshold", top_p_threshold, "top_p: cumulative probability to reach", Bounds::in_open_lo(0, 1));
    v.field("k_max", k_max, "top_p: most experts a token may take", Bounds::in(1, 64));
    v.field("groups", groups, "bilevel: number of expert groups (level-one choices); a model "
                              "hyperparameter, never derived from the rank count", Bounds::in(1, 4096));
    v.field("cosine_dim", cosine_dim, "cosine: prototype dimension (0 = d_model, else a learned projection)",
            Bounds::in(0, 65536));
    v.field("cosine_scale", cosine_scale, "cosine: logits = scale * cos(x, prototype)", Bounds::positive());
    v.field("grap_delta", grap_delta, "grap: minimum token/gate cosine delta of the LocMoE capacity bound",
            Bounds::in_open_lo(0, 1));
  }
};

struct MoEConfig {
  int64_t num_experts = 8;
  int64_t top_k = 2;
  int64_t every = 1;
  int64_t ffn_hidden = 256;
  ExpertKind expert_kind = ExpertKind::kSwiGLU;
  int64_t shared_experts = 0;
  int64_t null_experts = 0;
  NullExpertKind null_expert_kind = NullExpertKind::kZero;
  double capacity_factor = 0.0;
  DropPolicy drop_policy = DropPolicy::kProbability;
  RouterConfig router;

  template <class V>
  void visit(V& v) {
    v.field("num_experts", num_experts, "routed experts per MoE layer", Bounds::in(1, 4096));
    v.field("top_k", top_k, "experts per token (level two for bilevel)", Bounds::in(1, 64));
    v.field("every", every, "an MoE FFN every N layers: layer l (0-based) is MoE when (l + 1) % every == 0",
            Bounds::in(1, 1024));
    v.field("ffn_hidden", ffn_hidden, "hidden width of each expert", Bounds::in(1, 1 << 20));
    v.field("expert_kind", expert_kind, "expert MLP: swiglu or gelu");
    v.field("shared_experts", shared_experts, "always-on experts added to the routed output", Bounds::in(0, 64));
    v.field("null_experts", null_experts, "extra zero-FLOP experts the router may choose", Bounds::in(0, 4096));
    v.field("null_expert_kind", null_expert_kind, "what a null expert returns: zero, copy (x) or constant");
    v.field("capacity_factor", capacity_factor, "C = ceil(cf * k * T / E) per expert; <= 0 is dropless",
            Bounds::in(-1, 64));
    v.field("drop_policy", drop_policy, "which slots an overfull expert keeps: probability or position");
    v.section("router", router);
  }
};

struct ModelConfig {
  int64_t vocab_size = 256;
  int64_t d_model = 128;
  int64_t n_layers = 4;
  int64_t n_heads = 4;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  QkNorm qk_norm = QkNorm::kNone;
  ModelFamily family = ModelFamily::kCustom;
  int64_t seq_len = 128;
  int64_t dense_ffn_hidden = 512;
  bool tie_embeddings = true;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  double init_std = 0.02;
  MoEConfig moe;

  /// Width of one attention head: head_dim, or d_model / n_heads when head_dim is 0.
  int64_t head_width() const { return head_dim > 0 ? head_dim : d_model / n_heads; }
  /// Key/value heads: n_kv_heads, or n_heads when it is 0.
  int64_t kv_heads() const { return n_kv_heads > 0 ? n_kv_heads : n_heads; }

  template <class V>
  void visit(V& v) {
    v.field("family", family, "the Hugging Face architecture the model follows (custom, mixtral, qwen3_moe, "
                              "olmoe): checked at load, used by switchyard export");
    v.field("vocab_size", vocab_size, "token vocabulary (256 for the byte tokenizer)", Bounds::in(2, 1 << 30));
    v.field("d_model", d_model, "model width", Bounds::in(4, 1 << 16));
    v.field("n_layers", n_layers, "transformer blocks", Bounds::in(1, 1024));
    v.field("n_heads", n_heads, "attention (query) heads", Bounds::in(1, 1024));
    v.field("n_kv_heads", n_kv_heads, "key/value heads for grouped-query attention (0 = n_heads)", Bounds::in(0, 1024));
    v.field("head_dim", head_dim, "width of one attention head (0 = d_model / n_heads)", Bounds::in(0, 4096));
    v.field("qk_norm", qk_norm, "RMSNorm of queries and keys before RoPE: none, head (each head, as Qwen3) or "
                                "full (all heads together, as OLMoE)");
    v.field("seq_len", seq_len, "tokens per sequence", Bounds::in(2, 1 << 20));
    v.field("dense_ffn_hidden", dense_ffn_hidden, "hidden width of the dense FFN in non-MoE layers",
            Bounds::in(1, 1 << 20));
    v.field("tie_embeddings", tie_embeddings, "share the token embedding with the output head");
    v.field("rope_theta", rope_theta, "RoPE base", Bounds::positive());
    v.field("norm_eps", norm_eps, "RMSNorm epsilon", Bounds::in_open_lo(0, 1));
    v.field("init_std", init_std, "standard deviation of weight initialization", Bounds::in_open_lo(0, 10));
    v.section("moe", moe);
  }
};

struct LossesConfig {
  double load_balance = 1e-2;
  BalanceScope load_balance_scope = BalanceScope::kMicroBatch;
  double seq_balance = 0.0;
  double z_loss = 1e-3;
  double contrastive = 0.0;
  double contrastive_tau = 0.07;
  double locality = 0.0;
  double locality_eps = 1e-2;
  double node_balance = 1e-2;

  template <class V>
  void visit(V& v) {
    v.field("load_balance", load_balance, "Switch load-balance coefficient alpha (0 = off)", Bounds::in(0, 100));
    v.field("load_balance_scope", load_balance_scope, "f_i over the micro_batch or the global_batch");
    v.field("seq_balance", seq_balance, "sequence-level balance coefficient (DeepSeek-V3)", Bounds::in(0, 100));
    v.field("z_loss", z_loss, "router z-loss coefficient (ST-MoE)", Bounds::in(0, 100));
    v.field("contrastive", contrastive, "routing contrastive loss coefficient (ProMoE; cosine router)",
            Bounds::in(0, 100));
    v.field("contrastive_tau", contrastive_tau, "contrastive loss temperature", Bounds::positive());
    v.field("locality", locality, "LocMoE locality loss coefficient mu", Bounds::in(0, 100));
    v.field("locality_eps", locality_eps, "mass of the uniform-over-all part of the locality target",
            Bounds::in_open_lo(0, 1));
    v.field("node_balance", node_balance, "bilevel: level-one (group) balance coefficient", Bounds::in(0, 100));
  }
};

struct ParallelConfig {
  int64_t expert_parallel = 1;
  DispatcherKind dispatcher = DispatcherKind::kFlat;
  int64_t ranks_per_node = 0;
  BackendKind backend = BackendKind::kAuto;
  std::string placement;
  double timeout_s = 300.0;
  double peer_silence_s = 3.0;
  int64_t replan_every = 0;
  double replan_time_limit_s = 10.0;
  int64_t overlap_chunks = 1;

  template <class V>
  void visit(V& v) {
    v.field("expert_parallel", expert_parallel, "ranks sharing one copy of all experts", Bounds::in(1, 1 << 20));
    v.field("dispatcher", dispatcher, "token exchange: flat or hierarchical (2D)");
    v.field("ranks_per_node", ranks_per_node, "0 = detect; N emulates nodes of N consecutive ranks",
            Bounds::in(0, 1 << 20));
    v.field("backend", backend, "communication backend: auto (NCCL for CUDA when built), mpi, nccl");
    v.field("placement", placement, "expert placement plan file; empty = contiguous");
    v.field("timeout_s", timeout_s, "bounded wait of every collective, seconds", Bounds::in_open_lo(0, 86400));
    v.field("peer_silence_s", peer_silence_s, "end the job when a rank's heartbeat thread falls silent this long "
                                              "(a stopped or vanished process), seconds; 0 = off",
            Bounds::in(0, 86400));
    v.field("replan_every", replan_every, "re-plan expert placement every N steps from the routing of the "
                                          "steps since the last plan (0 = never; needs aligned nodes)",
            Bounds::at_least(0));
    v.field("replan_time_limit_s", replan_time_limit_s, "ILP time of one re-plan, seconds", Bounds::positive());
    v.field("overlap_chunks", overlap_chunks, "token chunks per MoE layer: each chunk's exchange runs on a side "
                                              "CUDA stream while the experts compute another chunk (1 = no overlap)",
            Bounds::in(1, 64));
  }

  /// The rules that need the world size: expert_parallel and ranks_per_node divide it. ConfigError
  /// naming the key. (Config::validate_for_world and ProcessGroups::create both apply them.)
  void validate_for_world(int world_size) const;
};

struct DataConfig {
  DataSource source = DataSource::kSynthetic;
  std::string path;
  std::string blend;
  std::string tokenizer;
  bool reset_at_eod = false;
  int64_t eod_id = -1;
  TokenDtype token_dtype = TokenDtype::kUint16;
  double val_fraction = 0.05;
  int64_t synthetic_tokens = 1 << 21;

  template <class V>
  void visit(V& v) {
    v.field("source", source, "synthetic (built in), text (file or directory), tokens (flat binary), "
                              "megatron (.bin + .idx)");
    v.field("path", path, "input file or directory (or prefix for megatron); unused for synthetic");
    v.field("blend", blend, "several corpora at given weights instead of data.path: \"0.7 PATH_A 0.3 PATH_B\" (Megatron's "
                            "--data-path form; each PATH read as data.source says; weights normalized)");
    v.field("tokenizer", tokenizer, "text: a SentencePiece model (spm_train's .model) to tokenize with; empty: "
                                    "bytes (vocab 256)");
    v.field("reset_at_eod", reset_at_eod, "documents packed into one sequence do not see each other: after each "
                                          "data.eod_id token, positions restart at 0 and attention starts anew");
    v.field("eod_id", eod_id, "the end-of-document token (switchyard tokenize prints it); -1: none", Bounds::in(-1, 1 << 30));
    v.field("token_dtype", token_dtype, "tokens: element type of the flat binary (uint16 or uint32)");
    v.field("val_fraction", val_fraction, "share of the corpus held out for validation",
            Bounds::in_open_lo(0, 0.5));
    v.field("synthetic_tokens", synthetic_tokens, "synthetic: corpus length in tokens",
            Bounds::in(1024, int64_t{1} << 34));
  }
};

struct TrainConfig {
  int64_t steps = 200;
  int64_t global_batch = 16;
  int64_t micro_batch = 4;
  double lr = 3e-3;
  double min_lr_ratio = 0.1;
  int64_t warmup_steps = 20;
  LrSchedule lr_schedule = LrSchedule::kCosine;
  double decay_fraction = 0.2;
  DecayShape decay_shape = DecayShape::kOneMinusSqrt;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double adam_eps = 1e-8;
  double grad_clip = 1.0;
  int64_t seed = 1234;
  int64_t log_every = 10;
  int64_t eval_every = 50;
  int64_t eval_batches = 4;
  int64_t checkpoint_every = 100;
  int64_t keep_checkpoints = 2;
  Precision precision = Precision::kFp32;
  RecomputeKind recompute = RecomputeKind::kNone;
  bool deterministic = false;
  CudaGraphMode cuda_graph = CudaGraphMode::kAuto;
  DeviceKind device = DeviceKind::kCpu;
  std::string run_dir = "runs/default";
  NanPolicy nan_policy = NanPolicy::kSkip;
  int64_t max_consecutive_skips = 5;
  int64_t trace_every = 0;
  double peak_tflops = 0;
  bool checkpoint_on_signal = true;

  template <class V>
  void visit(V& v) {
    v.field("steps", steps, "optimizer steps", Bounds::in(1, int64_t{1} << 40));
    v.field("global_batch", global_batch, "sequences per optimizer step over all ranks", Bounds::in(1, 1 << 24));
    v.field("micro_batch", micro_batch, "sequences per rank per forward pass", Bounds::in(1, 1 << 24));
    v.field("lr", lr, "peak learning rate (AdamW)", Bounds::in_open_lo(0, 10));
    v.field("min_lr_ratio", min_lr_ratio, "final learning rate of the cosine and wsd schedules, as a share of lr",
            Bounds::in(0, 1));
    v.field("warmup_steps", warmup_steps, "linear warmup steps", Bounds::at_least(0));
    v.field("lr_schedule", lr_schedule, "after warmup: cosine (to min_lr_ratio at the last step), wsd (constant, then "
                                        "a decay to min_lr_ratio over the last decay_fraction of the steps), constant, "
                                        "or inverse_sqrt (lr * sqrt(warmup_steps / step))");
    v.field("decay_fraction", decay_fraction, "wsd: share of train.steps spent decaying", Bounds::in(0, 1));
    v.field("decay_shape", decay_shape, "wsd: shape of the decay: linear, cosine, or 1-sqrt (lr falls as "
                                        "1 - sqrt(progress))");
    v.field("weight_decay", weight_decay, "AdamW decoupled weight decay", Bounds::in(0, 10));
    v.field("beta1", beta1, "AdamW beta1", Bounds::in(0, 0.999999));
    v.field("beta2", beta2, "AdamW beta2", Bounds::in(0, 0.999999));
    v.field("adam_eps", adam_eps, "AdamW epsilon", Bounds::in_open_lo(0, 1));
    v.field("grad_clip", grad_clip, "global gradient-norm clip (0 = off)", Bounds::in(0, 1e6));
    v.field("seed", seed, "seed of initialization, data order and routing noise", Bounds::at_least(0));
    v.field("log_every", log_every, "log a metrics line every N steps (0 = never)", Bounds::at_least(0));
    v.field("eval_every", eval_every, "validation every N steps (0 = never)", Bounds::at_least(0));
    v.field("eval_batches", eval_batches, "global batches per validation", Bounds::in(1, 1 << 20));
    v.field("checkpoint_every", checkpoint_every, "checkpoint every N steps (0 = never)", Bounds::at_least(0));
    v.field("keep_checkpoints", keep_checkpoints, "newest checkpoints kept", Bounds::in(1, 1 << 20));
    v.field("precision", precision, "fp32, bf16 autocast with fp32 master weights (CUDA), or fp64 (numerical "
                                    "checks: the config-space tester's second opinion)");
    v.field("device", device, "cpu or cuda");
    v.field("recompute", recompute, "activation recomputation in the backward: none, moe (the experts' MLP: "
                                    "both projections and the activation), or full (each transformer block)");
    v.field("deterministic", deterministic, "bitwise reproducible GPU runs: PyTorch's deterministic algorithms "
                                            "(slower; an op without one stops the run naming it)");
    v.field("cuda_graph", cuda_graph, "replay each training step from one CUDA graph (one launch instead of thousands: "
                                      "for steps bound by the host's launches). auto: eager steps 6-7 and replays 9-10 "
                                      "are timed and the faster kept; on; off. Needs CUDA, one rank, bf16 "
                                      "and dropless routing: elsewhere steps run eagerly and the log says why");
    v.field("run_dir", run_dir, "run directory: config.yaml, metrics.jsonl, checkpoints/");
    v.field("nan_policy", nan_policy, "on NaN/Inf loss or gradients: skip the step, or error");
    v.field("max_consecutive_skips", max_consecutive_skips, "nan_policy skip: the run stops with an error after "
                                                            "this many skipped steps in a row", Bounds::in(1, 1 << 20));
    v.field("trace_every", trace_every, "write a routing trace every N steps (0 = never)", Bounds::at_least(0));
    v.field("checkpoint_on_signal", checkpoint_on_signal, "on SIGTERM or SIGUSR1 to any rank (what SLURM sends before "
                                                          "preemption or the time limit): finish the step, save a "
                                                          "checkpoint and exit 0; a second signal ends the rank at once");
    v.field("peak_tflops", peak_tflops, "peak dense bf16 TFLOP/s of one GPU for the mfu metric (0 = by device name: "
                                        "H100/H200 989; unknown cards report no mfu)", Bounds::in(0, 1e6));
  }
};

/// The whole configuration. Load with `load_config`, which validates; `validate` checks cross-field rules.
struct Config {
  ModelConfig model;
  LossesConfig losses;
  ParallelConfig parallel;
  DataConfig data;
  TrainConfig train;

  template <class V>
  void visit(V& v) {
    v.section("model", model);
    v.section("losses", losses);
    v.section("parallel", parallel);
    v.section("data", data);
    v.section("train", train);
  }

  /// Cross-field rules that need no knowledge of the launch; throws ConfigError naming the key path.
  void validate() const;
  /// Rules that need the world size (expert_parallel divides it, batch splits evenly over ranks).
  void validate_for_world(int world_size) const;

  /// Whether transformer block `layer_idx` (0-based) has an MoE FFN.
  bool is_moe_layer(int64_t layer_idx) const { return (layer_idx + 1) % model.moe.every == 0; }
  int64_t num_moe_layers() const { return model.n_layers / model.moe.every; }
  /// Micro-batches each rank runs per optimizer step.
  int64_t micro_steps(int world_size) const { return train.global_batch / (train.micro_batch * world_size); }
};

/// Empty when Hugging Face's `family` architecture computes exactly what `model` computes; else the
/// first key that differs and why ("model.qk_norm: ..."). config.validate() applies it to model.family.
std::string family_mismatch(const ModelConfig& model, ModelFamily family);

/// Loads a YAML config file, applies `--set key.path=value` overrides in order, validates.
/// Throws ConfigError naming the file, the key path or the override at fault.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
/// Same from YAML text (`source_name` names it in errors).
Config load_config_text(const std::string& yaml, const std::vector<std::string>& overrides = {},
                        const std::string& source_name = "<string>");
/// The resolved config as YAML; `load_config_text(dump_config(c))` yields `c` again.
std::string dump_config(const Config& config);
/// Markdown table of every key: path, type, default, bounds, meaning.
std::string config_reference_markdown();

}  // namespace switchyard::core
