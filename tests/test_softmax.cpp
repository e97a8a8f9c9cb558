// softmax / log_softmax and their backward kernels against the f64 reference over every axis
// (strided, threaded and multi-strip paths), stability with huge values and -inf entries,
// errors, and gradcheck.
#include <cmath>
#include <functional>
#include <vector>

#include "autograd/gradcheck.h"
#include "autograd/softmax.h"
#include "kernels/elementwise.h"
#include "kernels/reduce.h"
#include "kernels/softmax.h"
#include "tests/helpers.h"

using autograd::Var;
using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::non_contiguous;
using testing::randn;

namespace {

double rtol_of(DType dt) { return dt == DType::f64 ? 1e-12 : 1e-5; }
double atol_of(DType dt) { return dt == DType::f64 ? 1e-13 : 1e-6; }

using FwdFn = std::function<Tensor(const Tensor&, int)>;
using BwdFn = std::function<Tensor(const Tensor&, const Tensor&, int)>;

struct Op {
  const char* name;
  FwdFn cpu, ref;
  BwdFn cpu_bwd, ref_bwd;
};

const std::vector<Op> kOps = {
    {"softmax", [](const Tensor& x, int a) { return kernels::softmax(x, a); }, kernels::ref::softmax,
     [](const Tensor& g, const Tensor& y, int a) { return kernels::softmax_backward(g, y, a); },
     kernels::ref::softmax_backward},
    {"log_softmax", [](const Tensor& x, int a) { return kernels::log_softmax(x, a); },
     kernels::ref::log_softmax,
     [](const Tensor& g, const Tensor& y, int a) { return kernels::log_softmax_backward(g, y, a); },
     kernels::ref::log_softmax_backward},
};

void check_op(const Op& op, const Tensor& x, int axis, uint64_t stream) {
  const DType dt = x.dtype();
  INFO(op.name << " of " << x.describe() << (x.is_contiguous() ? "" : " (strided)") << " axis "
               << axis);
  Tensor y = op.cpu(x, axis);
  CHECK(y.dtype() == dt);
  CHECK(y.shape() == x.shape());
  CHECK_CLOSE(y, op.ref(x, axis), rtol_of(dt), atol_of(dt));
  // Backward from the reference forward output, with a strided gradient too.
  Tensor yr = op.ref(x, axis).to(dt);
  Tensor g = randn(x.shape(), stream, dt);
  Tensor r = op.ref_bwd(g, yr, axis);
  CHECK_CLOSE(op.cpu_bwd(g, yr, axis), r, rtol_of(dt) * 10, atol_of(dt) * 10);
  CHECK_CLOSE(op.cpu_bwd(non_contiguous(g), yr, axis), r, rtol_of(dt) * 10, atol_of(dt) * 10);
}

void check_grad(const char* name, const std::function<Var(const std::vector<Var>&)>& f,
                const std::vector<Tensor>& inputs) {
  autograd::GradcheckResult r = autograd::gradcheck(f, inputs);
  INFO(name << ": " << r.detail << " (max abs err " << r.max_abs_err << ")");
  CHECK(r.ok);
}

}  // namespace

TEST_CASE("softmax: forward and backward match the reference on every axis") {
  uint64_t stream = 1;
  for (DType dt : {DType::f32, DType::f64}) {
    for (const Op& op : kOps) {
      Tensor x = randn({5, 7, 13}, stream++, dt, 3.0);
      for (int axis : {0, 1, 2, -1, -2, -3}) {
        check_op(op, x, axis, stream++);
        check_op(op, non_contiguous(x), axis, stream++);
      }
      stream += 4;
      check_op(op, randn({7, 13}, 1000 + stream, dt), -1, stream);
      check_op(op, randn({37}, 1001 + stream, dt), 0, stream + 1);
      check_op(op, randn({4, 1, 3}, 1002 + stream, dt), 1, stream + 2);  // an axis of size 1
      check_op(op, Tensor::scalar(0.3, dt), 0, stream + 3);
    }
  }
  // Threaded rows, and several threaded strips of columns (inner 300 > the strip width).
  for (const Op& op : kOps) {
    stream += 3;
    check_op(op, randn({301, 337}, 1000 + stream), -1, stream);
    check_op(op, randn({3, 37, 300}, 1001 + stream), 1, stream + 1);
    check_op(op, non_contiguous(randn({131, 257}, 1002 + stream)), 0, stream + 2);
  }
}

TEST_CASE("softmax: rows sum to one, huge values are stable, -inf entries get 0") {
  for (DType dt : {DType::f32, DType::f64}) {
    INFO(engine::dtype_name(dt));
    Tensor x = randn({9, 37}, 5, dt, 4.0);
    Tensor s = kernels::ref::sum(kernels::softmax(x, 1), 1);
    CHECK_CLOSE(s, Tensor::ones({9}, DType::f64), 1e-6, 0);
    Tensor s0 = kernels::ref::sum(kernels::softmax(x, 0), 0);
    CHECK_CLOSE(s0, Tensor::ones({37}, DType::f64), 1e-6, 0);
    // exp(log_softmax) is softmax.
    Tensor ls = kernels::log_softmax(x, 1);
    CHECK_CLOSE(kernels::ref::exp(ls), kernels::softmax(x, 1), 1e-5, 1e-7);

    const double inf = INFINITY;
    Tensor big = Tensor::from_vector<double>({1e4, 1e4 - 1, -1e4, 2e4,  //
                                              -inf, 1.0, -inf, 1.0,    //
                                              0, 0, 0, 0},
                                             {3, 4}, dt);
    std::vector<double> p = kernels::softmax(big, 1).to_vector<double>();
    const double z = 1 + std::exp(-1.0);
    CHECK(p[0] == doctest::Approx(0));
    CHECK(p[3] == doctest::Approx(1));
    CHECK(p[4] == 0);
    CHECK(p[5] == doctest::Approx(0.5));
    CHECK(p[6] == 0);
    CHECK(p[8] == doctest::Approx(0.25));
    CHECK_CLOSE(kernels::softmax(big, 1), kernels::ref::softmax(big, 1), 1e-6, 1e-12);
    CHECK_CLOSE(kernels::log_softmax(big, 1), kernels::ref::log_softmax(big, 1), 1e-6, 1e-6);
    std::vector<double> q = kernels::softmax(big.slice(1, 0, 2), 1).to_vector<double>();
    CHECK(q[0] == doctest::Approx(1 / z));
    // The same along an outer axis (the strip path).
    Tensor bt = big.transpose(0, 1).contiguous();
    CHECK_CLOSE(kernels::softmax(bt, 0), kernels::softmax(big, 1).transpose(0, 1), 1e-6, 0);
    CHECK_CLOSE(kernels::log_softmax(bt, 0), kernels::log_softmax(big, 1).transpose(0, 1), 1e-6, 0);
    // A row that is all -inf has no distribution: NaN, as in the reference.
    Tensor dead = Tensor::full({2, 3}, -inf, dt);
    CHECK(std::isnan(kernels::softmax(dead, 1).at({0, 0})));
    CHECK(std::isnan(kernels::softmax(dead, 0).at({0, 0})));
  }
}

TEST_CASE("softmax: bf16 in, bf16 out") {
  Tensor x = randn({5, 13}, 6, DType::bf16);
  for (const Op& op : kOps) {
    Tensor y = op.cpu(x, 1);
    CHECK(y.dtype() == DType::bf16);
    CHECK_CLOSE(y, op.ref(x, 1), 1e-2, 1e-2);
  }
}

TEST_CASE("softmax: errors name the op") {
  Tensor x = randn({5, 7}, 7);
  CHECK_THROWS_CONTAINING(kernels::softmax(x, 2), "softmax: axis 2 out of range for a tensor of 2");
  CHECK_THROWS_CONTAINING(kernels::log_softmax(x, -3), "log_softmax: axis -3 out of range");
  CHECK_THROWS_CONTAINING(kernels::softmax_backward(x, randn({7, 5}, 8), 1),
                          "softmax_backward: shape mismatch, f32[5, 7] vs f32[7, 5]");
  CHECK_THROWS_CONTAINING(kernels::log_softmax_backward(x, randn({5, 7}, 8, DType::f64), 1),
                          "log_softmax_backward: dtype mismatch");
  CHECK_THROWS_CONTAINING(kernels::softmax(Tensor::arange(3), 0),
                          "softmax: expected a floating-point 'x', got i64[3]");
  Var v(x, true);
  CHECK_THROWS_CONTAINING(autograd::softmax(v, 2), "softmax: axis 2 out of range");
}

TEST_CASE("softmax: gradcheck over the last, a middle and the first axis") {
  using V = const std::vector<Var>&;
  Tensor x = randn({3, 4, 5}, 9, DType::f64);
  for (int axis : {-1, 1, 0}) {
    INFO("axis " << axis);
    check_grad("softmax", [=](V v) { return autograd::softmax(v[0], axis); }, {x});
    check_grad("log_softmax", [=](V v) { return autograd::log_softmax(v[0], axis); }, {x});
  }
  check_grad("softmax strided", [](V v) { return autograd::softmax(v[0], -1); },
             {non_contiguous(x)});
}
