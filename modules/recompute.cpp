// recompute_in_backward: a re-entrant custom autograd Function (as torch.utils.checkpoint's
// reentrant variant).
#include "modules/recompute.h"

#include "runtime/autocast.h"

namespace switchyard::modules {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Recomputation : torch::CustomClassHolder {
  TensorFn fn;
  bool autocast = false;
};

class RecomputeFn : public torch::autograd::Function<RecomputeFn> {
 public:
  // One tensor input: a variable_list argument would not be seen as inputs by autograd.
  static variable_list forward(AutogradContext* ctx, const c10::intrusive_ptr<Recomputation>& state,
                               const torch::Tensor& input) {
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    ctx->save_for_backward({input});
    variable_list outputs;
    {
      torch::NoGradGuard no_grad;
      outputs = state->fn(input);
    }
    for (const auto& o : outputs) {
      if (o.defined() && !o.is_floating_point()) ctx->mark_non_differentiable({o});
    }
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto state = c10::static_intrusive_pointer_cast<Recomputation>(ctx->saved_data["state"].toCapsule());
    const auto input = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    variable_list outputs;
    {
      torch::AutoGradMode grad_mode(true);
      runtime::Bf16Autocast autocast(state->autocast);
      outputs = state->fn(input);
    }
    variable_list roots, root_grads;
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (outputs[i].defined() && outputs[i].requires_grad() && grads[i].defined()) {
        roots.push_back(outputs[i]);
        root_grads.push_back(grads[i]);
      }
    }
    if (!roots.empty()) torch::autograd::backward(roots, root_grads);
    return {torch::Tensor(), input.grad()};  // none for the state argument
  }
};

}  // namespace

torch::autograd::variable_list recompute_in_backward(TensorFn fn, const torch::Tensor& input) {
  // Nothing to recompute for: no gradient is taken (evaluation, the routing pre-pass), or the input
  // carries none (autograd would then not see the parameters inside `fn`: keep the plain graph).
  if (!torch::GradMode::is_enabled() || !input.requires_grad()) return fn(input);
  auto state = c10::make_intrusive<Recomputation>();
  state->fn = std::move(fn);
  state->autocast = runtime::cuda_autocast_enabled();
  return RecomputeFn::apply(state, input);
}

}  // namespace switchyard::modules
