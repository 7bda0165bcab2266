// Each router on small hand-worked cases; capacity and the LocMoE bound.
#include "modules/router.h"

#include <gtest/gtest.h>

#include <set>

#include "core/config.h"
#include "core/error.h"
#include "core/router_traits.h"
#include "modules/moe_layer.h"
#include "modules/counter_rng.h"

namespace switchyard::modules {
namespace {

using core::RouterKind;

core::MoEConfig moe_config(RouterKind kind, int64_t experts, int64_t k) {
  core::MoEConfig c;
  c.router.kind = kind;
  c.num_experts = experts;
  c.top_k = k;
  return c;
}

void set_param(torch::nn::Module& m, const std::string& name, const torch::Tensor& value) {
  torch::NoGradGuard guard;
  auto params = m.named_parameters();
  ASSERT_TRUE(params.contains(name)) << name;
  params[name].copy_(value);
}

TEST(RouterTraits, EveryRouterDoesWhatItsTraitsSay) {
  // The one table (core/router_traits.h) against the routers: the slot width the layer and the
  // traces size for, whether a loss can move the router, whether every slot names an expert.
  for (const auto& [kind, name] : core::EnumNames<RouterKind>::kValues) {
    auto c = moe_config(kind, 8, 2);
    c.capacity_factor = kind == RouterKind::kExpertChoice ? 1.0 : 0.0;
    c.router.groups = 2;
    c.router.k_max = 3;
    const auto& traits = core::router_traits(kind);
    torch::manual_seed(5);
    Router r(c, 16, 0.5);
    const auto x = torch::randn({24, 16});
    const auto ids = torch::arange(24, torch::kInt64);
    const auto out = r->forward(x, {ids, ids});
    const std::string what = name;
    EXPECT_EQ(out.expert_idx.size(1), routing_slots(c)) << what;
    EXPECT_EQ(out.learned, traits.learned) << what;
    if (traits.every_slot_an_expert) {
      EXPECT_TRUE(out.expert_idx.ge(0).all().item<bool>()) << what;
      EXPECT_TRUE(every_slot_routed(c)) << what;
    }
    EXPECT_EQ(traits.bias_update, r->bias().defined()) << what;
    EXPECT_EQ(traits.prototypes, r->prototypes().defined()) << what;
  }
}

TEST(TopKRouter, PicksLargestAndRenormalizes) {
  Router r(moe_config(RouterKind::kTopK, 4, 2), 4, 0.02);
  set_param(*r, "weight", torch::eye(4));
  const auto x = torch::tensor({3.0f, 1.0f, 2.0f, 0.0f, 0.0f, 1.0f, 0.0f, 5.0f}).view({2, 4});
  const auto out = r->forward(x);
  EXPECT_TRUE(torch::equal(out.expert_idx, torch::tensor({0, 2, 3, 1}, torch::kInt64).view({2, 2})));
  // Token 0: softmax(3,1,2,0) top-2 = (e^3, e^2) / (e^3 + e^2) after renormalization.
  const double g0 = std::exp(3.0) / (std::exp(3.0) + std::exp(2.0));
  EXPECT_NEAR(out.gates[0][0].item<double>(), g0, 1e-6);
  EXPECT_NEAR(out.gates.sum(1)[1].item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(out.probs.sum(1)[0].item<double>(), 1.0, 1e-6);
}

TEST(TopKRouter, WithoutRenormalizationGatesAreProbabilities) {
  auto cfg = moe_config(RouterKind::kTopK, 4, 1);
  cfg.router.normalize_topk = false;
  Router r(cfg, 4, 0.02);
  set_param(*r, "weight", torch::eye(4));
  const auto out = r->forward(torch::tensor({0.0f, 1.0f, 0.0f, 0.0f}).view({1, 4}));
  EXPECT_EQ(out.expert_idx.item<int64_t>(), 1);
  EXPECT_NEAR(out.gates.item<double>(), std::exp(1.0) / (std::exp(1.0) + 3), 1e-6);
}

TEST(SigmoidBiasRouter, BiasSteersSelectionNotGates) {
  Router r(moe_config(RouterKind::kSigmoidBias, 3, 1), 3, 0.02);
  set_param(*r, "weight", torch::eye(3));
  const auto x = torch::tensor({1.0f, 0.9f, 0.0f}).view({1, 3});
  EXPECT_EQ(r->forward(x).expert_idx.item<int64_t>(), 0);
  // Expert 0 overloaded, expert 1 idle: the update lowers b_0 and raises b_1.
  for (int i = 0; i < 60; ++i) r->update_bias(torch::tensor({10.0f, 0.0f, 5.0f}));
  EXPECT_NEAR(r->bias()[0].item<double>(), -60 * 1e-3, 1e-7);
  EXPECT_NEAR(r->bias()[1].item<double>(), 60 * 1e-3, 1e-7);
  const auto out = r->forward(x);
  EXPECT_EQ(out.expert_idx.item<int64_t>(), 1);
  EXPECT_NEAR(out.gates.item<double>(), 1.0, 1e-6);  // s_1 / s_1: the bias never enters the gate
}

TEST(NoisyTopKRouter, NoNoiseInEvalMode) {
  torch::manual_seed(0);
  Router noisy(moe_config(RouterKind::kNoisyTopK, 8, 2), 16, 0.5);
  const auto x = torch::randn({64, 16});
  noisy->eval();
  const auto a = noisy->forward(x), b = noisy->forward(x);
  EXPECT_TRUE(torch::equal(a.expert_idx, b.expert_idx));
  noisy->train();
  const auto c = noisy->forward(x);
  EXPECT_FALSE(torch::equal(a.expert_idx, c.expert_idx)) << "training noise should change some choices";
}

TEST(ExpertChoiceRouter, EachExpertTakesExactlyCapacityTokens) {
  torch::manual_seed(1);
  auto cfg = moe_config(RouterKind::kExpertChoice, 4, 2);
  cfg.capacity_factor = 1.0;
  Router r(cfg, 8, 0.5);
  const auto out = r->forward(torch::randn({10, 8}));
  const int64_t capacity = expert_capacity(1.0, 2, 10, 4);  // ceil(20 / 4) = 5
  ASSERT_EQ(capacity, 5);
  for (int64_t e = 0; e < 4; ++e) EXPECT_EQ(out.expert_idx.eq(e).sum().item<int64_t>(), capacity) << "expert " << e;
  EXPECT_TRUE(out.gates.masked_select(out.expert_idx.lt(0)).eq(0).all().item<bool>());
}

TEST(TopPRouter, SmallestSetOverThreshold) {
  auto cfg = moe_config(RouterKind::kTopP, 4, 1);
  cfg.router.k_max = 3;
  cfg.router.normalize_topk = false;
  // Logits whose softmax is (0.5, 0.3, 0.15, 0.05).
  const auto logits = torch::tensor({0.5, 0.3, 0.15, 0.05}).log().view({1, 4});
  const auto expect_count = [&](double threshold, int64_t count) {
    cfg.router.top_p_threshold = threshold;
    Router r(cfg, 4, 0.02);
    set_param(*r, "weight", torch::eye(4));
    const auto out = r->forward(logits);
    EXPECT_EQ(out.expert_idx.ge(0).sum().item<int64_t>(), count) << "threshold " << threshold;
    EXPECT_EQ(out.expert_idx[0][0].item<int64_t>(), 0);
  };
  expect_count(0.4, 1);   // 0.5 >= 0.4
  expect_count(0.5, 1);   // exactly reached by one
  expect_count(0.7, 2);   // 0.5 + 0.3
  expect_count(0.9, 3);   // 0.95 with three
  expect_count(0.99, 3);  // capped at k_max
}

TEST(HashRouter, DeterministicInTokenIdAlone) {
  Router r(moe_config(RouterKind::kHash, 8, 2), 4, 0.02);
  const auto ids = torch::tensor({5, 17, 5, 300, 17}, torch::kInt64);
  const auto a = r->forward(torch::randn({5, 4}), {ids});
  const auto b = r->forward(torch::randn({5, 4}), {ids});
  EXPECT_TRUE(torch::equal(a.expert_idx, b.expert_idx));
  EXPECT_TRUE(torch::equal(a.expert_idx[0], a.expert_idx[2]));
  EXPECT_TRUE(torch::equal(a.expert_idx[1], a.expert_idx[4]));
  EXPECT_TRUE(a.expert_idx.select(1, 0).ne(a.expert_idx.select(1, 1)).all().item<bool>());
  EXPECT_THROW(r->forward(torch::randn({5, 4})), switchyard::Error);
}

TEST(RandomRouter, DistinctExpertsEqualGates) {
  torch::manual_seed(2);
  Router r(moe_config(RouterKind::kRandom, 6, 3), 4, 0.02);
  const auto out = r->forward(torch::randn({50, 4}));
  for (int64_t t = 0; t < 50; ++t) {
    const auto row = out.expert_idx[t];
    std::set<int64_t> seen{row[0].item<int64_t>(), row[1].item<int64_t>(), row[2].item<int64_t>()};
    EXPECT_EQ(seen.size(), 3u);
  }
  EXPECT_TRUE(torch::allclose(out.gates, torch::full({50, 3}, 1.0 / 3)));
  EXPECT_FALSE(out.learned);
}

TEST(CosineRouter, TokenOnAPrototypePicksIt) {
  Router r(moe_config(RouterKind::kCosine, 3, 1), 4, 0.5);
  set_param(*r, "prototypes", torch::tensor({1.0f, 0.f, 0.f, 0.f, 0.f, 1.f, 0.f, 0.f, 0.f, 0.f, 1.f, 1.f}).view({3, 4}));
  const auto out = r->forward(torch::tensor({0.0f, 0.f, 2.f, 2.f, 0.f, 3.f, 0.f, 0.f}).view({2, 4}));
  EXPECT_EQ(out.expert_idx[0].item<int64_t>(), 2);
  EXPECT_EQ(out.expert_idx[1].item<int64_t>(), 1);
  // logits = scale * cos: token 0 against prototype 2 has cos 1.
  EXPECT_NEAR(out.z_logits[0][0][2].item<double>(), 10.0, 1e-5);
}

TEST(BilevelRouter, GroupThenExpertWithProductGate) {
  auto cfg = moe_config(RouterKind::kBilevel, 6, 1);
  cfg.router.groups = 2;
  Router r(cfg, 3, 0.02);
  set_param(*r, "node_weight", torch::tensor({1.0f, 0.f, 0.f, 0.f, 1.f, 0.f}).view({2, 3}));
  set_param(*r, "local_weight", torch::eye(3));
  // Token prefers group 1 (x_1 > x_0) and in-group position 2 (x_2 largest).
  const auto x = torch::tensor({0.0f, 1.0f, 2.0f}).view({1, 3});
  const auto out = r->forward(x);
  EXPECT_EQ(out.expert_idx.item<int64_t>(), 1 * 3 + 2);
  const double p_node = std::exp(1.0) / (1 + std::exp(1.0));
  const double p_loc = std::exp(2.0) / (1 + std::exp(1.0) + std::exp(2.0));
  EXPECT_NEAR(out.gates.item<double>(), p_node * p_loc, 1e-6);
  EXPECT_NEAR(out.probs.sum().item<double>(), 1.0, 1e-6);
  EXPECT_EQ(r->parameters().size(), 2u);
  EXPECT_EQ(r->parameters()[0].numel() + r->parameters()[1].numel(), 3 * (2 + 3));  // d * (N + E/N)
}

TEST(GrapRouter, FixedOrthogonalGate) {
  Router r(moe_config(RouterKind::kGrap, 4, 1), 8, 0.02);
  ASSERT_EQ(r->parameters().size(), 1u);  // only eps is learned
  // Channel block 2 (channels 4, 5) is the largest: expert 2.
  const auto x = torch::tensor({0.1f, 0.1f, 0.2f, 0.0f, 3.0f, 1.0f, -1.0f, 0.5f}).view({1, 8});
  const auto out = r->forward(x);
  EXPECT_EQ(out.expert_idx.item<int64_t>(), 2);
  // G = relu(block means + eps) = (0.1, 0.1, 2.0, 0) with eps = 0.
  EXPECT_NEAR(out.z_logits[0][0][2].item<double>(), 2.0, 1e-6);
  EXPECT_NEAR(out.z_logits[0][0][3].item<double>(), 0.0, 1e-6);
}

TEST(Capacity, DropsCountExactlyByProbability) {
  Routing r;
  // Expert 0 chosen by 4 slots with gates 0.9, 0.2, 0.8, 0.1; expert 1 by 2 slots.
  r.expert_idx = torch::tensor({0, 1, 0, 1, 0, -1, 0, 2}, torch::kInt64).view({4, 2});
  r.gates = torch::tensor({0.9f, 0.1f, 0.2f, 0.8f, 0.8f, 0.0f, 0.1f, 0.9f}).view({4, 2});
  const auto dropped = apply_capacity(r, 2, 3, core::DropPolicy::kProbability);
  EXPECT_EQ(dropped.item<int64_t>(), 2);
  EXPECT_TRUE(torch::equal(r.expert_idx, torch::tensor({0, 1, -1, 1, 0, -1, -1, 2}, torch::kInt64).view({4, 2})));
  EXPECT_EQ(r.gates[1][0].item<float>(), 0.0f);
}

TEST(Capacity, DropsCountExactlyByPosition) {
  Routing r;
  r.expert_idx = torch::tensor({0, 1, 0, 1, 0, -1, 0, 2}, torch::kInt64).view({4, 2});
  r.gates = torch::tensor({0.1f, 0.1f, 0.2f, 0.8f, 0.8f, 0.0f, 0.9f, 0.9f}).view({4, 2});
  EXPECT_EQ(apply_capacity(r, 1, 3, core::DropPolicy::kPosition).item<int64_t>(), 4);
  EXPECT_TRUE(torch::equal(r.expert_idx, torch::tensor({0, 1, -1, -1, -1, -1, -1, 2}, torch::kInt64).view({4, 2})));
}

TEST(Capacity, NullExpertsAreNeverDropped) {
  Routing r;
  r.expert_idx = torch::tensor({3, 3, 3}, torch::kInt64).view({3, 1});
  r.gates = torch::ones({3, 1});
  EXPECT_EQ(apply_capacity(r, 1, 3, core::DropPolicy::kPosition).item<int64_t>(), 0);
}

TEST(Capacity, Formula) {
  EXPECT_EQ(expert_capacity(1.25, 2, 100, 8), 32);  // ceil(1.25 * 200 / 8) = ceil(31.25)
  EXPECT_EQ(expert_capacity(0.0, 2, 100, 8), -1);
  EXPECT_EQ(expert_capacity(-1.0, 2, 100, 8), -1);
}

TEST(IncompleteBeta, KnownValues) {
  EXPECT_NEAR(regularized_incomplete_beta(0.3, 1, 1), 0.3, 1e-12);
  EXPECT_NEAR(regularized_incomplete_beta(0.5, 2.5, 2.5), 0.5, 1e-12);
  EXPECT_NEAR(regularized_incomplete_beta(0.2, 1, 3), 1 - std::pow(0.8, 3), 1e-12);
  EXPECT_NEAR(regularized_incomplete_beta(0.9, 3, 1), std::pow(0.9, 3), 1e-12);
}

TEST(LocMoECapacity, WorkedValuesOfAlgorithmsDoc) {
  // delta = 0.03, E = 16: d = 1024 -> 0.19, d = 4096 -> 1.14, d = 7168 -> 5.64.
  EXPECT_NEAR(locmoe_min_capacity(0.03, 1024, 16), 0.19, 0.005);
  EXPECT_NEAR(locmoe_min_capacity(0.03, 4096, 16), 1.14, 0.005);
  EXPECT_NEAR(locmoe_min_capacity(0.03, 7168, 16), 5.64, 0.005);
}

TEST(RandomRouter, ATokensExpertsDependOnItsCounterOnly) {
  // Issue 18.5: random routing was drawn from the generator in batch order, so a token's experts
  // depended on its place in its rank's batch. Now: a hash of (layer key, token counter, expert).
  for (auto kind : {RouterKind::kRandom, RouterKind::kNoisyTopK}) {
    Router r(moe_config(kind, 8, 2), 4, 0.5, /*noise_key=*/123);
    const auto x = torch::randn({6, 4});
    const auto counters = torch::tensor({40, 41, 42, 43, 44, 45}, torch::kInt64);
    const auto all = r->forward(x, {{}, counters});
    // The last three tokens alone, and the batch reversed: the same experts per token.
    const auto part = r->forward(x.narrow(0, 3, 3), {{}, counters.narrow(0, 3, 3)});
    EXPECT_TRUE(torch::equal(part.expert_idx, all.expert_idx.narrow(0, 3, 3))) << core::enum_name(kind);
    const auto flip = torch::arange(5, -1, -1, torch::kInt64);
    const auto reversed = r->forward(x.index_select(0, flip), {{}, counters.index_select(0, flip)});
    EXPECT_TRUE(torch::equal(reversed.expert_idx.index_select(0, flip), all.expert_idx)) << core::enum_name(kind);
    // Other counters draw other noise; another layer's key too.
    Router other(moe_config(kind, 8, 2), 4, 0.5, /*noise_key=*/124);
    torch::NoGradGuard g;
    for (const auto& p : r->named_parameters()) other->named_parameters()[p.key()].copy_(p.value());
    EXPECT_FALSE(torch::equal(other->forward(x, {{}, counters}).expert_idx, all.expert_idx)) << core::enum_name(kind);
  }
}

TEST(CounterRng, UniformAndNormalDrawsHaveTheirMoments) {
  const auto counters = torch::arange(20000, torch::kInt64);
  const auto u = counter_uniform(7, counters, 3);
  EXPECT_GE(u.min().item<double>(), 0.0);
  EXPECT_LT(u.max().item<double>(), 1.0);
  EXPECT_NEAR(u.mean().item<double>(), 0.5, 0.01);
  EXPECT_NEAR(u.var().item<double>(), 1.0 / 12, 0.005);
  const auto n = counter_normal(7, counters, 3);
  EXPECT_NEAR(n.mean().item<double>(), 0.0, 0.02);
  EXPECT_NEAR(n.std().item<double>(), 1.0, 0.02);
  // Columns and lanes are independent streams: no correlation between neighbours.
  const auto c = torch::corrcoef(torch::stack({u.select(1, 0), u.select(1, 1)}));
  EXPECT_LT(std::abs(c[0][1].item<double>()), 0.03);
}

}  // namespace
}  // namespace switchyard::modules
