// Transformer LM forward.
#include "modules/transformer.h"

#include <cmath>

#include "core/error.h"
#include "losses/routing_losses.h"
#include "modules/recompute.h"
#include "modules/transformer_kernels.h"
#include "runtime/torch_version.h"

namespace switchyard::modules {

namespace {

/// Matrix sizes (elements) of one transformer block, for the FLOP and the parameter counts.
struct BlockMatrices {
  double attention;   ///< q and out, d x heads * head_dim; k and v, d x kv_heads * head_dim
  double per_expert;  ///< one routed or shared expert (2 or 3 matrices of d x ffn_hidden)
  double router;      ///< d x (experts + null experts)
  double dense_ffn;   ///< the SwiGLU FFN of a non-MoE block
};

BlockMatrices block_matrices(const core::ModelConfig& model) {
  const double d = static_cast<double>(model.d_model);
  const auto& moe = model.moe;
  const double q_width = static_cast<double>(model.n_heads * model.head_width());
  const double kv_width = static_cast<double>(model.kv_heads() * model.head_width());
  return {2 * d * q_width + 2 * d * kv_width,
          (moe.expert_kind == core::ExpertKind::kSwiGLU ? 3.0 : 2.0) * d * static_cast<double>(moe.ffn_hidden),
          d * static_cast<double>(moe.num_experts + moe.null_experts), 3.0 * d * static_cast<double>(model.dense_ffn_hidden)};
}

bool is_moe_block(const core::ModelConfig& model, int64_t l) {
  return model.moe.every > 0 && (l + 1) % model.moe.every == 0;
}

}  // namespace

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) { return kernels::rms_norm(x, weight, eps_); }

AttentionImpl::AttentionImpl(const core::ModelConfig& config)
    : n_heads_(config.n_heads), n_kv_heads_(config.kv_heads()), head_dim_(config.head_width()), qk_norm_(config.qk_norm) {
  const int64_t qkv_width = (n_heads_ + 2 * n_kv_heads_) * head_dim_;
  qkv = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(config.d_model, qkv_width).bias(false)));
  out = register_module("out", torch::nn::Linear(torch::nn::LinearOptions(n_heads_ * head_dim_, config.d_model).bias(false)));
  torch::nn::init::normal_(qkv->weight, 0.0, config.init_std);
  torch::nn::init::normal_(out->weight, 0.0, config.init_std / std::sqrt(2.0 * config.n_layers));
  if (qk_norm_ != core::QkNorm::kNone) {
    const bool full = qk_norm_ == core::QkNorm::kFull;
    q_norm = register_module("q_norm", RMSNorm(full ? n_heads_ * head_dim_ : head_dim_, config.norm_eps));
    k_norm = register_module("k_norm", RMSNorm(full ? n_kv_heads_ * head_dim_ : head_dim_, config.norm_eps));
  }
  const int64_t half = head_dim_ / 2;
  const auto inv_freq = torch::pow(config.rope_theta, -torch::arange(half, torch::kFloat64) / static_cast<double>(half));
  const auto angles = torch::outer(torch::arange(config.seq_len, torch::kFloat64), inv_freq);
  cos_ = register_buffer("rope_cos", angles.cos().to(torch::kFloat32));
  sin_ = register_buffer("rope_sin", angles.sin().to(torch::kFloat32));
}

PackedDocuments PackedDocuments::from_segments(const torch::Tensor& segments, const torch::Device& device) {
  PackedDocuments docs;
  if (!segments.defined()) return docs;
  const auto seg = segments.to(device);
  const int64_t batch = seg.size(0), seq = seg.size(1);
  const auto index = torch::arange(seq, seg.options()).unsqueeze(0).expand({batch, seq});
  // A document's first index is the largest index whose segment changed at or before each token.
  const auto starts = torch::where(seg.ne(torch::cat({seg.narrow(1, 0, 1) - 1, seg.narrow(1, 0, seq - 1)}, 1)), index,
                                   torch::zeros_like(index)).cummax(1);
  docs.positions = index - std::get<0>(starts);
  const auto causal = torch::ones({seq, seq}, torch::dtype(torch::kBool).device(device)).tril();
  docs.mask = (seg.unsqueeze(2) == seg.unsqueeze(1)).logical_and(causal).unsqueeze(1);
  return docs;
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const PackedDocuments& docs) {
  const int64_t batch = x.size(0), seq = x.size(1);
  SY_CHECK(seq <= cos_.size(0), "attention: sequence of ", seq, " tokens exceeds model.seq_len ", cos_.size(0));
  // [B, S, (H + 2G) hd] -> q [B, H, S, hd], k and v [B, G, S, hd] (G = H without grouped-query attention):
  // views of one split along the heads, whose backward is one concatenation into the projection's
  // gradient (slicing the width instead summed three zero-padded gradients, ~4 ms a step on mixtral_like).
  const auto parts = qkv->forward(x)
                         .view({batch, seq, n_heads_ + 2 * n_kv_heads_, head_dim_})
                         .split_with_sizes({n_heads_, n_kv_heads_, n_kv_heads_}, 2);
  auto q = parts[0], k = parts[1], v = parts[2];  // [B, S, heads, hd]
  if (qk_norm_ == core::QkNorm::kFull) {  // OLMoE: over all heads' width at once
    q = q_norm->forward(q.flatten(2)).view({batch, seq, n_heads_, head_dim_});
    k = k_norm->forward(k.flatten(2)).view({batch, seq, n_kv_heads_, head_dim_});
  }
  q = q.transpose(1, 2);
  k = k.transpose(1, 2);
  v = v.transpose(1, 2);
  if (qk_norm_ == core::QkNorm::kHead) {  // Qwen3: each head on its own
    q = q_norm->forward(q);
    k = k_norm->forward(k);
  }
  // RoPE, half-split convention: (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos). Packed documents:
  // each token at its position inside its document, attending inside it only.
  const auto& mask = docs.mask;  // [B, 1, S, S] bool, true where attention is allowed
  if (docs.positions.defined()) {
    q = kernels::rope_at(q, cos_, sin_, docs.positions);
    k = kernels::rope_at(k, cos_, sin_, docs.positions);
  } else {
    q = kernels::rope(q, cos_, sin_);
    k = kernels::rope(k, cos_, sin_);
  }
  const bool grouped = n_kv_heads_ != n_heads_;
  torch::Tensor attn;
#if SY_TORCH_AT_LEAST(2, 5)
  // Grouped-query attention inside SDPA: no repeated copies of k and v.
  attn = mask.defined() ? at::scaled_dot_product_attention(q, k, v, mask, 0.0, /*is_causal=*/false, std::nullopt, grouped)
                        : at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, std::nullopt, grouped);
#else
  if (grouped) {  // each group of H / G query heads shares one key/value head
    k = k.repeat_interleave(n_heads_ / n_kv_heads_, 1);
    v = v.repeat_interleave(n_heads_ / n_kv_heads_, 1);
  }
#if SY_TORCH_AT_LEAST(2, 0)
  attn = mask.defined() ? at::scaled_dot_product_attention(q, k, v, mask, 0.0, /*is_causal=*/false)
                        : at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true);
#else
  auto scores = q.matmul(k.transpose(-2, -1)) / std::sqrt(static_cast<double>(head_dim_));
  const auto allowed = mask.defined() ? mask
                                      : torch::ones({seq, seq}, torch::dtype(torch::kBool).device(x.device())).tril();
  scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  attn = torch::softmax(losses::at_least_fp32(scores), -1).to(v.scalar_type()).matmul(v);
#endif
#endif
  return out->forward(attn.transpose(1, 2).reshape({batch, seq, n_heads_ * head_dim_}));
}

TransformerLMImpl::TransformerLMImpl(const core::ModelConfig& model, const core::LossesConfig& losses, uint64_t seed,
                                     DispatcherFactory dispatchers)
    : config_(model) {
  torch::manual_seed(seed);
  embedding = register_module("embedding", torch::nn::Embedding(model.vocab_size, model.d_model));
  torch::nn::init::normal_(embedding->weight, 0.0, model.init_std);
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t l = 0; l < model.n_layers; ++l) {
    auto block = std::make_shared<torch::nn::Module>();
    norms1_.push_back(block->register_module("norm1", RMSNorm(model.d_model, model.norm_eps)));
    attentions_.push_back(block->register_module("attention", Attention(model)));
    norms2_.push_back(block->register_module("norm2", RMSNorm(model.d_model, model.norm_eps)));
    if (is_moe_block(model, l)) {
      moe_layers_.push_back(block->register_module(
          "moe", MoELayer(model, losses, l, seed, dispatchers ? dispatchers(l) : nullptr)));
      dense_ffns_.push_back(nullptr);
    } else {
      moe_layers_.push_back(nullptr);
      dense_ffns_.push_back(block->register_module(
          "ffn", Mlp(model.d_model, model.dense_ffn_hidden, core::ExpertKind::kSwiGLU, model.init_std)));
    }
    blocks->push_back(block);
  }
  final_norm = register_module("final_norm", RMSNorm(model.d_model, model.norm_eps));
  if (!model.tie_embeddings) {
    head = register_parameter("head", torch::randn({model.vocab_size, model.d_model}) * model.init_std);
  }
}

void TransformerLMImpl::set_recompute(core::RecomputeKind kind) {
  recompute_ = kind;
  for (auto& layer : moe_layers_) {
    if (layer) layer->set_recompute_experts(kind == core::RecomputeKind::kMoE);
  }
}

TransformerLMImpl::BlockOutput TransformerLMImpl::block_forward(size_t l, const torch::Tensor& h_in,
                                                                const torch::Tensor& tokens,
                                                                const torch::Tensor& token_counters,
                                                                const PackedDocuments& docs) {
  BlockOutput out;
  auto h = h_in + attentions_[l]->forward(norms1_[l]->forward(h_in), docs);
  const auto normed = norms2_[l]->forward(h);
  if (moe_layers_[l]) {
    auto moe = moe_layers_[l]->forward(normed, {tokens, token_counters});
    out.h = h + moe.y;
    out.losses = std::move(moe.losses);
    out.stats = std::move(moe.stats);
  } else {
    out.h = h + dense_ffns_[l]->forward(normed);
  }
  return out;
}

LMOutput TransformerLMImpl::forward(const torch::Tensor& tokens, const torch::Tensor& token_counters,
                                    const torch::Tensor& segments) {
  SY_CHECK(tokens.dim() == 2, "transformer: expected tokens [B, S], got ", tokens.sizes());
  LMOutput out;
  auto h = embedding->forward(tokens);
  const auto docs = PackedDocuments::from_segments(segments, h.device());
  out.aux_loss = torch::zeros({}, h.options().dtype(torch::kFloat32));
  for (size_t l = 0; l < attentions_.size(); ++l) {
    BlockOutput block;
    if (recompute_ == core::RecomputeKind::kFull) {
      // The block as a function of its input: h and the MoE losses (by name) out; the loss names and
      // statistics of the first run kept (the recomputation's are the same).
      struct FirstRun {
        bool ran = false;
        std::vector<std::string> names;
        std::optional<MoEStats> stats;
      };
      auto first = std::make_shared<FirstRun>();
      const auto outputs = recompute_in_backward(
          [this, l, tokens, token_counters, docs, first](const torch::Tensor& in) {
            auto run = block_forward(l, in, tokens, token_counters, docs);
            torch::autograd::variable_list result = {run.h};
            for (const auto& [name, value] : run.losses) result.push_back(value);
            if (!first->ran) {
              first->ran = true;
              for (const auto& [name, value] : run.losses) first->names.push_back(name);
              first->stats = std::move(run.stats);
            }
            return result;
          },
          h);
      block.h = outputs[0];
      block.stats = std::move(first->stats);
      for (size_t i = 0; i < first->names.size(); ++i) block.losses[first->names[i]] = outputs[i + 1];
    } else {
      block = block_forward(l, h, tokens, token_counters, docs);
    }
    h = block.h;
    if (moe_layers_[l]) {
      for (auto& [name, value] : block.losses) {
        out.aux_loss = out.aux_loss + value;
        auto it = out.losses.find(name);
        out.losses[name] = it == out.losses.end() ? value : it->second + value;
      }
      out.layer_losses.push_back(block.losses);
      out.moe_stats.push_back(std::move(*block.stats));
    }
  }
  h = final_norm->forward(h);
  out.logits = h.matmul((config_.tie_embeddings ? embedding->weight : head).t().to(h.scalar_type()));
  return out;
}

torch::Tensor TransformerLMImpl::lm_loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(losses::at_least_fp32(logits.reshape({-1, logits.size(-1)})),
                                              targets.reshape({-1}));
}

torch::Tensor document_segments(const torch::Tensor& tokens, int64_t eod_id) {
  const auto ends = tokens.eq(eod_id).to(torch::kInt64);
  return ends.cumsum(1) - ends;  // exclusive: the end-of-document token stays in its document
}

double model_flops_per_token(const core::ModelConfig& model) {
  const double d = static_cast<double>(model.d_model);
  const auto& moe = model.moe;
  const auto m = block_matrices(model);
  double params = 0;  // multiply-accumulates per token
  for (int64_t l = 0; l < model.n_layers; ++l) {
    params += m.attention;
    if (is_moe_block(model, l)) {
      params += static_cast<double>(moe.top_k) * m.per_expert + static_cast<double>(moe.shared_experts) * m.per_expert +
                m.router;
    } else {
      params += m.dense_ffn;
    }
  }
  params += d * static_cast<double>(model.vocab_size);
  const double attention_width = static_cast<double>(model.n_heads * model.head_width());
  return 6.0 * params + 12.0 * static_cast<double>(model.n_layers) * attention_width * static_cast<double>(model.seq_len);
}

ParameterCounts parameters_per_rank(const core::ModelConfig& model, int64_t expert_parallel) {
  const auto& moe = model.moe;
  const auto m = block_matrices(model);
  const double experts_here =
      std::ceil(static_cast<double>(moe.num_experts) / static_cast<double>(std::max<int64_t>(1, expert_parallel)));
  ParameterCounts c;
  c.embedding = static_cast<double>(model.d_model) * static_cast<double>(model.vocab_size) * (model.tie_embeddings ? 1.0 : 2.0);
  for (int64_t l = 0; l < model.n_layers; ++l) {
    c.rest += m.attention;
    if (is_moe_block(model, l)) {
      c.experts += experts_here * m.per_expert;
      c.rest += static_cast<double>(moe.shared_experts) * m.per_expert + m.router;
    } else {
      c.rest += m.dense_ffn;
    }
  }
  return c;
}

}  // namespace switchyard::modules
