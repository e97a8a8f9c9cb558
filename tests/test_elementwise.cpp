// Elementwise kernels against the f64 reference (odd shapes, broadcasting, strided and large
// inputs, f32/f64/bf16), the vectorised exp, sum_to_shape, error messages, and gradcheck of
// every differentiable elementwise op.
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "autograd/elementwise.h"
#include "autograd/gradcheck.h"
#include "kernels/elementwise.h"
#include "tests/helpers.h"

using autograd::Var;
using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::non_contiguous;
using testing::randn;
using testing::randu;

namespace {

using UnaryFn = std::function<Tensor(const Tensor&)>;
using BinaryFn = std::function<Tensor(const Tensor&, const Tensor&)>;

double rtol_of(DType dt) { return dt == DType::f64 ? 1e-10 : dt == DType::f32 ? 2e-6 : 1e-2; }
double atol_of(DType dt) { return dt == DType::f64 ? 1e-12 : dt == DType::f32 ? 1e-6 : 1e-2; }

const std::vector<Shape> kShapes = {{}, {1}, {7}, {3, 13}, {5, 1, 7}, {2, 3, 37}};

// Inputs of a unary op: normal, or uniform in [lo, hi] for ops with a restricted domain.
struct Domain {
  bool positive = false;
  double lo = 0.1, hi = 4.0;
};

Tensor make_input(const Shape& s, uint64_t stream, DType dt, Domain d) {
  return d.positive ? randu(s, stream, d.lo, d.hi, dt) : randn(s, stream, dt, 2.0);
}

// `large`: also sizes above the threading threshold (f32 only: the threaded loops are the same
// code for every dtype, and each costs a thread wake-up).
void check_unary(const char* name, const UnaryFn& cpu, const UnaryFn& ref, Domain d = {},
                 bool large = true) {
  uint64_t stream = 1;
  for (DType dt : {DType::f32, DType::f64}) {
    for (const Shape& s : kShapes) {
      Tensor x = make_input(s, stream++, dt, d);
      INFO(name << " on " << x.describe());
      Tensor y = cpu(x);
      CHECK(y.dtype() == dt);
      CHECK_CLOSE(y, ref(x), rtol_of(dt), atol_of(dt));
      CHECK_CLOSE(cpu(non_contiguous(x)), ref(x), rtol_of(dt), atol_of(dt));
    }
  }
  if (large) {
    // Flat threaded loop, and the threaded strided-row path on a transposed input.
    Tensor flat = make_input({100003}, stream++, DType::f32, d);
    Tensor big = make_input({317, 331}, stream++, DType::f32, d);
    INFO(name << " on " << flat.describe() << " and a transposed " << big.describe());
    CHECK_CLOSE(cpu(flat), ref(flat), rtol_of(DType::f32), atol_of(DType::f32));
    CHECK_CLOSE(cpu(non_contiguous(big)), ref(big), rtol_of(DType::f32), atol_of(DType::f32));
  }
  // bf16 in, bf16 out, computed in f32.
  Tensor xb = make_input({3, 37}, stream++, DType::bf16, d);
  Tensor yb = cpu(xb);
  CHECK(yb.dtype() == DType::bf16);
  CHECK_CLOSE(yb, ref(xb), rtol_of(DType::bf16), atol_of(DType::bf16));
}

// Pairs of shapes that broadcast, including 0-d and size-1 operands on either side.
const std::vector<std::pair<Shape, Shape>> kPairs = {
    {{3, 13}, {3, 13}}, {{5, 1, 7}, {3, 1}}, {{1}, {4, 3}},     {{}, {3, 5}},
    {{3, 5}, {}},       {{37}, {13, 37}},    {{13, 1}, {1, 37}}, {{}, {}},
    {{2, 1, 3, 1}, {1, 5, 1, 7}}};
// Large ones take the threaded paths: flat, rows with a broadcast row, a single long row.
const std::vector<std::pair<Shape, Shape>> kLargePairs = {
    {{100003}, {100003}}, {{1000, 101}, {101}}, {{100003}, {1}}, {{1000, 1}, {1, 101}}};

void check_binary(const char* name, const BinaryFn& cpu, const BinaryFn& ref,
                  bool positive_b = false) {
  uint64_t stream = 100;
  for (DType dt : {DType::f32, DType::f64}) {
    for (auto& [sa, sb] : kPairs) {
      Tensor a = randn(sa, stream++, dt);
      Tensor b = positive_b ? randu(sb, stream++, 0.5, 2.0, dt) : randn(sb, stream++, dt);
      INFO(name << " on " << a.describe() << " and " << b.describe());
      Tensor r = ref(a, b);
      Tensor y = cpu(a, b);
      CHECK(y.shape() == engine::broadcast_shapes(sa, sb, "test"));
      CHECK_CLOSE(y, r, rtol_of(dt), atol_of(dt));
      CHECK_CLOSE(cpu(non_contiguous(a), b), r, rtol_of(dt), atol_of(dt));
      CHECK_CLOSE(cpu(a, non_contiguous(b)), r, rtol_of(dt), atol_of(dt));
    }
  }
  for (auto& [sa, sb] : kLargePairs) {
    Tensor a = randn(sa, stream++), b = positive_b ? randu(sb, stream++, 0.5, 2.0) : randn(sb, stream++);
    INFO(name << " on " << a.describe() << " and " << b.describe());
    CHECK_CLOSE(cpu(a, b), ref(a, b), rtol_of(DType::f32), atol_of(DType::f32));
  }
  Tensor a = randn({317, 331}, stream++), b = positive_b ? randu({317, 331}, stream++, 0.5, 2.0)
                                                         : randn({317, 331}, stream++);
  CHECK_CLOSE(cpu(non_contiguous(a), b), ref(a, b), rtol_of(DType::f32), atol_of(DType::f32));
  Tensor ab = randn({5, 1, 7}, stream++, DType::bf16);
  Tensor bb = positive_b ? randu({3, 1}, stream++, 0.5, 2.0, DType::bf16)
                         : randn({3, 1}, stream++, DType::bf16);
  Tensor yb = cpu(ab, bb);
  CHECK(yb.dtype() == DType::bf16);
  CHECK_CLOSE(yb, ref(ab, bb), rtol_of(DType::bf16), atol_of(DType::bf16));
}

// Normal values pushed at least `gap` away from 0, for ops with a kink there (relu, abs).
Tensor away_from_zero(const Shape& s, uint64_t stream, DType dt, double gap = 0.2) {
  std::vector<double> v = randn(s, stream, DType::f64).to_vector<double>();
  for (double& e : v) e += e >= 0 ? gap : -gap;
  return Tensor::from_vector(v, s, dt);
}

void check_grad(const char* name, const std::function<Var(const std::vector<Var>&)>& f,
                const std::vector<Tensor>& inputs) {
  autograd::GradcheckResult r = autograd::gradcheck(f, inputs);
  INFO(name << ": " << r.detail << " (max abs err " << r.max_abs_err << ")");
  CHECK(r.ok);
}

}  // namespace

TEST_CASE("elementwise: vectorised f32 exp matches libm and handles the special values") {
  using kernels::math::exp_f32;
  double worst = 0;
  for (double x = -87.3; x < 88.72; x += 0.00731) {
    const float xf = float(x);
    const double r = std::exp(double(xf));
    worst = std::max(worst, std::abs(double(exp_f32(xf)) - r) / r);
  }
  CHECK(worst < 3e-7);  // ~2.5 ulp
  CHECK(exp_f32(0.0f) == 1.0f);
  CHECK(exp_f32(-INFINITY) == 0.0f);
  CHECK(exp_f32(-1e30f) == 0.0f);
  CHECK(exp_f32(-100.0f) == 0.0f);  // below FLT_MIN: flushed
  CHECK(std::isinf(exp_f32(INFINITY)));
  CHECK(std::isinf(exp_f32(88.73f)));
  CHECK(std::isinf(exp_f32(1e30f)));
  CHECK(std::isfinite(exp_f32(88.72f)));
  CHECK(std::abs(exp_f32(88.72f) / std::exp(double(88.72f)) - 1) < 1e-6);
  CHECK(std::isnan(exp_f32(NAN)));
  CHECK(std::isnan(exp_f32(-NAN)));
  // The f32 kernel uses it; its results stay finite and ordered at the range ends.
  Tensor x = Tensor::from_vector<float>({-INFINITY, -200, 0, 88, 200, INFINITY}, {6});
  std::vector<float> y = kernels::exp(x).to_vector<float>();
  CHECK(y[0] == 0);
  CHECK(y[1] == 0);
  CHECK(y[2] == 1);
  CHECK(std::isfinite(y[3]));
  CHECK(std::isinf(y[4]));
  CHECK(std::isinf(y[5]));
}

TEST_CASE("elementwise: vectorised f32 tanh and normal CDF match libm") {
  using kernels::math::normal_cdf_f32;
  using kernels::math::tanh_f32;
  double worst_tanh = 0, worst_cdf = 0;
  for (double x = -14; x < 14; x += 1.1e-3) {
    const float xf = float(x);
    const double t = std::tanh(double(xf));
    if (t != 0) worst_tanh = std::max(worst_tanh, std::abs(tanh_f32(xf) - t) / std::abs(t));
    const double c = 0.5 * std::erfc(-double(xf) / std::sqrt(2.0));  // Phi(x)
    if (c > 1e-37) worst_cdf = std::max(worst_cdf, std::abs(normal_cdf_f32(xf) - c) / c);
  }
  CHECK(worst_tanh < 2.5e-7);
  CHECK(worst_cdf < 6e-7);  // relative, far down the lower tail too
  CHECK(tanh_f32(1e-30f) == 1e-30f);
  CHECK(std::signbit(tanh_f32(-0.0f)));
  CHECK(tanh_f32(INFINITY) == 1);
  CHECK(tanh_f32(-INFINITY) == -1);
  CHECK(std::isnan(tanh_f32(NAN)));
  CHECK(normal_cdf_f32(0) == 0.5f);
  CHECK(normal_cdf_f32(-INFINITY) == 0);
  CHECK(normal_cdf_f32(INFINITY) == 1);
  CHECK(std::isnan(normal_cdf_f32(NAN)));
}

TEST_CASE("elementwise: bf16 results are the f32 results rounded to nearest even") {
  // The kernels' own bf16 store must agree bit for bit with the engine's conversion.
  Tensor x = randn({7, 37}, 11, DType::bf16, 3.0);
  Tensor xs = Tensor::from_vector<float>({NAN, INFINITY, -INFINITY, 1e38f, -0.0f, 3.0e-39f}, {6})
                  .to(DType::bf16);
  for (const Tensor& in : {x, xs}) {
    for (const UnaryFn& f : std::vector<UnaryFn>{kernels::cpu::exp, kernels::cpu::neg,
                                                 kernels::cpu::gelu_tanh, kernels::cpu::square}) {
      std::vector<float> got = f(in).to_vector<float>();
      std::vector<float> want = f(in.to(DType::f32)).to(DType::bf16).to_vector<float>();
      REQUIRE(got.size() == want.size());
      for (size_t i = 0; i < got.size(); ++i) {
        INFO("element " << i << ": " << got[i] << " vs " << want[i]);
        CHECK((got[i] == want[i] || (std::isnan(got[i]) && std::isnan(want[i]))));
      }
    }
  }
}

TEST_CASE("elementwise: unary ops match the reference") {
  Domain pos;
  pos.positive = true;
  check_unary("neg", kernels::cpu::neg, kernels::ref::neg);
  check_unary("exp", kernels::cpu::exp, kernels::ref::exp);
  check_unary("log", kernels::cpu::log, kernels::ref::log, pos);
  check_unary("tanh", kernels::cpu::tanh, kernels::ref::tanh);
  check_unary("sqrt", kernels::cpu::sqrt, kernels::ref::sqrt, pos);
  check_unary("rsqrt", kernels::cpu::rsqrt, kernels::ref::rsqrt, pos);
  check_unary("relu", kernels::cpu::relu, kernels::ref::relu);
  check_unary("sigmoid", kernels::cpu::sigmoid, kernels::ref::sigmoid);
  check_unary("gelu_tanh", kernels::cpu::gelu_tanh, kernels::ref::gelu_tanh);
  check_unary("gelu_erf", kernels::cpu::gelu_erf, kernels::ref::gelu_erf);
  check_unary("square", kernels::cpu::square, kernels::ref::square);
  check_unary("abs", kernels::cpu::abs, kernels::ref::abs);
}

TEST_CASE("elementwise: scalar ops and powers match the reference") {
  Domain pos;
  pos.positive = true;
  for (double s : {2.5, -0.75}) {
    check_unary(
        "add_scalar", [s](const Tensor& x) { return kernels::cpu::add_scalar(x, s); },
        [s](const Tensor& x) { return kernels::ref::add_scalar(x, s); }, {}, false);
    check_unary(
        "mul_scalar", [s](const Tensor& x) { return kernels::cpu::mul_scalar(x, s); },
        [s](const Tensor& x) { return kernels::ref::mul_scalar(x, s); }, {}, false);
  }
  // Integer powers on any sign; fractional ones (and the special-cased 0.5, -0.5) on x > 0.
  for (double p : {0.0, 1.0, 2.0, 3.0, -1.0}) {
    check_unary(
        "pow_scalar", [p](const Tensor& x) { return kernels::cpu::pow_scalar(x, p); },
        [p](const Tensor& x) { return kernels::ref::pow_scalar(x, p); }, pos, false);
  }
  for (double p : {0.5, -0.5, 1.7, -2.3}) {
    check_unary(
        "pow_scalar", [p](const Tensor& x) { return kernels::cpu::pow_scalar(x, p); },
        [p](const Tensor& x) { return kernels::ref::pow_scalar(x, p); }, pos, false);
  }
  Tensor x = randn({3, 7}, 9, DType::f64);
  CHECK_CLOSE(kernels::pow_scalar(x, 3.0), kernels::ref::pow_scalar(x, 3.0), 1e-12, 1e-12);
}

TEST_CASE("elementwise: binary ops broadcast like NumPy and match the reference") {
  check_binary("add", kernels::cpu::add, kernels::ref::add);
  check_binary("sub", kernels::cpu::sub, kernels::ref::sub);
  check_binary("mul", kernels::cpu::mul, kernels::ref::mul);
  check_binary("div", kernels::cpu::div, kernels::ref::div, /*positive_b=*/true);
  // Operand order matters for sub/div with broadcasting on the left.
  Tensor a = randn({3, 1}, 1, DType::f64), b = randu({5, 1, 7}, 2, 0.5, 2, DType::f64);
  CHECK_CLOSE(kernels::sub(a, b), kernels::ref::sub(a, b), 1e-12, 1e-12);
  CHECK_CLOSE(kernels::div(a, b), kernels::ref::div(a, b), 1e-12, 1e-12);
  // An expanded (stride-0) operand is read correctly.
  Tensor row = randn({1, 9}, 3, DType::f64);
  Tensor e = row.expand({4, 9});
  CHECK_CLOSE(kernels::mul(e, e), kernels::ref::mul(e, e), 1e-12, 1e-12);
}

TEST_CASE("elementwise: backward kernels match the reference") {
  check_binary("relu_backward", kernels::cpu::relu_backward, kernels::ref::relu_backward);
  check_binary("gelu_tanh_backward", kernels::cpu::gelu_tanh_backward,
               kernels::ref::gelu_tanh_backward);
  check_binary("gelu_erf_backward", kernels::cpu::gelu_erf_backward,
               kernels::ref::gelu_erf_backward);
  check_binary("sigmoid_backward", kernels::cpu::sigmoid_backward, kernels::ref::sigmoid_backward);
  check_binary("tanh_backward", kernels::cpu::tanh_backward, kernels::ref::tanh_backward);
}

TEST_CASE("elementwise: gelu and sigmoid stay finite and exact at the tails") {
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor x = Tensor::from_vector<double>({-1e4, -60, -12, 12, 60, 1e4}, {6}, dt);
    std::vector<double> g = kernels::gelu_tanh(x).to_vector<double>();
    std::vector<double> d = kernels::gelu_tanh_backward(Tensor::ones({6}, dt), x).to_vector<double>();
    std::vector<double> s = kernels::sigmoid(x).to_vector<double>();
    INFO(engine::dtype_name(dt));
    for (int i = 0; i < 6; ++i) {
      CHECK(std::isfinite(g[i]));
      CHECK(std::isfinite(d[i]));
      CHECK(std::isfinite(s[i]));
    }
    CHECK(g[0] == 0);
    CHECK(g[5] == 1e4);
    CHECK(d[0] == 0);
    CHECK(d[5] == 1);
    CHECK(s[0] == 0);
    CHECK(s[5] == 1);
    // relu keeps NaN (a silent 0 would hide a bug upstream)
    CHECK(std::isnan(kernels::relu(Tensor::full({1}, NAN, dt)).item()));
  }
  // gelu_tanh for negative x, where 1 + tanh(u) cancels: relative accuracy, not only absolute
  // (beyond x = -5 the f64 reference itself runs out of digits).
  Tensor x = Tensor::from_vector<float>({-5.0f, -4.0f, -3.0f}, {3});
  CHECK_CLOSE(kernels::gelu_tanh(x), kernels::ref::gelu_tanh(x), 1e-5, 0);
}

TEST_CASE("elementwise: sum_to_shape sums exactly the broadcast dims") {
  struct Case {
    Shape g, target;
  };
  std::vector<Case> cases = {{{3, 13}, {3, 13}}, {{3, 13}, {13}},       {{3, 13}, {3, 1}},
                             {{3, 13}, {}},      {{3, 13}, {1, 1}},     {{5, 3, 7}, {3, 1}},
                             {{5, 3, 7}, {5, 1, 7}}, {{5, 3, 7}, {1, 3, 1}}, {{2, 5, 3, 7}, {5, 1, 1}},
                             {{1000, 101}, {101}}, {{101, 1000}, {101, 1}}, {{4, 0, 3}, {3}},
                             {{1, 1}, {1}},      {{}, {}}};
  uint64_t stream = 50;
  for (DType dt : {DType::f32, DType::f64}) {
    for (const Case& c : cases) {
      Tensor g = randn(c.g, stream++, dt);
      INFO("sum_to_shape " << g.describe() << " -> " << c.target);
      Tensor r = kernels::ref::sum_to_shape(g, c.target);
      Tensor y = kernels::sum_to_shape(g, c.target);
      CHECK(y.shape() == c.target);
      CHECK(y.dtype() == dt);
      CHECK_CLOSE(y, r, rtol_of(dt) * 10, atol_of(dt) * 10);
      CHECK_CLOSE(kernels::sum_to_shape(non_contiguous(g), c.target), r, rtol_of(dt) * 10,
                  atol_of(dt) * 10);
    }
  }
  // An expanded gradient (stride 0) reduces like its materialised copy.
  Tensor row = randn({1, 7}, 77, DType::f64);
  Tensor e = row.expand({5, 7});
  CHECK_CLOSE(kernels::sum_to_shape(e, {7}), kernels::ref::sum_to_shape(e.contiguous(), {7}), 1e-12,
              1e-12);
}

TEST_CASE("elementwise: errors name the op and the shapes") {
  Tensor a = randn({2, 3}, 1), b = randn({4}, 2);
  CHECK_THROWS_CONTAINING(kernels::mul(a, b), "mul: shapes [2, 3] and [4] cannot be broadcast");
  CHECK_THROWS_CONTAINING(kernels::add(a, randn({2, 3}, 3, DType::f64)),
                          "add: dtype mismatch, f32[2, 3] vs f64[2, 3]");
  CHECK_THROWS_CONTAINING(kernels::exp(Tensor::arange(4)), "exp: expected dtype f32, f64 or bf16, got i64");
  CHECK_THROWS_CONTAINING(kernels::div(a, Tensor()), "div: argument 'b' is an undefined tensor");
  CHECK_THROWS_CONTAINING(kernels::sum_to_shape(a, {3, 3}), "sum_to_shape");
  CHECK_THROWS_CONTAINING(kernels::sum_to_shape(a, {1, 2, 3}), "sum_to_shape: cannot reduce f32[2, 3]");
  CHECK_THROWS_CONTAINING(kernels::relu_backward(a, b), "relu_backward: shapes [2, 3] and [4]");
  Var va(a, true), vb(b, true);
  CHECK_THROWS_CONTAINING(autograd::add(va, vb), "add: shapes [2, 3] and [4] cannot be broadcast");
}

TEST_CASE("elementwise: gradcheck of the binary ops, with broadcasting") {
  using autograd::gradcheck;
  const std::vector<std::pair<Shape, Shape>> pairs = {
      {{3, 4}, {3, 4}}, {{5, 1, 3}, {4, 1}}, {{1}, {2, 3}}, {{}, {3, 2}}, {{2, 3}, {}}, {{3, 1}, {1, 4}}};
  uint64_t stream = 200;
  for (auto& [sa, sb] : pairs) {
    Tensor a = randn(sa, stream++, DType::f64), b = randn(sb, stream++, DType::f64);
    Tensor bpos = randu(sb, stream++, 0.5, 2.0, DType::f64);
    INFO(sa << " with " << sb);
    check_grad("add", [](const std::vector<Var>& v) { return autograd::add(v[0], v[1]); }, {a, b});
    check_grad("sub", [](const std::vector<Var>& v) { return autograd::sub(v[0], v[1]); }, {a, b});
    check_grad("mul", [](const std::vector<Var>& v) { return autograd::mul(v[0], v[1]); }, {a, b});
    check_grad("div", [](const std::vector<Var>& v) { return autograd::div(v[0], v[1]); },
               {a, bpos});
  }
  // One input used twice: the two gradient contributions add up.
  Tensor x = randn({3, 5}, 300, DType::f64);
  check_grad("x*x", [](const std::vector<Var>& v) { return autograd::mul(v[0], v[0]); }, {x});
  check_grad("x*x+x", [](const std::vector<Var>& v) { return v[0] * v[0] + v[0]; }, {x});
}

TEST_CASE("elementwise: gradcheck of the unary and scalar ops") {
  Tensor x = randn({3, 5}, 400, DType::f64);
  Tensor pos = randu({3, 5}, 401, 0.5, 2.0, DType::f64);
  Tensor kinked = away_from_zero({3, 5}, 402, DType::f64);
  using V = const std::vector<Var>&;
  check_grad("neg", [](V v) { return autograd::neg(v[0]); }, {x});
  check_grad("add_scalar", [](V v) { return autograd::add_scalar(v[0], 1.5); }, {x});
  check_grad("mul_scalar", [](V v) { return autograd::mul_scalar(v[0], -2.5); }, {x});
  check_grad("exp", [](V v) { return autograd::exp(v[0]); }, {x});
  check_grad("log", [](V v) { return autograd::log(v[0]); }, {pos});
  check_grad("tanh", [](V v) { return autograd::tanh(v[0]); }, {x});
  check_grad("sqrt", [](V v) { return autograd::sqrt(v[0]); }, {pos});
  check_grad("rsqrt", [](V v) { return autograd::rsqrt(v[0]); }, {pos});
  check_grad("relu", [](V v) { return autograd::relu(v[0]); }, {kinked});
  check_grad("sigmoid", [](V v) { return autograd::sigmoid(v[0]); }, {x});
  check_grad("gelu tanh", [](V v) { return autograd::gelu(v[0], autograd::GeluApprox::tanh); }, {x});
  check_grad("gelu erf", [](V v) { return autograd::gelu(v[0], autograd::GeluApprox::erf); }, {x});
  check_grad("square", [](V v) { return autograd::square(v[0]); }, {x});
  check_grad("pow 3", [](V v) { return autograd::pow_scalar(v[0], 3.0); }, {x});
  check_grad("pow 0", [](V v) { return autograd::pow_scalar(v[0], 0.0); }, {x});
  check_grad("pow -1.5", [](V v) { return autograd::pow_scalar(v[0], -1.5); }, {pos});
  check_grad("pow 0.5", [](V v) { return autograd::pow_scalar(v[0], 0.5); }, {pos});
  // Non-contiguous input data.
  check_grad("gelu tanh strided",
             [](V v) { return autograd::gelu(v[0], autograd::GeluApprox::tanh); },
             {non_contiguous(x)});
}

TEST_CASE("elementwise: Var operators compute and differentiate like the named ops") {
  using V = const std::vector<Var>&;
  Tensor a = randn({2, 3}, 500, DType::f64), b = randu({3}, 501, 0.5, 2.0, DType::f64);
  Var va(a), vb(b);
  CHECK_CLOSE((va + vb).data(), kernels::ref::add(a, b), 1e-12, 1e-12);
  CHECK_CLOSE((va - vb).data(), kernels::ref::sub(a, b), 1e-12, 1e-12);
  CHECK_CLOSE((va * vb).data(), kernels::ref::mul(a, b), 1e-12, 1e-12);
  CHECK_CLOSE((va / vb).data(), kernels::ref::div(a, b), 1e-12, 1e-12);
  CHECK_CLOSE((-va).data(), kernels::ref::neg(a), 1e-12, 1e-12);
  CHECK_CLOSE((2.0 - va).data(), kernels::ref::add_scalar(kernels::ref::neg(a), 2.0), 1e-12, 1e-12);
  CHECK_CLOSE((va - 2.0).data(), kernels::ref::add_scalar(a, -2.0), 1e-12, 1e-12);
  CHECK_CLOSE((3.0 * va).data(), kernels::ref::mul_scalar(a, 3.0), 1e-12, 1e-12);
  CHECK_CLOSE((va / 4.0).data(), kernels::ref::mul_scalar(a, 0.25), 1e-12, 1e-12);
  CHECK_CLOSE((1.0 / vb).data(), kernels::ref::pow_scalar(b, -1.0), 1e-12, 1e-12);
  check_grad("expression",
             [](V v) { return (v[0] * v[1] - 2.0 * v[0]) / (1.0 + v[1] * v[1]) + 3.0 / v[1]; },
             {a, b});
  // A result that does not require grad records no graph.
  CHECK(!(va * vb).requires_grad());
  CHECK((Var(a, true) * vb).requires_grad());
}
