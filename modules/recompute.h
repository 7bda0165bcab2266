// Activation recomputation: a piece of the forward whose activations are not kept for the backward,
// which runs it again (train.recompute, docs/training.md).
#pragma once

#include <torch/torch.h>

#include <functional>

namespace switchyard::modules {

using TensorFn = std::function<torch::autograd::variable_list(const torch::Tensor&)>;

/// fn(input), keeping only `input` for the backward: the forward runs `fn` without autograd; the
/// backward runs it again with autograd (and the forward's bf16 autocast) and back-propagates
/// through that, adding into the parameters' gradients as the plain forward would. `fn` must give
/// the same outputs when run again (routing noise is counter-based for this reason) and, where it
/// holds collectives, every rank recomputes in the same order, as every rank runs the same backward.
/// Outputs that are not floating point carry no gradient.
torch::autograd::variable_list recompute_in_backward(TensorFn fn, const torch::Tensor& input);

}  // namespace switchyard::modules
