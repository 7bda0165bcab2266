// Decoder-only transformer LM: embedding, RMSNorm, causal attention with RoPE (grouped-query, any
// head width, optional QK norm), an MoE FFN every `model.moe.every` layers (dense SwiGLU elsewhere),
// tied or untied output head.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"
#include "modules/experts.h"
#include "modules/moe_layer.h"

namespace switchyard::modules {

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

/// Documents packed in the sequences of a micro-batch (data.reset_at_eod), as attention uses them:
/// each token's RoPE position counted from its document's first token, and the keys it may attend
/// (earlier tokens of its document). Computed once per micro-batch, used by every layer.
struct PackedDocuments {
  torch::Tensor positions;  ///< [B, S] int64; undefined: one document per sequence
  torch::Tensor mask;       ///< [B, 1, S, S] bool, true where attention is allowed
  /// From `segments` [B, S] int64 (each token's document within its sequence, non-decreasing; see
  /// document_segments) on `device`; undefined segments give the empty (one-document) layout.
  static PackedDocuments from_segments(const torch::Tensor& segments, const torch::Device& device);
};

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const core::ModelConfig& config);
  /// x [B, S, d] -> [B, S, d], causal; with `docs` a token attends only inside its document and its
  /// RoPE position counts from the document's first token.
  torch::Tensor forward(const torch::Tensor& x, const PackedDocuments& docs = {});
  torch::nn::Linear qkv{nullptr}, out{nullptr};  ///< qkv: d -> (n_heads + 2 n_kv_heads) * head_dim; out: back to d
  RMSNorm q_norm{nullptr}, k_norm{nullptr};      ///< model.qk_norm head: [head_dim]; full: [heads * head_dim]

 private:
  int64_t n_heads_, n_kv_heads_, head_dim_;
  core::QkNorm qk_norm_;
  torch::Tensor cos_, sin_;  ///< [seq_len, head_dim / 2] RoPE tables (buffers)
};
TORCH_MODULE(Attention);

/// Creates the dispatcher of MoE layer `layer_idx` (parallel/ supplies distributed ones).
using DispatcherFactory = std::function<std::shared_ptr<TokenDispatcher>(int64_t layer_idx)>;

struct LMOutput {
  torch::Tensor logits;                         ///< [B, S, vocab]
  torch::Tensor aux_loss;                       ///< 0-dim: sum of every routing loss of every layer
  std::map<std::string, torch::Tensor> losses;  ///< each routing loss summed over layers
  std::vector<std::map<std::string, torch::Tensor>> layer_losses;  ///< per MoE layer, in layer order
  std::vector<MoEStats> moe_stats;              ///< one per MoE layer, in layer order
};

class TransformerLMImpl : public torch::nn::Module {
 public:
  TransformerLMImpl(const core::ModelConfig& model, const core::LossesConfig& losses, uint64_t seed,
                    DispatcherFactory dispatchers = nullptr);
  /// tokens [B, S] int64 -> logits and routing losses. `token_counters` [B, S] int64: each token's
  /// counter for routing noise (TokenInfo::counters; the trainer numbers the tokens of the run).
  /// `segments` [B, S] int64: documents packed in each sequence (AttentionImpl::forward; see
  /// document_segments), or undefined for one document per sequence.
  LMOutput forward(const torch::Tensor& tokens, const torch::Tensor& token_counters = {},
                   const torch::Tensor& segments = {});
  /// Mean next-token cross entropy of logits [B, S, V] against targets [B, S].
  static torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets);

  std::vector<MoELayer> moe_layers() const { return moe_layers_; }

  /// train.recompute: none; moe (each MoE layer's experts' MLP); full (each block: its activations
  /// are recomputed in the backward from the block's input).
  void set_recompute(core::RecomputeKind kind);

 private:
  struct BlockOutput {
    torch::Tensor h;
    std::map<std::string, torch::Tensor> losses;
    std::optional<MoEStats> stats;
  };
  BlockOutput block_forward(size_t l, const torch::Tensor& h, const torch::Tensor& tokens,
                            const torch::Tensor& token_counters, const PackedDocuments& docs);
  core::RecomputeKind recompute_ = core::RecomputeKind::kNone;

  core::ModelConfig config_;
  torch::nn::Embedding embedding{nullptr};
  torch::nn::ModuleList blocks;
  RMSNorm final_norm{nullptr};
  torch::Tensor head;  ///< [vocab, d] when untied
  std::vector<MoELayer> moe_layers_;
  std::vector<Mlp> dense_ffns_;
  std::vector<Attention> attentions_;
  std::vector<RMSNorm> norms1_, norms2_;
};
TORCH_MODULE(TransformerLM);

/// Each token's document within its sequence for data.reset_at_eod: tokens [B, S] -> [B, S] int64,
/// the count of `eod_id` tokens before it (an end-of-document token belongs to the document it ends).
torch::Tensor document_segments(const torch::Tensor& tokens, int64_t eod_id);

/// Model FLOPs of one training token (forward + backward = 3x forward), counting matrix multiplies
/// only, with the routed experts a token actually uses (top_k; null experts cost nothing):
/// 6 * (attention 2 d d_q + 2 d d_kv + FFN + router d*E) per layer + 6 * d * vocab (head) + attention
/// scores 12 * n_layers * d_q * seq_len (d_q = heads * head_dim, d_kv = kv_heads * head_dim; PaLM's convention, not halved for the causal mask). For MFU.
double model_flops_per_token(const core::ModelConfig& model);

/// Parameters one rank holds, by part (matrices only; norms and biases are negligible): the routed
/// experts split over `expert_parallel` ranks, everything else in full. For the memory check.
struct ParameterCounts {
  double embedding = 0;  ///< token embedding, and the output head when untied
  double experts = 0;    ///< this rank's routed experts
  double rest = 0;       ///< attention, shared experts, dense FFNs, routers
  double total() const { return embedding + experts + rest; }
};
ParameterCounts parameters_per_rank(const core::ModelConfig& model, int64_t expert_parallel);

}  // namespace switchyard::modules
