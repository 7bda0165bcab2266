// CUDA kernels of the fused transformer ops (transformer_kernels.h): RMSNorm forward and backward,
// RoPE. Memory-bound; math in fp32.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "modules/transformer_kernels_cuda.h"
#include "runtime/vector_pack.cuh"

namespace switchyard::modules::kernels::cuda {
namespace {

constexpr int kThreads = 256;
using runtime::Pack;
using runtime::vector_width;
using runtime::with_vector_width;

/// Sum of `v` over the block (every thread gets it). `shared` holds kThreads / 32 floats.
__device__ float block_sum(float v, float* shared) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // `shared` may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += shared[w];
  return total;
}

// One block per row: rstd = 1 / sqrt(mean(x^2) + eps); y = x rstd w.
template <typename T>
__global__ void rms_norm_forward_kernel(const T* __restrict__ x, const float* __restrict__ w, T* __restrict__ y,
                                        float* __restrict__ rstd, int64_t d, float eps) {
  __shared__ float shared[kThreads / 32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * d;
  float sq = 0.f;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = static_cast<float>(xr[i]);
    sq += v * v;
  }
  const float r = rsqrtf(block_sum(sq, shared) / static_cast<float>(d) + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  T* yr = y + row * d;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) yr[i] = static_cast<T>(static_cast<float>(xr[i]) * r * w[i]);
}

// One block per row: dx = r dy w - x r^3 sum(dy w x) / d.
template <typename T>
__global__ void rms_norm_backward_dx_kernel(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ w,
                                            const float* __restrict__ rstd, T* __restrict__ dx, int64_t d) {
  __shared__ float shared[kThreads / 32];
  const int64_t row = blockIdx.x;
  const T* g = dy + row * d;
  const T* xr = x + row * d;
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) s += static_cast<float>(g[i]) * w[i] * static_cast<float>(xr[i]);
  const float r = rstd[row];
  const float c = r * r * r * block_sum(s, shared) / static_cast<float>(d);
  T* out = dx + row * d;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    out[i] = static_cast<T>(r * static_cast<float>(g[i]) * w[i] - static_cast<float>(xr[i]) * c);
  }
}

// dw partial sums: block (x: a tile of 32 columns, y: a chunk of rows) sums dy x rstd over its rows.
constexpr int kDwRowsPerChunk = 256;
template <typename T>
__global__ void rms_norm_backward_dw_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                            const float* __restrict__ rstd, float* __restrict__ partial, int64_t rows,
                                            int64_t d) {
  __shared__ float shared[8][33];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t first = static_cast<int64_t>(blockIdx.y) * kDwRowsPerChunk;
  const int64_t last = min(first + kDwRowsPerChunk, rows);
  float acc = 0.f;
  if (col < d) {
    for (int64_t row = first + threadIdx.y; row < last; row += blockDim.y) {
      acc += static_cast<float>(dy[row * d + col]) * static_cast<float>(x[row * d + col]) * rstd[row];
    }
  }
  shared[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < d) {
    float total = 0.f;
    for (int j = 0; j < static_cast<int>(blockDim.y); ++j) total += shared[j][threadIdx.x];
    partial[static_cast<int64_t>(blockIdx.y) * d + col] = total;
  }
}

// One thread per (b, h, s) and pack of V consecutive i < hd/2: the rotation of the pairs (i, i + hd/2)
// by sign * angle. x in any strides with the head dimension dense; out [B, H, S, hd] contiguous.
template <typename T, int V>
__global__ void rope_kernel(const T* __restrict__ x, const float* __restrict__ cos, const float* __restrict__ sin,
                            T* __restrict__ out, int64_t heads, int64_t seq, int64_t half, int64_t sb, int64_t sh,
                            int64_t ss, float sign, int64_t total) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t packs = half / V;
  const int64_t i = (idx % packs) * V;
  const int64_t row = idx / packs;  // (b * heads + h) * seq + s
  const int64_t s = row % seq, bh = row / seq;
  const T* in = x + (bh / heads) * sb + (bh % heads) * sh + s * ss;
  const auto x1 = *reinterpret_cast<const Pack<T, V>*>(in + i);
  const auto x2 = *reinterpret_cast<const Pack<T, V>*>(in + i + half);
  Pack<T, V> o1, o2;
#pragma unroll
  for (int u = 0; u < V; ++u) {
    const float a = static_cast<float>(x1.v[u]), b = static_cast<float>(x2.v[u]);
    const float c = cos[s * half + i + u], sn = sign * sin[s * half + i + u];
    o1.v[u] = static_cast<T>(a * c - b * sn);
    o2.v[u] = static_cast<T>(a * sn + b * c);
  }
  T* o = out + row * 2 * half;
  *reinterpret_cast<Pack<T, V>*>(o + i) = o1;
  *reinterpret_cast<Pack<T, V>*>(o + i + half) = o2;
}

int threads_for(int64_t d) { return static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(32, (d + 31) / 32 * 32))); }

}  // namespace

std::pair<at::Tensor, at::Tensor> rms_norm_forward(const at::Tensor& x_in, const at::Tensor& weight, double eps) {
  c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto w = weight.to(at::kFloat).contiguous();
  const int64_t d = x.size(-1), rows = d > 0 ? x.numel() / d : 0;
  auto y = at::empty_like(x);
  auto rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  if (rows == 0) return {y, rstd};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm_forward", [&] {
    rms_norm_forward_kernel<scalar_t><<<rows, threads_for(d), 0, stream>>>(
        x.data_ptr<scalar_t>(), w.data_ptr<float>(), y.data_ptr<scalar_t>(), rstd.data_ptr<float>(), d,
        static_cast<float>(eps));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, rstd};
}

std::pair<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                    const at::Tensor& weight, const at::Tensor& rstd) {
  c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto dy = dy_in.to(x.scalar_type()).contiguous();
  const auto w = weight.to(at::kFloat).contiguous();
  const int64_t d = x.size(-1), rows = d > 0 ? x.numel() / d : 0;
  auto dx = at::empty_like(x);
  const int64_t chunks = std::max<int64_t>(1, (rows + kDwRowsPerChunk - 1) / kDwRowsPerChunk);
  auto partial = at::zeros({chunks, d}, x.options().dtype(at::kFloat));
  if (rows > 0) {
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm_backward", [&] {
      rms_norm_backward_dx_kernel<scalar_t><<<rows, threads_for(d), 0, stream>>>(
          dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w.data_ptr<float>(), rstd.data_ptr<float>(),
          dx.data_ptr<scalar_t>(), d);
      const dim3 grid(static_cast<unsigned>((d + 31) / 32), static_cast<unsigned>(chunks)), block(32, 8);
      rms_norm_backward_dw_kernel<scalar_t><<<grid, block, 0, stream>>>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                                                        rstd.data_ptr<float>(), partial.data_ptr<float>(),
                                                                        rows, d);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {dx, chunks == 1 ? partial.view({d}) : partial.sum(0)};
}

at::Tensor rope_rotate(const at::Tensor& x_in, const at::Tensor& cos_in, const at::Tensor& sin_in, float sign) {
  c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.stride(3) == 1 ? x_in : x_in.contiguous();  // any strides, the head dimension dense
  const auto cos = cos_in.to(x.device(), at::kFloat).contiguous(), sin = sin_in.to(x.device(), at::kFloat).contiguous();
  const int64_t batch = x.size(0), heads = x.size(1), seq = x.size(2), half = x.size(3) / 2;
  auto out = at::empty({batch, heads, seq, 2 * half}, x.options());
  if (batch * heads * seq * half == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rope", [&] {
    // 16-byte packs where every (b, h, s) row and both halves start 16-byte aligned.
    constexpr int64_t kVec = 16 / sizeof(scalar_t);
    const bool strides_aligned = (x.stride(0) % kVec == 0 || batch == 1) && (x.stride(1) % kVec == 0 || heads == 1) &&
                                 (x.stride(2) % kVec == 0 || seq == 1);
    const int v = strides_aligned ? vector_width<scalar_t>(half, {x.data_ptr(), out.data_ptr()}) : 1;
    with_vector_width<scalar_t>(v, [&](auto vec) {
      constexpr int V = decltype(vec)::value;
      const int64_t total = batch * heads * seq * half / V;
      rope_kernel<scalar_t, V><<<runtime::grid_for(total, kThreads), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), cos.data_ptr<float>(), sin.data_ptr<float>(), out.data_ptr<scalar_t>(), heads, seq, half,
          x.stride(0), x.stride(1), x.stride(2), sign, total);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace switchyard::modules::kernels::cuda
