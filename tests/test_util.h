// Shared test helpers: finite-difference gradient checks and normalized-error comparisons.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "core/error.h"

namespace switchyard::testing {

/// The message of the `E` (a Switchyard error type) that `fn` throws, or "" when it throws none.
template <class E = switchyard::Error, class F>
std::string refusal(F&& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  }
  return "";
}

/// Relative L2 error ||a - b|| / max(||b||, tiny), computed in double.
inline double rel_l2(const torch::Tensor& a, const torch::Tensor& b) {
  const auto ad = a.detach().to(torch::kCPU, torch::kDouble), bd = b.detach().to(torch::kCPU, torch::kDouble);
  return (ad - bd).norm().item<double>() / std::max(bd.norm().item<double>(), 1e-300);
}

/// Compares autograd gradients of scalar `f()` with central differences, in double, on up to
/// `max_elems` elements per parameter (spread over the tensor). Parameters must be double.
inline void expect_gradients_match(const std::function<torch::Tensor()>& f, const std::vector<torch::Tensor>& params,
                                   const std::string& what, double eps = 1e-6, double tol = 1e-6,
                                   int64_t max_elems = 24) {
  for (const auto& p : params) ASSERT_EQ(p.scalar_type(), torch::kDouble) << what;
  const auto out = f();
  const auto grads = torch::autograd::grad({out}, params, {}, false, false, /*allow_unused=*/true);
  for (size_t i = 0; i < params.size(); ++i) {
    auto flat = params[i].detach().view({-1});
    const auto grad = grads[i].defined() ? grads[i].reshape({-1}) : torch::zeros_like(flat);
    const int64_t n = flat.numel();
    const int64_t step = std::max<int64_t>(1, n / max_elems);
    for (int64_t e = 0; e < n; e += step) {
      const double saved = flat[e].item<double>();
      double plus, minus;
      {
        torch::NoGradGuard guard;
        flat[e] = saved + eps;
        plus = f().item<double>();
        flat[e] = saved - eps;
        minus = f().item<double>();
        flat[e] = saved;
      }
      const double numeric = (plus - minus) / (2 * eps);
      const double analytic = grad[e].item<double>();
      EXPECT_NEAR(analytic, numeric, tol * std::max(1.0, std::abs(numeric)))
          << what << ": parameter " << i << " element " << e;
    }
  }
}

}  // namespace switchyard::testing
