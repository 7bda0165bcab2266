// Autograd wrappers of the fused MoE kernels, and their CPU references (plain ATen ops).
#include "modules/moe_kernels.h"

#include "core/build_info.h"
#include "core/error.h"
#if SWITCHYARD_WITH_CUDA
#include "modules/moe_kernels_cuda.h"
#endif

namespace switchyard::modules::kernels {

#if SWITCHYARD_WITH_CUDA
#define SY_ON_CUDA(tensor, call) \
  if ((tensor).is_cuda()) return cuda::call
#else
#define SY_ON_CUDA(tensor, call) \
  SY_CHECK(!(tensor).is_cuda(), "fused MoE kernels: CUDA tensor, but Switchyard was built without CUDA")
#endif

namespace raw {
namespace {
/// The CPU references accumulate in fp32, or in double for double inputs (gradient checks).
torch::ScalarType acc(const torch::Tensor& t) {
  return t.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

/// Before any per-expert GEMM: counts that do not sum to the rows would read past them.
void check_counts_cover(const std::vector<int64_t>& counts, int64_t rows, const char* what) {
  int64_t sum = 0;
  for (int64_t c : counts) sum += c;
  SY_CHECK(sum == rows, what, " has ", rows, " rows but the counts sum to ", sum);
}
}  // namespace

torch::Tensor gather_sum(const torch::Tensor& rows, const torch::Tensor& scale, const torch::Tensor& row_of_slot) {
  SY_CHECK(row_of_slot.dim() == 2 && rows.dim() == 2, "gather_sum: rows [S, d] and row_of_slot [T, k] expected");
  SY_ON_CUDA(rows, gather_sum(rows, scale, row_of_slot));
  const int64_t tokens = row_of_slot.size(0), k = row_of_slot.size(1), d = rows.size(1);
  // No rows (no slot reached an expert): every sum is empty. Returned before indexing `scale`, which
  // is then empty too (row_of_slot's -1 entries clamp to 0).
  if (rows.size(0) == 0) return torch::zeros({tokens, d}, rows.options());
  const auto valid = row_of_slot.ge(0);
  const auto idx = row_of_slot.clamp_min(0).reshape({-1});
  auto w = valid.to(acc(rows));
  if (scale.defined()) w = w * scale.to(acc(rows)).index_select(0, idx).view({tokens, k});
  const auto picked = rows.to(acc(rows)).index_select(0, idx).view({tokens, k, d});
  return (picked * w.unsqueeze(2)).sum(1).to(rows.scalar_type());
}

std::pair<torch::Tensor, torch::Tensor> unpermute_backward(const torch::Tensor& grad_y, const torch::Tensor& rows,
                                                           const torch::Tensor& gates, const torch::Tensor& token_idx) {
  SY_ON_CUDA(rows, unpermute_backward(grad_y, rows, gates, token_idx));
  const auto gy = grad_y.to(acc(rows)).index_select(0, token_idx);
  const auto grad_rows = (gy * gates.to(acc(rows)).unsqueeze(1)).to(rows.scalar_type());
  const auto grad_gates = (gy * rows.to(acc(rows))).sum(1).to(gates.scalar_type());
  return {grad_rows, grad_gates};
}

torch::Tensor swiglu_forward(const torch::Tensor& h) {
  SY_CHECK(h.dim() == 2 && h.size(1) % 2 == 0, "swiglu: h [N, 2f] expected, got ", h.sizes());
  SY_ON_CUDA(h, swiglu_forward(h));
  const int64_t f = h.size(1) / 2;
  const auto g = h.narrow(1, 0, f).to(acc(h)), u = h.narrow(1, f, f).to(acc(h));
  return (torch::silu(g) * u).to(h.scalar_type());
}

torch::Tensor swiglu_backward(const torch::Tensor& grad_out, const torch::Tensor& h) {
  SY_ON_CUDA(h, swiglu_backward(grad_out, h));
  const int64_t f = h.size(1) / 2;
  const auto g = h.narrow(1, 0, f).to(acc(h)), u = h.narrow(1, f, f).to(acc(h));
  const auto go = grad_out.to(acc(h));
  const auto s = torch::sigmoid(g);
  const auto dsilu = s * (1 + g * (1 - s));
  return torch::cat({go * u * dsilu, go * g * s}, 1).to(h.scalar_type());
}

void expert_weight_grad(const torch::Tensor& x, const torch::Tensor& dy, const std::vector<int64_t>& counts,
                        torch::Tensor& grad, bool accumulate) {
  SY_CHECK(x.dim() == 2 && dy.dim() == 2 && grad.dim() == 3 && x.size(0) == dy.size(0) &&
               grad.size(0) == static_cast<int64_t>(counts.size()) && grad.size(1) == x.size(1) &&
               grad.size(2) == dy.size(1) && grad.is_contiguous(),
           "expert_weight_grad: x [S, K], dy [S, N], contiguous grad [E, K, N] expected, got ", x.sizes(), ", ",
           dy.sizes(), ", ", grad.sizes());
  SY_CHECK(x.scalar_type() == dy.scalar_type() &&
               (grad.scalar_type() == x.scalar_type() || grad.scalar_type() == torch::kFloat32),
           "expert_weight_grad: x and dy of one dtype, grad that dtype or fp32");
  check_counts_cover(counts, x.size(0), "expert_weight_grad: x");
  SY_ON_CUDA(x, expert_weight_grad(x, dy, counts, grad, accumulate));
  int64_t offset = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    auto g = grad[static_cast<int64_t>(e)];
    const auto prod = x.narrow(0, offset, counts[e]).to(acc(x)).t().mm(dy.narrow(0, offset, counts[e]).to(acc(x)));
    if (accumulate) g.add_(prod.to(g.scalar_type()));
    else g.copy_(prod);
    offset += counts[e];
  }
}

torch::Tensor sum_in_fp32(const torch::Tensor& a, const torch::Tensor& b) {
  SY_CHECK(a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && a.device() == b.device(),
           "sum_in_fp32: a and b of one shape, dtype and device expected, got ", a.sizes(), " ", a.scalar_type(), " and ",
           b.sizes(), " ", b.scalar_type());
  SY_ON_CUDA(a, sum_in_fp32(a, b));
  return a.to(torch::kFloat32) + b.to(torch::kFloat32);
}

torch::Tensor expert_input_grad(const torch::Tensor& dy, const torch::Tensor& w, const std::vector<int64_t>& counts) {
  SY_CHECK(dy.dim() == 2 && w.dim() == 3 && w.size(0) == static_cast<int64_t>(counts.size()) && w.size(2) == dy.size(1),
           "expert_input_grad: dy [S, N] and w [E, K, N] expected, got ", dy.sizes(), ", ", w.sizes());
  SY_CHECK(dy.scalar_type() == w.scalar_type(), "expert_input_grad: dy and w of one dtype");
  check_counts_cover(counts, dy.size(0), "expert_input_grad: dy");
  SY_ON_CUDA(dy, expert_input_grad(dy, w, counts));
  auto dx = torch::empty({dy.size(0), w.size(1)}, dy.options());
  int64_t offset = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    const auto w_e = w[static_cast<int64_t>(e)].to(acc(dy));
    dx.narrow(0, offset, counts[e]).copy_(dy.narrow(0, offset, counts[e]).to(acc(dy)).mm(w_e.t()));
    offset += counts[e];
  }
  return dx;
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> softmax_topk_forward(const torch::Tensor& logits, int64_t k,
                                                                             bool normalize) {
  SY_CHECK(logits.dim() == 2 && k >= 1 && k <= logits.size(1), "softmax_topk: logits [T, E] and 1 <= k <= E expected, got ",
           logits.sizes(), " and k = ", k);
  if (softmax_topk_fused(logits, k)) {
    SY_ON_CUDA(logits, softmax_topk(logits, k, normalize));
  }
  const auto probs = torch::softmax(logits, -1);
  auto [top_p, expert_idx] = probs.topk(k, -1);
  const auto gates = normalize ? top_p / top_p.sum(-1, true).clamp_min(1e-20) : top_p;
  return {gates, probs, expert_idx};
}

torch::Tensor softmax_topk_backward(const torch::Tensor& grad_gates, const torch::Tensor& grad_probs,
                                   const torch::Tensor& gates, const torch::Tensor& probs,
                                   const torch::Tensor& expert_idx, bool normalize) {
  auto grad_picked = grad_gates.defined() ? grad_gates : torch::zeros_like(gates);
  if (normalize) {
    const auto sum = probs.gather(1, expert_idx).sum(-1, true);
    const auto through_sum = (grad_picked * gates).sum(-1, true) * sum.ge(1e-20).to(sum.scalar_type());
    grad_picked = (grad_picked - through_sum) / sum.clamp_min(1e-20);
  }
  // A row's picks are distinct experts: a plain scatter (as topk's own backward does; deterministic
  // where train.deterministic asks for it), then the add.
  auto grad_p = torch::zeros_like(probs).scatter(1, expert_idx, grad_picked);
  if (grad_probs.defined()) grad_p = grad_probs + grad_p;
  return probs * (grad_p - (grad_p * probs).sum(-1, true));
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> counting_sort_slots(
    const torch::Tensor& expert_idx, int64_t num_experts) {
  SY_CHECK(expert_idx.is_cuda(), "counting_sort_slots: a CUDA kernel; the CPU sorts with sort_slots_by_expert");
  SY_ON_CUDA(expert_idx, counting_sort_slots(expert_idx, num_experts));
  return {};
}

}  // namespace raw

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class PermuteFn : public torch::autograd::Function<PermuteFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& token_idx,
                               const torch::Tensor& row_of_slot) {
    ctx->save_for_backward({row_of_slot});
    // On CUDA the gather kernel with one slot per row (1 * x summed in fp32 is x for every dtype but
    // double): as fast as index_select on the card (H100, mixtral_like: 178-181 against 185 us), and
    // one launch where index_select's host path (expand, gather, TensorIterator) holds up the
    // forward's host-bound start.
    if (x.is_cuda() && x.scalar_type() != torch::kDouble) return raw::gather_sum(x, {}, token_idx.view({-1, 1}));
    return x.index_select(0, token_idx);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto row_of_slot = ctx->get_saved_variables()[0];
    return {raw::gather_sum(grads[0].contiguous(), {}, row_of_slot), torch::Tensor(), torch::Tensor()};
  }
};

class UnpermuteFn : public torch::autograd::Function<UnpermuteFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& rows, const torch::Tensor& gates,
                               const torch::Tensor& token_idx, const torch::Tensor& row_of_slot) {
    ctx->save_for_backward({rows, gates, token_idx});
    return raw::gather_sum(rows, gates, row_of_slot);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [grad_rows, grad_gates] = raw::unpermute_backward(grads[0].contiguous(), saved[0], saved[1], saved[2]);
    return {grad_rows, grad_gates, torch::Tensor(), torch::Tensor()};
  }
};

class SumRowsFn : public torch::autograd::Function<SumRowsFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& rows, const torch::Tensor& token_idx,
                               const torch::Tensor& row_of_slot) {
    ctx->save_for_backward({token_idx});
    return raw::gather_sum(rows, {}, row_of_slot);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {grads[0].index_select(0, ctx->get_saved_variables()[0]), torch::Tensor(), torch::Tensor()};
  }
};

/// The CUDA kernel's forward; the backward in ATen ops (raw::softmax_topk_backward).
class SoftmaxTopKFn : public torch::autograd::Function<SoftmaxTopKFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& logits, int64_t k, bool normalize) {
    auto [gates, probs, expert_idx] = raw::softmax_topk_forward(logits, k, normalize);
    ctx->save_for_backward({gates, probs, expert_idx});
    ctx->saved_data["normalize"] = normalize;
    ctx->mark_non_differentiable({expert_idx});
    return {gates, probs, expert_idx};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {raw::softmax_topk_backward(grads[0], grads[1], saved[0], saved[1], saved[2],
                                       ctx->saved_data["normalize"].toBool()),
            torch::Tensor(), torch::Tensor()};
  }
};

class SwigluFn : public torch::autograd::Function<SwigluFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& h) {
    ctx->save_for_backward({h});
    return raw::swiglu_forward(h);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {raw::swiglu_backward(grads[0].contiguous(), ctx->get_saved_variables()[0])};
  }
};

}  // namespace

torch::Tensor permute(const torch::Tensor& x, const torch::Tensor& token_idx, const torch::Tensor& row_of_slot) {
  return PermuteFn::apply(x, token_idx, row_of_slot);
}

torch::Tensor unpermute(const torch::Tensor& rows, const torch::Tensor& gates, const torch::Tensor& token_idx,
                        const torch::Tensor& row_of_slot) {
  return UnpermuteFn::apply(rows.contiguous(), gates.contiguous(), token_idx, row_of_slot);
}

torch::Tensor sum_rows(const torch::Tensor& rows, const torch::Tensor& token_idx, const torch::Tensor& row_of_slot) {
  return SumRowsFn::apply(rows.contiguous(), token_idx, row_of_slot);
}

torch::Tensor swiglu(const torch::Tensor& h) { return SwigluFn::apply(h.contiguous()); }

bool softmax_topk_fused(const torch::Tensor& logits, int64_t k) {
  return logits.is_cuda() && logits.scalar_type() == torch::kFloat32 && logits.dim() == 2 &&
         logits.size(1) <= kSoftmaxTopKMaxExperts && k >= 1 && k <= std::min(kSoftmaxTopKMaxK, logits.size(1));
}

std::vector<torch::Tensor> softmax_topk(const torch::Tensor& logits, int64_t k, bool normalize) {
  if (softmax_topk_fused(logits, k)) return SoftmaxTopKFn::apply(logits, k, normalize);
  auto [gates, probs, expert_idx] = raw::softmax_topk_forward(logits, k, normalize);  // autograd's ops
  return {gates, probs, expert_idx};
}

torch::Tensor rows_of_slots(const torch::Tensor& slot_idx, int64_t num_tokens, int64_t k) {
  // Every slot routed (slot_idx a permutation of them all): each entry is written, none left at -1.
  const auto options = slot_idx.options().dtype(torch::kInt64);
  auto out = slot_idx.size(0) == num_tokens * k ? torch::empty({num_tokens * k}, options)
                                                : torch::full({num_tokens * k}, -1, options);
  out.index_put_({slot_idx}, torch::arange(slot_idx.size(0), out.options()));
  return out.view({num_tokens, k});
}

}  // namespace switchyard::modules::kernels
