// The fused MoE kernels: CPU references against plain ATen formulations, gradients against finite
// differences (double), and the CUDA kernels against the CPU references (skipped without a GPU).
#include <gtest/gtest.h>

#include <limits>

#include "modules/moe_kernels.h"
#include "modules/token_dispatcher.h"
#include "tests/test_util.h"

namespace switchyard::modules::kernels {
namespace {

using switchyard::testing::expect_gradients_match;
using switchyard::testing::rel_l2;

/// A routing of `tokens` x k slots to `experts` experts, some slots skipped (-1) when `drop`.
struct Routing {
  SortedSlots slots;
  torch::Tensor row_of_slot;
};
Routing make_routing(int64_t tokens, int64_t k, int64_t experts, bool drop) {
  auto idx = torch::randint(0, experts, {tokens, k}, torch::kInt64);
  if (drop) idx.masked_fill_(torch::rand({tokens, k}).lt(0.25), -1);
  Routing r;
  r.slots = sort_slots_by_expert(idx, experts);
  r.row_of_slot = rows_of_slots(r.slots.slot_idx, tokens, k);
  return r;
}

TEST(MoeKernels, RowsOfSlotsInvertsTheSort) {
  torch::manual_seed(1);
  const auto r = make_routing(9, 3, 4, true);
  const auto flat = r.row_of_slot.view({-1});
  for (int64_t s = 0; s < r.slots.slot_idx.size(0); ++s) {
    EXPECT_EQ(flat[r.slots.slot_idx[s].item<int64_t>()].item<int64_t>(), s);
  }
  EXPECT_EQ(flat.ge(0).sum().item<int64_t>(), r.slots.slot_idx.size(0));
}

TEST(MoeKernels, SlotsSortStablyByExpertWhateverTheKeyWidth) {
  // The ATen path narrows expert ids to uint8, int16 or int32 by the expert count, and CUDA sorts
  // every-slot-routed ids of up to 1,024 experts with the counting sort (several chunks and tiles at
  // 3,000 x 6 slots): each must give the stable order of the int64 ids (experts ascending, slots
  // ascending within an expert), each slot's row and the rows per expert.
  torch::manual_seed(4);
  std::vector<torch::Device> devices{torch::kCPU};
  if (torch::cuda::is_available()) devices.emplace_back(torch::kCUDA);
  for (const auto& device : devices) {
    for (const int64_t experts : {4, 64, 256, 257, 1024, 40000}) {
      for (const auto& [tokens, k] : {std::pair<int64_t, int64_t>{600, 2}, {3000, 6}}) {
        for (const bool drop : {false, true}) {
          // Ids from a few values spread over the range (repeats test the stability), the largest among them.
          auto idx = (torch::randint(0, 37, {tokens, k}, torch::kInt64) * (experts / 37 + 1)).clamp_max(experts - 1);
          idx[0][0] = experts - 1;
          if (drop) idx.masked_fill_(torch::rand({tokens, k}).lt(0.25), -1);
          const auto s = sort_slots_by_expert(idx.to(device), experts, /*every_slot_routed=*/!drop);
          const auto flat = idx.reshape({-1});
          const auto valid = flat.ge(0).nonzero().reshape({-1});
          const auto expected_order = std::get<1>(flat.index_select(0, valid).sort(true, 0, false));
          const std::string what = device.str() + " experts " + std::to_string(experts) + " slots " +
                                   std::to_string(tokens * k) + (drop ? " with drops" : "");
          EXPECT_TRUE(torch::equal(s.slot_idx.cpu(), valid.index_select(0, expected_order))) << what;
          EXPECT_TRUE(torch::equal(s.token_idx.cpu(), s.slot_idx.cpu().div(k, "floor"))) << what;
          const auto rows = s.row_of_slot.reshape({-1}).cpu();
          EXPECT_EQ(rows.ge(0).sum().item<int64_t>(), valid.size(0)) << what;
          EXPECT_TRUE(torch::equal(rows.index_select(0, s.slot_idx.cpu()), torch::arange(valid.size(0)))) << what;
          EXPECT_TRUE(torch::equal(s.counts.cpu(), torch::bincount(flat.index_select(0, valid), {}, experts))) << what;
        }
      }
    }
  }
}

/// softmax, topk, renormalize: the ATen composition softmax_topk stands for, differentiated by autograd.
std::vector<torch::Tensor> softmax_topk_reference(const torch::Tensor& logits, int64_t k, bool normalize) {
  const auto probs = torch::softmax(logits, -1);
  auto [top_p, idx] = probs.topk(k, -1);
  return {normalize ? top_p / top_p.sum(-1, true).clamp_min(1e-20) : top_p, probs, idx};
}

TEST(MoeKernels, SoftmaxTopKGradientsAreAutogradsOfSoftmaxThenTopK) {
  // The CUDA kernel's backward (raw::softmax_topk_backward, ATen ops) against autograd of the ATen
  // composition, in double on the CPU; softmax_topk's CPU path against finite differences.
  torch::manual_seed(12);
  for (const bool normalize : {true, false}) {
    for (const int64_t k : {1, 2, 5}) {
      const auto logits = torch::randn({40, 7}, torch::kDouble);
      const auto probe_gates = torch::randn({40, k}, torch::kDouble), probe_probs = torch::randn({40, 7}, torch::kDouble);
      const std::string what = "k " + std::to_string(k) + (normalize ? " renormalized" : "");
      const auto [gates, probs, idx] = raw::softmax_topk_forward(logits, k, normalize);
      const auto l = logits.clone().requires_grad_();
      const auto ref = softmax_topk_reference(l, k, normalize);
      ((ref[0] * probe_gates).sum() + (ref[1] * probe_probs).sum()).backward();
      EXPECT_TRUE(torch::allclose(gates, ref[0].detach(), 1e-14, 0)) << what << " gates";
      EXPECT_TRUE(torch::allclose(probs, ref[1].detach(), 1e-14, 0)) << what << " probs";
      EXPECT_TRUE(torch::equal(idx, ref[2])) << what << " expert ids";
      EXPECT_LT(rel_l2(raw::softmax_topk_backward(probe_gates, probe_probs, gates, probs, idx, normalize), l.grad()), 1e-12)
          << what;
      // Through the gates alone (the probs' gradient undefined, as when no balance loss reads them).
      // Absolute tolerance too: with k = 1 renormalized the gate is 1 and the gradient 0 up to rounding.
      const auto l_gates = logits.clone().requires_grad_();
      (softmax_topk_reference(l_gates, k, normalize)[0] * probe_gates).sum().backward();
      EXPECT_TRUE(torch::allclose(raw::softmax_topk_backward(probe_gates, {}, gates, probs, idx, normalize),
                                  l_gates.grad(), 1e-10, 1e-14))
          << what << " through the gates";
      const auto l_fd = logits.clone().requires_grad_();
      expect_gradients_match([&] { return (softmax_topk(l_fd, k, normalize)[0] * probe_gates).sum(); }, {l_fd}, what);
    }
  }
}

TEST(MoeKernels, CudaSoftmaxTopKMatchesTheCpuReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(13);
  // E across the lane layouts (1, 2, 4 and 8 per lane; not a multiple of 32), k up to 8.
  for (const int64_t experts : {8, 33, 64, 160, 256}) {
    for (const int64_t k : {1, 2, 6}) {
      const auto logits = torch::randn({517, experts}) * 3;
      const auto probe_gates = torch::randn({517, k}), probe_probs = torch::randn({517, experts});
      ASSERT_TRUE(softmax_topk_fused(logits.cuda(), k));
      std::vector<torch::Tensor> grads;
      std::vector<std::vector<torch::Tensor>> outs;
      for (const auto device : {torch::kCUDA, torch::kCPU}) {
        const auto l = logits.to(device).requires_grad_();
        const auto out = softmax_topk(l, k, true);
        ((out[0] * probe_gates.to(device)).sum() + (out[1] * probe_probs.to(device)).sum()).backward();
        grads.push_back(l.grad().cpu());
        outs.push_back({out[0].cpu(), out[1].cpu(), out[2].cpu()});
      }
      const std::string what = "experts " + std::to_string(experts) + " k " + std::to_string(k);
      EXPECT_TRUE(torch::equal(outs[0][2], outs[1][2])) << what << " expert ids";
      EXPECT_LT(rel_l2(outs[0][0], outs[1][0]), 1e-6) << what << " gates";
      EXPECT_LT(rel_l2(outs[0][1], outs[1][1]), 1e-6) << what << " probs";
      EXPECT_LT(rel_l2(grads[0], grads[1]), 1e-5) << what << " logits gradient";
    }
  }
  // A row with a NaN logit (a diverged step): valid, distinct expert ids (the dispatch reads rows by
  // them) and NaN gates, the other rows untouched.
  auto logits = torch::randn({4, 40});
  logits[2][7] = std::numeric_limits<float>::quiet_NaN();
  const auto out = softmax_topk(logits.cuda(), 3, true);
  const auto ids = out[2].cpu();
  EXPECT_TRUE(torch::equal(ids[2], torch::arange(3))) << "the NaN row's picks are the lowest ids";
  EXPECT_TRUE(out[0].cpu()[2].isnan().all().item<bool>());
  EXPECT_FALSE(out[0].cpu()[1].isnan().any().item<bool>());
  EXPECT_TRUE(torch::equal(ids[1], std::get<1>(torch::softmax(logits[1], -1).topk(3))));
}

TEST(MoeKernels, PermuteAndUnpermuteEqualGatherAndIndexAdd) {
  torch::manual_seed(2);
  const int64_t T = 11, k = 3, d = 5;
  const auto r = make_routing(T, k, 4, true);
  const auto x = torch::randn({T, d});
  const auto rows = permute(x, r.slots.token_idx, r.row_of_slot);
  EXPECT_TRUE(torch::equal(rows, x.index_select(0, r.slots.token_idx)));
  const auto gates = torch::rand({rows.size(0)});
  const auto y = unpermute(rows, gates, r.slots.token_idx, r.row_of_slot);
  const auto expected = torch::zeros({T, d}).index_add(0, r.slots.token_idx, rows * gates.unsqueeze(1));
  EXPECT_LT(rel_l2(y, expected), 1e-6);
  const auto summed = sum_rows(rows, r.slots.token_idx, r.row_of_slot);
  EXPECT_LT(rel_l2(summed, torch::zeros({T, d}).index_add(0, r.slots.token_idx, rows)), 1e-6);
}

TEST(MoeKernels, GradientsMatchFiniteDifferences) {
  torch::manual_seed(3);
  const int64_t T = 6, k = 2, d = 4;
  const auto r = make_routing(T, k, 3, true);
  const auto x = torch::randn({T, d}, torch::kDouble).requires_grad_();
  const auto gates = torch::rand({r.slots.token_idx.size(0)}, torch::kDouble).requires_grad_();
  const auto probe = torch::randn({T, d}, torch::kDouble);
  expect_gradients_match(
      [&] {
        const auto rows = permute(x, r.slots.token_idx, r.row_of_slot);
        return (unpermute(rows.pow(2), gates, r.slots.token_idx, r.row_of_slot) * probe).sum();
      },
      {x, gates}, "permute + unpermute");
  expect_gradients_match(
      [&] {
        const auto rows = permute(x, r.slots.token_idx, r.row_of_slot);
        return (sum_rows(rows.pow(2), r.slots.token_idx, r.row_of_slot) * probe).sum();
      },
      {x}, "permute + sum_rows");
  const auto h = torch::randn({5, 6}, torch::kDouble).requires_grad_();
  const auto probe_h = torch::randn({5, 3}, torch::kDouble);
  expect_gradients_match([&] { return (swiglu(h) * probe_h).sum(); }, {h}, "swiglu");
  const auto g = h.narrow(1, 0, 3), u = h.narrow(1, 3, 3);
  EXPECT_LT(rel_l2(swiglu(h), torch::silu(g) * u), 1e-12);
}

TEST(MoeKernels, CudaKernelsMatchTheCpuReferences) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(4);
  // d = 64 takes the 16-byte vector path, d = 13 the scalar path; bf16 and fp32.
  for (const int64_t d : {64, 13}) {
    for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
      const double tol = dtype == torch::kFloat32 ? 1e-6 : 1e-2;
      const std::string what = "d " + std::to_string(d) + (dtype == torch::kFloat32 ? " fp32" : " bf16");
      const int64_t T = 37, k = 3;
      const auto r = make_routing(T, k, 5, true);
      const int64_t S = r.slots.token_idx.size(0);
      const auto rows = torch::randn({S, d}).to(dtype);
      const auto gates = torch::rand({S});
      const auto cuda = torch::kCUDA;
      auto cmp = [&](const torch::Tensor& gpu, const torch::Tensor& cpu, const char* name) {
        EXPECT_LT(rel_l2(gpu.to(torch::kCPU, torch::kFloat32), cpu.to(torch::kFloat32)), tol) << what << " " << name;
      };
      cmp(raw::gather_sum(rows.to(cuda), gates.to(cuda), r.row_of_slot.to(cuda)),
          raw::gather_sum(rows, gates, r.row_of_slot), "gather_sum");
      cmp(raw::gather_sum(rows.to(cuda), {}, r.row_of_slot.to(cuda)), raw::gather_sum(rows, {}, r.row_of_slot),
          "gather_sum unscaled");
      const auto x = torch::randn({T, d}).to(dtype);
      EXPECT_TRUE(torch::equal(permute(x.to(cuda), r.slots.token_idx.to(cuda), r.row_of_slot.to(cuda)).cpu(),
                               x.index_select(0, r.slots.token_idx)))
          << what << " permute is a copy";
      const auto grad_y = torch::randn({T, d}).to(dtype);
      const auto [gr, gg] = raw::unpermute_backward(grad_y.to(cuda), rows.to(cuda), gates.to(cuda), r.slots.token_idx.to(cuda));
      const auto [cr, cg] = raw::unpermute_backward(grad_y, rows, gates, r.slots.token_idx);
      cmp(gr, cr, "unpermute_backward rows");
      cmp(gg, cg, "unpermute_backward gates");
      const auto h = torch::randn({S, 2 * d}).to(dtype);
      const auto go = torch::randn({S, d}).to(dtype);
      cmp(raw::swiglu_forward(h.to(cuda)), raw::swiglu_forward(h), "swiglu_forward");
      cmp(raw::swiglu_backward(go.to(cuda), h.to(cuda)), raw::swiglu_backward(go, h), "swiglu_backward");
    }
  }
}

TEST(MoeKernels, CudaExpertWeightGradMatchesTheCpuReference) {
  // cuBLAS per expert, writing (beta 0) or accumulating (beta 1) into bf16 and fp32 gradients, with an
  // expert that has no rows (its gradient must be zeroed when writing, untouched when accumulating).
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(9);
  const std::vector<int64_t> counts = {5, 0, 17, 9};
  const int64_t S = 31, K = 24, N = 40;
  const auto x = torch::randn({S, K}).to(torch::kBFloat16), dy = torch::randn({S, N}).to(torch::kBFloat16);
  for (const auto grad_dtype : {torch::kBFloat16, torch::kFloat32}) {
    for (const bool accumulate : {false, true}) {
      const auto start = torch::randn({4, K, N}).to(grad_dtype);
      auto cpu = start.clone(), gpu = start.to(torch::kCUDA);
      raw::expert_weight_grad(x, dy, counts, cpu, accumulate);
      raw::expert_weight_grad(x.to(torch::kCUDA), dy.to(torch::kCUDA), counts, gpu, accumulate);
      const std::string what = std::string(grad_dtype == torch::kFloat32 ? "fp32" : "bf16") +
                               (accumulate ? " accumulate" : " write");
      EXPECT_LT(rel_l2(gpu.to(torch::kCPU, torch::kFloat32), cpu.to(torch::kFloat32)), 1e-2) << what;
      if (accumulate) EXPECT_TRUE(torch::equal(gpu[1].cpu(), start[1])) << what;
      else EXPECT_EQ(gpu[1].abs().max().item<double>(), 0.0) << what;
    }
  }
}

TEST(MoeKernels, ExpertInputGradIsTheGroupedGemmsInputGradient) {
  // dx_e = dy_e w_e^T against autograd's gradient of the per-expert products x_e w_e, with an expert
  // that has no rows.
  torch::manual_seed(10);
  const std::vector<int64_t> counts = {6, 0, 11, 4};
  const int64_t S = 21, K = 12, N = 20;
  const auto w = torch::randn({4, K, N}, torch::kFloat64);
  const auto x = torch::randn({S, K}, torch::kFloat64).requires_grad_();
  const auto dy = torch::randn({S, N}, torch::kFloat64);
  std::vector<torch::Tensor> parts;
  int64_t offset = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    parts.push_back(x.narrow(0, offset, counts[e]).mm(w[static_cast<int64_t>(e)]));
    offset += counts[e];
  }
  (torch::cat(parts, 0) * dy).sum().backward();
  EXPECT_LT(rel_l2(raw::expert_input_grad(dy, w, counts), x.grad()), 1e-12);
  EXPECT_THROW(raw::expert_input_grad(dy, w, {6, 0, 11, 5}), std::exception);  // counts past dy's rows
}

TEST(MoeKernels, CudaExpertInputGradMatchesTheCpuReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(11);
  const std::vector<int64_t> counts = {5, 0, 17, 9};
  const auto dy = torch::randn({31, 40}).to(torch::kBFloat16), w = torch::randn({4, 24, 40}).to(torch::kBFloat16);
  const auto cpu = raw::expert_input_grad(dy, w, counts);
  const auto gpu = raw::expert_input_grad(dy.to(torch::kCUDA), w.to(torch::kCUDA), counts);
  EXPECT_LT(rel_l2(gpu.to(torch::kCPU, torch::kFloat32), cpu.to(torch::kFloat32)), 1e-2);
}

}  // namespace
}  // namespace switchyard::modules::kernels
