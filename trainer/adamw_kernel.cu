// AdamW's update as one CUDA kernel per parameter: a grid-stride pass that reads the weight, its
// gradient and both moments once (16-byte accesses) and writes the weight, the moments and, where the
// experts keep one, the weight's bf16 copy. PyTorch's fused AdamW walks a parameter in launches of at
// most 320 blocks each (its multi-tensor chunks), which leaves the card idle between launches on
// parameters of hundreds of millions of values, and cannot write the bf16 copy.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "runtime/vector_pack.cuh"
#include "trainer/adamw_kernel_cuda.h"

namespace switchyard::trainer::cuda {
namespace {

constexpr int kThreads = 256;

/// Per-update constants, derived on the device from the scalars (which may live in device memory).
struct Scalars {
  const float* lr;
  const float* count;
  const float* grad_scale;
  const float* found_inf;
  double lr_value, count_value, grad_scale_value, beta1, beta2, weight_decay, eps;
};

struct Update {
  float inv_grad_scale, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, inv_bias2_sqrt, eps;
  __device__ explicit Update(const Scalars& s) {
    const double lr = s.lr != nullptr ? static_cast<double>(*s.lr) : s.lr_value;
    const double step = s.count != nullptr ? static_cast<double>(*s.count) : s.count_value;
    const double scale = s.grad_scale != nullptr ? static_cast<double>(*s.grad_scale) : s.grad_scale_value;
    inv_grad_scale = static_cast<float>(1.0 / scale);
    decay = static_cast<float>(1.0 - lr * s.weight_decay);
    beta1 = static_cast<float>(s.beta1);
    one_minus_beta1 = static_cast<float>(1.0 - s.beta1);
    beta2 = static_cast<float>(s.beta2);
    one_minus_beta2 = static_cast<float>(1.0 - s.beta2);
    step_size = static_cast<float>(lr / (1.0 - pow(s.beta1, step)));
    inv_bias2_sqrt = static_cast<float>(1.0 / sqrt(1.0 - pow(s.beta2, step)));
    eps = static_cast<float>(s.eps);
  }
  /// p -= lr wd p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= lr / (1 - b1^t) m / (sqrt(v / (1 - b2^t)) + eps)
  __device__ void operator()(float& p, float g, float& m, float& v) const {
    g *= inv_grad_scale;
    p *= decay;
    m = beta1 * m + one_minus_beta1 * g;
    v = beta2 * v + one_minus_beta2 * g * g;
    p -= step_size * m / (sqrtf(v) * inv_bias2_sqrt + eps);
  }
};

template <int V, bool kCopy>
__global__ void adamw_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, __nv_bfloat16* __restrict__ copy, int64_t n, Scalars scalars) {
  if (scalars.found_inf != nullptr && *scalars.found_inf == 1.f) return;
  const Update update(scalars);
  using F = runtime::Pack<float, V>;
  using B = runtime::Pack<__nv_bfloat16, V>;
  const int64_t packs = n / V, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < packs; i += stride) {
    auto pp = reinterpret_cast<F*>(p)[i], mp = reinterpret_cast<F*>(m)[i], vp = reinterpret_cast<F*>(v)[i];
    const auto gp = reinterpret_cast<const F*>(g)[i];
    B cp;
#pragma unroll
    for (int u = 0; u < V; ++u) {
      update(pp.v[u], gp.v[u], mp.v[u], vp.v[u]);
      if (kCopy) cp.v[u] = __float2bfloat16_rn(pp.v[u]);
    }
    reinterpret_cast<F*>(p)[i] = pp;
    reinterpret_cast<F*>(m)[i] = mp;
    reinterpret_cast<F*>(v)[i] = vp;
    if (kCopy) reinterpret_cast<B*>(copy)[i] = cp;
  }
  // The values past the last whole pack (V > 1 only): the first block's first threads.
  const int64_t tail = packs * V + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (V > 1 && blockIdx.x == 0 && tail < n) {
    update(p[tail], g[tail], m[tail], v[tail]);
    if (kCopy) copy[tail] = __float2bfloat16_rn(p[tail]);
  }
}

const float* device_scalar(const at::Tensor& t, const at::Tensor& p, const char* what) {
  if (!t.defined()) return nullptr;
  TORCH_CHECK(t.numel() == 1 && t.scalar_type() == at::kFloat && t.device() == p.device(), "adamw_update: ", what,
              " must be one fp32 value on the parameter's device");
  return t.data_ptr<float>();
}

}  // namespace

void adamw_update(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, const at::Tensor& v,
                  const at::Tensor& copy, const AdamWScalars& s) {
  c10::cuda::CUDAGuard guard(p.device());
  for (const auto* t : {&p, &g, &m, &v}) {
    TORCH_CHECK(t->is_cuda() && t->device() == p.device() && t->scalar_type() == at::kFloat && t->is_contiguous() &&
                    t->numel() == p.numel(),
                "adamw_update: fp32 contiguous tensors of one size on one CUDA device expected");
  }
  const bool with_copy = copy.defined();
  TORCH_CHECK(!with_copy || (copy.device() == p.device() && copy.scalar_type() == at::kBFloat16 && copy.is_contiguous() &&
                             copy.numel() == p.numel()),
              "adamw_update: the copy must be a contiguous bf16 tensor of the parameter's size and device");
  const int64_t n = p.numel();
  if (n == 0) return;
  const Scalars scalars{device_scalar(s.lr, p, "lr"), device_scalar(s.count, p, "count"),
                        device_scalar(s.grad_scale, p, "grad_scale"), device_scalar(s.found_inf, p, "found_inf"),
                        s.lr_value, s.count_value, s.grad_scale_value, s.beta1, s.beta2, s.weight_decay, s.eps};
  bool aligned = true;
  for (const void* ptr : {p.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr()}) aligned &= reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
  if (with_copy) aligned &= reinterpret_cast<uintptr_t>(copy.data_ptr()) % 8 == 0;
  auto* copy_ptr = with_copy ? reinterpret_cast<__nv_bfloat16*>(copy.data_ptr()) : nullptr;
  auto stream = at::cuda::getCurrentCUDAStream();
  // A few waves of blocks, each thread looping over its packs: one launch per parameter.
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const auto launch = [&](auto vec, auto keep) {
    constexpr int V = decltype(vec)::value;
    constexpr bool kCopy = decltype(keep)::value;
    const int blocks = runtime::grid_for(n / V, kThreads, sms * 16);
    adamw_kernel<V, kCopy><<<blocks, kThreads, 0, stream>>>(p.data_ptr<float>(), g.data_ptr<float>(), m.data_ptr<float>(),
                                                            v.data_ptr<float>(), copy_ptr, n, scalars);
  };
  const auto with_copy_flag = [&](auto vec) {
    if (with_copy) launch(vec, std::true_type());
    else launch(vec, std::false_type());
  };
  if (aligned) with_copy_flag(std::integral_constant<int, 4>());
  else with_copy_flag(std::integral_constant<int, 1>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace switchyard::trainer::cuda
