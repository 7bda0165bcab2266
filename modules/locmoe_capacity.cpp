// LocMoE's capacity lower bound (Theorem 1) and the regularized incomplete beta function it needs.
#include <cmath>

#include "core/error.h"
#include "modules/router.h"

namespace switchyard::modules {

double regularized_incomplete_beta(double x, double a, double b) {
  SY_CHECK(x >= 0 && x <= 1 && a > 0 && b > 0, "regularized_incomplete_beta: bad arguments x=", x, " a=", a, " b=", b);
  if (x == 0 || x == 1) return x;
  const double log_front = std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x);
  // The continued fraction converges fast for x < (a + 1) / (a + b + 2); use symmetry otherwise.
  if (x > (a + 1) / (a + b + 2)) return 1.0 - regularized_incomplete_beta(1 - x, b, a);
  const double tiny = 1e-300;
  double c = 1, d = 1 - (a + b) * x / (a + 1);
  d = 1 / (std::fabs(d) < tiny ? tiny : d);
  double h = d;
  for (int m = 1; m <= 10000; ++m) {
    const double m2 = 2.0 * m;
    double aa = m * (b - m) * x / ((a + m2 - 1) * (a + m2));
    d = 1 + aa * d;
    d = 1 / (std::fabs(d) < tiny ? tiny : d);
    c = 1 + aa / c;
    c = std::fabs(c) < tiny ? tiny : c;
    h *= d * c;
    aa = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1));
    d = 1 + aa * d;
    d = 1 / (std::fabs(d) < tiny ? tiny : d);
    c = 1 + aa / c;
    c = std::fabs(c) < tiny ? tiny : c;
    const double delta = d * c;
    h *= delta;
    if (std::fabs(delta - 1) < 1e-15) break;
  }
  return std::exp(log_front) * h / a;
}

double locmoe_min_capacity(double delta, int64_t d_model, int64_t num_experts) {
  const double p_delta =
      1.0 - regularized_incomplete_beta(delta * delta, 0.5, (static_cast<double>(d_model) - 1.0) / 2.0);
  return 1.0 / (static_cast<double>(num_experts) * p_delta);
}

}  // namespace switchyard::modules
