// The modules on CUDA (fp32 and bf16) against the fp32 CPU results. Skipped without a GPU.
// Weights and inputs are rounded to bf16 first, so both sides route the same tokens to the same
// experts and only the arithmetic differs. Tolerances (relative L2): fp32 1e-4, bf16 2e-2.
#include <gtest/gtest.h>

#include "runtime/autocast.h"
#include "runtime/cuda_graph.h"
#include "modules/moe_layer.h"
#include "modules/router.h"
#include "modules/transformer.h"
#include "tests/test_util.h"

namespace switchyard::modules {
namespace {

using switchyard::testing::rel_l2;

void round_to_bf16(torch::nn::Module& m) {
  torch::NoGradGuard guard;
  for (auto& p : m.parameters()) p.copy_(p.to(torch::kBFloat16).to(torch::kFloat32));
}

/// fp32 values that bf16 represents exactly.
torch::Tensor bf16_values(at::IntArrayRef shape) {
  return torch::randn(shape).to(torch::kBFloat16).to(torch::kFloat32);
}

/// An MoE layer of 8 experts (d 64, hidden 128; top-1 for the bilevel router, else top-2) with
/// bf16-representable weights.
MoELayer small_layer(core::RouterKind router, int64_t shared_experts) {
  core::ModelConfig cfg;
  cfg.d_model = 64;
  cfg.moe.num_experts = 8;
  cfg.moe.top_k = router == core::RouterKind::kBilevel ? 1 : 2;
  cfg.moe.router.kind = router;
  cfg.moe.router.groups = 2;
  cfg.moe.ffn_hidden = 128;
  cfg.moe.shared_experts = shared_experts;
  cfg.init_std = 0.05;
  MoELayer layer(cfg, core::LossesConfig{}, 0, 3);
  round_to_bf16(*layer);
  return layer;
}

struct DeviceCase {
  torch::Dtype dtype;
  double tol;
  const char* name;
};
const DeviceCase kCases[] = {{torch::kFloat32, 1e-4, "fp32"}, {torch::kBFloat16, 2e-2, "bf16"}};

class GpuModules : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(GpuModules, MoELayerMatchesCpuValuesAndGradients) {
  for (auto router : {core::RouterKind::kTopK, core::RouterKind::kBilevel, core::RouterKind::kSigmoidBias}) {
    for (const auto& c : kCases) {
      torch::manual_seed(5);
      auto layer = small_layer(router, /*shared_experts=*/1);
      const auto x_cpu = bf16_values({512, 64}).requires_grad_();
      const auto probe = bf16_values({512, 64});
      auto ref = layer->forward(x_cpu);
      (ref.y * probe).sum().backward();
      std::vector<torch::Tensor> ref_grads;
      for (const auto& p : layer->parameters()) ref_grads.push_back(p.grad().clone());
      layer->zero_grad();

      layer->to(torch::kCUDA, c.dtype);
      const auto x = x_cpu.detach().to(torch::kCUDA, c.dtype).requires_grad_();
      auto out = layer->forward(x);
      (out.y * probe.to(torch::kCUDA, c.dtype)).sum().backward();
      const std::string what = std::string(core::enum_name(router)) + " " + c.name;
      EXPECT_LT(rel_l2(out.y, ref.y), c.tol) << what;
      EXPECT_LT(rel_l2(x.grad(), x_cpu.grad()), c.tol) << what;
      const auto params = layer->named_parameters();
      for (size_t i = 0; i < params.size(); ++i) {
        EXPECT_LT(rel_l2(params[i].value().grad(), ref_grads[i]), c.tol) << what << " " << params[i].key();
      }
    }
  }
}

TEST_F(GpuModules, AutocastGroupedExpertsAccumulateGradientsInPlace) {
  // fp32 master weights under bf16 autocast take the grouped GEMMs, whose weight gradients the GEMMs
  // write into the fp32 .grad themselves; two backward passes must accumulate to twice the CPU
  // gradient, and gradients reset to undefined must be recreated.
  torch::manual_seed(8);
  auto layer = small_layer(core::RouterKind::kTopK, /*shared_experts=*/0);
  const auto x_cpu = bf16_values({512, 64}).requires_grad_();
  const auto probe = bf16_values({512, 64});
  (layer->forward(x_cpu).y * probe).sum().backward();
  std::vector<torch::Tensor> ref_grads;
  for (const auto& p : layer->parameters()) ref_grads.push_back(p.grad().clone());
  layer->zero_grad();
  layer->to(torch::kCUDA);
  for (const bool reset : {false, true}) {
    for (auto& p : layer->parameters()) p.mutable_grad() = reset ? torch::Tensor() : torch::zeros_like(p);
    const auto x = x_cpu.detach().to(torch::kCUDA).requires_grad_();
    for (int pass = 0; pass < 2; ++pass) {
      runtime::Bf16Autocast autocast(true);
      (layer->forward(x).y * probe.to(torch::kCUDA)).sum().backward();
    }
    const auto params = layer->named_parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      const auto& g = params[i].value().grad();
      ASSERT_TRUE(g.defined()) << params[i].key();
      EXPECT_EQ(g.scalar_type(), torch::kFloat32) << params[i].key();
      EXPECT_LT(rel_l2(g, 2 * ref_grads[i]), 2e-2) << params[i].key() << (reset ? " from undefined" : " from zeros");
    }
  }
}

TEST_F(GpuModules, LayerCapturedInACudaGraphGivesEachReplaysGradients) {
  // The training step's CUDA graph (train.cuda_graph): a captured forward and backward takes the
  // experts' grouped weight gradients (no host counts). Replayed with new values in its input buffer,
  // it must give that input's CPU gradients: the graph reads the buffer, not the values at capture.
  // Captured with 1, 2 and 3 backwards (micro-batches) and the experts' flush after them: the first
  // weight gradient waits bf16 (the flush adds it alone), the second is summed with it into .grad,
  // the third added to .grad.
  torch::manual_seed(9);
  auto layer = small_layer(core::RouterKind::kTopK, /*shared_experts=*/1);
  const std::vector<torch::Tensor> xs = {bf16_values({512, 64}), bf16_values({512, 64})};
  const auto probe = bf16_values({512, 64});
  std::vector<std::vector<torch::Tensor>> refs;
  for (const auto& x_cpu : xs) {
    layer->zero_grad();
    (layer->forward(x_cpu).y * probe).sum().backward();
    refs.emplace_back();
    for (const auto& p : layer->parameters()) refs.back().push_back(p.grad().clone());
  }
  layer->to(torch::kCUDA);
  runtime::OwnStream stream(torch::Device(torch::kCUDA, 0));
  const auto x = xs[0].to(torch::kCUDA), probe_cuda = probe.to(torch::kCUDA);
  for (int passes = 1; passes <= 3; ++passes) {
    const auto step = [&] {
      for (int pass = 0; pass < passes; ++pass) {
        runtime::Bf16Autocast autocast(true);
        (layer->forward(x).y * probe_cuda).sum().backward();
      }
      layer->experts->flush_gradients();
    };
    for (auto& p : layer->parameters()) p.mutable_grad() = torch::Tensor();
    step();  // eager warm-up on the capture stream
    for (auto& p : layer->parameters()) p.mutable_grad() = torch::Tensor();
    runtime::CudaGraph graph;
    ASSERT_NO_THROW(graph.capture(step));
    for (size_t i = 0; i < xs.size(); ++i) {
      x.copy_(xs[i]);
      graph.replay();
      const auto params = layer->named_parameters();
      for (size_t j = 0; j < params.size(); ++j) {
        const auto& g = params[j].value().grad();
        ASSERT_TRUE(g.defined()) << passes << " passes, " << params[j].key();
        EXPECT_EQ(g.scalar_type(), torch::kFloat32) << params[j].key();
        EXPECT_LT(rel_l2(g, passes * refs[i][j]), 2e-2) << passes << " passes, replay " << i << " " << params[j].key();
      }
    }
  }
}

TEST_F(GpuModules, RouterLogitsFromBf16ActivationsKeepFp32Accuracy) {
  // bf16 x on CUDA takes bf16 GEMMs with fp32 accumulation and fp32 operands split into two bf16
  // terms: logits and the gate's gradient must match double precision to ~1e-5 (casting the fp32
  // gate or the logits' gradient to bf16 instead would give ~2e-3); x's gradient is bf16.
  torch::manual_seed(12);
  const auto x64 = bf16_values({300, 64}).to(torch::kFloat64);
  const auto g64 = torch::randn({300, 8}, torch::kFloat64);
  for (const auto w_dtype : {torch::kFloat32, torch::kBFloat16}) {
    const auto w64 = torch::randn({8, 64}, torch::kFloat64).to(w_dtype).to(torch::kFloat64).requires_grad_();
    const auto x_ref = x64.clone().requires_grad_();
    const auto ref = router_logits(x_ref, w64);
    (ref * g64).sum().backward();
    const auto w = w64.detach().to(torch::kCUDA, w_dtype).requires_grad_();
    const auto x = x64.to(torch::kCUDA, torch::kBFloat16).requires_grad_();
    const auto logits = router_logits(x, w);
    (logits * g64.to(torch::kCUDA, torch::kFloat32)).sum().backward();
    const std::string what = w_dtype == torch::kFloat32 ? "fp32 gate" : "bf16 gate";
    EXPECT_EQ(logits.scalar_type(), torch::kFloat32) << what;
    EXPECT_LT(rel_l2(logits, ref), 1e-5) << what;
    // A bf16 gate's gradient is bf16 (its rounding, ~2e-3, is the whole error).
    EXPECT_LT(rel_l2(w.grad(), w64.grad()), w_dtype == torch::kFloat32 ? 1e-5 : 5e-3) << what;
    EXPECT_EQ(x.grad().scalar_type(), torch::kBFloat16) << what;
    EXPECT_LT(rel_l2(x.grad(), x_ref.grad()), 5e-3) << what;
  }
}

TEST_F(GpuModules, TransformerLogitsMatchCpu) {
  for (const auto& c : kCases) {
    torch::manual_seed(6);
    core::ModelConfig cfg;
    cfg.vocab_size = 256;
    cfg.d_model = 64;
    cfg.n_layers = 2;
    cfg.n_heads = 4;
    cfg.seq_len = 64;
    cfg.moe.num_experts = 8;
    cfg.moe.ffn_hidden = 64;
    TransformerLM lm(cfg, core::LossesConfig{}, 1);
    round_to_bf16(*lm);
    const auto tokens = torch::randint(0, 256, {4, 64}, torch::kInt64);
    const auto ref = lm->forward(tokens).logits;
    lm->to(torch::kCUDA, c.dtype);
    const auto out = lm->forward(tokens.to(torch::kCUDA)).logits;
    EXPECT_LT(rel_l2(out, ref), c.tol) << c.name;
  }
}

}  // namespace
}  // namespace switchyard::modules
