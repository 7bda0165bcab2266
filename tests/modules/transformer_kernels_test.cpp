// RMSNorm and RoPE: the CPU references against autograd of the plain ops (double), and the CUDA
// kernels against the CPU (fp32 and bf16), forward and backward.
#include "modules/transformer_kernels.h"

#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "tests/test_util.h"

namespace switchyard::modules::kernels {
namespace {

using switchyard::testing::rel_l2;

TEST(TransformerKernels, RmsNormBackwardIsAutogradsOfThePlainOps) {
  torch::manual_seed(1);
  const auto x = torch::randn({7, 12}, torch::kDouble).requires_grad_();
  const auto w = (torch::rand({12}, torch::kDouble) + 0.5).requires_grad_();
  const auto dy = torch::randn({7, 12}, torch::kDouble);
  const auto y = x * torch::rsqrt(x.pow(2).mean(-1, true) + 1e-5) * w;
  y.backward(dy);
  auto [y_raw, rstd] = raw::rms_norm_forward(x.detach(), w.detach(), 1e-5);
  auto [dx, dw] = raw::rms_norm_backward(dy, x.detach(), w.detach(), rstd);
  EXPECT_LT(rel_l2(y_raw, y), 1e-12);
  EXPECT_LT(rel_l2(dx, x.grad()), 1e-12);
  EXPECT_LT(rel_l2(dw, w.grad()), 1e-12);
}

TEST(TransformerKernels, RopeBackwardIsTheOppositeRotation) {
  torch::manual_seed(2);
  const auto x = torch::randn({2, 3, 5, 8}, torch::kDouble).requires_grad_();
  const auto angles = torch::rand({6, 4}, torch::kDouble) * 6.28;
  const auto cos = angles.cos(), sin = angles.sin();
  const auto y = rope(x, cos, sin);
  const auto dy = torch::randn_like(y);
  y.backward(dy);
  EXPECT_LT(rel_l2(x.grad(), raw::rope_rotate(dy, cos, sin, -1.0f)), 1e-12);
  // A rotation keeps each pair's length.
  EXPECT_LT(rel_l2(y.detach().pow(2).sum(), x.detach().pow(2).sum()), 1e-12);
}

TEST(TransformerKernels, CudaKernelsMatchTheCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(3);
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    const double tol = dtype == torch::kFloat32 ? 1e-5 : 1e-2;
    // RMSNorm over rows of 1, 1000 and 4096 (fewer, exactly, and more than a block's threads).
    for (int64_t d : {1, 1000, 4096}) {
      const auto x_cpu = torch::randn({600, d});
      const auto w_cpu = torch::rand({d}) + 0.5;
      const auto dy_cpu = torch::randn({600, d});
      auto x = x_cpu.to(torch::kCUDA, dtype).requires_grad_(), w = w_cpu.cuda().requires_grad_();
      const auto y = rms_norm(x, w, 1e-5);
      y.backward(dy_cpu.to(torch::kCUDA, dtype));
      auto xr = x_cpu.to(dtype).to(torch::kFloat32).requires_grad_(), wr = w_cpu.clone().requires_grad_();
      const auto yr = rms_norm(xr, wr, 1e-5);
      yr.backward(dy_cpu.to(dtype).to(torch::kFloat32));
      EXPECT_LT(rel_l2(y.cpu().to(torch::kFloat32), yr), tol) << d;
      EXPECT_LT(rel_l2(x.grad().cpu().to(torch::kFloat32), xr.grad()), tol) << d;
      EXPECT_LT(rel_l2(w.grad().cpu(), wr.grad()), tol) << d;
    }
    // RoPE on a strided view (q of a packed qkv projection), as the attention calls it.
    const auto qkv_cpu = torch::randn({2, 9, 3 * 4, 16});  // [B, S, 3H, hd]
    const auto angles = torch::rand({12, 8}) * 6.28;
    const auto cos = angles.cos(), sin = angles.sin();
    auto qkv = qkv_cpu.to(torch::kCUDA, dtype).requires_grad_();
    const auto q = qkv.transpose(1, 2).narrow(1, 0, 4);
    const auto y = rope(q, cos.cuda(), sin.cuda());
    const auto dy = torch::randn({2, 4, 9, 16});
    y.backward(dy.to(torch::kCUDA, dtype));
    auto qkv_r = qkv_cpu.to(dtype).to(torch::kFloat32).requires_grad_();
    const auto yr = rope(qkv_r.transpose(1, 2).narrow(1, 0, 4), cos, sin);
    yr.backward(dy.to(dtype).to(torch::kFloat32));
    EXPECT_LT(rel_l2(y.cpu().to(torch::kFloat32), yr), tol);
    EXPECT_LT(rel_l2(qkv.grad().cpu().to(torch::kFloat32), qkv_r.grad()), tol);
  }
}

}  // namespace
}  // namespace switchyard::modules::kernels
