// Reductions against the f64 reference over every axis of odd 3-D tensors (keepdim on/off,
// strided inputs, the threaded and multi-strip paths), the edge cases (ties, NaN, -inf rows,
// huge values, empty axes, 0-d), long f32 sums, errors, and gradcheck.
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "autograd/gradcheck.h"
#include "autograd/reduce.h"
#include "kernels/reduce.h"
#include "tests/helpers.h"

using autograd::Var;
using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::non_contiguous;
using testing::randn;

namespace {

using AxisFn = std::function<Tensor(const Tensor&, int, bool)>;

double rtol_of(DType dt) { return dt == DType::f64 ? 1e-12 : 2e-6; }
double atol_of(DType dt) { return dt == DType::f64 ? 1e-12 : 2e-6; }

struct AxisOp {
  const char* name;
  AxisFn cpu, ref;
};

const std::vector<AxisOp> kOps = {
    {"sum", [](const Tensor& x, int a, bool k) { return kernels::sum(x, a, k); }, kernels::ref::sum},
    {"mean", [](const Tensor& x, int a, bool k) { return kernels::mean(x, a, k); }, kernels::ref::mean},
    {"max", [](const Tensor& x, int a, bool k) { return kernels::max(x, a, k); }, kernels::ref::max},
    {"argmax", [](const Tensor& x, int a, bool k) { return kernels::argmax(x, a, k); },
     kernels::ref::argmax},
    {"logsumexp", [](const Tensor& x, int a, bool k) { return kernels::logsumexp(x, a, k); },
     kernels::ref::logsumexp},
};

void check_axis_op(const AxisOp& op, const Tensor& x, int axis, bool keepdim) {
  INFO(op.name << " of " << x.describe() << (x.is_contiguous() ? "" : " (strided)") << " axis "
               << axis << " keepdim " << keepdim);
  Tensor y = op.cpu(x, axis, keepdim);
  Tensor r = op.ref(x, axis, keepdim);
  const bool is_argmax = std::string(op.name) == "argmax";
  CHECK(y.dtype() == (is_argmax ? DType::i64 : x.dtype()));
  // Sums of n elements carry n times the rounding of one.
  const double n = double(std::max<int64_t>(1, x.numel()));
  CHECK_CLOSE(y, r, rtol_of(x.dtype()) * std::sqrt(n), atol_of(x.dtype()) * std::sqrt(n));
}

void check_grad(const char* name, const std::function<Var(const std::vector<Var>&)>& f,
                const std::vector<Tensor>& inputs) {
  autograd::GradcheckResult r = autograd::gradcheck(f, inputs);
  INFO(name << ": " << r.detail << " (max abs err " << r.max_abs_err << ")");
  CHECK(r.ok);
}

// Distinct values (a scrambled ramp), so max has no near-ties for finite differences to cross.
Tensor distinct(const Shape& s, DType dt) {
  std::vector<double> v(s.numel());
  for (size_t i = 0; i < v.size(); ++i) v[i] = double((i * 7919) % v.size()) * 0.1 - 1.0;
  return Tensor::from_vector(v, s, dt);
}

}  // namespace

TEST_CASE("reduce: every axis of an odd 3-D tensor, keepdim on and off, strided") {
  uint64_t stream = 1;
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor x = randn({5, 7, 13}, stream++, dt, 3.0);
    Tensor nc = non_contiguous(x);
    Tensor perm = randn({13, 7, 5}, stream++, dt).permute({2, 1, 0});  // fully reversed strides
    for (const AxisOp& op : kOps)
      for (int axis : {0, 1, 2, -1, -2, -3})
        for (bool keepdim : {false, true}) {
          check_axis_op(op, x, axis, keepdim);
          check_axis_op(op, nc, axis, keepdim);
          check_axis_op(op, perm, axis, keepdim);
        }
  }
}

TEST_CASE("reduce: size-1 dims, 1-D, 0-d, bf16 and the large threaded paths") {
  for (const AxisOp& op : kOps) {
    check_axis_op(op, randn({1, 7, 1}, 3, DType::f64), 1, false);
    check_axis_op(op, randn({1, 7, 1}, 4, DType::f64), 0, true);
    check_axis_op(op, randn({37}, 5, DType::f64), 0, false);
    check_axis_op(op, randn({37}, 5, DType::f64), -1, true);
    Tensor s = Tensor::scalar(1.25, DType::f64);
    Tensor y = op.cpu(s, 0, false);
    CHECK(y.dim() == 0);
    CHECK(y.item() == op.ref(s, 0, false).item());
    // The rows path (innermost axis) with threads, and the strip path with more than one strip
    // of columns (inner 300 > the strip width) and threads.
    check_axis_op(op, randn({130, 771}, 6), 1, false);
    check_axis_op(op, randn({130, 771}, 7), 0, true);
    check_axis_op(op, randn({3, 37, 300}, 8), 1, false);
    check_axis_op(op, non_contiguous(randn({37, 301}, 9)), 0, false);
    // bf16 in, bf16 out (argmax: i64), computed in f32.
    Tensor xb = randn({3, 7, 5}, 10, DType::bf16);
    Tensor yb = op.cpu(xb, 1, false);
    CHECK(yb.dtype() == (std::string(op.name) == "argmax" ? DType::i64 : DType::bf16));
    CHECK_CLOSE(yb, op.ref(xb, 1, false), 1e-2, 2e-2);
  }
}

TEST_CASE("reduce: argmax takes the first maximum, max and argmax see NaN") {
  // Rows with ties: the first maximal index wins, along both the inner and an outer axis.
  Tensor t = Tensor::from_vector<double>({1, 3, 3, 0, 3, 2,  //
                                          5, 5, 5, 5, 5, 5,  //
                                          -1, -2, -1, -3, -2, -1},
                                         {3, 6});
  CHECK(kernels::argmax(t, 1).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 0});
  Tensor tt = t.transpose(0, 1).contiguous();  // [6, 3]: the ties now lie along axis 0
  CHECK(kernels::argmax(tt, 0).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 0});
  CHECK(kernels::argmax(t, 1).to_vector<int64_t>() == kernels::ref::argmax(t, 1).to_vector<int64_t>());
  // NaN propagates through max and is what argmax points at.
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor n = Tensor::from_vector<double>({1, NAN, 7, 2, 9, 4}, {2, 3}, dt);
    std::vector<double> m1 = kernels::max(n, 1).to_vector<double>();
    CHECK(std::isnan(m1[0]));
    CHECK(m1[1] == 9);
    std::vector<double> m0 = kernels::max(n, 0).to_vector<double>();
    CHECK(m0[0] == 2);
    CHECK(std::isnan(m0[1]));
    CHECK(m0[2] == 7);
    CHECK(kernels::argmax(n, 1).to_vector<int64_t>() == std::vector<int64_t>{1, 1});
    CHECK(kernels::argmax(n, 0).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 0});
  }
}

TEST_CASE("reduce: logsumexp is stable for huge values and -inf rows") {
  for (DType dt : {DType::f32, DType::f64}) {
    INFO(engine::dtype_name(dt));
    const double inf = INFINITY;
    Tensor x = Tensor::from_vector<double>({1e4, 1e4 - 1, 1e4 + 2,   //
                                            -inf, -inf, -inf,        //
                                            -inf, 0.5, -inf,         //
                                            -1e4, -1e4, -1e4},
                                           {4, 3}, dt);
    std::vector<double> r = kernels::logsumexp(x, 1).to_vector<double>();
    const double top = 1e4 + 2 + std::log(1 + std::exp(-2.0) + std::exp(-3.0));
    CHECK(std::abs(r[0] - top) < 1e-2);
    CHECK(r[1] == -inf);
    CHECK(r[2] == doctest::Approx(0.5));
    CHECK(std::abs(r[3] - (-1e4 + std::log(3.0))) < 1e-2);
    // The same along an outer axis (strip path).
    Tensor xt = x.transpose(0, 1).contiguous();
    CHECK_CLOSE(kernels::logsumexp(xt, 0), kernels::logsumexp(x, 1), 1e-6, 0);
    // +inf dominates.
    Tensor p = Tensor::from_vector<double>({1, inf, 3}, {3}, dt);
    CHECK(kernels::logsumexp(p, 0).item() == inf);
  }
}

TEST_CASE("reduce: full reductions, long f32 sums and empty tensors") {
  for (DType dt : {DType::f32, DType::f64}) {
    for (Shape s : {Shape{}, Shape{1}, Shape{7}, Shape{5, 7, 13}, Shape{317, 331}}) {
      Tensor x = randn(s, 20, dt);
      INFO(x.describe());
      for (Tensor in : {x, non_contiguous(x)}) {
        Tensor y = kernels::sum_all(in);
        CHECK(y.dim() == 0);
        CHECK(y.dtype() == dt);
        CHECK_CLOSE(y, kernels::ref::sum_all(x), 1e-6, 1e-5);
        CHECK_CLOSE(kernels::mean_all(in), kernels::ref::mean_all(x), 1e-6, 1e-8);
      }
    }
  }
  // 16M f32 elements: a float accumulator would be off by percents, f64 partials are exact
  // here to the last bit of the f32 result.
  const int64_t n = 1 << 24;
  Tensor big = Tensor::full({n}, 0.1, DType::f32);
  const double exact = double(0.1f) * double(n);
  CHECK(std::abs(kernels::sum_all(big).item() - exact) / exact < 1e-7);
  CHECK(std::abs(kernels::mean_all(big).item() - double(0.1f)) < 1e-8);
  CHECK(std::abs(kernels::sum(big.view({16, n / 16}), 1).at({3}) - exact / 16) / exact < 1e-7);
  // Empty tensors.
  Tensor e = Tensor::empty({3, 0, 5});
  CHECK(kernels::sum(e, 1).shape() == Shape{3, 5});
  CHECK(kernels::sum(e, 1).to_vector<float>() == std::vector<float>(15, 0.0f));
  CHECK(std::isnan(kernels::mean(e, 1).at({0, 0})));
  CHECK(kernels::logsumexp(e, 1).at({2, 4}) == -INFINITY);
  CHECK(kernels::sum(e, 0).shape() == Shape{0, 5});
  CHECK(kernels::max(e, 0).shape() == Shape{0, 5});
  CHECK(kernels::sum_all(e).item() == 0);
  CHECK(std::isnan(kernels::mean_all(e).item()));
  CHECK_THROWS_CONTAINING(kernels::max(e, 1), "max: cannot reduce f32[3, 0, 5] over axis 1 of size 0");
  CHECK_THROWS_CONTAINING(kernels::argmax(e, 1), "argmax: cannot reduce");
}

TEST_CASE("reduce: max_backward scatters to the argmax position") {
  for (int axis : {0, 1, 2, -1}) {
    for (bool keepdim : {false, true}) {
      Tensor x = randn({5, 7, 3}, 30, DType::f64);
      Tensor idx = kernels::argmax(x, axis, keepdim);
      Tensor g = randn(idx.shape(), 31, DType::f64);
      INFO("axis " << axis << " keepdim " << keepdim);
      CHECK_CLOSE(kernels::max_backward(g, idx, x.shape(), axis),
                  kernels::ref::max_backward(g, idx, x.shape(), axis), 0, 0);
    }
  }
  Tensor idx = Tensor::from_vector<int64_t>({0, 7}, {2});
  CHECK_THROWS_CONTAINING(kernels::max_backward(Tensor::ones({2}), idx, {2, 7}, 1),
                          "max_backward: index 7 out of range for axis 1 of size 7");
  CHECK_THROWS_CONTAINING(kernels::max_backward(Tensor::ones({3}), Tensor::zeros({3}, DType::i64),
                                                {2, 7}, 1),
                          "max_backward: gradient f32[3] does not match");
}

TEST_CASE("reduce: errors name the op, the axis and the tensor") {
  Tensor x = randn({5, 7, 13}, 40);
  CHECK_THROWS_CONTAINING(kernels::sum(x, 3), "sum: axis 3 out of range for a tensor of 3 dimensions");
  CHECK_THROWS_CONTAINING(kernels::mean(x, -4), "mean: axis -4 out of range");
  CHECK_THROWS_CONTAINING(kernels::max(x, 5, true), "max: axis 5 out of range");
  CHECK_THROWS_CONTAINING(kernels::argmax(x, 3), "argmax: axis 3 out of range");
  CHECK_THROWS_CONTAINING(kernels::logsumexp(x, -7), "logsumexp: axis -7 out of range");
  CHECK_THROWS_CONTAINING(kernels::sum(Tensor::scalar(1.0), 1), "sum: axis 1 out of range");
  CHECK_THROWS_CONTAINING(kernels::sum(Tensor::arange(5), 0),
                          "sum: expected a floating-point tensor, got i64[5]");
  CHECK_THROWS_CONTAINING(kernels::sum_all(Tensor::arange(5)), "sum_all: expected a floating-point");
  Var v(x, true);
  CHECK_THROWS_CONTAINING(autograd::sum(v, 3), "sum: axis 3 out of range");
}

TEST_CASE("reduce: gradcheck over a middle axis, the last axis and everything") {
  using V = const std::vector<Var>&;
  Tensor x = randn({3, 4, 5}, 50, DType::f64);
  Tensor d = distinct({3, 4, 5}, DType::f64);
  for (int axis : {1, -1, 0}) {
    for (bool keepdim : {false, true}) {
      INFO("axis " << axis << " keepdim " << keepdim);
      check_grad("sum", [=](V v) { return autograd::sum(v[0], axis, keepdim); }, {x});
      check_grad("mean", [=](V v) { return autograd::mean(v[0], axis, keepdim); }, {x});
      check_grad("max", [=](V v) { return autograd::max(v[0], axis, keepdim); }, {d});
      check_grad("logsumexp", [=](V v) { return autograd::logsumexp(v[0], axis, keepdim); }, {x});
    }
  }
  check_grad("sum_all", [](V v) { return autograd::sum_all(v[0]); }, {x});
  check_grad("mean_all", [](V v) { return autograd::mean_all(v[0]); }, {x});
  check_grad("sum strided", [](V v) { return autograd::sum(v[0], 1); }, {non_contiguous(x)});
  // 0-d and 1-D inputs.
  check_grad("sum 0-d", [](V v) { return autograd::sum(v[0], 0); }, {Tensor::scalar(2.0, DType::f64)});
  check_grad("mean 1-D", [](V v) { return autograd::mean(v[0], 0); }, {randn({7}, 51, DType::f64)});
  // Ties: the whole gradient goes to the first maximum.
  Var t(Tensor::from_vector<double>({2, 5, 5, 1}, {4}), true);
  autograd::max(t, 0).backward();
  CHECK(t.grad().to_vector<double>() == std::vector<double>{0, 1, 0, 0});
}
