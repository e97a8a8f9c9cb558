// Shared helpers for the test suites: random inputs, non-contiguous variants, and comparison
// against a reference with a report of the worst element.
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <sstream>
#include <string>

#include "engine/tensor.h"

namespace testing {
using engine::DType;
using engine::Shape;
using engine::Tensor;

// Normal(0, scale) values from a fixed seed; `stream` distinguishes tensors within a test.
inline Tensor randn(const Shape& s, uint64_t stream, DType dt = DType::f32, double scale = 1.0) {
  return Tensor::normal(s, 20261123, stream, 0.0, scale, dt);
}
inline Tensor randu(const Shape& s, uint64_t stream, double lo, double hi, DType dt = DType::f32) {
  return Tensor::uniform(s, 20261123, stream, lo, hi, dt);
}

// The same values as `t`, laid out non-contiguously: stored transposed in its last two dims (or
// with a stride-2 gap for 1-D), then viewed back. Ops must give identical results on it.
inline Tensor non_contiguous(const Tensor& t) {
  if (t.dim() >= 2) {
    Tensor tt = t.transpose(-1, -2).contiguous();
    return tt.transpose(-1, -2);
  }
  Shape s = t.shape();
  if (s.size() == 0) return t;
  Tensor big = Tensor::zeros({s[0] * 2}, t.dtype());
  Tensor v = big.slice(0, 0, s[0] * 2, 2);
  v.copy_(t);
  return v;
}

struct CloseReport {
  bool ok = true;
  std::string msg;
};

// |a - r| <= atol + rtol * |r| everywhere, shapes equal, and no NaN/Inf in `a` unless in `r`.
inline CloseReport compare(const Tensor& actual, const Tensor& ref, double rtol, double atol) {
  CloseReport rep;
  if (!(actual.shape() == ref.shape())) {
    rep.ok = false;
    std::ostringstream os;
    os << "shape " << actual.shape() << " vs reference " << ref.shape();
    rep.msg = os.str();
    return rep;
  }
  auto a = actual.to_vector<double>();
  auto r = ref.to_vector<double>();
  double worst = 0;
  size_t wi = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    bool finite_mismatch = std::isfinite(a[i]) != std::isfinite(r[i]);
    double err = std::abs(a[i] - r[i]);
    double excess = finite_mismatch ? INFINITY : err - (atol + rtol * std::abs(r[i]));
    if (std::isfinite(r[i]) && std::isnan(a[i])) excess = INFINITY;
    if (!std::isfinite(r[i]) && a[i] == r[i]) excess = -1;
    if (excess > 0 && (rep.ok || excess > worst)) {
      rep.ok = false;
      worst = excess;
      wi = i;
    }
  }
  if (!rep.ok) {
    std::ostringstream os;
    os << "element " << wi << " of " << actual.shape() << ": got " << a[wi] << ", reference "
       << r[wi] << " (rtol " << rtol << ", atol " << atol << ")";
    rep.msg = os.str();
  }
  return rep;
}

}  // namespace testing

// CHECK_CLOSE(actual, ref, rtol, atol): fails with the worst element's position and values.
#define CHECK_CLOSE(actual, ref, rtol, atol)                               \
  do {                                                                     \
    auto _rep = ::testing::compare((actual), (ref), (rtol), (atol));       \
    INFO(_rep.msg);                                                        \
    CHECK(_rep.ok);                                                        \
  } while (0)

// CHECK_THROWS_CONTAINING(expr, "text"): expr throws engine::Error whose message contains text.
#define CHECK_THROWS_CONTAINING(expr, text)                                           \
  do {                                                                                \
    std::string _msg = "<no exception>";                                              \
    try {                                                                             \
      (void)(expr);                                                                   \
    } catch (const engine::Error& e) {                                                \
      _msg = e.what();                                                                \
    }                                                                                 \
    INFO("message: " << _msg);                                                        \
    CHECK(_msg.find(text) != std::string::npos);                                      \
  } while (0)
