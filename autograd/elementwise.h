// Differentiable elementwise ops on Var. Binary ops broadcast like NumPy; their gradients are
// summed back to each input's shape. Operators +, -, *, / work on Var op Var, Var op double and
// double op Var (division by a double multiplies by its reciprocal).
#pragma once
#include "autograd/var.h"

namespace autograd {

Var add(const Var& a, const Var& b);
Var sub(const Var& a, const Var& b);
Var mul(const Var& a, const Var& b);
Var div(const Var& a, const Var& b);
Var neg(const Var& x);
Var add_scalar(const Var& x, double s);
Var mul_scalar(const Var& x, double s);
Var pow_scalar(const Var& x, double p);
Var exp(const Var& x);
Var log(const Var& x);
Var tanh(const Var& x);
Var sqrt(const Var& x);
Var rsqrt(const Var& x);
Var relu(const Var& x);
Var sigmoid(const Var& x);
Var square(const Var& x);

// GELU: exact 0.5x(1 + erf(x/sqrt2)), or the tanh approximation
// 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))). Which one a model uses is part of its spec.
enum class GeluApprox { tanh, erf };
Var gelu(const Var& x, GeluApprox approximate);

inline Var operator+(const Var& a, const Var& b) { return add(a, b); }
inline Var operator-(const Var& a, const Var& b) { return sub(a, b); }
inline Var operator*(const Var& a, const Var& b) { return mul(a, b); }
inline Var operator/(const Var& a, const Var& b) { return div(a, b); }
inline Var operator-(const Var& x) { return neg(x); }
inline Var operator+(const Var& x, double s) { return add_scalar(x, s); }
inline Var operator+(double s, const Var& x) { return add_scalar(x, s); }
inline Var operator-(const Var& x, double s) { return add_scalar(x, -s); }
inline Var operator-(double s, const Var& x) { return add_scalar(neg(x), s); }
inline Var operator*(const Var& x, double s) { return mul_scalar(x, s); }
inline Var operator*(double s, const Var& x) { return mul_scalar(x, s); }
inline Var operator/(const Var& x, double s) { return mul_scalar(x, 1.0 / s); }
inline Var operator/(double s, const Var& x) { return mul_scalar(pow_scalar(x, -1.0), s); }

}  // namespace autograd
