// Elementwise ops: binary ops with NumPy broadcasting, ops with a scalar, unary math, the backward
// kernels whose formula is not a composition of those, and sum_to_shape (a broadcast gradient
// summed back to an input's shape).
//
// dtypes: f32 and f64; bf16 is accepted too (computed in f32, stored back as bf16). Binary ops
// need both inputs of one dtype. Inputs may be strided (views, expanded); outputs are new
// contiguous tensors of the broadcast shape.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/backend.h"

namespace kernels {

// Scalar formulas shared by the CPU kernels (and by fused kernels elsewhere, e.g. bias + GELU).
// They are branch-free so that loops calling them vectorise.
namespace math {

namespace detail {
inline int32_t bits_of(float x) {
  int32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}
inline float float_of(int32_t b) {
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}
// Maps a float's bits to an int that orders like the float (and back: it is an involution).
inline int32_t ordered(int32_t b) { return b ^ ((b >> 31) & 0x7fffffff); }
}  // namespace detail

// exp for f32 without a libm call: Cody-Waite range reduction and a degree-6 polynomial on
// [-ln2/2, ln2/2] (Cephes' expf coefficients), max error ~1.4 ulp. glibc's expf does not
// vectorise without -ffast-math, and exp dominates softmax, sigmoid and GELU. Results below
// FLT_MIN are flushed to 0; inf, -inf and NaN give inf, 0 and NaN. Clamping and the special
// cases use integer min/max and bit masks: a float select over computed values keeps GCC
// (with its default -ftrapping-math) from vectorising the loop.
// This form computes exp(x + lo), lo a small correction carried beside x, for callers that
// know the argument to more than float precision (erfc_scaled_f32). Range checks use x alone.
inline float exp_f32(float x, float lo) {
  using detail::bits_of;
  using detail::float_of;
  using detail::ordered;
  const int32_t khi = ordered(bits_of(88.72284f));   // exp overflows above
  const int32_t klo = ordered(bits_of(-87.33654f));  // exp is below FLT_MIN under
  const int32_t xb = bits_of(x);
  const int32_t k = ordered(xb);
  const int32_t big = -int32_t(k > khi), small = -int32_t(k < klo);
  const int32_t nan = -int32_t((xb & 0x7fffffff) > 0x7f800000);
  const float xc = float_of(ordered(std::min(std::max(k, klo), khi)));
  // n = round(x / ln2) by the 1.5*2^23 trick: n lands in t's low mantissa bits.
  const float shifter = 12582912.0f;
  const float t = (xc + lo) * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  float r = xc - n * 0.693359375f;  // ln2 split into a part exact in float...
  r = r - n * -2.12194440e-4f + lo;  // ...and the rest
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  // 2^n as two factors: n reaches 128 near the top, which one float exponent cannot hold.
  const int32_t ni = bits_of(t) - 0x4B400000;
  const int32_t n1 = ni >> 1, n2 = ni - n1;
  int32_t yb = bits_of(p * float_of((n1 + 127) << 23) * float_of((n2 + 127) << 23));
  yb = (yb & ~big) | (0x7f800000 & big);
  yb &= ~small;
  yb = (yb & ~nan) | ((xb | 0x400000) & nan);
  return float_of(yb);
}
inline float exp_f32(float x) { return exp_f32(x, 0.0f); }

// tanh for f32, vectorisable: an odd polynomial for |x| < 0.625 (Cephes' tanhf coefficients),
// else 1 - 2/(exp(2|x|) + 1) with x's sign. Max error ~2 ulp.
inline float tanh_f32(float x) {
  using detail::bits_of;
  using detail::float_of;
  const int32_t xb = bits_of(x);
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float near0 = x * (1.0f + p * z);  // (x + x z p would lose the sign of -0)
  const float ax = float_of(xb & 0x7fffffff);
  const int32_t far = bits_of(1.0f - 2.0f / (exp_f32(2.0f * ax) + 1.0f)) | (xb & int32_t(0x80000000));
  const int32_t small = -int32_t((xb & 0x7fffffff) < bits_of(0.625f));
  return float_of((bits_of(near0) & small) | (far & ~small));
}

// erfc(a/sqrt2) for a >= 0 in f32, vectorisable; 0 once below FLT_MIN. Form t exp(-z^2 + P(t)),
// z = a/sqrt2, t = 1/(1 + z/2), P a degree-10 Chebyshev series in t fitted for this project
// to erfc on z in [0, 10] (fit error 7e-9). z^2 = a^2/2 is carried in two parts (a split into
// 12-bit halves, so the big part is exact), which keeps the relative error ~3e-7 down the tail.
inline float erfc_scaled_f32(float a) {
  static constexpr float c[11] = {-5.5117125031e-01f, 5.5025631824e-01f,  7.2678472327e-03f,
                                  -6.3663206650e-03f, -1.5938484563e-04f, 1.8099070171e-04f,
                                  -2.5158306730e-06f, -6.4200789860e-06f, 5.6819367320e-07f,
                                  2.1429783883e-07f,  -4.4640174647e-08f};
  const float z = a * 0.70710678118654752f;
  const float t = 1.0f / (1.0f + 0.5f * z);
  const float s = (2.0f * t - 7.0f / 6.0f) * (6.0f / 5.0f);  // t in [1/6, 1] -> s in [-1, 1]
  // Clenshaw's recurrence b_k = c_k + 2s b_{k+1} - b_{k+2}, unrolled (a loop left in here
  // would keep the caller's loop from vectorising at -O2).
  const float s2 = 2.0f * s;
  float b2 = c[10], b1 = s2 * b2 + c[9], b0;
  b0 = s2 * b1 - b2 + c[8], b2 = b1, b1 = b0;
  b0 = s2 * b1 - b2 + c[7], b2 = b1, b1 = b0;
  b0 = s2 * b1 - b2 + c[6], b2 = b1, b1 = b0;
  b0 = s2 * b1 - b2 + c[5], b2 = b1, b1 = b0;
  b0 = s2 * b1 - b2 + c[4], b2 = b1, b1 = b0;
  b0 = s2 * b1 - b2 + c[3], b2 = b1, b1 = b0;
  b0 = s2 * b1 - b2 + c[2], b2 = b1, b1 = b0;
  b0 = s2 * b1 - b2 + c[1], b2 = b1, b1 = b0;
  const float p = s * b1 - b2 + c[0];
  const float ah = detail::float_of(detail::bits_of(a) & int32_t(0xfffff000)), al = a - ah;
  return t * exp_f32(-0.5f * (ah * ah), p - 0.5f * (al * (ah + a)));
}

// Standard normal CDF in f32, vectorisable: 0.5 erfc(|x|/sqrt2) taken from the tail side, so
// Phi(x) for very negative x keeps its relative accuracy.
inline float normal_cdf_f32(float x) {
  using detail::bits_of;
  using detail::float_of;
  const float tail = 0.5f * erfc_scaled_f32(float_of(bits_of(x) & 0x7fffffff));
  const int32_t neg = bits_of(x) >> 31;  // all ones for x < 0
  return float_of((bits_of(tail) & neg) | (bits_of(1.0f - tail) & ~neg));
}

// Generic forms: f32 takes the vectorisable versions above, f64 the libm functions.
template <class C>
inline C exp(C x) {
  if constexpr (sizeof(C) == 4) return exp_f32(x);
  else return std::exp(x);
}
template <class C>
inline C tanh(C x) {
  if constexpr (sizeof(C) == 4) return tanh_f32(x);
  else return std::tanh(x);
}
template <class C>
inline C normal_cdf(C x) {
  if constexpr (sizeof(C) == 4) return normal_cdf_f32(x);
  else return C(0.5) * std::erfc(-x * C(0.70710678118654752440));
}

inline constexpr double kSqrt2OverPi = 0.79788456080286535588;
inline constexpr double kGeluCoef = 0.044715;

// gelu_tanh(x) = 0.5x(1 + tanh(u)), u = sqrt(2/pi)(x + 0.044715x^3), computed as x*sigmoid(2u)
// (the same value: no cancellation for very negative x, and one exp instead of tanh).
template <class C>
inline C gelu_tanh(C x) {
  C u = C(kSqrt2OverPi) * (x + C(kGeluCoef) * x * x * x);
  return x / (C(1) + exp<C>(C(-2) * u));
}

// d/dx gelu_tanh(x) = s + 2x s(1-s) u', with s = sigmoid(2u), u' = sqrt(2/pi)(1 + 3*0.044715x^2).
template <class C>
inline C gelu_tanh_grad(C x) {
  C x2 = x * x;
  C u = C(kSqrt2OverPi) * (x + C(kGeluCoef) * x2 * x);
  C du = C(kSqrt2OverPi) * (C(1) + C(3 * kGeluCoef) * x2);
  C s = C(1) / (C(1) + exp<C>(C(-2) * u));
  return s + C(2) * x * s * (C(1) - s) * du;
}

// gelu_erf(x) = x Phi(x); its derivative is Phi(x) + x phi(x).
template <class C>
inline C gelu_erf(C x) {
  return x * normal_cdf<C>(x);
}
template <class C>
inline C gelu_erf_grad(C x) {
  return normal_cdf<C>(x) + x * C(0.39894228040143267794) * exp<C>(C(-0.5) * x * x);
}

}  // namespace math

namespace cpu {
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add_scalar(const Tensor& x, double s);
Tensor mul_scalar(const Tensor& x, double s);
Tensor pow_scalar(const Tensor& x, double p);
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor gelu_tanh(const Tensor& x);
Tensor gelu_erf(const Tensor& x);
Tensor square(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor relu_backward(const Tensor& g, const Tensor& x);       // g * (x > 0)
Tensor gelu_tanh_backward(const Tensor& g, const Tensor& x);  // g * gelu_tanh'(x)
Tensor gelu_erf_backward(const Tensor& g, const Tensor& x);   // g * gelu_erf'(x)
Tensor sigmoid_backward(const Tensor& g, const Tensor& y);    // g * y(1-y), y = sigmoid(x)
Tensor tanh_backward(const Tensor& g, const Tensor& y);       // g * (1-y^2), y = tanh(x)
Tensor sum_to_shape(const Tensor& g, const Shape& shape);
}  // namespace cpu

// Plain f64 loops for the tests; results are f64 tensors.
namespace ref {
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add_scalar(const Tensor& x, double s);
Tensor mul_scalar(const Tensor& x, double s);
Tensor pow_scalar(const Tensor& x, double p);
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor gelu_tanh(const Tensor& x);
Tensor gelu_erf(const Tensor& x);
Tensor square(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor relu_backward(const Tensor& g, const Tensor& x);
Tensor gelu_tanh_backward(const Tensor& g, const Tensor& x);
Tensor gelu_erf_backward(const Tensor& g, const Tensor& x);
Tensor sigmoid_backward(const Tensor& g, const Tensor& y);
Tensor tanh_backward(const Tensor& g, const Tensor& y);
Tensor sum_to_shape(const Tensor& g, const Shape& shape);
}  // namespace ref

// The GPU kernels (kernels/cuda/elementwise.cu), same contract and dtypes as the cpu:: ops:
// bit-identical results for the arithmetic ops (add, sub, mul, div, the scalar ops, neg, abs,
// square, sqrt, rsqrt, relu, pow_scalar with p in {1, 2, 0.5, -0.5}, and the relu, sigmoid and
// tanh backwards; a NaN's payload bits may differ on a GPU); exp, tanh, sigmoid and the GELUs use
// the math:: formulas above in f32 (a few ulp from the CPU on a GPU, whose compiler fuses
// multiply-adds); log, pow and every f64 function use the device's libm (a few ulp from glibc).
// sum_to_shape accumulates in f64 like the CPU op and rounds once, deterministically: within an
// ulp of the CPU op when the reduced axes are neighbours; with several groups of them the CPU op
// rounds after each group, and the two differ by that rounding.
namespace cuda {
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add_scalar(const Tensor& x, double s);
Tensor mul_scalar(const Tensor& x, double s);
Tensor pow_scalar(const Tensor& x, double p);
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor gelu_tanh(const Tensor& x);
Tensor gelu_erf(const Tensor& x);
Tensor square(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor relu_backward(const Tensor& g, const Tensor& x);
Tensor gelu_tanh_backward(const Tensor& g, const Tensor& x);
Tensor gelu_erf_backward(const Tensor& g, const Tensor& x);
Tensor sigmoid_backward(const Tensor& g, const Tensor& y);
Tensor tanh_backward(const Tensor& g, const Tensor& y);
Tensor sum_to_shape(const Tensor& g, const Shape& shape);
}  // namespace cuda

// --- entry points (route by the first tensor's device) ---------------------------------------
inline Tensor add(const Tensor& a, const Tensor& b) { KERNEL_ROUTE(a.device(), add, a, b); }
inline Tensor sub(const Tensor& a, const Tensor& b) { KERNEL_ROUTE(a.device(), sub, a, b); }
inline Tensor mul(const Tensor& a, const Tensor& b) { KERNEL_ROUTE(a.device(), mul, a, b); }
inline Tensor div(const Tensor& a, const Tensor& b) { KERNEL_ROUTE(a.device(), div, a, b); }
inline Tensor add_scalar(const Tensor& x, double s) { KERNEL_ROUTE(x.device(), add_scalar, x, s); }
inline Tensor mul_scalar(const Tensor& x, double s) { KERNEL_ROUTE(x.device(), mul_scalar, x, s); }
inline Tensor pow_scalar(const Tensor& x, double p) { KERNEL_ROUTE(x.device(), pow_scalar, x, p); }
inline Tensor neg(const Tensor& x) { KERNEL_ROUTE(x.device(), neg, x); }
inline Tensor exp(const Tensor& x) { KERNEL_ROUTE(x.device(), exp, x); }
inline Tensor log(const Tensor& x) { KERNEL_ROUTE(x.device(), log, x); }
inline Tensor tanh(const Tensor& x) { KERNEL_ROUTE(x.device(), tanh, x); }
inline Tensor sqrt(const Tensor& x) { KERNEL_ROUTE(x.device(), sqrt, x); }
inline Tensor rsqrt(const Tensor& x) { KERNEL_ROUTE(x.device(), rsqrt, x); }
inline Tensor relu(const Tensor& x) { KERNEL_ROUTE(x.device(), relu, x); }
inline Tensor sigmoid(const Tensor& x) { KERNEL_ROUTE(x.device(), sigmoid, x); }
inline Tensor gelu_tanh(const Tensor& x) { KERNEL_ROUTE(x.device(), gelu_tanh, x); }
inline Tensor gelu_erf(const Tensor& x) { KERNEL_ROUTE(x.device(), gelu_erf, x); }
inline Tensor square(const Tensor& x) { KERNEL_ROUTE(x.device(), square, x); }
inline Tensor abs(const Tensor& x) { KERNEL_ROUTE(x.device(), abs, x); }
inline Tensor relu_backward(const Tensor& g, const Tensor& x) {
  KERNEL_ROUTE(g.device(), relu_backward, g, x);
}
inline Tensor gelu_tanh_backward(const Tensor& g, const Tensor& x) {
  KERNEL_ROUTE(g.device(), gelu_tanh_backward, g, x);
}
inline Tensor gelu_erf_backward(const Tensor& g, const Tensor& x) {
  KERNEL_ROUTE(g.device(), gelu_erf_backward, g, x);
}
inline Tensor sigmoid_backward(const Tensor& g, const Tensor& y) {
  KERNEL_ROUTE(g.device(), sigmoid_backward, g, y);
}
inline Tensor tanh_backward(const Tensor& g, const Tensor& y) {
  KERNEL_ROUTE(g.device(), tanh_backward, g, y);
}
// Sums g over the dims where `shape` is broadcast (missing leading dims, or size 1 where g is
// larger); the result has exactly `shape`. `shape` must broadcast to g's shape.
inline Tensor sum_to_shape(const Tensor& g, const Shape& shape) {
  KERNEL_ROUTE(g.device(), sum_to_shape, g, shape);
}

}  // namespace kernels
