// Batched experts: the grouped-GEMM path where LibTorch has it, a per-expert loop elsewhere.
#include "modules/experts.h"

#include <ATen/autocast_mode.h>
#include <c10/core/Event.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "core/error.h"
#include "modules/moe_kernels.h"
#include "runtime/cuda_graph.h"
#include "runtime/torch_version.h"

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

/// One MLP: activation(x w_in) w_out (an expert's slice of the batched weights, or the dense MLP).
torch::Tensor mlp(const torch::Tensor& x, const torch::Tensor& w_in, const torch::Tensor& w_out, int64_t hidden,
                  core::ExpertKind kind) {
  return apply_activation(x.matmul(w_in), hidden, kind).matmul(w_out);
}

int64_t in_width(int64_t hidden, core::ExpertKind kind) {
  return kind == core::ExpertKind::kSwiGLU ? 2 * hidden : hidden;
}

#if SY_TORCH_AT_LEAST(2, 9)
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

/// The experts' row counts copied to pinned host memory in the forward, without a host wait; the
/// backward's per-expert GEMMs read them after waiting on the copy's event, long complete by then
/// (a blocking copy in the backward would drain the GPU queue: ~0.1 ms idle per projection).
/// The copy is started after the first GEMM's launch (start()): off the forward's host-bound start.
struct HostCounts : torch::CustomClassHolder {
  explicit HostCounts(torch::Tensor counts_on_device)
      : device(std::move(counts_on_device)), ready(device.device().type()) {}
  void start() {
    host = torch::empty(device.sizes(), torch::dtype(torch::kInt64).pinned_memory(true));
    host.copy_(device, /*non_blocking=*/true);
    ready.record(c10::impl::getDeviceGuardImpl(device.device().type())->getStream(device.device()));
  }
  std::vector<int64_t> get() const {
    ready.synchronize();
    return std::vector<int64_t>(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + host.numel());
  }
  torch::Tensor device, host;
  c10::Event ready;
};

/// Mean rows per expert from which the input gradient takes per-expert cuBLAS GEMMs: on H100,
/// mixtral_like (~4,100 rows per expert) measured 56.9 -> 55.9 ms forward+backward with them (the
/// down projection's input gradient: 5.97 -> 5.24 ms); deepseek_like (~1,540) no faster (15.1-15.2 ms
/// either way), where one grouped launch beats 64 small ones.
constexpr int64_t kPerExpertInputGradRows = 2048;

/// y = x w_e per expert's rows (a grouped GEMM) for a weight that is a leaf parameter: its backward
/// writes the weight gradient straight into w.grad, one cuBLAS GEMM per expert accumulating with
/// beta = 1 (no separate gradient add; Megatron's gradient-accumulation fusion), and gives autograd
/// no weight gradient to accumulate. The input gradient is one cuBLAS GEMM per expert when experts
/// average 2,048 rows or more (measured faster than the grouped kernel there), else a grouped GEMM.
/// Without host counts (the step captured in a CUDA graph) both gradients are grouped GEMMs; the
/// weight gradient (bf16) waits in `pending` while w.grad is undefined, and the next one is summed
/// with it into w.grad in fp32 (PendingWeightGrad).
class GroupedLinearFn : public torch::autograd::Function<GroupedLinearFn> {
 public:
  /// w16: w as bf16 (the experts' cast, shared by the micro-batches of a step).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w,
                               const torch::Tensor& w16, const torch::Tensor& offs,
                               const c10::intrusive_ptr<HostCounts>& counts,
                               const c10::intrusive_ptr<PendingWeightGrad>& pending) {
    ctx->save_for_backward({x, w16, offs});
    ctx->saved_data["weight"] = w;
    ctx->saved_data["pending"] = c10::IValue::make_capsule(pending);
    if (counts) ctx->saved_data["counts"] = c10::IValue::make_capsule(counts);
    return at::_grouped_mm(x, w16, offs);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& w16 = saved[1];
    const auto& offs = saved[2];
    const auto dy = grads[0].to(torch::kBFloat16).contiguous();
    // Without host counts (captured in a CUDA graph) both gradients are grouped GEMMs.
    const bool host_counts = ctx->saved_data.count("counts") > 0;
    const auto counts = host_counts
                            ? c10::static_intrusive_pointer_cast<HostCounts>(ctx->saved_data["counts"].toCapsule())->get()
                            : std::vector<int64_t>();
    torch::Tensor dx;
    if (ctx->needs_input_grad(0)) {
      const bool per_expert = host_counts && x.size(0) >= kPerExpertInputGradRows * w16.size(0);
      dx = per_expert ? kernels::raw::expert_input_grad(dy, w16, counts) : at::_grouped_mm(dy, w16.transpose(-2, -1), offs);
    }
    const variable_list result = {dx, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
    if (!ctx->needs_input_grad(1)) return result;
    auto w = ctx->saved_data["weight"].toTensor();
    auto& grad = w.mutable_grad();
    const bool usable = grad.defined() && grad.is_contiguous() && grad.sizes() == w.sizes() &&
                        (grad.scalar_type() == torch::kBFloat16 || grad.scalar_type() == torch::kFloat32);
    if (!host_counts) {
      auto dw = at::_grouped_mm(x.transpose(-2, -1), dy, offs);  // [E, d_in, d_out], bf16
      auto& pending = c10::static_intrusive_pointer_cast<PendingWeightGrad>(ctx->saved_data["pending"].toCapsule())->bf16;
      if (grad.defined()) {
        grad.add_(dw);
      } else if (pending.defined()) {
        grad = kernels::raw::sum_in_fp32(pending, dw).to(w.scalar_type());
        pending = torch::Tensor();
      } else {
        pending = std::move(dw);
      }
    } else if (usable) {
      kernels::raw::expert_weight_grad(x, dy, counts, grad, /*accumulate=*/true);
    } else {
      auto fresh = torch::empty(w.sizes(), w.options());
      kernels::raw::expert_weight_grad(x, dy, counts, fresh, /*accumulate=*/false);
      if (grad.defined()) grad.add_(fresh);
      else grad = fresh;
    }
    return result;
  }
};

/// The grouped GEMM of an expert projection: GroupedLinearFn when the weight is a parameter being
/// trained (its gradient is accumulated in place; per expert with `counts`, grouped without),
/// autograd's own `_grouped_mm` otherwise.
torch::Tensor grouped_linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& w16,
                             const torch::Tensor& offs, bool trained, const c10::intrusive_ptr<HostCounts>& counts,
                             const c10::intrusive_ptr<PendingWeightGrad>& pending) {
  if (trained) return GroupedLinearFn::apply(x, w, w16, offs, counts, pending);
  return at::_grouped_mm(x, w.to(torch::kBFloat16), offs);  // autograd's own, through the cast
}
#endif

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
  return mlp(x, w_in[local_idx], w_out[local_idx], hidden_, kind_);
}

torch::Tensor ExpertsImpl::forward(const torch::Tensor& x, const torch::Tensor& tokens_per_expert,
                                   const torch::Tensor& expert_ends) {
  SY_CHECK(tokens_per_expert.numel() == num_local(), "experts: got ", tokens_per_expert.numel(),
           " token counts for ", num_local(), " local experts");
#if SY_TORCH_AT_LEAST(2, 9)
  // One grouped GEMM per projection (gate and up fused in w_in) in bf16: bf16 tensors, or fp32
  // master weights under bf16 autocast (cast here as autocast would). Offsets stay on the device,
  // so no host synchronization.
  const bool autocast_bf16 = at::autocast::is_autocast_enabled(at::kCUDA) &&
                             at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16;
  // Its operands need 16-byte row strides: d, the w_in width and the hidden width multiples of 8.
  const bool aligned = x.size(1) % 8 == 0 && w_in.size(2) % 8 == 0 && hidden_ % 8 == 0;
  if (x.is_cuda() && aligned && (x.scalar_type() == torch::kBFloat16 || autocast_bf16)) {
    const auto counts = tokens_per_expert.to(x.device(), torch::kInt64);
    const auto offs = expert_ends.defined() ? expert_ends : counts.cumsum(0).to(torch::kInt32);
    // A weight being trained takes GroupedLinearFn, whose backward needs the counts on the host.
    const auto trained = [&](const torch::Tensor& w) { return torch::GradMode::is_enabled() && w.requires_grad() && w.is_leaf(); };
    const bool train_in = trained(w_in), train_out = trained(w_out);
    // Inside a CUDA graph capture the host cannot wait for the counts: the backward stays grouped.
    const bool host_counts_usable = (train_in || train_out) && !runtime::cuda_capturing();
    const auto host_counts = host_counts_usable ? c10::make_intrusive<HostCounts>(counts) : nullptr;
    const auto w_in16 = train_in ? bf16_weight(w_in, *w_in_copy_) : torch::Tensor();
    const auto w_out16 = train_out ? bf16_weight(w_out, *w_out_copy_) : torch::Tensor();
    const auto h = grouped_linear(x.to(torch::kBFloat16), w_in, w_in16, offs, train_in, host_counts, w_in_pending_);
    if (host_counts) host_counts->start();
    return grouped_linear(activate(h), w_out, w_out16, offs, train_out, host_counts, w_out_pending_);
  }
#endif
  const auto counts = tokens_per_expert.to(torch::kCPU, torch::kInt64);
  const auto* n = counts.data_ptr<int64_t>();
  // Unbound once: the backward of unbind stacks the experts' weight gradients into one tensor, where
  // indexing w_in[i] per expert gives each expert a full-size [E, ...] gradient to add (E^2 traffic).
  const auto w_ins = w_in.unbind(0), w_outs = w_out.unbind(0);
  std::vector<torch::Tensor> outputs;
  outputs.reserve(num_local());
  int64_t offset = 0;
  for (int64_t i = 0; i < num_local(); ++i) {
    if (n[i] > 0) outputs.push_back(mlp(x.narrow(0, offset, n[i]), w_ins[i], w_outs[i], hidden_, kind_));
    offset += n[i];
  }
  SY_ASSERT(offset == x.size(0), "token counts sum to ", offset, " but x has ", x.size(0), " rows");
  if (outputs.empty()) return x.new_zeros({0, x.size(1)}) + 0 * w_out.sum();  // keep the graph connected
  return torch::cat(outputs, 0);
}

torch::Tensor ExpertsImpl::bf16_weight(const torch::Tensor& w, WeightCopy& copy) {
  if (w.scalar_type() == torch::kBFloat16) return w;
  const auto version = static_cast<int64_t>(w._version());
  if (copy.version != version || !copy.fits(w)) {
    torch::NoGradGuard no_grad;  // a cast of the weight's value: GroupedLinearFn routes its gradient
    if (copy.fits(w)) copy.bf16.copy_(w);
    else copy.bf16 = w.to(torch::kBFloat16);
    copy.version = version;
  }
  return copy.bf16;
}

void ExpertsImpl::flush_gradients() {
  torch::NoGradGuard no_grad;
  for (auto [w, pending] : {std::pair{w_in, w_in_pending_}, std::pair{w_out, w_out_pending_}}) {
    if (!pending->bf16.defined()) continue;
    auto& grad = w.mutable_grad();
    if (grad.defined()) grad.add_(pending->bf16);
    else grad = pending->bf16.to(w.scalar_type());
    pending->bf16 = torch::Tensor();
  }
}

MlpImpl::MlpImpl(int64_t d_model, int64_t hidden, core::ExpertKind kind, double init_std)
    : hidden_(hidden), kind_(kind) {
  w_in = register_parameter("w_in", torch::randn({d_model, in_width(hidden, kind)}) * init_std);
  w_out = register_parameter("w_out", torch::randn({hidden, d_model}) * init_std);
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  return mlp(x, w_in, w_out, hidden_, kind_);
}

}  // namespace switchyard::modules
