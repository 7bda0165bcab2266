// The transformer LM: causality, head tying, and learning on a small repetitive corpus.
#include "modules/transformer.h"

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace switchyard::modules {
namespace {

core::ModelConfig small_model() {
  core::ModelConfig m;
  m.vocab_size = 32;
  m.d_model = 32;
  m.n_layers = 2;
  m.n_heads = 2;
  m.seq_len = 16;
  m.dense_ffn_hidden = 64;
  m.moe.num_experts = 4;
  m.moe.top_k = 2;
  m.moe.every = 2;
  m.moe.ffn_hidden = 32;
  return m;
}

TEST(TransformerLM, IsCausal) {
  TransformerLM lm(small_model(), core::LossesConfig{}, 1);
  lm->eval();
  auto tokens = torch::randint(0, 32, {2, 16}, torch::kInt64);
  const auto a = lm->forward(tokens).logits;
  tokens.index_put_({torch::indexing::Slice(), 10}, (tokens.select(1, 10) + 1).remainder(32));
  const auto b = lm->forward(tokens).logits;
  using torch::indexing::Slice;
  EXPECT_TRUE(torch::allclose(a.index({Slice(), Slice(0, 10)}), b.index({Slice(), Slice(0, 10)}), 1e-5, 1e-6));
  EXPECT_FALSE(torch::allclose(a.index({Slice(), 10}), b.index({Slice(), 10})));
}

TEST(TransformerLM, MoeEveryAndTying) {
  auto cfg = small_model();
  TransformerLM tied(cfg, core::LossesConfig{}, 1);
  EXPECT_EQ(tied->moe_layers()[0].is_empty(), true);
  EXPECT_EQ(tied->moe_layers()[1].is_empty(), false);
  cfg.tie_embeddings = false;
  TransformerLM untied(cfg, core::LossesConfig{}, 1);
  int64_t n_tied = 0, n_untied = 0;
  for (const auto& p : tied->parameters()) n_tied += p.numel();
  for (const auto& p : untied->parameters()) n_untied += p.numel();
  EXPECT_EQ(n_untied - n_tied, 32 * 32);
  const auto out = tied->forward(torch::randint(0, 32, {1, 8}, torch::kInt64));
  EXPECT_EQ(out.moe_stats.size(), 1u);
  EXPECT_TRUE(out.losses.count("load_balance"));
  ASSERT_EQ(out.layer_losses.size(), 1u);
  EXPECT_EQ(out.layer_losses[0].at("load_balance").item<double>(), out.losses.at("load_balance").item<double>());
}

TEST(TransformerLM, ParameterCountsMatchTheBuiltModel) {
  // The memory check's count (matrices only) against the parameters a built model holds, with
  // GQA, untied head, a dense layer and a shared expert; experts split over 2 ranks halve.
  auto cfg = small_model();
  cfg.n_kv_heads = 1;
  cfg.tie_embeddings = false;
  cfg.moe.shared_experts = 1;
  cfg.moe.expert_kind = core::ExpertKind::kSwiGLU;
  TransformerLM lm(cfg, core::LossesConfig{}, 1);
  double matrices = 0;
  for (const auto& p : lm->parameters())
    if (p.dim() >= 2) matrices += static_cast<double>(p.numel());
  const auto counts = parameters_per_rank(cfg, 1);
  EXPECT_NEAR(counts.total(), matrices, 1e-3 * matrices);
  // Heads wider than d_model / n_heads (Qwen3's head_dim) widen q, k, v and out.
  auto wide = cfg;
  wide.head_dim = 24;
  TransformerLM wide_lm(wide, core::LossesConfig{}, 1);
  double wide_matrices = 0;
  for (const auto& p : wide_lm->parameters())
    if (p.dim() >= 2) wide_matrices += static_cast<double>(p.numel());
  EXPECT_NEAR(parameters_per_rank(wide, 1).total(), wide_matrices, 1e-3 * wide_matrices);
  EXPECT_GT(wide_matrices, matrices);
  EXPECT_DOUBLE_EQ(counts.embedding, 2.0 * 32 * 32);
  EXPECT_DOUBLE_EQ(parameters_per_rank(cfg, 2).experts, counts.experts / 2);
}

TEST(TransformerLM, LearnsARepetitiveCorpus) {
  // A learning test with a generous bound (no timing): 200 AdamW steps on a period-7 pattern with
  // random offsets drive the next-token loss from ~log(32) far down.
  torch::manual_seed(0);
  TransformerLM lm(small_model(), core::LossesConfig{}, 7);
  torch::optim::AdamW opt(lm->parameters(), torch::optim::AdamWOptions(3e-3).weight_decay(0.0));
  const auto pattern = torch::tensor({3, 14, 15, 9, 26, 5, 31}, torch::kInt64);
  double first = 0, last = 0;
  for (int step = 0; step < 200; ++step) {
    const auto offsets = torch::randint(0, 7, {8, 1}, torch::kInt64);
    const auto positions = (offsets + torch::arange(17, torch::kInt64).unsqueeze(0)).remainder(7);
    const auto seq = pattern.index_select(0, positions.view({-1})).view({8, 17});
    using torch::indexing::Slice;
    const auto out = lm->forward(seq.index({Slice(), Slice(0, 16)}));
    const auto loss = TransformerLMImpl::lm_loss(out.logits, seq.index({Slice(), Slice(1, 17)}));
    opt.zero_grad();
    (loss + out.aux_loss).backward();
    opt.step();
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
  }
  EXPECT_GT(first, 3.0);
  EXPECT_LT(last, 0.3) << "from " << first;
}

TEST(Attention, GroupedQueryAttentionSharesEachKeyValueHeadWithItsGroup) {
  // n_kv_heads G < n_heads H: query heads h share key/value head h / (H / G). Equal to full
  // attention whose key/value weights repeat each group's.
  core::ModelConfig grouped;
  grouped.d_model = 16;
  grouped.n_heads = 4;
  grouped.n_kv_heads = 2;
  grouped.seq_len = 6;
  torch::manual_seed(3);
  Attention gqa(grouped);
  auto full_cfg = grouped;
  full_cfg.n_kv_heads = 0;
  Attention full(full_cfg);
  const int64_t hd = 4;
  {
    torch::NoGradGuard g;
    const auto w = gqa->qkv->weight;  // [(4 + 2 + 2) * hd, d]
    const auto q = w.narrow(0, 0, 4 * hd), k = w.narrow(0, 4 * hd, 2 * hd), v = w.narrow(0, 6 * hd, 2 * hd);
    const auto repeat = [&](const torch::Tensor& kv) { return kv.view({2, hd, 16}).repeat_interleave(2, 0).reshape({4 * hd, 16}); };
    full->qkv->weight.copy_(torch::cat({q, repeat(k), repeat(v)}, 0));
    full->out->weight.copy_(gqa->out->weight);
  }
  EXPECT_EQ(gqa->qkv->weight.size(0), 8 * hd);
  const auto x = torch::randn({2, 6, 16});
  EXPECT_LT(switchyard::testing::rel_l2(gqa->forward(x), full->forward(x)), 1e-6);
}

TEST(TransformerLM, PackedDocumentsDoNotSeeEachOther) {
  // data.reset_at_eod: the second document of a packed sequence gets the logits it has alone (its
  // positions from 0, no attention to the first), and the first is unchanged; without segments the
  // second document sees the first. Grouped-query attention, an MoE in every layer (dropless).
  auto cfg = small_model();
  cfg.n_kv_heads = 1;
  cfg.moe.every = 1;
  TransformerLM lm(cfg, core::LossesConfig{}, 3);
  lm->eval();
  torch::NoGradGuard no_grad;
  const int64_t eod = 31;
  auto doc_a = torch::randint(0, 31, {1, 6}, torch::kInt64);
  doc_a.index_put_({0, 5}, eod);
  const auto doc_b = torch::randint(0, 31, {1, 10}, torch::kInt64);
  const auto packed = torch::cat({doc_a, doc_b}, 1);  // [1, 16]
  const auto segments = document_segments(packed, eod);
  EXPECT_TRUE(torch::equal(segments, torch::cat({torch::zeros({1, 6}, torch::kInt64), torch::ones({1, 10}, torch::kInt64)}, 1)));
  using torch::indexing::Slice;
  const auto together = lm->forward(packed, {}, segments).logits;
  const auto alone_b = lm->forward(doc_b).logits;
  const auto alone_a = lm->forward(doc_a).logits;
  EXPECT_LT(switchyard::testing::rel_l2(together.index({Slice(), Slice(6, 16)}), alone_b), 1e-5);
  EXPECT_LT(switchyard::testing::rel_l2(together.index({Slice(), Slice(0, 6)}), alone_a), 1e-5);
  const auto unsegmented = lm->forward(packed).logits;
  EXPECT_GT(switchyard::testing::rel_l2(unsegmented.index({Slice(), Slice(6, 16)}), alone_b), 1e-2);
  // One document: segments change nothing.
  EXPECT_LT(switchyard::testing::rel_l2(lm->forward(doc_b, {}, torch::zeros({1, 10}, torch::kInt64)).logits, alone_b), 1e-6);
}

/// Scales the qkv rows of query head `q_head` by `q_scale` and of key head `k_head` by `k_scale`.
void scale_heads(Attention& a, int64_t hd, int64_t heads, int64_t q_head, double q_scale, int64_t k_head, double k_scale) {
  torch::NoGradGuard g;
  a->qkv->weight.narrow(0, q_head * hd, hd).mul_(q_scale);
  a->qkv->weight.narrow(0, (heads + k_head) * hd, hd).mul_(k_scale);
}

TEST(Attention, QkNormHeadMakesEachHeadScaleInvariant) {
  // model.qk_norm head (Qwen3) normalizes each head's query and key: scaling one head's projection
  // changes nothing. full (OLMoE) normalizes all heads together: a common scale changes nothing, one
  // head's scale does. Without QK norm both change the output.
  core::ModelConfig cfg;
  cfg.d_model = 16;
  cfg.n_heads = 4;
  cfg.n_kv_heads = 2;
  cfg.head_dim = 6;  // wider than d_model / n_heads: q is 24 wide
  cfg.seq_len = 6;
  cfg.norm_eps = 1e-12;  // exact invariance (the epsilon is what breaks it)
  const auto x = torch::randn({2, 6, 16});
  const auto changed_by = [&](core::QkNorm norm, int64_t q_head, double q_scale, int64_t k_head, double k_scale) {
    auto c = cfg;
    c.qk_norm = norm;
    torch::manual_seed(5);
    Attention a(c);
    const auto before = a->forward(x);
    if (q_head < 0) {  // every query and key head
      for (int64_t h = 0; h < 4; ++h) scale_heads(a, 6, 4, h, q_scale, h % 2, h < 2 ? k_scale : 1.0);
    } else {
      scale_heads(a, 6, 4, q_head, q_scale, k_head, k_scale);
    }
    return switchyard::testing::rel_l2(a->forward(x), before);
  };
  EXPECT_LT(changed_by(core::QkNorm::kHead, 1, 5.0, 1, 0.3), 1e-6);
  EXPECT_GT(changed_by(core::QkNorm::kFull, 1, 5.0, 1, 0.3), 1e-3);
  EXPECT_LT(changed_by(core::QkNorm::kFull, -1, 5.0, -1, 0.3), 1e-6);
  EXPECT_GT(changed_by(core::QkNorm::kNone, 1, 5.0, 1, 0.3), 1e-3);
}

TEST(Attention, QkNormOfOneHeadIsTheSameEitherWay) {
  core::ModelConfig cfg;
  cfg.d_model = 8;
  cfg.n_heads = 1;
  cfg.seq_len = 5;
  const auto x = torch::randn({3, 5, 8});
  std::vector<torch::Tensor> outputs;
  for (auto norm : {core::QkNorm::kHead, core::QkNorm::kFull}) {
    auto c = cfg;
    c.qk_norm = norm;
    torch::manual_seed(9);
    Attention a(c);
    {
      torch::NoGradGuard g;
      a->q_norm->weight.copy_(torch::linspace(0.5, 1.5, 8));
      a->k_norm->weight.copy_(torch::linspace(1.5, 0.5, 8));
    }
    outputs.push_back(a->forward(x));
  }
  EXPECT_LT(switchyard::testing::rel_l2(outputs[0], outputs[1]), 1e-6);
}

}  // namespace
}  // namespace switchyard::modules
