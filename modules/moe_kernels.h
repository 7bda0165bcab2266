// Fused MoE kernels: softmax top-k routing, the counting sort of slots by expert, permute (token rows
// to expert order), un-permute with gate weighting, SwiGLU.
// Each has a CUDA kernel (moe_kernels.cu, built with SWITCHYARD_WITH_CUDA) and a CPU reference made of
// plain ATen ops; the differentiable entry points pick the kernel by device. No host
// synchronization: all shapes are known on the host.
//
// Slot layout, shared by all three: a routing of T tokens with k slots each gives S dispatched rows
// in expert order; token_idx [S] is each row's token and row_of_slot [T, k] each slot's row (-1 for a
// slot that goes to no expert here).
#pragma once

#include <torch/torch.h>

#include <tuple>
#include <vector>

#include "modules/moe_kernel_limits.h"

namespace switchyard::modules::kernels {

/// rows [S, d] = x[token_idx]. Backward: grad_x[t] = sum over t's slots of grad_rows[row] (a gather,
/// no atomics, deterministic).
torch::Tensor permute(const torch::Tensor& x, const torch::Tensor& token_idx, const torch::Tensor& row_of_slot);

/// y [T, d] with y[t] = sum over t's slots of gates[row] * rows[row], accumulated in fp32, in the dtype
/// of `rows`; gates [S] (any float dtype). Differentiable in rows and gates.
torch::Tensor unpermute(const torch::Tensor& rows, const torch::Tensor& gates, const torch::Tensor& token_idx,
                        const torch::Tensor& row_of_slot);

/// y [T, d] with y[t] = sum over t's slots of rows[row], accumulated in fp32, in the dtype of `rows`
/// (unpermute without gates). Backward: grad_rows = grad_y[token_idx] (a gather, no atomics).
torch::Tensor sum_rows(const torch::Tensor& rows, const torch::Tensor& token_idx, const torch::Tensor& row_of_slot);

/// h [N, 2f] (gate | up) -> silu(gate) * up [N, f], with a fused backward that keeps only h.
torch::Tensor swiglu(const torch::Tensor& h);

/// row_of_slot [T, k] from the rows' flat slot indices slot_idx [S] (t * k + j).
torch::Tensor rows_of_slots(const torch::Tensor& slot_idx, int64_t num_tokens, int64_t k);

/// Softmax top-k routing of logits [T, E]: {gates [T, k], probs [T, E], expert_idx [T, k] int64}, the k
/// largest probabilities largest first, gates renormalized to sum to 1 when `normalize`.
/// Differentiable in logits through gates and probs: where softmax_topk_fused() holds, one CUDA kernel
/// with raw::softmax_topk_backward as its gradient; elsewhere ATen's softmax, topk and division,
/// differentiated by autograd.
std::vector<torch::Tensor> softmax_topk(const torch::Tensor& logits, int64_t k, bool normalize);
/// Whether softmax_topk runs its CUDA kernel: fp32 CUDA logits, E <= 256, k <= 32.
bool softmax_topk_fused(const torch::Tensor& logits, int64_t k);

// The non-differentiable pieces, exposed for tests (CUDA kernel on CUDA tensors, ATen reference on CPU).
namespace raw {
/// out [T, d] (dtype of rows), out[t] = sum_j scale[r] * rows[r] over r = row_of_slot[t, j] >= 0, in
/// fp32; scale [S] may be undefined (1).
torch::Tensor gather_sum(const torch::Tensor& rows, const torch::Tensor& scale, const torch::Tensor& row_of_slot);
/// grad_rows[s] = gates[s] * grad_y[token_idx[s]]; grad_gates[s] = <grad_y[token_idx[s]], rows[s]>.
std::pair<torch::Tensor, torch::Tensor> unpermute_backward(const torch::Tensor& grad_y, const torch::Tensor& rows,
                                                           const torch::Tensor& gates, const torch::Tensor& token_idx);
torch::Tensor swiglu_forward(const torch::Tensor& h);
torch::Tensor swiglu_backward(const torch::Tensor& grad_out, const torch::Tensor& h);
/// The weight gradient of a grouped GEMM, written into the gradient buffer by the GEMMs themselves:
/// grad[e] += x_e^T dy_e (grad[e] = ... when !accumulate) over expert e's rows, `counts` on the host.
/// x [S, K] and dy [S, N] of one dtype; grad [E, K, N] contiguous, that dtype or fp32 (fp32 master
/// gradients take bf16 products in fp32, as Megatron's gradient-accumulation fusion). On CUDA one
/// cuBLAS GEMM per expert with beta = 1: the separate read-add-write of the gradient is gone.
void expert_weight_grad(const torch::Tensor& x, const torch::Tensor& dy, const std::vector<int64_t>& counts,
                        torch::Tensor& grad, bool accumulate);
/// a + b summed in fp32 (a and b of one shape and dtype): one pass, where a.to(fp32) + b reads and
/// writes an fp32 temporary. On CUDA 16-byte accesses.
torch::Tensor sum_in_fp32(const torch::Tensor& a, const torch::Tensor& b);
/// The input gradient of a grouped GEMM: dx [S, K] with dx_e = dy_e w_e^T over expert e's rows,
/// `counts` on the host; dy [S, N] and w [E, K, N] of one dtype. On CUDA one cuBLAS GEMM per expert.
torch::Tensor expert_input_grad(const torch::Tensor& dy, const torch::Tensor& w, const std::vector<int64_t>& counts);
/// softmax_topk's forward: {gates, probs, expert_idx}. Where softmax_topk_fused() holds the CUDA
/// kernel (ties: the lower expert id first; no autograd); elsewhere ATen's softmax, topk and division.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> softmax_topk_forward(const torch::Tensor& logits, int64_t k,
                                                                             bool normalize);
/// The kernel's gradient in the logits from those of gates and probs (either undefined: zero), in
/// ATen ops on either device. With s the sum of the picked p when renormalized (g = p / s):
/// dL/dp_m = dL/dp_m (through probs) + [m picked] (dL/dg_m - sum_j dL/dg_j g_j) / s, then the softmax
/// backward dL/dlogits = p (dL/dp - <dL/dp, p>); s below the 1e-20 floor acts as a constant.
torch::Tensor softmax_topk_backward(const torch::Tensor& grad_gates, const torch::Tensor& grad_probs,
                                   const torch::Tensor& gates, const torch::Tensor& probs,
                                   const torch::Tensor& expert_idx, bool normalize);
/// Every slot of expert_idx [T, k] (CUDA, ids in [0, num_experts), num_experts <= 1024) sorted
/// stably by expert with a counting sort, two kernels: {slot_idx [T k], token_idx [T k],
/// row_of_slot [T, k], counts [num_experts]} int64, as sort_slots_by_expert's ATen path gives, and
/// ends [num_experts] int32 (the counts' running sum, the offsets a grouped GEMM takes).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> counting_sort_slots(
    const torch::Tensor& expert_idx, int64_t num_experts);
}  // namespace raw

}  // namespace switchyard::modules::kernels
