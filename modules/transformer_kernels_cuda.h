// Private: the CUDA launchers behind transformer_kernels.h (transformer_kernels.cu), declared once for
// the dispatching code and the definitions.
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace switchyard::modules::kernels::cuda {
std::pair<at::Tensor, at::Tensor> rms_norm_forward(const at::Tensor& x, const at::Tensor& weight, double eps);
std::pair<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                                                    const at::Tensor& rstd);
at::Tensor rope_rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, float sign);
}  // namespace switchyard::modules::kernels::cuda
