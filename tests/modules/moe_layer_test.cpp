// MoE layer against per-token references, dense equivalence, gradient checks in double, statistics.
#include "modules/moe_layer.h"
#include "bench/layer_benchmark.h"

#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "tests/test_util.h"

namespace switchyard::modules {
namespace {

using core::RouterKind;
using switchyard::testing::expect_gradients_match;
using switchyard::testing::rel_l2;

core::ModelConfig model_config(int64_t d, int64_t experts, int64_t k, int64_t hidden) {
  core::ModelConfig m;
  m.d_model = d;
  m.moe.num_experts = experts;
  m.moe.top_k = k;
  m.moe.ffn_hidden = hidden;
  m.init_std = 0.3;
  return m;
}

core::LossesConfig no_losses() {
  core::LossesConfig l;
  l.load_balance = 0;
  l.z_loss = 0;
  l.node_balance = 0;
  return l;
}

/// y[t] = sum_j gate[t, j] * Expert_{idx[t, j]}(x[t]), one token at a time.
torch::Tensor per_token_reference(MoELayerImpl& layer, const torch::Tensor& x, const Routing& r) {
  auto y = torch::zeros_like(x);
  for (int64_t t = 0; t < x.size(0); ++t) {
    for (int64_t j = 0; j < r.expert_idx.size(1); ++j) {
      const int64_t e = r.expert_idx[t][j].item<int64_t>();
      if (e < 0) continue;
      y[t] += r.gates[t][j] * layer.experts->expert_forward(e, x[t].unsqueeze(0))[0];
    }
  }
  return y;
}

TEST(MoELayer, EqualsPerTokenReference) {
  for (auto kind : {core::ExpertKind::kSwiGLU, core::ExpertKind::kGeLU}) {
    for (int64_t k : {1, 2, 3}) {
      torch::manual_seed(11);
      auto cfg = model_config(8, 5, k, 12);  // prime expert count
      cfg.moe.expert_kind = kind;
      MoELayer layer(cfg, no_losses(), 0, 42);
      const auto x = torch::randn({13, 8});
      const auto y = layer->forward(x).y;
      const auto r = layer->router->forward(x);
      EXPECT_LT(rel_l2(y, per_token_reference(*layer, x, r)), 1e-6) << "k=" << k;
    }
  }
}

TEST(MoELayer, OneExpertTopOneEqualsDenseFfn) {
  torch::manual_seed(3);
  const auto cfg = model_config(16, 1, 1, 24);
  MoELayer layer(cfg, no_losses(), 0, 5);
  Mlp dense(16, 24, core::ExpertKind::kSwiGLU, 0.1);
  {
    torch::NoGradGuard guard;
    dense->w_in.copy_(layer->experts->w_in[0]);
    dense->w_out.copy_(layer->experts->w_out[0]);
  }
  const auto x = torch::randn({2, 7, 16});
  EXPECT_LT(rel_l2(layer->forward(x).y, dense->forward(x)), 1e-6);
}

TEST(MoELayer, ExpertsWithoutTokensWork) {
  auto cfg = model_config(8, 6, 1, 8);
  cfg.moe.router.kind = RouterKind::kHash;
  MoELayer layer(cfg, no_losses(), 0, 1);
  const auto x = torch::randn({5, 8}, torch::requires_grad());
  const auto ids = torch::full({5}, 9, torch::kInt64);  // every token hashes to the same expert
  const auto out = layer->forward(x, {ids});
  out.y.sum().backward();
  const auto counts = out.stats.tokens_per_expert;
  EXPECT_EQ(counts.gt(0).sum().item<int64_t>(), 1);
  const int64_t used = counts.argmax().item<int64_t>();
  for (int64_t e = 0; e < 6; ++e) {
    const double g = layer->experts->w_in.grad()[e].abs().sum().item<double>();
    if (e == used) EXPECT_GT(g, 0); else EXPECT_EQ(g, 0) << "expert " << e;
  }
  EXPECT_TRUE(x.grad().defined());
}

TEST(MoELayer, NoTokensAtAll) {
  MoELayer layer(model_config(8, 4, 2, 8), no_losses(), 0, 1);
  const auto out = layer->forward(torch::randn({0, 8}));
  EXPECT_EQ(out.y.size(0), 0);
}

TEST(MoELayer, CapacityDropsAreCountedAndContributeZero) {
  torch::manual_seed(5);
  auto cfg = model_config(8, 4, 2, 8);
  cfg.moe.capacity_factor = 0.5;
  MoELayer layer(cfg, no_losses(), 0, 3);
  const auto x = torch::randn({32, 8});
  const auto out = layer->forward(x);
  const int64_t capacity = expert_capacity(0.5, 2, 32, 4);  // 8 of 64 slots per expert
  EXPECT_EQ(out.stats.capacity, capacity);
  EXPECT_TRUE(out.stats.tokens_per_expert.le(capacity).all().item<bool>());
  // Exactly the slots over capacity are dropped: 64 slots in, tokens_per_expert sums to what is kept.
  EXPECT_EQ(out.stats.routed_slots.item<int64_t>(), 64);
  EXPECT_EQ(out.stats.dropped_slots.item<int64_t>() + out.stats.tokens_per_expert.sum().item<int64_t>(), 64);
  EXPECT_GT(out.stats.dropped_frac(), 0.0);
  // Reference with the same drops applied by hand.
  Routing r = layer->router->forward(x);
  apply_capacity(r, capacity, 4, core::DropPolicy::kProbability);
  EXPECT_LT(rel_l2(out.y, per_token_reference(*layer, x, r)), 1e-6);
}

TEST(MoELayer, NullExperts) {
  torch::manual_seed(9);
  auto cfg = model_config(8, 4, 2, 8);
  cfg.moe.null_experts = 2;
  for (auto kind : {core::NullExpertKind::kZero, core::NullExpertKind::kCopy, core::NullExpertKind::kConstant}) {
    cfg.moe.null_expert_kind = kind;
    MoELayer layer(cfg, no_losses(), 0, 3);
    const auto x = torch::randn({40, 8});
    const auto out = layer->forward(x);
    Routing r = layer->router->forward(x);
    Routing routed_only;
    routed_only.expert_idx = r.expert_idx.masked_fill(r.expert_idx.ge(4), -1);
    routed_only.gates = r.gates;
    auto expected = per_token_reference(*layer, x, routed_only);
    const auto null_gate = r.gates * r.expert_idx.ge(4).to(torch::kFloat32);
    ASSERT_GT(null_gate.sum().item<double>(), 0) << "some tokens should choose null experts";
    if (kind == core::NullExpertKind::kCopy) expected = expected + x * null_gate.sum(1, true);
    if (kind == core::NullExpertKind::kConstant) {
      const auto which = (r.expert_idx - 4).clamp(0, 1);
      expected = expected + (layer->null_constants.index_select(0, which.view({-1})).view({40, 2, 8}) *
                             null_gate.unsqueeze(2)).sum(1);
    }
    EXPECT_LT(rel_l2(out.y, expected), 1e-6) << core::enum_name(kind);
    EXPECT_EQ(out.stats.tokens_per_expert.numel(), 6);
  }
}

TEST(MoELayer, SharedExpertsAddADenseMlp) {
  torch::manual_seed(2);
  auto cfg = model_config(8, 4, 2, 6);
  cfg.moe.shared_experts = 2;
  MoELayer layer(cfg, no_losses(), 0, 3);
  ASSERT_TRUE(layer->shared);
  EXPECT_EQ(layer->shared->w_out.size(0), 12);
  const auto x = torch::randn({9, 8});
  const auto r = layer->router->forward(x);
  EXPECT_LT(rel_l2(layer->forward(x).y, per_token_reference(*layer, x, r) + layer->shared->forward(x)), 1e-6);
}

TEST(MoELayer, ExpertInitDependsOnGlobalIdOnly) {
  // A rank holding experts {2, 3} must hold exactly experts 2 and 3 of the full model.
  class Subset : public LocalDispatcher {
   public:
    Subset() : LocalDispatcher(4) {}
    std::vector<int64_t> local_expert_ids() const override { return {2, 3}; }
  };
  const auto cfg = model_config(8, 4, 2, 8);
  MoELayer full(cfg, no_losses(), 1, 99);
  MoELayer part(cfg, no_losses(), 1, 99, std::make_shared<Subset>());
  EXPECT_TRUE(torch::equal(part->experts->w_in, full->experts->w_in.narrow(0, 2, 2)));
  EXPECT_TRUE(torch::equal(part->experts->w_out, full->experts->w_out.narrow(0, 2, 2)));
}

TEST(MoELayer, EveryRouterRunsForwardAndBackward) {
  for (const auto& [kind, name] : core::EnumNames<RouterKind>::kValues) {
    torch::manual_seed(4);
    auto cfg = model_config(16, 4, 1, 8);
    cfg.moe.router.kind = kind;
    cfg.moe.router.groups = 2;
    if (kind == RouterKind::kExpertChoice) cfg.moe.capacity_factor = 1.0;
    if (kind == RouterKind::kGrap) cfg.moe.capacity_factor = 1.0;
    core::LossesConfig losses;
    losses.locality = 0.01;
    losses.seq_balance = 1e-3;
    if (kind == RouterKind::kCosine) losses.contrastive = 0.1;
    MoELayer layer(cfg, losses, 0, 3);
    const auto x = torch::randn({2, 6, 16}, torch::requires_grad());
    const auto ids = torch::randint(0, 256, {2, 6}, torch::kInt64);
    const auto out = layer->forward(x, {ids});
    auto total = out.y.pow(2).sum();
    for (const auto& [loss_name, value] : out.losses) {
      EXPECT_TRUE(std::isfinite(value.item<double>())) << name << " " << loss_name;
      total = total + value;
    }
    total.backward();
    EXPECT_TRUE(torch::isfinite(x.grad()).all().item<bool>()) << name;
    EXPECT_EQ(out.y.sizes(), x.sizes());
    if (kind == RouterKind::kGrap) {
      EXPECT_GT(out.stats.capacity_min, 0.0);
    }
    if (kind == RouterKind::kCosine) {
      EXPECT_TRUE(out.losses.count("contrastive"));
    }
    if (kind != RouterKind::kHash && kind != RouterKind::kRandom) {
      EXPECT_TRUE(out.losses.count("z_loss")) << name;
    }
  }
}

TEST(MoELayerGradients, MatchFiniteDifferencesInDouble) {
  struct Case {
    RouterKind router;
    core::ExpertKind expert;
    int64_t shared, nulls;
  };
  for (const Case c : {Case{RouterKind::kTopK, core::ExpertKind::kSwiGLU, 1, 0},
                       Case{RouterKind::kTopK, core::ExpertKind::kGeLU, 0, 2},
                       Case{RouterKind::kSigmoidBias, core::ExpertKind::kSwiGLU, 0, 0},
                       Case{RouterKind::kBilevel, core::ExpertKind::kSwiGLU, 0, 0},
                       Case{RouterKind::kCosine, core::ExpertKind::kSwiGLU, 0, 0}}) {
    torch::manual_seed(21);
    auto cfg = model_config(6, 4, 2, 5);
    cfg.moe.router.kind = c.router;
    cfg.moe.router.groups = 2;
    if (c.router == RouterKind::kBilevel) cfg.moe.top_k = 1;
    cfg.moe.shared_experts = c.shared;
    cfg.moe.null_experts = c.nulls;
    cfg.moe.null_expert_kind = core::NullExpertKind::kConstant;
    core::LossesConfig losses;
    losses.load_balance = 0.1;
    losses.z_loss = 0.01;
    if (c.router == RouterKind::kCosine) losses.contrastive = 0.1;
    MoELayer layer(cfg, losses, 0, 8);
    layer->to(torch::kDouble);
    auto x = torch::randn({7, 6}, torch::kDouble).requires_grad_();
    const auto probe = torch::randn({7, 6}, torch::kDouble);
    auto f = [&] {
      const auto out = layer->forward(x);
      auto total = (out.y * probe).sum();
      for (const auto& [name, value] : out.losses) total = total + value;
      return total;
    };
    std::vector<torch::Tensor> params{x};
    for (const auto& p : layer->parameters()) params.push_back(p);
    expect_gradients_match(f, params, std::string("moe layer, router ") + core::enum_name(c.router));
  }
}

// `bench layer`'s check measures the dtype it times against a wider one: a small but non-zero error
// (the same dtype on both sides would give exactly zero), within each dtype's rounding.
TEST(LayerBenchmark, CheckComparesTheTimedDtypeWithAWiderReference) {
  core::Config c;
  c.model = model_config(16, 4, 2, 24);
  c.model.moe.shared_experts = 1;
  c.model.moe.capacity_factor = 0;
  c.losses = no_losses();
  const double fp32 = bench::check_against_reference(c, torch::kCPU, torch::kFloat32, 32);
  EXPECT_GT(fp32, 0.0);
  EXPECT_LT(fp32, 1e-5);
  if (torch::cuda::is_available()) {
    const double bf16 = bench::check_against_reference(c, torch::Device(torch::kCUDA, 0), torch::kBFloat16, 32);
    EXPECT_GT(bf16, 1e-4);
    EXPECT_LT(bf16, 1e-2);
  }
}

TEST(MoELayer, NoTokensGiveZeroLossesNotNaN) {
  // Found by the config-space tester: a rank or chunk without tokens took means over no tokens.
  auto cfg = model_config(8, 4, 2, 8);
  core::LossesConfig losses;
  losses.load_balance = 0.1;
  losses.z_loss = 0.01;
  losses.seq_balance = 0.01;
  losses.locality = 0.1;
  for (auto kind : {RouterKind::kTopK, RouterKind::kBilevel}) {
    cfg.moe.router.kind = kind;
    cfg.moe.router.groups = 2;
    cfg.moe.top_k = kind == RouterKind::kBilevel ? 1 : 2;
    MoELayer layer(cfg, losses, 0, 1);
    const auto x = torch::randn({1, 0, 8}, torch::requires_grad());  // [B = 1, S = 0, d]
    const auto out = layer->forward(x);
    auto total = out.y.sum();
    for (const auto& [name, v] : out.losses) {
      EXPECT_TRUE(std::isfinite(v.item<double>())) << name << " " << core::enum_name(kind);
      EXPECT_EQ(v.item<double>(), 0.0) << name;
      total = total + v;
    }
    total.backward();
    EXPECT_TRUE(std::isfinite(out.stats.entropy.item<double>()));
  }
}

TEST(MoELayer, NoSlotReachesAnExpert) {
  // Found by the config-space tester: one routed expert and a null expert that takes every token
  // left the un-permute indexing an empty gate vector.
  auto cfg = model_config(8, 1, 1, 8);
  cfg.moe.null_experts = 1;
  MoELayer layer(cfg, no_losses(), 0, 1);
  {
    torch::NoGradGuard g;
    auto w = layer->router->named_parameters()["weight"];
    w.zero_();
    w[1].fill_(1.0);  // the null expert wins for positive inputs
  }
  const auto x = torch::rand({6, 8}) + 0.1;
  const auto out = layer->forward(x.requires_grad_());
  EXPECT_EQ(out.stats.tokens_per_expert[0].item<double>(), 0.0);
  EXPECT_TRUE(torch::equal(out.y, torch::zeros_like(out.y)));
  out.y.sum().backward();
}

TEST(MoELayer, ExpertChoiceCountsTokensNoExpertTook) {
  // Issue 18.7: expert choice drops the tokens no expert picked; dropped_frac must say so.
  auto cfg = model_config(8, 4, 2, 8);
  cfg.moe.router.kind = RouterKind::kExpertChoice;
  cfg.moe.capacity_factor = 0.5;  // 4 experts x ceil(0.5 * 2 * 16 / 4) = 4 tokens each: at most 16 picks
  MoELayer layer(cfg, no_losses(), 0, 1);
  const auto x = torch::randn({16, 8});
  const auto out = layer->forward(x);
  const int64_t untaken = out.stats.expert_idx.ge(0).any(1).logical_not().sum().item<int64_t>();
  EXPECT_EQ(out.stats.routed_slots.item<int64_t>(), 16 * 2);
  EXPECT_EQ(out.stats.dropped_slots.item<int64_t>(), 2 * untaken);
  EXPECT_GT(untaken, 0) << "this batch leaves tokens untaken";
  EXPECT_NEAR(out.stats.dropped_frac(), static_cast<double>(untaken) / 16.0, 1e-12);
}

}  // namespace
}  // namespace switchyard::modules
