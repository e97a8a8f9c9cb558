// Differentiable views: each forward equals the Tensor view (sharing storage where the view
// does), each backward passes gradcheck in f64, and expand's backward sums exactly.
#include "autograd/gradcheck.h"
#include "autograd/views.h"
#include "tests/helpers.h"

using autograd::Var;
using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {

using Fn = std::function<Var(const Var&)>;

// Gradcheck of a one-input op, on a contiguous and a non-contiguous input.
void check_grad(const char* name, const Tensor& x, const Fn& f) {
  for (bool nc : {false, true}) {
    INFO(name << (nc ? " (non-contiguous input)" : ""));
    auto r = autograd::gradcheck([&](const std::vector<Var>& v) { return f(v[0]); },
                                 {nc ? testing::non_contiguous(x) : x});
    INFO(r.detail);
    CHECK(r.ok);
  }
}

void check_same(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  CHECK(a.to_vector<double>() == b.to_vector<double>());
}

}  // namespace

TEST_CASE("views: forwards are the tensor views") {
  Tensor x = randn({3, 4, 5}, 1);
  Var v(x);
  CHECK(autograd::view(v, {12, 5}).data().shares_storage(x));
  check_same(autograd::reshape(v, {5, -1}).data(), x.reshape({5, 12}));
  check_same(autograd::permute(v, {2, 0, 1}).data(), x.permute({2, 0, 1}));
  check_same(autograd::transpose(v, 0, 2).data(), x.transpose(0, 2));
  check_same(autograd::slice(v, 2, -4, 5, 2).data(), x.slice(2, 1, 5, 2));
  check_same(autograd::narrow(v, 1, 1, 2).data(), x.narrow(1, 1, 2));
  check_same(autograd::select(v, 1, -1).data(), x.select(1, 3));
  CHECK(autograd::unsqueeze(v, -1).shape() == Shape{3, 4, 5, 1});
  CHECK(autograd::squeeze(autograd::unsqueeze(v, 1), 1).shape() == x.shape());
  check_same(autograd::expand(Var(x.select(1, 0).unsqueeze(1)), {2, 3, 4, 5}).data(),
             x.select(1, 0).unsqueeze(1).expand({2, 3, 4, 5}));
  CHECK(autograd::contiguous(Var(x.transpose(0, 1))).data().is_contiguous());
  CHECK(autograd::flatten(v).shape() == Shape{60});
  CHECK(autograd::flatten(v, 1).shape() == Shape{3, 20});
  CHECK(autograd::flatten(v, 0, 1).shape() == Shape{12, 5});
  CHECK(autograd::flatten(v, -2, -2).shape() == x.shape());
  CHECK_THROWS_CONTAINING(autograd::view(Var(x.transpose(0, 1)), {60}), "use reshape()");
  CHECK_THROWS_CONTAINING(autograd::flatten(v, 2, 1), "flatten: start_dim 2 comes after end_dim 1");
  CHECK_THROWS_CONTAINING(autograd::expand(v, {3, 2, 5}), "expand: cannot expand");
}

TEST_CASE("views: gradcheck of every view op") {
  Tensor x = randn({3, 4, 5}, 2, DType::f64);
  check_grad("reshape", x, [](const Var& v) { return autograd::reshape(v, {5, -1, 2}); });
  check_grad("view", x, [](const Var& v) {
    return autograd::view(autograd::contiguous(v), {2, 6, 5});
  });
  check_grad("permute", x, [](const Var& v) { return autograd::permute(v, {1, 2, 0}); });
  check_grad("transpose", x, [](const Var& v) { return autograd::transpose(v, 0, -1); });
  check_grad("slice", x, [](const Var& v) { return autograd::slice(v, 2, 1, 5, 2); });
  check_grad("slice negative", x, [](const Var& v) { return autograd::slice(v, 1, -3, -1); });
  check_grad("narrow", x, [](const Var& v) { return autograd::narrow(v, 0, 1, 2); });
  check_grad("select", x, [](const Var& v) { return autograd::select(v, 2, -2); });
  check_grad("unsqueeze", x, [](const Var& v) { return autograd::unsqueeze(v, 1); });
  check_grad("squeeze", x.narrow(1, 2, 1), [](const Var& v) { return autograd::squeeze(v, 1); });
  check_grad("contiguous", x, [](const Var& v) { return autograd::contiguous(v); });
  check_grad("flatten", x, [](const Var& v) { return autograd::flatten(v, 1); });
  // expand: new leading dims and stretched size-1 dims, in the middle and last.
  Tensor e = randn({3, 1, 5}, 3, DType::f64);
  check_grad("expand middle", e, [](const Var& v) { return autograd::expand(v, {2, 3, 4, 5}); });
  Tensor l = randn({3, 4, 1}, 4, DType::f64);
  check_grad("expand last", l, [](const Var& v) { return autograd::expand(v, {2, 3, 4, 7}); });
  Tensor s = randn({1}, 5, DType::f64);
  check_grad("expand scalar-like", s, [](const Var& v) { return autograd::expand(v, {3, 2}); });
  check_grad("expand no-op", x, [](const Var& v) { return autograd::expand(v, {3, 4, 5}); });
  // A chain whose reshape must copy (permuted input), then views of the copy.
  check_grad("chain", x, [](const Var& v) {
    Var p = autograd::permute(v, {2, 0, 1});
    Var r = autograd::reshape(p, {15, 4});
    return autograd::select(autograd::slice(r, 0, 2, 13, 3), 1, 1);
  });
}

TEST_CASE("views: expand's backward sums over the expanded dims; slices fill zeros") {
  Var x(Tensor::ones({3, 1}, DType::f64), true);
  autograd::expand(x, {2, 3, 4}).backward(Tensor::ones({2, 3, 4}, DType::f64));
  CHECK(x.grad().to_vector<double>() == std::vector<double>{8, 8, 8});
  Var y(Tensor::zeros({2, 5}, DType::f64), true);
  autograd::slice(y, 1, 1, 5, 2).backward(Tensor::full({2, 2}, 3.0, DType::f64));
  CHECK(y.grad().to_vector<double>() == std::vector<double>{0, 3, 0, 3, 0, 0, 3, 0, 3, 0});
  // f32 gradients flow too.
  Var z(randn({4, 1}, 6), true);
  autograd::expand(z, {4, 6}).backward(Tensor::ones({4, 6}));
  CHECK(z.grad().dtype() == DType::f32);
  CHECK(z.grad().to_vector<float>() == std::vector<float>{6, 6, 6, 6});
}
