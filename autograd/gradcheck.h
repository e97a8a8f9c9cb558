// Finite-difference check of an op's analytic gradient, in f64.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "autograd/var.h"

namespace autograd {

struct GradcheckResult {
  bool ok = true;
  double max_abs_err = 0;
  std::string detail;  // where the worst mismatch is, for the test log
};

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-6;
  double rtol = 1e-4;
  uint64_t seed = 1234;
};

// Evaluates f at `inputs`, backpropagates a random projection of the output (so every output
// element matters), and compares each floating input's gradient with central differences.
// Floating inputs are converted to f64 and require grad; integer inputs (indices) pass as is.
// `wrt` optionally restricts which inputs are checked (default: every floating input).
GradcheckResult gradcheck(const std::function<Var(const std::vector<Var>&)>& f,
                          const std::vector<Tensor>& inputs, GradcheckOptions opt = {},
                          std::vector<bool> wrt = {});

}  // namespace autograd
