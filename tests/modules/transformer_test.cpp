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

}  // namespace
}  // namespace switchyard::modules
