// Private: the CUDA launchers behind moe_kernels.h (moe_kernels.cu), declared once for the
// dispatching code and the definitions.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

namespace switchyard::modules::kernels::cuda {
at::Tensor gather_sum(const at::Tensor& rows, const at::Tensor& scale, const at::Tensor& row_of_slot);
std::pair<at::Tensor, at::Tensor> unpermute_backward(const at::Tensor& grad_y, const at::Tensor& rows,
                                                     const at::Tensor& gates, const at::Tensor& token_idx);
at::Tensor swiglu_forward(const at::Tensor& h);
at::Tensor swiglu_backward(const at::Tensor& grad_out, const at::Tensor& h);
void expert_weight_grad(const at::Tensor& x, const at::Tensor& dy, const std::vector<int64_t>& counts, at::Tensor& grad,
                        bool accumulate);
at::Tensor sum_in_fp32(const at::Tensor& a, const at::Tensor& b);
at::Tensor expert_input_grad(const at::Tensor& dy, const at::Tensor& w, const std::vector<int64_t>& counts);
std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_topk(const at::Tensor& logits, int64_t k, bool normalize);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> counting_sort_slots(const at::Tensor& expert_idx,
                                                                                           int64_t num_experts);
}  // namespace switchyard::modules::kernels::cuda
