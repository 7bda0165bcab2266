// Transformer kernels' autograd functions and device dispatch (CUDA kernels: transformer_kernels.cu).
#include "modules/transformer_kernels.h"

#include "core/build_info.h"
#include "core/error.h"
#include "losses/routing_losses.h"
#if SWITCHYARD_WITH_CUDA
#include "modules/transformer_kernels_cuda.h"
#endif

namespace switchyard::modules::kernels {


namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

/// Where the CUDA kernels run: CUDA tensors of fp32, bf16 or fp16 (fp64 keeps the ATen ops).
bool fused(const torch::Tensor& x) {
#if SWITCHYARD_WITH_CUDA
  const auto t = x.scalar_type();
  return x.is_cuda() && (t == torch::kFloat32 || t == torch::kBFloat16 || t == torch::kHalf);
#else
  (void)x;
  return false;
#endif
}

class RmsNormFn : public torch::autograd::Function<RmsNormFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight, double eps) {
    auto [y, rstd] = raw::rms_norm_forward(x, weight, eps);
    ctx->save_for_backward({x, weight, rstd});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [dx, dw] = raw::rms_norm_backward(grads[0], saved[0], saved[1], saved[2]);
    return {dx, dw.to(saved[1].scalar_type()), torch::Tensor()};
  }
};

class RopeFn : public torch::autograd::Function<RopeFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    return raw::rope_rotate(x, cos, sin, 1.0f);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {raw::rope_rotate(grads[0], saved[0], saved[1], -1.0f), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

namespace raw {

std::pair<torch::Tensor, torch::Tensor> rms_norm_forward(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  SY_CHECK(x.size(-1) == weight.numel(), "rms_norm: x [..., ", x.size(-1), "] and weight [", weight.numel(), "] disagree");
#if SWITCHYARD_WITH_CUDA
  if (fused(x)) return cuda::rms_norm_forward(x, weight, eps);
#endif
  const auto xf = losses::at_least_fp32(x);
  const auto rstd = torch::rsqrt(xf.pow(2).mean(-1, true) + eps);
  return {(xf * rstd * weight.to(xf.scalar_type())).to(x.scalar_type()), rstd.reshape({-1})};
}

std::pair<torch::Tensor, torch::Tensor> rms_norm_backward(const torch::Tensor& dy, const torch::Tensor& x,
                                                          const torch::Tensor& weight, const torch::Tensor& rstd) {
#if SWITCHYARD_WITH_CUDA
  if (fused(x)) return cuda::rms_norm_backward(dy, x, weight, rstd);
#endif
  const int64_t d = x.size(-1);
  const auto xf = losses::at_least_fp32(x).reshape({-1, d}), g = dy.to(xf.scalar_type()).reshape({-1, d});
  const auto r = rstd.to(xf.scalar_type()).unsqueeze(1), w = weight.to(xf.scalar_type());
  const auto gw = g * w;
  const auto dx = r * gw - xf * (r.pow(3) * (gw * xf).sum(1, true) / static_cast<double>(d));
  return {dx.to(x.scalar_type()).view(x.sizes()), (g * xf * r).sum(0)};
}

torch::Tensor rope_rotate(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, float sign) {
  SY_CHECK(x.dim() == 4 && cos.dim() == 2 && x.size(2) <= cos.size(0) && 2 * cos.size(1) == x.size(3),
           "rope: x [B, H, S, hd] and cos [S', hd / 2] expected, got ", x.sizes(), " and ", cos.sizes());
#if SWITCHYARD_WITH_CUDA
  if (fused(x)) return cuda::rope_rotate(x, cos, sin, sign);
#endif
  const int64_t seq = x.size(2), half = x.size(3) / 2;
  const auto c = cos.narrow(0, 0, seq).to(x.scalar_type()), s = (sin.narrow(0, 0, seq) * sign).to(x.scalar_type());
  const auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return torch::cat({x1 * c - x2 * s, x1 * s + x2 * c}, -1);
}

}  // namespace raw

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  if (fused(x)) return RmsNormFn::apply(x, weight, eps);
  // The ATen composition, differentiated by autograd: the CPU's results as they always were.
  const auto xf = losses::at_least_fp32(x);
  const auto normed = xf * torch::rsqrt(xf.pow(2).mean(-1, true) + eps);
  return (normed * weight.to(xf.scalar_type())).to(x.scalar_type());
}

torch::Tensor rope_at(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                      const torch::Tensor& positions) {
  SY_CHECK(x.dim() == 4 && positions.dim() == 2 && positions.size(0) == x.size(0) && positions.size(1) == x.size(2),
           "rope_at: x [B, H, S, hd] and positions [B, S] expected, got ", x.sizes(), " and ", positions.sizes());
  const int64_t half = x.size(3) / 2;
  const auto rows = positions.reshape({-1}).to(cos.device());
  // [B, 1, S, hd / 2]: each token's row, broadcast over the heads.
  const auto c = cos.index_select(0, rows).view({x.size(0), 1, x.size(2), half}).to(x.scalar_type());
  const auto s = sin.index_select(0, rows).view({x.size(0), 1, x.size(2), half}).to(x.scalar_type());
  const auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return torch::cat({x1 * c - x2 * s, x1 * s + x2 * c}, -1);
}

torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  if (fused(x)) return RopeFn::apply(x, cos, sin);
  return raw::rope_rotate(x, cos, sin, 1.0f);
}

}  // namespace switchyard::modules::kernels
