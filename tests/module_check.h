// Gradient check of a whole module: the analytic gradient a backward pass leaves in a ParamSet's
// flat gradient buffer against central differences of the loss, perturbing elements of the flat
// parameter buffer (f64). Used by the model tests.
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

#include "engine/philox.h"
#include "models/params.h"

namespace testing_support {

struct ModuleCheck {
  bool ok = true;
  double max_err = 0;
  std::string worst;
};

// loss() must be deterministic (eval mode or a fixed Context key) and return a 0-d f64 Var.
// Checks up to `max_checks` elements chosen at random (all of them if the buffer is smaller).
inline ModuleCheck check_module_grads(models::ParamSet& ps, const std::function<autograd::Var()>& loss,
                                      int max_checks = 40, double eps = 1e-6, double atol = 1e-6,
                                      double rtol = 1e-4) {
  ps.zero_grad();
  loss().backward();
  engine::Tensor analytic = ps.grad.clone();
  double* p = ps.data.data<double>();
  const double* g = analytic.data<double>();
  ModuleCheck r;
  // Only elements that belong to a parameter (the buffer has alignment padding).
  std::vector<int64_t> elems;
  for (const auto& e : ps.entries())
    for (int64_t i = 0; i < e.shape.numel(); ++i) elems.push_back(e.offset + i);
  std::vector<int64_t> pick = elems;
  if (int64_t(elems.size()) > max_checks) {
    pick.clear();
    for (int i = 0; i < max_checks; ++i)
      pick.push_back(elems[engine::philox_u32(99, 7, uint64_t(i)) % elems.size()]);
  }
  autograd::NoGradGuard ng;
  for (int64_t i : pick) {
    const double keep = p[i];
    p[i] = keep + eps;
    const double lp = loss().item();
    p[i] = keep - eps;
    const double lm = loss().item();
    p[i] = keep;
    const double num = (lp - lm) / (2 * eps);
    const double err = std::fabs(num - g[i]);
    if (err > atol + rtol * std::fabs(num)) {
      r.ok = false;
      if (err > r.max_err) {
        for (const auto& e : ps.entries())
          if (i >= e.offset && i < e.offset + e.shape.numel())
            r.worst = e.name + "[" + std::to_string(i - e.offset) + "]: analytic " +
                      std::to_string(g[i]) + " numeric " + std::to_string(num);
      }
    }
    r.max_err = std::max(r.max_err, err);
  }
  return r;
}

}  // namespace testing_support
