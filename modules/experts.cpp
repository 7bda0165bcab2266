// Batched experts: the grouped-GEMM path where LibTorch has it, a per-expert loop elsewhere.
#include "modules/experts.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include "core/error.h"
#include "modules/moe_kernels.h"

namespace switchyard::modules {
namespace {

torch::Tensor apply_activation(const torch::Tensor& h, int64_t hidden, core::ExpertKind kind) {
  if (kind == core::ExpertKind::kSwiGLU) {
    if (h.is_cuda()) {  // the fused kernel: one pass, and only h kept for backward
      auto out_shape = h.sizes().vec();
      out_shape.back() = hidden;
      return kernels::swiglu(h.reshape({-1, 2 * hidden})).view(out_shape);
    }
    return torch::silu(h.narrow(-1, 0, hidden)) * h.narrow(-1, hidden, hidden);
  }
  return torch::gelu(h);
}

int64_t in_width(int64_t hidden, core::ExpertKind kind) {
  return kind == core::ExpertKind::kSwiGLU ? 2 * hidden : hidden;
}

}  // namespace

ExpertsImpl::ExpertsImpl(std::vector<int64_t> expert_ids, int64_t d_model, int64_t hidden, core::ExpertKind kind,
                         double init_std, uint64_t seed)
    : expert_ids_(std::move(expert_ids)), hidden_(hidden), kind_(kind) {
  const int64_t num = num_local();
  auto w_in_init = torch::empty({num, d_model, in_width(hidden, kind)});
  auto w_out_init = torch::empty({num, hidden, d_model});
  for (int64_t i = 0; i < num; ++i) {
    auto gen = at::detail::createCPUGenerator(seed * 1000003ULL + static_cast<uint64_t>(expert_ids_[i]) * 7919ULL + 17);
    w_in_init[i].copy_(at::normal(0.0, init_std, w_in_init[i].sizes(), gen));
    w_out_init[i].copy_(at::normal(0.0, init_std, w_out_init[i].sizes(), gen));
  }
  w_in = register_parameter("w_in", w_in_init);
  w_out = register_parameter("w_out", w_out_init);
}

torch::Tensor ExpertsImpl::activate(const torch::Tensor& h) const { return apply_activation(h, hidden_, kind_); }

torch::Tensor ExpertsImpl::expert_forward(int64_t local_idx, const torch::Tensor& x) {
  return activate(x.matmul(w_in[local_idx])).matmul(w_out[local_idx]);
}

torch::Tensor ExpertsImpl::forward(const torch::Tensor& x, const torch::Tensor& tokens_per_expert) {
  SY_CHECK(tokens_per_expert.numel() == num_local(), "experts: got ", tokens_per_expert.numel(),
           " token counts for ", num_local(), " local experts");
#if (TORCH_VERSION_MAJOR > 2) || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
  // One grouped GEMM per projection (gate and up fused in w_in) in bf16: bf16 tensors, or fp32
  // master weights under bf16 autocast (cast here as autocast would). Offsets stay on the device,
  // so no host synchronization.
  const bool autocast_bf16 = at::autocast::is_autocast_enabled(at::kCUDA) &&
                             at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16;
  // Its operands need 16-byte row strides: d, the w_in width and the hidden width multiples of 8.
  const bool aligned = x.size(1) % 8 == 0 && w_in.size(2) % 8 == 0 && hidden_ % 8 == 0;
  if (x.is_cuda() && aligned && (x.scalar_type() == torch::kBFloat16 || autocast_bf16)) {
    const auto offs = tokens_per_expert.to(x.device(), torch::kInt64).cumsum(0).to(torch::kInt32);
    const auto bf16 = [](const torch::Tensor& t) { return t.to(torch::kBFloat16); };
    const auto h = at::_grouped_mm(bf16(x), bf16(w_in), offs);
    return at::_grouped_mm(activate(h), bf16(w_out), offs);
  }
#endif
  const auto counts = tokens_per_expert.to(torch::kCPU, torch::kInt64);
  const auto* n = counts.data_ptr<int64_t>();
  std::vector<torch::Tensor> outputs;
  outputs.reserve(num_local());
  int64_t offset = 0;
  for (int64_t i = 0; i < num_local(); ++i) {
    if (n[i] > 0) outputs.push_back(expert_forward(i, x.narrow(0, offset, n[i])));
    offset += n[i];
  }
  SY_ASSERT(offset == x.size(0), "token counts sum to ", offset, " but x has ", x.size(0), " rows");
  if (outputs.empty()) return x.new_zeros({0, x.size(1)}) + 0 * w_out.sum();  // keep the graph connected
  return torch::cat(outputs, 0);
}

MlpImpl::MlpImpl(int64_t d_model, int64_t hidden, core::ExpertKind kind, double init_std)
    : hidden_(hidden), kind_(kind) {
  w_in = register_parameter("w_in", torch::randn({d_model, in_width(hidden, kind)}) * init_std);
  w_out = register_parameter("w_out", torch::randn({hidden, d_model}) * init_std);
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  return apply_activation(x.matmul(w_in), hidden_, kind_).matmul(w_out);
}

}  // namespace switchyard::modules
