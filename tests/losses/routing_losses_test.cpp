// Each routing loss against its closed form, and its gradients against finite differences.
#include "losses/routing_losses.h"

#include <gtest/gtest.h>

#include <cmath>

#include "tests/test_util.h"

namespace switchyard::losses {
namespace {

using switchyard::testing::expect_gradients_match;
const auto kF64 = torch::kDouble;

TEST(LoadBalance, PerfectBalanceGivesAlpha) {
  const int64_t tokens = 8, experts = 4;
  const auto probs = torch::full({tokens, experts}, 1.0 / experts);
  // Two choices per token spread evenly: every expert gets 4 of 16 slots.
  const auto idx = torch::tensor({0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3}, torch::kInt64).view({tokens, 2});
  const auto loss = load_balance_loss(probs, expert_slot_counts(idx, experts), 0.01);
  EXPECT_NEAR(loss.item<double>(), 0.01, 1e-9);
}

TEST(LoadBalance, HandWorkedImbalance) {
  // 2 tokens, 2 experts, k = 1: both tokens to expert 0, P = (0.7, 0.3).
  const auto probs = torch::tensor({0.8, 0.2, 0.6, 0.4}).view({2, 2});
  const auto idx = torch::tensor({0, 0}, torch::kInt64).view({2, 1});
  // alpha * E * (f0 P0 + f1 P1) = 1 * 2 * (1 * 0.7 + 0 * 0.3) = 1.4
  EXPECT_NEAR(load_balance_loss(probs, expert_slot_counts(idx, 2), 1.0).item<double>(), 1.4, 1e-6);
}

TEST(LoadBalance, UnusedSlotsCountNowhere) {
  const auto idx = torch::tensor({0, -1, 1, -1, 1, 2}, torch::kInt64).view({3, 2});
  const auto counts = expert_slot_counts(idx, 3);
  EXPECT_TRUE(torch::equal(counts, torch::tensor({1.0f, 2.0f, 1.0f})));
}

TEST(SequenceBalance, IsTheMeanOfPerSequenceTerms) {
  torch::manual_seed(1);
  const auto probs = torch::softmax(torch::randn({3, 5, 4}), -1);
  const auto idx = std::get<1>(probs.topk(2, -1));
  double expected = 0;
  for (int b = 0; b < 3; ++b) expected += load_balance_loss(probs[b], expert_slot_counts(idx[b], 4), 0.5).item<double>();
  EXPECT_NEAR(sequence_balance_loss(probs, idx, 0.5).item<double>(), expected / 3, 1e-6);
}

TEST(ZLoss, EqualsFormula) {
  const auto logits = torch::tensor({1.0, 2.0, 3.0, -1.0, 0.0, 0.5}, kF64).view({2, 3});
  const double l0 = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  const double l1 = std::log(std::exp(-1.0) + std::exp(0.0) + std::exp(0.5));
  EXPECT_NEAR(z_loss(logits, 1e-3).item<double>(), 1e-3 * (l0 * l0 + l1 * l1) / 2, 1e-12);
}

TEST(Contrastive, FallsWhenPrototypesMoveTowardTheirTokens) {
  torch::manual_seed(3);
  const int64_t experts = 4, dim = 8, tokens = 32;
  const auto centers = torch::randn({experts, dim}, kF64);
  const auto idx = torch::arange(tokens).remainder(experts).view({tokens, 1});
  const auto x = centers.index_select(0, idx.view({-1})) + 0.3 * torch::randn({tokens, dim}, kF64);
  // The tokens' own per-expert means: where the loss wants each prototype.
  auto means = torch::zeros({experts, dim}, kF64).index_add(0, idx.view({-1}), x) / (tokens / experts);
  const auto far = torch::randn({experts, dim}, kF64);
  for (double tau : {0.07, 0.5}) {
    double previous = contrastive_loss(far, x, idx, tau, 1.0).item<double>();
    const double start = previous;
    for (double t : {0.25, 0.5, 0.75, 1.0}) {
      const auto protos = (1 - t) * far + t * means;
      const double loss = contrastive_loss(protos, x, idx, tau, 1.0).item<double>();
      EXPECT_LT(loss, previous) << "at t = " << t << ", tau = " << tau;
      previous = loss;
    }
    EXPECT_LT(previous, 0.5 * start) << "tau = " << tau;
  }
}

TEST(Contrastive, ZeroWithFewerThanTwoActiveExperts) {
  const auto idx = torch::zeros({5, 1}, torch::kInt64);
  EXPECT_EQ(contrastive_loss(torch::randn({3, 4}), torch::randn({5, 4}), idx, 0.07, 1.0).item<double>(), 0.0);
}

TEST(Locality, ClosedForm) {
  // D_c = (0.5, 0.3, 0.1, 0.1); local experts {0, 1}, eps = 0.1:
  // D_l = 0.9 * (0.5, 0.5, 0, 0) + 0.025 = (0.475, 0.475, 0.025, 0.025).
  const auto probs = torch::tensor({0.5, 0.3, 0.1, 0.1}, kF64).view({1, 4});
  const auto mask = torch::tensor({true, true, false, false});
  const double expected = 0.5 * std::log(0.5 / 0.475) + 0.3 * std::log(0.3 / 0.475) + 2 * 0.1 * std::log(0.1 / 0.025);
  EXPECT_NEAR(locality_loss(probs, mask, 0.1, 2.0).item<double>(), 2.0 * expected, 1e-12);
}

TEST(Locality, ZeroAtTheTarget) {
  const auto mask = torch::tensor({false, true, true, false});
  const auto target = torch::tensor({0.0025, 0.4975, 0.4975, 0.0025}, kF64).view({1, 4});
  EXPECT_NEAR(locality_loss(target, mask, 0.01, 1.0).item<double>(), 0.0, 1e-12);
}

TEST(BilevelBalance, PerfectBalanceGivesTheSumOfAlphas) {
  const auto node_probs = torch::full({4, 2}, 0.5);
  const auto node_idx = torch::tensor({0, 1, 0, 1}, torch::kInt64).view({4, 1});
  const auto local_probs = torch::full({4, 2}, 0.5);
  const auto local_idx = torch::tensor({0, 0, 1, 1}, torch::kInt64).view({4, 1});
  const auto b = bilevel_balance_loss(node_probs, node_idx, local_probs, local_idx, 0.01, 0.02);
  EXPECT_NEAR(b.node.item<double>(), 0.01, 1e-7);
  EXPECT_NEAR(b.local.item<double>(), 0.02, 1e-7);
}

TEST(RouterEntropy, UniformIsLogE) {
  EXPECT_NEAR(router_entropy(torch::full({3, 8}, 1.0 / 8)).item<double>(), std::log(8.0), 1e-6);
}

TEST(LossGradients, MatchFiniteDifferences) {
  torch::manual_seed(7);
  const int64_t tokens = 6, experts = 4;
  auto logits = torch::randn({tokens, experts}, kF64).requires_grad_();
  const auto idx = std::get<1>(logits.detach().topk(2, -1));
  const auto counts = expert_slot_counts(idx, experts);
  expect_gradients_match([&] { return load_balance_loss(torch::softmax(logits, -1), counts, 0.3); }, {logits}, "load_balance");
  expect_gradients_match([&] { return z_loss(logits, 0.1); }, {logits}, "z_loss");
  const auto mask = torch::tensor({true, false, true, false});
  expect_gradients_match([&] { return locality_loss(torch::softmax(logits, -1), mask, 0.05, 0.7); }, {logits}, "locality");
  expect_gradients_match([&] {
    return sequence_balance_loss(torch::softmax(logits, -1).view({2, 3, experts}), idx.view({2, 3, 2}), 0.2);
  }, {logits}, "seq_balance");
  auto protos = torch::randn({experts, 5}, kF64).requires_grad_();
  auto x = torch::randn({tokens, 5}, kF64).requires_grad_();
  expect_gradients_match([&] { return contrastive_loss(protos, x, idx, 0.5, 1.0); }, {protos, x}, "contrastive");
  auto node_logits = torch::randn({tokens, 2}, kF64).requires_grad_();
  const auto node_idx = std::get<1>(node_logits.detach().topk(1, -1));
  expect_gradients_match([&] {
    const auto b = bilevel_balance_loss(torch::softmax(node_logits, -1), node_idx, torch::softmax(logits, -1), idx, 0.1, 0.2);
    return b.node + b.local;
  }, {node_logits, logits}, "bilevel_balance");
}

}  // namespace
}  // namespace switchyard::losses
