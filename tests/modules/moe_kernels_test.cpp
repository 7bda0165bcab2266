// The fused MoE kernels: CPU references against plain ATen formulations, gradients against finite
// differences (double), and the CUDA kernels against the CPU references (skipped without a GPU).
#include <gtest/gtest.h>

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
  // The sort narrows expert ids to uint8, int16 or int32 by the expert count; every width must give
  // the stable order of the int64 ids: experts ascending, slots ascending within an expert.
  torch::manual_seed(4);
  std::vector<torch::Device> devices{torch::kCPU};
  if (torch::cuda::is_available()) devices.emplace_back(torch::kCUDA);
  for (const auto& device : devices) {
    for (const int64_t experts : {4, 256, 257, 40000}) {
      for (const bool drop : {false, true}) {
        const int64_t tokens = 600, k = 2;
        // Ids from a few values spread over the range (repeats test the stability), the largest among them.
        auto idx = (torch::randint(0, 37, {tokens, k}, torch::kInt64) * (experts / 37 + 1)).clamp_max(experts - 1);
        idx[0][0] = experts - 1;
        if (drop) idx.masked_fill_(torch::rand({tokens, k}).lt(0.25), -1);
        const auto s = sort_slots_by_expert(idx.to(device), experts, /*every_slot_routed=*/!drop);
        const auto valid = idx.reshape({-1}).ge(0).nonzero().reshape({-1});
        const auto expected_order = std::get<1>(idx.reshape({-1}).index_select(0, valid).sort(true, 0, false));
        const std::string what = device.str() + " experts " + std::to_string(experts) + (drop ? " with drops" : "");
        EXPECT_TRUE(torch::equal(s.slot_idx.cpu(), valid.index_select(0, expected_order))) << what;
        EXPECT_TRUE(torch::equal(s.token_idx.cpu(), s.slot_idx.cpu().div(k, "floor"))) << what;
        const auto rows = rows_of_slots(s.slot_idx, tokens, k).reshape({-1}).cpu();
        EXPECT_EQ(rows.ge(0).sum().item<int64_t>(), valid.size(0)) << what;
        EXPECT_TRUE(torch::equal(rows.index_select(0, s.slot_idx.cpu()), torch::arange(valid.size(0)))) << what;
      }
    }
  }
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
