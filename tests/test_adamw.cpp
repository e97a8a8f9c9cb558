// Optimizers: fused AdamW and SGD over flat buffers, against the torch-order f64 reference and
// against single steps computed here from the formulas in long double.
#include <cmath>
#include <vector>

#include "kernels/adamw.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using kernels::AdamWParams;
using testing::randn;

namespace {

// Decay mask with both isolated zeros and long runs of zeros, as norms and biases give.
Tensor mixed_mask(int64_t n) {
  std::vector<float> v(size_t(n), 1.0f);
  for (int64_t i = 0; i < n; ++i)
    if (i % 7 == 3 || (i / 1000) % 5 == 0) v[size_t(i)] = 0.0f;
  return Tensor::from_vector(v, {n});
}

AdamWParams test_hp() {
  AdamWParams hp;
  hp.lr = 1e-2;
  hp.beta1 = 0.9;
  hp.beta2 = 0.99;
  hp.eps = 1e-8;
  hp.weight_decay = 0.1;
  hp.grad_scale = 0.37;
  return hp;
}

double rtol_for(DType dt) { return dt == DType::f32 ? 1e-5 : 1e-12; }
double atol_for(DType dt) { return dt == DType::f32 ? 1e-6 : 1e-14; }

// Fused steps 1..5 against the reference at a parallel size (odd, above the threshold).
void check_adamw_steps(DType dt, bool masked) {
  const int64_t n = 100003;
  Tensor p = randn({n}, 1, dt), m = Tensor::zeros({n}, dt), v = Tensor::zeros({n}, dt);
  Tensor pr = p.to(DType::f64), mr = m.to(DType::f64), vr = v.to(DType::f64);
  Tensor mask = masked ? mixed_mask(n) : Tensor();
  AdamWParams hp = test_hp();
  for (int64_t step = 1; step <= 5; ++step) {
    CAPTURE(step);
    hp.step = step;
    Tensor g = randn({n}, 10 + step, dt, 0.5);
    kernels::adamw_step(p, g, m, v, mask, hp);
    kernels::ref::adamw_step(pr, g.to(DType::f64), mr, vr, mask, hp);
    CHECK_CLOSE(p, pr, rtol_for(dt), atol_for(dt));
    CHECK_CLOSE(m, mr, rtol_for(dt), atol_for(dt));
    CHECK_CLOSE(v, vr, rtol_for(dt), atol_for(dt) * 1e-3);
  }
}

// One step on 37 strided elements whose m is a view into a larger buffer, with an i64 mask
// (converted inside): the buffer before and after, and the f64 reference's state.
struct StridedStep {
  static constexpr int64_t n = 37;
  Tensor p = testing::non_contiguous(randn({n}, 1)), g = testing::non_contiguous(randn({n}, 2));
  Tensor big_m = randn({n + 10}, 3, DType::f32, 0.1);
  Tensor m = big_m.narrow(0, 5, n);
  Tensor before = big_m.clone();
  Tensor v = testing::randu({n}, 4, 0.0, 0.2);
  Tensor pr = p.to(DType::f64), mr = m.to(DType::f64), vr = v.to(DType::f64);
  StridedStep() {
    std::vector<int64_t> mk(n);
    for (int64_t i = 0; i < n; ++i) mk[size_t(i)] = i % 3 != 0;
    Tensor mask = Tensor::from_vector(mk, {n});
    AdamWParams hp = test_hp();
    hp.step = 4;
    kernels::adamw_step(p, g, m, v, mask, hp);
    kernels::ref::adamw_step(pr, g.to(DType::f64), mr, vr, mask, hp);
  }
};

// Seven f32 buffers of 7 elements for the error checks.
struct Buffers {
  Tensor p = Tensor::zeros({7}), g = Tensor::zeros({7}), m = Tensor::zeros({7}),
         v = Tensor::zeros({7});
};

template <class F>
AdamWParams hp_with(F f) {
  AdamWParams h;
  f(h);
  return h;
}

struct SgdCase {
  int64_t n;
  double momentum;
  bool nesterov, masked, strided;
};

// Three SGD steps against the reference.
void check_sgd_steps(DType dt, const SgdCase& c) {
  Tensor p = randn({c.n}, 1, dt);
  Tensor buf = c.momentum != 0 ? Tensor::zeros({c.n}, dt) : Tensor();
  if (c.strided) p = testing::non_contiguous(p);
  if (c.strided && buf.defined()) buf = testing::non_contiguous(buf);
  Tensor pr = p.to(DType::f64), br = buf.defined() ? buf.to(DType::f64) : Tensor();
  Tensor mask = c.masked ? mixed_mask(c.n) : Tensor();
  for (int step = 1; step <= 3; ++step) {
    CAPTURE(step);
    Tensor g = randn({c.n}, 10 + step, dt);
    if (c.strided) g = testing::non_contiguous(g);
    kernels::sgd_momentum_step(p, g, buf, mask, 0.05, c.momentum, 0.01, c.nesterov, 0.8);
    kernels::ref::sgd_momentum_step(pr, g.to(DType::f64), br, mask, 0.05, c.momentum, 0.01,
                                    c.nesterov, 0.8);
    CHECK_CLOSE(p, pr, rtol_for(dt), atol_for(dt));
    if (buf.defined()) CHECK_CLOSE(buf, br, rtol_for(dt), atol_for(dt));
  }
}

// Two steps on 2 elements, each written out from torch.optim.SGD's update rule (the first from
// a zero buffer: buf = g).
void check_sgd_by_hand(bool nesterov) {
  const double lr = 0.1, mu = 0.9, wd = 0.01, gs = 2.0;
  Tensor p = Tensor::from_vector(std::vector<double>{1.0, -3.0}, {2});
  Tensor buf = Tensor::zeros({2}, DType::f64);
  Tensor mask = Tensor::from_vector(std::vector<double>{1.0, 0.0}, {2});
  std::vector<double> g1 = {0.5, 0.25}, g2 = {-0.125, 1.0}, ep = {1.0, -3.0}, eb(2);
  for (int i = 0; i < 2; ++i) {
    double d = gs * g1[i] + wd * (i == 0) * ep[i];
    eb[i] = d;  // torch: buf = clone(d_p) on the first step
    ep[i] -= lr * (nesterov ? d + mu * eb[i] : eb[i]);
    d = gs * g2[i] + wd * (i == 0) * ep[i];
    eb[i] = mu * eb[i] + d;
    ep[i] -= lr * (nesterov ? d + mu * eb[i] : eb[i]);
  }
  kernels::sgd_momentum_step(p, Tensor::from_vector(g1, {2}), buf, mask, lr, mu, wd, nesterov, gs);
  kernels::sgd_momentum_step(p, Tensor::from_vector(g2, {2}), buf, mask, lr, mu, wd, nesterov, gs);
  CHECK_CLOSE(p, Tensor::from_vector(ep, {2}), 1e-15, 1e-15);
  CHECK_CLOSE(buf, Tensor::from_vector(eb, {2}), 1e-15, 1e-15);
}

}  // namespace

// ---- AdamW

TEST_CASE_TEMPLATE("adamw: fused step matches the reference over steps 1..5 with a decay mask", T,
                   float, double) {
  check_adamw_steps(engine::dtype_v<T>, true);
}

TEST_CASE_TEMPLATE("adamw: fused step matches the reference over steps 1..5 without a mask", T,
                   float, double) {
  check_adamw_steps(engine::dtype_v<T>, false);
}

TEST_CASE_TEMPLATE("adamw: one step on 3 elements equals the formula evaluated in long double", T,
                   float, double) {
  const DType dt = engine::dtype_v<T>;
  const std::vector<long double> p0 = {0.5L, -1.25L, 2.0L}, g = {0.3L, -0.7L, 0.0L},
                                 m0 = {0.1L, 0.2L, -0.05L}, v0 = {0.01L, 0.04L, 0.002L},
                                 mask = {1.0L, 0.0L, 1.0L};
  const long double lr = 0.01L, b1 = 0.9L, b2 = 0.999L, eps = 1e-8L, wd = 0.1L, gs = 0.5L;
  const int t = 3;
  std::vector<double> ep(3), em(3), ev(3);
  for (int i = 0; i < 3; ++i) {
    long double gi = gs * g[i];
    long double p = p0[i] - lr * wd * mask[i] * p0[i];
    long double m = b1 * m0[i] + (1 - b1) * gi;
    long double v = b2 * v0[i] + (1 - b2) * gi * gi;
    long double m_hat = m / (1 - powl(b1, t)), v_hat = v / (1 - powl(b2, t));
    ep[i] = double(p - lr * m_hat / (sqrtl(v_hat) + eps));
    em[i] = double(m);
    ev[i] = double(v);
  }
  auto vec = [](const std::vector<long double>& x) {
    return std::vector<double>(x.begin(), x.end());
  };
  Tensor p = Tensor::from_vector(vec(p0), {3}, dt), gt = Tensor::from_vector(vec(g), {3}, dt);
  Tensor m = Tensor::from_vector(vec(m0), {3}, dt), v = Tensor::from_vector(vec(v0), {3}, dt);
  AdamWParams hp{double(lr), double(b1), double(b2), double(eps), double(wd), t, double(gs)};
  kernels::adamw_step(p, gt, m, v, Tensor::from_vector(vec(mask), {3}, dt), hp);
  // f32 inputs are themselves rounded (0.3f != 0.3), hence the looser f32 bound.
  const double tol = dt == DType::f32 ? 2e-7 : 1e-15;
  CHECK_CLOSE(p, Tensor::from_vector(ep, {3}, DType::f64), tol, tol);
  CHECK_CLOSE(m, Tensor::from_vector(em, {3}, DType::f64), tol, tol);
  CHECK_CLOSE(v, Tensor::from_vector(ev, {3}, DType::f64), tol, tol * 1e-2);
}

TEST_CASE("adamw: strided views and a mask of another dtype match the reference") {
  const StridedStep s;
  CHECK_CLOSE(s.p, s.pr, 1e-5, 1e-6);
  CHECK_CLOSE(s.m, s.mr, 1e-5, 1e-6);
  CHECK_CLOSE(s.v, s.vr, 1e-5, 1e-9);
}

TEST_CASE("adamw: the neighbours of a view into a larger buffer are untouched") {
  const StridedStep s;
  CHECK_CLOSE(s.big_m.narrow(0, 0, 5), s.before.narrow(0, 0, 5), 0, 0);
  CHECK_CLOSE(s.big_m.narrow(0, s.n + 5, 5), s.before.narrow(0, s.n + 5, 5), 0, 0);
}

TEST_CASE("adamw: zero gradients without weight decay move nothing") {
  AdamWParams hp = test_hp();
  hp.weight_decay = 0;
  Tensor p = randn({13}, 1), p0 = p.clone();
  Tensor z = Tensor::zeros({13}), m = Tensor::zeros({13}), v = Tensor::zeros({13});
  kernels::adamw_step(p, z, m, v, Tensor(), hp);
  CHECK_CLOSE(p, p0, 0, 0);  // 0 / (0 + eps): nothing moves
}

TEST_CASE("adamw: empty buffers are accepted") {
  AdamWParams hp = test_hp();
  hp.weight_decay = 0;
  Tensor e = Tensor::empty({0});
  CHECK_NOTHROW(kernels::adamw_step(e, Tensor::empty({0}), Tensor::empty({0}), Tensor::empty({0}),
                                    Tensor(), hp));
}

TEST_CASE("adamw: buffers of the wrong shape, dtype or definedness are errors") {
  AdamWParams hp;
  Buffers b;
  CHECK_THROWS_CONTAINING(kernels::adamw_step(Tensor::zeros({7, 1}), b.g, b.m, b.v, Tensor(), hp),
                          "'params' must be a 1-D buffer, got f32[7, 1]");
  CHECK_THROWS_CONTAINING(kernels::adamw_step(b.p, Tensor::zeros({6}), b.m, b.v, Tensor(), hp),
                          "adamw_step: 'grads' f32[6] does not match 'params' f32[7]");
  CHECK_THROWS_CONTAINING(kernels::adamw_step(b.p, b.g, Tensor::zeros({7, 1}), b.v, Tensor(), hp),
                          "'m' must be a 1-D buffer");
  CHECK_THROWS_CONTAINING(
      kernels::adamw_step(b.p, b.g, b.m, Tensor::zeros({7}, DType::f64), Tensor(), hp),
      "'v' f64[7] has a different dtype");
  CHECK_THROWS_CONTAINING(kernels::adamw_step(b.p, b.g, b.m, Tensor(), Tensor(), hp),
                          "argument 'v' is an undefined tensor");
  CHECK_THROWS_CONTAINING(kernels::adamw_step(b.p, b.g, b.m, b.v, Tensor::ones({8}), hp),
                          "'decay_mask' f32[8] does not match");
  Tensor pb = Tensor::zeros({7}, DType::bf16);
  CHECK_THROWS_CONTAINING(kernels::adamw_step(pb, b.g.to(DType::bf16), b.m.to(DType::bf16),
                                              b.v.to(DType::bf16), Tensor(), hp),
                          "adamw_step: expected dtype f32 or f64, got bf16");
}

TEST_CASE("adamw: overlapping buffers are errors") {
  AdamWParams hp;
  Buffers b;
  CHECK_THROWS_CONTAINING(kernels::adamw_step(b.p, b.g, b.m, b.m, Tensor(), hp),
                          "'m' and 'v' overlap in memory");
  CHECK_THROWS_CONTAINING(kernels::adamw_step(b.p, b.p, b.m, b.v, Tensor(), hp),
                          "'params' and 'grads' overlap");
}

TEST_CASE("adamw: hyper-parameters out of range are errors") {
  Buffers b;
  auto step = [&](const AdamWParams& h) { kernels::adamw_step(b.p, b.g, b.m, b.v, Tensor(), h); };
  CHECK_THROWS_CONTAINING(step(hp_with([](AdamWParams& h) { h.beta1 = 1; })),
                          "beta1 must be in [0, 1), got 1");
  CHECK_THROWS_CONTAINING(step(hp_with([](AdamWParams& h) { h.beta2 = -0.1; })),
                          "beta2 must be in [0, 1)");
  CHECK_THROWS_CONTAINING(step(hp_with([](AdamWParams& h) { h.step = 0; })), "step must be >= 1");
  CHECK_THROWS_CONTAINING(step(hp_with([](AdamWParams& h) { h.lr = NAN; })),
                          "lr must be finite and >= 0");
  CHECK_THROWS_CONTAINING(step(hp_with([](AdamWParams& h) { h.eps = -1; })),
                          "eps must be finite and >= 0");
  CHECK_THROWS_CONTAINING(step(hp_with([](AdamWParams& h) { h.weight_decay = -1; })),
                          "weight_decay must be finite and >= 0");
}

// ---- SGD

TEST_CASE_TEMPLATE("adamw: sgd momentum matches the reference (parallel size, masked)", T, float,
                   double) {
  check_sgd_steps(engine::dtype_v<T>, SgdCase{100003, 0.9, false, true, false});
}

TEST_CASE_TEMPLATE("adamw: sgd nesterov momentum matches the reference (parallel size)", T, float,
                   double) {
  check_sgd_steps(engine::dtype_v<T>, SgdCase{100003, 0.9, true, false, false});
}

TEST_CASE_TEMPLATE("adamw: sgd nesterov momentum on strided, masked buffers", T, float, double) {
  check_sgd_steps(engine::dtype_v<T>, SgdCase{37, 0.5, true, true, true});
}

TEST_CASE_TEMPLATE("adamw: sgd without momentum, masked", T, float, double) {
  check_sgd_steps(engine::dtype_v<T>, SgdCase{13, 0.0, false, true, false});
}

TEST_CASE_TEMPLATE("adamw: sgd without momentum on strided buffers", T, float, double) {
  check_sgd_steps(engine::dtype_v<T>, SgdCase{13, 0.0, false, false, true});
}

TEST_CASE("adamw: sgd momentum's first steps from a zero buffer are torch's, by hand") {
  check_sgd_by_hand(false);
}

TEST_CASE("adamw: sgd nesterov's first steps from a zero buffer are torch's, by hand") {
  check_sgd_by_hand(true);
}

TEST_CASE("adamw: sgd momentum settings that do not fit are errors") {
  Tensor p = Tensor::zeros({5}), g = Tensor::zeros({5}), b = Tensor::zeros({5});
  CHECK_THROWS_CONTAINING(kernels::sgd_momentum_step(p, g, Tensor(), Tensor(), 0.1, 0.9, 0, false),
                          "sgd_momentum_step: 'buf' is undefined but momentum is 0.9");
  CHECK_THROWS_CONTAINING(kernels::sgd_momentum_step(p, g, b, Tensor(), 0.1, 0.0, 0, true),
                          "nesterov momentum requires momentum > 0");
}

TEST_CASE("adamw: sgd buffers of the wrong shape or dtype, or overlapping, are errors") {
  Tensor p = Tensor::zeros({5}), g = Tensor::zeros({5});
  CHECK_THROWS_CONTAINING(kernels::sgd_momentum_step(p, Tensor::zeros({4}), Tensor::zeros({5}),
                                                     Tensor(), 0.1, 0.9, 0, false),
                          "sgd_momentum_step: 'grads' f32[4] does not match 'params' f32[5]");
  CHECK_THROWS_CONTAINING(kernels::sgd_momentum_step(p, g, Tensor::zeros({5}, DType::f64), Tensor(),
                                                     0.1, 0.9, 0, false),
                          "'buf' f64[5] has a different dtype");
  CHECK_THROWS_CONTAINING(kernels::sgd_momentum_step(p, g, p, Tensor(), 0.1, 0.9, 0, false),
                          "'params' and 'buf' overlap in memory");
}

TEST_CASE("adamw: sgd hyper-parameters out of range are errors") {
  Tensor p = Tensor::zeros({5}), g = Tensor::zeros({5}), b = Tensor::zeros({5});
  CHECK_THROWS_CONTAINING(kernels::sgd_momentum_step(p, g, b, Tensor(), -0.1, 0.9, 0, false),
                          "lr must be finite and >= 0, got -0.1");
  CHECK_THROWS_CONTAINING(kernels::sgd_momentum_step(p, g, b, Tensor(), 0.1, -0.5, 0, false),
                          "momentum must be finite and >= 0");
}
