// Private: the CUDA launcher of AdamW's update (adamw_kernel.cu), declared once for optimizer.cpp and
// the definition.
#pragma once

#include <ATen/ATen.h>

namespace switchyard::trainer::cuda {

/// The scalars of one update. lr, count (the step count, already advanced), grad_scale (each gradient
/// is divided by it) and found_inf (1: no update) are read from 0-dim fp32 tensors on the parameter's
/// device where defined, else lr_value, count_value and grad_scale_value are used (found_inf: 0).
struct AdamWScalars {
  at::Tensor lr, count, grad_scale, found_inf;
  double lr_value = 0, count_value = 1, grad_scale_value = 1;
  double beta1 = 0.9, beta2 = 0.999, weight_decay = 0, eps = 1e-8;
};

/// One AdamW update of p (fp32) from g with moments m and v (fp32, contiguous, one CUDA device), in
/// one pass that also writes the updated weight into `copy` (bf16, p's shape) when it is defined.
void adamw_update(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, const at::Tensor& v,
                  const at::Tensor& copy, const AdamWScalars& scalars);

}  // namespace switchyard::trainer::cuda
