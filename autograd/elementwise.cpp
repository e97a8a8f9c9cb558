// Elementwise ops: forward with the kernels, backward formula next to it. Broadcast inputs
// get their gradient summed back with sum_to_shape.
#include "autograd/elementwise.h"

#include "kernels/elementwise.h"

namespace autograd {

Var add(const Var& a, const Var& b) {
  return make_result(kernels::add(a.data(), b.data()), "add", {a, b},
                     [sa = a.shape(), sb = b.shape()](const Tensor& g, Grads& grads) {
                       if (grads.need(0)) grads.set(0, kernels::sum_to_shape(g, sa));
                       if (grads.need(1)) grads.set(1, kernels::sum_to_shape(g, sb));
                     });
}

Var sub(const Var& a, const Var& b) {
  return make_result(kernels::sub(a.data(), b.data()), "sub", {a, b},
                     [sa = a.shape(), sb = b.shape()](const Tensor& g, Grads& grads) {
                       if (grads.need(0)) grads.set(0, kernels::sum_to_shape(g, sa));
                       if (grads.need(1)) grads.set(1, kernels::neg(kernels::sum_to_shape(g, sb)));
                     });
}

Var mul(const Var& a, const Var& b) {
  return make_result(kernels::mul(a.data(), b.data()), "mul", {a, b},
                     [ta = a.data(), tb = b.data()](const Tensor& g, Grads& grads) {
                       // d(ab)/da = b, d(ab)/db = a
                       if (grads.need(0))
                         grads.set(0, kernels::sum_to_shape(kernels::mul(g, tb), ta.shape()));
                       if (grads.need(1))
                         grads.set(1, kernels::sum_to_shape(kernels::mul(g, ta), tb.shape()));
                     });
}

Var div(const Var& a, const Var& b) {
  Tensor y = kernels::div(a.data(), b.data());
  return make_result(y, "div", {a, b},
                     [sa = a.shape(), tb = b.data(), y](const Tensor& g, Grads& grads) {
                       // d(a/b)/da = 1/b, d(a/b)/db = -a/b^2 = -y/b
                       if (grads.need(0))
                         grads.set(0, kernels::sum_to_shape(kernels::div(g, tb), sa));
                       if (grads.need(1))
                         grads.set(1, kernels::neg(kernels::sum_to_shape(
                                          kernels::div(kernels::mul(g, y), tb), tb.shape())));
                     });
}

Var neg(const Var& x) {
  return make_result(kernels::neg(x.data()), "neg", {x},
                     [](const Tensor& g, Grads& grads) { grads.set(0, kernels::neg(g)); });
}

Var add_scalar(const Var& x, double s) {
  return make_result(kernels::add_scalar(x.data(), s), "add_scalar", {x},
                     [](const Tensor& g, Grads& grads) { grads.set(0, g); });
}

Var mul_scalar(const Var& x, double s) {
  return make_result(kernels::mul_scalar(x.data(), s), "mul_scalar", {x},
                     [s](const Tensor& g, Grads& grads) { grads.set(0, kernels::mul_scalar(g, s)); });
}

Var pow_scalar(const Var& x, double p) {
  return make_result(kernels::pow_scalar(x.data(), p), "pow_scalar", {x},
                     [tx = x.data(), p](const Tensor& g, Grads& grads) {
                       // d(x^p)/dx = p x^(p-1); x^0 is constant (its derivative is 0 even at 0)
                       if (p == 0.0) {
                         grads.set(0, Tensor::zeros(g.shape(), g.dtype(), g.device()));
                         return;
                       }
                       grads.set(0, kernels::mul(g, kernels::mul_scalar(
                                                        kernels::pow_scalar(tx, p - 1.0), p)));
                     });
}

Var exp(const Var& x) {
  Tensor y = kernels::exp(x.data());
  return make_result(y, "exp", {x}, [y](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::mul(g, y));  // d exp(x) = exp(x)
  });
}

Var log(const Var& x) {
  return make_result(kernels::log(x.data()), "log", {x}, [tx = x.data()](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::div(g, tx));  // d log(x) = 1/x
  });
}

Var tanh(const Var& x) {
  Tensor y = kernels::tanh(x.data());
  return make_result(y, "tanh", {x}, [y](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::tanh_backward(g, y));  // 1 - tanh^2
  });
}

Var sqrt(const Var& x) {
  Tensor y = kernels::sqrt(x.data());
  return make_result(y, "sqrt", {x}, [y](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::mul_scalar(kernels::div(g, y), 0.5));  // 1 / (2 sqrt(x))
  });
}

Var rsqrt(const Var& x) {
  Tensor y = kernels::rsqrt(x.data());
  return make_result(y, "rsqrt", {x}, [y](const Tensor& g, Grads& grads) {
    // d x^(-1/2) = -1/2 x^(-3/2) = -1/2 y^3
    grads.set(0, kernels::mul(g, kernels::mul_scalar(kernels::mul(y, kernels::square(y)), -0.5)));
  });
}

Var relu(const Var& x) {
  return make_result(kernels::relu(x.data()), "relu", {x}, [tx = x.data()](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::relu_backward(g, tx));
  });
}

Var sigmoid(const Var& x) {
  Tensor y = kernels::sigmoid(x.data());
  return make_result(y, "sigmoid", {x}, [y](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::sigmoid_backward(g, y));  // y (1 - y)
  });
}

Var square(const Var& x) {
  return make_result(kernels::square(x.data()), "square", {x}, [tx = x.data()](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::mul(g, kernels::mul_scalar(tx, 2.0)));
  });
}

Var gelu(const Var& x, GeluApprox approximate) {
  if (approximate == GeluApprox::tanh)
    return make_result(kernels::gelu_tanh(x.data()), "gelu_tanh", {x},
                       [tx = x.data()](const Tensor& g, Grads& grads) {
                         grads.set(0, kernels::gelu_tanh_backward(g, tx));
                       });
  return make_result(kernels::gelu_erf(x.data()), "gelu_erf", {x},
                     [tx = x.data()](const Tensor& g, Grads& grads) {
                       grads.set(0, kernels::gelu_erf_backward(g, tx));
                     });
}

}  // namespace autograd
