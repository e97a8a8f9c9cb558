// Autograd core: graph recording, topological backward, accumulation for reused values, no-grad
// scopes, freeing of saved tensors, preset gradient buffers. The ops here are defined in the
// test with plain loops so the engine's own kernels are not under test.
#include "autograd/gradcheck.h"
#include "autograd/var.h"
#include "tests/helpers.h"

using autograd::Grads;
using autograd::Var;
using engine::DType;
using engine::Tensor;

namespace {

Tensor map(const Tensor& x, double (*f)(double)) {
  auto v = x.to_vector<double>();
  for (auto& e : v) e = f(e);
  return Tensor::from_vector(v, x.shape()).to(x.dtype());
}
Tensor zip(const Tensor& a, const Tensor& b, double (*f)(double, double)) {
  auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  for (size_t i = 0; i < va.size(); ++i) va[i] = f(va[i], vb[i]);
  return Tensor::from_vector(va, a.shape()).to(a.dtype());
}

// y = x², dy/dx = 2x
Var square(const Var& x) {
  Tensor xd = x.data();
  return autograd::make_result(map(xd, [](double v) { return v * v; }), "square", {x},
                               [xd](const Tensor& g, Grads& gr) {
                                 gr.set(0, zip(g, xd, [](double gg, double v) { return 2 * v * gg; }));
                               });
}
// y = a * b elementwise
Var mul(const Var& a, const Var& b) {
  Tensor ad = a.data(), bd = b.data();
  return autograd::make_result(zip(ad, bd, [](double x, double y) { return x * y; }), "mul", {a, b},
                               [ad, bd](const Tensor& g, Grads& gr) {
                                 if (gr.need(0)) gr.set(0, zip(g, bd, [](double x, double y) { return x * y; }));
                                 if (gr.need(1)) gr.set(1, zip(g, ad, [](double x, double y) { return x * y; }));
                               });
}
// y = sum(x) as a 0-d tensor
Var sum(const Var& x) {
  double s = 0;
  for (double v : x.data().to_vector<double>()) s += v;
  engine::Shape shp = x.shape();
  DType dt = x.dtype();
  return autograd::make_result(Tensor::scalar(s, dt), "sum", {x}, [shp, dt](const Tensor& g, Grads& gr) {
    gr.set(0, Tensor::full(shp, g.item(), dt));
  });
}

}  // namespace

TEST_CASE("autograd: chain rule through a diamond graph") {
  // f(x) = sum(x² · x²) reuses x² twice: df/dx = 4x³.
  Var x(Tensor::from_vector<double>({1, -2, 0.5}, {3}), true);
  Var s = square(x);
  Var y = sum(mul(s, s));
  y.backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{4, -32, 0.5});
}

TEST_CASE("autograd: a value used twice accumulates both gradients") {
  Var x(Tensor::from_vector<double>({3, 4}, {2}), true);
  Var y = sum(mul(x, x));  // d/dx x·x = 2x through two edges of the same node
  y.backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{6, 8});
  // A second graph accumulates into the same leaf gradient.
  Var z = sum(square(x));
  z.backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{12, 16});
}

TEST_CASE("autograd: inputs without requires_grad get no gradient and record nothing") {
  Var a(Tensor::from_vector<double>({1, 2}, {2}), true);
  Var c(Tensor::from_vector<double>({5, 7}, {2}), false);
  Var y = sum(mul(a, c));
  y.backward();
  CHECK(a.grad().to_vector<double>() == std::vector<double>{5, 7});
  CHECK(!c.grad().defined());
  Var d = mul(c, c);
  CHECK(!d.requires_grad());
  CHECK(d.is_leaf());
  CHECK_THROWS_CONTAINING(d.backward(Tensor::ones({2}, DType::f64)), "does not require grad");
}

TEST_CASE("autograd: no-grad scope records nothing") {
  Var a(Tensor::from_vector<double>({1, 2}, {2}), true);
  {
    autograd::NoGradGuard ng;
    Var y = square(a);
    CHECK(!y.requires_grad());
    CHECK(y.is_leaf());
    CHECK(!autograd::grad_enabled());
  }
  CHECK(autograd::grad_enabled());
  CHECK(square(a).requires_grad());
}

TEST_CASE("autograd: saved tensors are freed after backward; a second backward is an error") {
  Tensor big = Tensor::ones({1000}, DType::f64);
  Var x(big, true);
  Var y = sum(square(x));
  long before = big.storage().use_count();  // x's data is saved by square's backward closure
  y.backward();
  CHECK(big.storage().use_count() < before);
  CHECK_THROWS_CONTAINING(y.backward(), "a second time");
}

TEST_CASE("autograd: preset gradient storage is accumulated into in place") {
  // Parameters in a flat buffer: the leaf's gradient is a view of a flat gradient buffer.
  Tensor flat_grad = Tensor::zeros({5}, DType::f64);
  Var w(Tensor::from_vector<double>({1, 2, 3}, {3}), true);
  w.set_grad(flat_grad.slice(0, 1, 4));
  sum(square(w)).backward();
  CHECK(flat_grad.to_vector<double>() == std::vector<double>{0, 2, 4, 6, 0});
  CHECK(w.grad().shares_storage(flat_grad));
}

TEST_CASE("autograd: gradient shape mismatch names the op") {
  Var x(Tensor::ones({3}, DType::f64), true);
  Var bad = autograd::make_result(Tensor::ones({3}, DType::f64), "badop", {x},
                                  [](const Tensor& g, Grads& gr) { gr.set(0, Tensor::ones({4}, DType::f64)); });
  CHECK_THROWS_CONTAINING(bad.backward(Tensor::ones({3}, DType::f64)), "backward of badop");
}

TEST_CASE("autograd: a deep chain does not overflow the stack") {
  Var x(Tensor::from_vector<double>({1.0}, {1}), true);
  Var y = x;
  Tensor one = Tensor::ones({1}, DType::f64);
  Var c(one, false);
  for (int i = 0; i < 20000; ++i) y = mul(y, c);
  y.backward(one);
  CHECK(x.grad().item() == 1.0);
}

TEST_CASE("autograd: gradcheck accepts a correct gradient and rejects a wrong one") {
  auto good = [](const std::vector<Var>& v) { return mul(square(v[0]), v[1]); };
  auto r = autograd::gradcheck(good, {testing::randn({4}, 1, DType::f64), testing::randn({4}, 2, DType::f64)});
  CHECK(r.ok);
  auto wrong = [](const std::vector<Var>& v) {
    Tensor xd = v[0].data();
    return autograd::make_result(map(xd, [](double t) { return t * t; }), "wrong_square", {v[0]},
                                 [xd](const Tensor& g, Grads& gr) {
                                   gr.set(0, zip(g, xd, [](double gg, double t) { return 3 * t * gg; }));
                                 });
  };
  auto r2 = autograd::gradcheck(wrong, {testing::randn({4}, 3, DType::f64)});
  CHECK(!r2.ok);
  CHECK(r2.detail.find("analytic") != std::string::npos);
}
