// CUDA kernels of the fused MoE ops (moe_kernels.h). Memory-bound: each thread moves 16 bytes per
// access when rows are 16-byte aligned, and accumulates in fp32.
#include "modules/moe_kernels_cuda.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <cublas_v2.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "modules/moe_kernel_limits.h"
#include "runtime/vector_pack.cuh"

namespace switchyard::modules::kernels::cuda {
namespace {

constexpr int kThreads = 256;
using runtime::Pack;
using runtime::vector_width;
using runtime::with_vector_width;

// out[t] = sum_j scale[r] * rows[r] over r = row_of_slot[t, j] >= 0. One block per token.
template <typename T, int V>
__global__ void gather_sum_kernel(const T* __restrict__ rows, const float* __restrict__ scale,
                                  const int64_t* __restrict__ row_of_slot, T* __restrict__ out, int k, int64_t d) {
  const int64_t t = blockIdx.x;
  const int64_t* slots = row_of_slot + t * k;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * V; c < d; c += static_cast<int64_t>(blockDim.x) * V) {
    float acc[V];
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] = 0.f;
    for (int j = 0; j < k; ++j) {
      const int64_t r = slots[j];
      if (r < 0) continue;
      const float w = scale != nullptr ? scale[r] : 1.f;
      const auto in = *reinterpret_cast<const Pack<T, V>*>(rows + r * d + c);
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] += w * static_cast<float>(in.v[i]);
    }
    Pack<T, V> o;
#pragma unroll
    for (int i = 0; i < V; ++i) o.v[i] = static_cast<T>(acc[i]);
    *reinterpret_cast<Pack<T, V>*>(out + t * d + c) = o;
  }
}

// grad_rows[s] = gate[s] * grad_y[token[s]]; grad_gate[s] = <grad_y[token[s]], rows[s]>. One block per row.
template <typename T, int V>
__global__ void unpermute_backward_kernel(const T* __restrict__ grad_y, const T* __restrict__ rows,
                                          const float* __restrict__ gates, const int64_t* __restrict__ token_idx,
                                          T* __restrict__ grad_rows, float* __restrict__ grad_gates, int64_t d) {
  const int64_t s = blockIdx.x;
  const int64_t t = token_idx[s];
  const float g = gates[s];
  float dot = 0.f;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * V; c < d; c += static_cast<int64_t>(blockDim.x) * V) {
    const auto gy = *reinterpret_cast<const Pack<T, V>*>(grad_y + t * d + c);
    const auto x = *reinterpret_cast<const Pack<T, V>*>(rows + s * d + c);
    Pack<T, V> o;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const float gyf = static_cast<float>(gy.v[i]);
      o.v[i] = static_cast<T>(g * gyf);
      dot += gyf * static_cast<float>(x.v[i]);
    }
    *reinterpret_cast<Pack<T, V>*>(grad_rows + s * d + c) = o;
  }
  // Block reduction: warps by shuffle, then the warp sums through shared memory.
  __shared__ float partial[kThreads / 32];
  for (int off = 16; off > 0; off /= 2) dot += __shfl_down_sync(0xffffffffu, dot, off);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = dot;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int w = 0; w < static_cast<int>(blockDim.x) / 32; ++w) total += partial[w];
    grad_gates[s] = total;
  }
}

// out[i] = a[i] + b[i] in fp32; grid-stride over packs of V values.
template <typename T, int V>
__global__ void sum_in_fp32_kernel(const T* __restrict__ a, const T* __restrict__ b, float* __restrict__ out, int64_t n) {
  const int64_t packs = n / V, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < packs; i += stride) {
    const auto x = reinterpret_cast<const Pack<T, V>*>(a)[i], y = reinterpret_cast<const Pack<T, V>*>(b)[i];
    Pack<float, V> o;
#pragma unroll
    for (int u = 0; u < V; ++u) o.v[u] = static_cast<float>(x.v[u]) + static_cast<float>(y.v[u]);
    reinterpret_cast<Pack<float, V>*>(out)[i] = o;
  }
  const int64_t tail = packs * V + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (V > 1 && blockIdx.x == 0 && tail < n) out[tail] = static_cast<float>(a[tail]) + static_cast<float>(b[tail]);
}

__device__ __forceinline__ float sigmoidf(float x) { return 1.f / (1.f + __expf(-x)); }

// out[n, c] = silu(h[n, c]) * h[n, f + c]; grid-stride over packs of V columns.
template <typename T, int V>
__global__ void swiglu_forward_kernel(const T* __restrict__ h, T* __restrict__ out, int64_t rows, int64_t f) {
  const int64_t packs_per_row = f / V, total = rows * packs_per_row;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = e / packs_per_row, c = (e % packs_per_row) * V;
    const auto g = *reinterpret_cast<const Pack<T, V>*>(h + n * 2 * f + c);
    const auto u = *reinterpret_cast<const Pack<T, V>*>(h + n * 2 * f + f + c);
    Pack<T, V> o;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const float gf = static_cast<float>(g.v[i]);
      o.v[i] = static_cast<T>(gf * sigmoidf(gf) * static_cast<float>(u.v[i]));
    }
    *reinterpret_cast<Pack<T, V>*>(out + n * f + c) = o;
  }
}

template <typename T, int V>
__global__ void swiglu_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ h, T* __restrict__ grad_h,
                                       int64_t rows, int64_t f) {
  const int64_t packs_per_row = f / V, total = rows * packs_per_row;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = e / packs_per_row, c = (e % packs_per_row) * V;
    const auto go = *reinterpret_cast<const Pack<T, V>*>(grad_out + n * f + c);
    const auto g = *reinterpret_cast<const Pack<T, V>*>(h + n * 2 * f + c);
    const auto u = *reinterpret_cast<const Pack<T, V>*>(h + n * 2 * f + f + c);
    Pack<T, V> dg, du;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const float gf = static_cast<float>(g.v[i]), uf = static_cast<float>(u.v[i]), gof = static_cast<float>(go.v[i]);
      const float sg = sigmoidf(gf);
      dg.v[i] = static_cast<T>(gof * uf * sg * (1.f + gf * (1.f - sg)));
      du.v[i] = static_cast<T>(gof * gf * sg);
    }
    *reinterpret_cast<Pack<T, V>*>(grad_h + n * 2 * f + c) = dg;
    *reinterpret_cast<Pack<T, V>*>(grad_h + n * 2 * f + f + c) = du;
  }
}

// Softmax top-k routing, one warp per token: the token's E logits spread over the lanes (P per lane),
// softmax by warp reductions, then k rounds of a warp arg-max over the unpicked experts (larger
// probability first, the lower expert id on a tie). Lane j < k keeps the j-th pick.
template <int P>
__global__ void softmax_topk_kernel(const float* __restrict__ logits, float* __restrict__ probs,
                                    float* __restrict__ gates, int64_t* __restrict__ expert_idx, int64_t tokens,
                                    int experts, int k, bool normalize) {
  const int lane = threadIdx.x % 32;
  const int64_t t = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  if (t >= tokens) return;  // the whole warp: t is the warp's
  float v[P];
  float top = -INFINITY;
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int e = lane + 32 * p;
    v[p] = e < experts ? logits[t * experts + e] : -INFINITY;
    top = fmaxf(top, v[p]);
  }
  for (int off = 16; off > 0; off /= 2) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, off));
  float sum = 0.f;
#pragma unroll
  for (int p = 0; p < P; ++p) {
    v[p] = lane + 32 * p < experts ? expf(v[p] - top) : 0.f;
    sum += v[p];
  }
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  // A NaN or infinite logit makes every probability of the row NaN: the picks are then the lowest
  // ids (always valid rows for the dispatch) and the gates NaN, so the loss shows it.
  const bool nan_row = !(sum == sum);
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int e = lane + 32 * p;
    v[p] /= sum;
    if (e < experts) probs[t * experts + e] = v[p];
  }
  unsigned picked = 0;  // bit p: expert lane + 32 p is taken
  float mine = 0.f, picked_sum = 0.f;
  int mine_idx = 0;
  for (int j = 0; j < k; ++j) {
    float best = -1.f;  // probabilities are >= 0
    int best_e = experts;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int e = lane + 32 * p;
      const float key = nan_row ? 0.f : v[p];
      if (e < experts && !(picked >> p & 1u) && key > best) {
        best = key;
        best_e = e;
      }
    }
    for (int off = 16; off > 0; off /= 2) {
      const float other = __shfl_xor_sync(0xffffffffu, best, off);
      const int other_e = __shfl_xor_sync(0xffffffffu, best_e, off);
      if (other > best || (other == best && other_e < best_e)) {
        best = other;
        best_e = other_e;
      }
    }
    if (best_e % 32 == lane) picked |= 1u << (best_e / 32);
    if (lane == j) {
      mine = best;
      mine_idx = best_e;
    }
    picked_sum += best;
  }
  if (nan_row) mine = NAN;
  if (lane < k) {
    gates[t * k + lane] = normalize ? mine / fmaxf(picked_sum, 1e-20f) : mine;
    expert_idx[t * k + lane] = mine_idx;
  }
}

// The counting sort of slots by expert (stable), in two kernels over chunks of slots, one chunk per
// block: per-chunk expert histograms, then each block places its slots after those of earlier
// experts and earlier chunks. Within a chunk, tiles of one slot per thread in order; a slot's rank
// among its warp's slots of the same expert comes from __match_any_sync.
constexpr int kSortThreads = 256, kSortWarps = kSortThreads / 32;

__global__ void slot_histogram_kernel(const int64_t* __restrict__ expert, int64_t slots, int64_t chunk, int experts,
                                      int* __restrict__ hist) {
  extern __shared__ int counts[];
  for (int e = threadIdx.x; e < experts; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  const int64_t begin = blockIdx.x * chunk, end = min(begin + chunk, slots);
  for (int64_t s = begin + threadIdx.x; s < end; s += blockDim.x) {
    const int64_t e = expert[s];
    if (e >= 0 && e < experts) atomicAdd(&counts[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x) hist[blockIdx.x * static_cast<int64_t>(experts) + e] = counts[e];
}

__global__ void slot_scatter_kernel(const int64_t* __restrict__ expert, int64_t slots, int64_t chunk, int experts,
                                    int k, const int* __restrict__ hist, int chunks, int64_t* __restrict__ slot_idx,
                                    int64_t* __restrict__ token_idx, int64_t* __restrict__ row_of_slot,
                                    int64_t* __restrict__ counts, int* __restrict__ ends) {
  extern __shared__ unsigned char smem[];
  auto* next = reinterpret_cast<int64_t*>(smem);                // [E] this block's next row of expert e
  auto* warp_prefix = reinterpret_cast<int*>(next + experts);   // [warps, E] tile counts, then prefixes
  auto* tile_total = warp_prefix + kSortWarps * experts;         // [E]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    int64_t before = 0, total = 0;
    for (int b = 0; b < chunks; ++b) {
      const int c = hist[b * static_cast<int64_t>(experts) + e];
      total += c;
      if (b < static_cast<int>(blockIdx.x)) before += c;
    }
    next[e] = before;
    tile_total[e] = static_cast<int>(total);  // the host checks that slots fit in int
    if (blockIdx.x == 0) counts[e] = total;
    for (int w = 0; w < kSortWarps; ++w) warp_prefix[w * experts + e] = 0;
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // expert e's rows start after every earlier expert's
    int64_t start = 0;
    for (int e = 0; e < experts; ++e) {
      next[e] += start;
      start += tile_total[e];
      if (blockIdx.x == 0) ends[e] = static_cast<int>(start);
    }
  }
  __syncthreads();
  const int64_t begin = blockIdx.x * chunk, end = min(begin + chunk, slots);
  for (int64_t tile = begin; tile < end; tile += blockDim.x) {
    const int64_t s = tile + threadIdx.x;
    const int64_t e64 = s < end ? expert[s] : -1;
    const bool routed = e64 >= 0 && e64 < experts;
    const int e = routed ? static_cast<int>(e64) : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const int rank = __popc(peers & ((1u << lane) - 1u));
    if (routed && rank == 0) warp_prefix[warp * experts + e] = __popc(peers);
    __syncthreads();
    for (int x = threadIdx.x; x < experts; x += blockDim.x) {
      int running = 0;
      for (int w = 0; w < kSortWarps; ++w) {
        const int c = warp_prefix[w * experts + x];
        warp_prefix[w * experts + x] = running;
        running += c;
      }
      tile_total[x] = running;
    }
    __syncthreads();
    if (s < end) {
      if (routed) {
        const int64_t row = next[e] + warp_prefix[warp * experts + e] + rank;
        slot_idx[row] = s;
        token_idx[row] = s / k;
        row_of_slot[s] = row;
      } else {
        row_of_slot[s] = -1;
      }
    }
    __syncthreads();
    for (int x = threadIdx.x; x < experts; x += blockDim.x) {
      next[x] += tile_total[x];
      for (int w = 0; w < kSortWarps; ++w) warp_prefix[w * experts + x] = 0;
    }
    __syncthreads();
  }
}

int grid_for(int64_t work) { return runtime::grid_for(work, kThreads); }

/// C = op(A) op(B) + beta C on the current stream, column-major as cuBLAS sees it: A and B bf16, C bf16
/// or fp32, products summed in fp32.
void gemm_bf16(cublasOperation_t op_a, cublasOperation_t op_b, int64_t m, int64_t n, int64_t k, const void* a,
               int64_t lda, const void* b, int64_t ldb, float beta, void* c, cudaDataType_t c_type, int64_t ldc) {
  const float alpha = 1.0f;
  TORCH_CUDABLAS_CHECK(cublasGemmEx(at::cuda::getCurrentCUDABlasHandle(), op_a, op_b, static_cast<int>(m),
                                    static_cast<int>(n), static_cast<int>(k), &alpha, a, CUDA_R_16BF,
                                    static_cast<int>(lda), b, CUDA_R_16BF, static_cast<int>(ldb), &beta, c, c_type,
                                    static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace

at::Tensor gather_sum(const at::Tensor& rows_in, const at::Tensor& scale_in, const at::Tensor& row_of_slot_in) {
  c10::cuda::CUDAGuard guard(rows_in.device());
  const auto rows = rows_in.contiguous();
  const auto row_of_slot = row_of_slot_in.to(at::kLong).contiguous();
  const auto scale = scale_in.defined() ? scale_in.to(at::kFloat).contiguous() : at::Tensor();
  const int64_t tokens = row_of_slot.size(0), k = row_of_slot.size(1), d = rows.size(1);
  auto out = at::empty({tokens, d}, rows.options());
  if (tokens == 0 || d == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, rows.scalar_type(), "gather_sum", [&] {
    const int v = vector_width<scalar_t>(d, {rows.data_ptr(), out.data_ptr()});
    with_vector_width<scalar_t>(v, [&](auto vec) {
      constexpr int V = decltype(vec)::value;
      const int threads = static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(32, (d / V + 31) / 32 * 32)));
      gather_sum_kernel<scalar_t, V><<<tokens, threads, 0, stream>>>(
          rows.data_ptr<scalar_t>(), scale.defined() ? scale.data_ptr<float>() : nullptr, row_of_slot.data_ptr<int64_t>(),
          out.data_ptr<scalar_t>(), static_cast<int>(k), d);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::pair<at::Tensor, at::Tensor> unpermute_backward(const at::Tensor& grad_y_in, const at::Tensor& rows_in,
                                                           const at::Tensor& gates_in, const at::Tensor& token_idx_in) {
  c10::cuda::CUDAGuard guard(rows_in.device());
  const auto grad_y = grad_y_in.to(rows_in.scalar_type()).contiguous();
  const auto rows = rows_in.contiguous();
  const auto gates = gates_in.to(at::kFloat).contiguous();
  const auto token_idx = token_idx_in.to(at::kLong).contiguous();
  const int64_t num_rows = rows.size(0), d = rows.size(1);
  auto grad_rows = at::empty_like(rows);
  auto grad_gates = at::empty({num_rows}, gates.options());
  if (num_rows > 0) {
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, rows.scalar_type(), "unpermute_backward", [&] {
      const int v = vector_width<scalar_t>(d, {rows.data_ptr(), grad_y.data_ptr(), grad_rows.data_ptr()});
      with_vector_width<scalar_t>(v, [&](auto vec) {
        constexpr int V = decltype(vec)::value;
        unpermute_backward_kernel<scalar_t, V><<<num_rows, kThreads, 0, stream>>>(
            grad_y.data_ptr<scalar_t>(), rows.data_ptr<scalar_t>(), gates.data_ptr<float>(), token_idx.data_ptr<int64_t>(),
            grad_rows.data_ptr<scalar_t>(), grad_gates.data_ptr<float>(), d);
      });
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {grad_rows, grad_gates.to(gates_in.scalar_type())};
}

at::Tensor swiglu_forward(const at::Tensor& h_in) {
  c10::cuda::CUDAGuard guard(h_in.device());
  const auto h = h_in.contiguous();
  const int64_t rows = h.size(0), f = h.size(1) / 2;
  auto out = at::empty({rows, f}, h.options());
  if (rows * f == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "swiglu_forward", [&] {
    const int v = vector_width<scalar_t>(f, {h.data_ptr(), out.data_ptr()});
    with_vector_width<scalar_t>(v, [&](auto vec) {
      constexpr int V = decltype(vec)::value;
      swiglu_forward_kernel<scalar_t, V><<<grid_for(rows * f / V), kThreads, 0, stream>>>(
          h.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), rows, f);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor swiglu_backward(const at::Tensor& grad_out_in, const at::Tensor& h_in) {
  c10::cuda::CUDAGuard guard(h_in.device());
  const auto h = h_in.contiguous();
  const auto grad_out = grad_out_in.to(h.scalar_type()).contiguous();
  const int64_t rows = h.size(0), f = h.size(1) / 2;
  auto grad_h = at::empty_like(h);
  if (rows * f == 0) return grad_h;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "swiglu_backward", [&] {
    const int v = vector_width<scalar_t>(f, {h.data_ptr(), grad_out.data_ptr(), grad_h.data_ptr()});
    with_vector_width<scalar_t>(v, [&](auto vec) {
      constexpr int V = decltype(vec)::value;
      swiglu_backward_kernel<scalar_t, V><<<grid_for(rows * f / V), kThreads, 0, stream>>>(
          grad_out.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), grad_h.data_ptr<scalar_t>(), rows, f);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_h;
}

void expert_weight_grad(const at::Tensor& x_in, const at::Tensor& dy_in, const std::vector<int64_t>& counts,
                        at::Tensor& grad, bool accumulate) {
  c10::cuda::CUDAGuard guard(x_in.device());
  TORCH_CHECK(x_in.scalar_type() == at::kBFloat16, "expert_weight_grad: bf16 operands expected on CUDA");
  const auto x = x_in.contiguous(), dy = dy_in.contiguous();
  const int64_t K = x.size(1), N = dy.size(1);
  const bool fp32_grad = grad.scalar_type() == at::kFloat;
  const size_t grad_elem = fp32_grad ? 4 : 2;
  // Row-major grad[e] [K, N] is column-major [N, K]: grad[e]^T = dy_e^T x_e, i.e. C = A B^T with A = dy_e
  // (column-major [N, n_e], ld N) and B = x_e (column-major [K, n_e], ld K).
  const auto* dy_ptr = static_cast<const char*>(dy.data_ptr());
  const auto* x_ptr = static_cast<const char*>(x.data_ptr());
  auto* grad_ptr = static_cast<char*>(grad.data_ptr());
  int64_t offset = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    const int64_t n = counts[e];
    void* c = grad_ptr + static_cast<int64_t>(e) * K * N * static_cast<int64_t>(grad_elem);
    if (n == 0) {
      if (!accumulate) C10_CUDA_CHECK(cudaMemsetAsync(c, 0, K * N * grad_elem, at::cuda::getCurrentCUDAStream()));
      continue;
    }
    gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_T, N, K, n, dy_ptr + offset * N * 2, N, x_ptr + offset * K * 2, K,
              accumulate ? 1.0f : 0.0f, c, fp32_grad ? CUDA_R_32F : CUDA_R_16BF, N);
    offset += n;
  }
}

at::Tensor sum_in_fp32(const at::Tensor& a_in, const at::Tensor& b_in) {
  c10::cuda::CUDAGuard guard(a_in.device());
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  auto out = at::empty(a.sizes(), a.options().dtype(at::kFloat));
  const int64_t n = a.numel();
  if (n == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), "sum_in_fp32", [&] {
    // Packs of 16 bytes in, V fp32 values out (aligned to their size: fresh allocations are).
    const bool out_aligned = reinterpret_cast<uintptr_t>(out.data_ptr()) % (sizeof(float) * (16 / sizeof(scalar_t))) == 0;
    const int v = out_aligned ? vector_width<scalar_t>(n, {a.data_ptr(), b.data_ptr()}) : 1;
    with_vector_width<scalar_t>(v, [&](auto vec) {
      constexpr int V = decltype(vec)::value;
      const int blocks = runtime::grid_for(n / V, kThreads, at::cuda::getCurrentDeviceProperties()->multiProcessorCount * 16);
      sum_in_fp32_kernel<scalar_t, V><<<blocks, kThreads, 0, stream>>>(
          a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), out.data_ptr<float>(), n);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor expert_input_grad(const at::Tensor& dy_in, const at::Tensor& w_in, const std::vector<int64_t>& counts) {
  c10::cuda::CUDAGuard guard(dy_in.device());
  TORCH_CHECK(dy_in.scalar_type() == at::kBFloat16, "expert_input_grad: bf16 operands expected on CUDA");
  const auto dy = dy_in.contiguous(), w = w_in.contiguous();
  const int64_t K = w.size(1), N = w.size(2);
  auto dx = at::empty({dy.size(0), K}, dy.options());
  // Row-major dx_e [n, K] is column-major [K, n] = w_e^T dy_e^T: w_e row-major [K, N] is column-major
  // [N, K] (op T, ld N), dy_e row-major [n, N] is column-major [N, n] (op N, ld N).
  const auto* dy_ptr = static_cast<const char*>(dy.data_ptr());
  const auto* w_ptr = static_cast<const char*>(w.data_ptr());
  auto* dx_ptr = static_cast<char*>(dx.data_ptr());
  int64_t offset = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    const int64_t n = counts[e];
    if (n > 0) {
      gemm_bf16(CUBLAS_OP_T, CUBLAS_OP_N, K, n, N, w_ptr + static_cast<int64_t>(e) * K * N * 2, N,
                dy_ptr + offset * N * 2, N, 0.0f, dx_ptr + offset * K * 2, CUDA_R_16BF, K);
    }
    offset += n;
  }
  return dx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_topk(const at::Tensor& logits_in, int64_t k, bool normalize) {
  c10::cuda::CUDAGuard guard(logits_in.device());
  TORCH_CHECK(logits_in.scalar_type() == at::kFloat && logits_in.dim() == 2 && logits_in.size(1) <= kSoftmaxTopKMaxExperts &&
                  k >= 1 && k <= std::min(kSoftmaxTopKMaxK, logits_in.size(1)),
              "softmax_topk: fp32 logits [T, E <= ", kSoftmaxTopKMaxExperts, "] and 1 <= k <= min(",
              kSoftmaxTopKMaxK, ", E) expected, got ", logits_in.sizes(), " and k = ", k);
  const auto logits = logits_in.contiguous();
  const int64_t tokens = logits.size(0);
  const int experts = static_cast<int>(logits.size(1));
  auto probs = at::empty_like(logits);
  auto gates = at::empty({tokens, k}, logits.options());
  auto expert_idx = at::empty({tokens, k}, logits.options().dtype(at::kLong));
  if (tokens == 0) return {gates, probs, expert_idx};
  constexpr int kTokensPerBlock = kThreads / 32;
  const auto blocks = static_cast<unsigned>((tokens + kTokensPerBlock - 1) / kTokensPerBlock);
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto launch = [&](auto per_lane) {
    softmax_topk_kernel<decltype(per_lane)::value><<<blocks, kThreads, 0, stream>>>(
        logits.data_ptr<float>(), probs.data_ptr<float>(), gates.data_ptr<float>(), expert_idx.data_ptr<int64_t>(),
        tokens, experts, static_cast<int>(k), normalize);
  };
  if (experts <= 32) launch(std::integral_constant<int, 1>());
  else if (experts <= 64) launch(std::integral_constant<int, 2>());
  else if (experts <= 128) launch(std::integral_constant<int, 4>());
  else launch(std::integral_constant<int, 8>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {gates, probs, expert_idx};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> counting_sort_slots(const at::Tensor& expert_idx_in,
                                                                                           int64_t num_experts) {
  c10::cuda::CUDAGuard guard(expert_idx_in.device());
  TORCH_CHECK(expert_idx_in.dim() == 2 && num_experts >= 1 && num_experts <= kCountingSortMaxExperts,
              "counting_sort_slots: expert_idx [T, k] and 1 <= experts <= ", kCountingSortMaxExperts, " expected");
  const auto expert = expert_idx_in.to(at::kLong).contiguous();
  const int64_t tokens = expert.size(0), k = expert.size(1), slots = tokens * k;
  TORCH_CHECK(slots < std::numeric_limits<int>::max(), "counting_sort_slots: ", slots, " slots do not fit in int");
  const auto options = expert.options();
  auto slot_idx = at::empty({slots}, options), token_idx = at::empty({slots}, options);
  auto row_of_slot = at::empty({tokens, k}, options);
  if (slots == 0) {
    return {slot_idx, token_idx, row_of_slot, at::zeros({num_experts}, options), at::zeros({num_experts}, options.dtype(at::kInt))};
  }
  // Block 0 writes every count and end.
  auto counts = at::empty({num_experts}, options), ends = at::empty({num_experts}, options.dtype(at::kInt));
  // Chunks of at least 1,024 slots, at most 128 of them: each block reads every chunk's histogram.
  const int64_t chunk = std::max<int64_t>(1024, (slots + 127) / 128);
  const int chunks = static_cast<int>((slots + chunk - 1) / chunk);
  const int experts = static_cast<int>(num_experts);
  auto hist = at::empty({chunks, num_experts}, options.dtype(at::kInt));
  auto stream = at::cuda::getCurrentCUDAStream();
  slot_histogram_kernel<<<chunks, kSortThreads, experts * sizeof(int), stream>>>(expert.data_ptr<int64_t>(), slots, chunk,
                                                                                 experts, hist.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const size_t smem = experts * (sizeof(int64_t) + (kSortWarps + 1) * sizeof(int));
  slot_scatter_kernel<<<chunks, kSortThreads, smem, stream>>>(
      expert.data_ptr<int64_t>(), slots, chunk, experts, static_cast<int>(k), hist.data_ptr<int>(), chunks,
      slot_idx.data_ptr<int64_t>(), token_idx.data_ptr<int64_t>(), row_of_slot.data_ptr<int64_t>(),
      counts.data_ptr<int64_t>(), ends.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {slot_idx, token_idx, row_of_slot, counts, ends};
}

}  // namespace switchyard::modules::kernels::cuda
