// Fused transformer kernels: RMSNorm and rotary position embedding (RoPE), forward and backward.
// On CUDA each is one or two kernel launches where the ATen composition takes 6-20 (the step on a
// GPU is bound by the host's launches); elsewhere the ATen composition itself, differentiated by
// autograd (so CPU results are exactly those of the plain ops). Math in fp32 (fp64 stays fp64 on
// the CPU path).
#pragma once

#include <torch/torch.h>

namespace switchyard::modules::kernels {

/// y = x / sqrt(mean(x^2, last dim) + eps) * weight, in x's dtype; x [..., d], weight [d].
/// Differentiable in x and weight. CUDA kernels for fp32, bf16 and fp16 x: forward one launch
/// (keeps each row's 1/rms in fp32), backward two (dx; the weight gradient from per-chunk partial sums).
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

/// RoPE in the half-split convention on x [B, H, S, hd] (any strides, hd contiguous): for i < hd/2,
/// (x_i, x_{i+hd/2}) -> (x_i c - x_{i+hd/2} s, x_i s + x_{i+hd/2} c) with c, s = cos, sin [S', hd/2]
/// (fp32, S' >= S) at the row's position. Returns a contiguous tensor of x's dtype. Differentiable
/// in x (the backward is the rotation by the opposite angle); on CUDA one launch each way.
torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

/// RoPE as `rope`, each token at its own position: positions [B, S] int64 (rows of cos and sin). The
/// ATen composition, differentiated by autograd, on every device (documents packed with
/// data.reset_at_eod).
torch::Tensor rope_at(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                      const torch::Tensor& positions);

namespace raw {
/// {y, rstd [rows] fp32}.
std::pair<torch::Tensor, torch::Tensor> rms_norm_forward(const torch::Tensor& x, const torch::Tensor& weight, double eps);
/// {dx, dweight (fp32)} from dy, x, weight and the forward's rstd.
std::pair<torch::Tensor, torch::Tensor> rms_norm_backward(const torch::Tensor& dy, const torch::Tensor& x,
                                                          const torch::Tensor& weight, const torch::Tensor& rstd);
/// The rotation by +angle (sign 1) or -angle (sign -1).
torch::Tensor rope_rotate(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, float sign);
}  // namespace raw

}  // namespace switchyard::modules::kernels
