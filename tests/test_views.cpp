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

// The f32 [3, 4, 5] input of the forward checks.
Tensor fwd_input() { return randn({3, 4, 5}, 1); }

// The f64 [3, 4, 5] input of the gradchecks.
Tensor grad_input() { return randn({3, 4, 5}, 2, DType::f64); }

}  // namespace

// ---- forwards

TEST_CASE("views: view forward shares the tensor's storage") {
  Tensor x = fwd_input();
  CHECK(autograd::view(Var(x), {12, 5}).data().shares_storage(x));
}

TEST_CASE("views: reshape forward is the tensor reshape") {
  Tensor x = fwd_input();
  check_same(autograd::reshape(Var(x), {5, -1}).data(), x.reshape({5, 12}));
}

TEST_CASE("views: permute forward is the tensor permute") {
  Tensor x = fwd_input();
  check_same(autograd::permute(Var(x), {2, 0, 1}).data(), x.permute({2, 0, 1}));
}

TEST_CASE("views: transpose forward is the tensor transpose") {
  Tensor x = fwd_input();
  check_same(autograd::transpose(Var(x), 0, 2).data(), x.transpose(0, 2));
}

TEST_CASE("views: slice forward (negative start, step 2) is the tensor slice") {
  Tensor x = fwd_input();
  check_same(autograd::slice(Var(x), 2, -4, 5, 2).data(), x.slice(2, 1, 5, 2));
}

TEST_CASE("views: narrow forward is the tensor narrow") {
  Tensor x = fwd_input();
  check_same(autograd::narrow(Var(x), 1, 1, 2).data(), x.narrow(1, 1, 2));
}

TEST_CASE("views: select forward (negative index) is the tensor select") {
  Tensor x = fwd_input();
  check_same(autograd::select(Var(x), 1, -1).data(), x.select(1, 3));
}

TEST_CASE("views: unsqueeze and squeeze forward shapes") {
  Tensor x = fwd_input();
  Var v(x);
  CHECK(autograd::unsqueeze(v, -1).shape() == Shape{3, 4, 5, 1});
  CHECK(autograd::squeeze(autograd::unsqueeze(v, 1), 1).shape() == x.shape());
}

TEST_CASE("views: expand forward is the tensor expand") {
  Tensor x = fwd_input();
  check_same(autograd::expand(Var(x.select(1, 0).unsqueeze(1)), {2, 3, 4, 5}).data(),
             x.select(1, 0).unsqueeze(1).expand({2, 3, 4, 5}));
}

TEST_CASE("views: contiguous forward of a transposed input is contiguous") {
  Tensor x = fwd_input();
  CHECK(autograd::contiguous(Var(x.transpose(0, 1))).data().is_contiguous());
}

TEST_CASE("views: flatten forward shapes for every dim range") {
  Tensor x = fwd_input();
  Var v(x);
  CHECK(autograd::flatten(v).shape() == Shape{60});
  CHECK(autograd::flatten(v, 1).shape() == Shape{3, 20});
  CHECK(autograd::flatten(v, 0, 1).shape() == Shape{12, 5});
  CHECK(autograd::flatten(v, -2, -2).shape() == x.shape());
}

TEST_CASE("views: view of a non-contiguous input is an error") {
  CHECK_THROWS_CONTAINING(autograd::view(Var(fwd_input().transpose(0, 1)), {60}), "use reshape()");
}

TEST_CASE("views: flatten with start after end is an error") {
  CHECK_THROWS_CONTAINING(autograd::flatten(Var(fwd_input()), 2, 1),
                          "flatten: start_dim 2 comes after end_dim 1");
}

TEST_CASE("views: expand to an incompatible shape is an error") {
  CHECK_THROWS_CONTAINING(autograd::expand(Var(fwd_input()), {3, 2, 5}), "expand: cannot expand");
}

// ---- gradients, each on a contiguous and a non-contiguous input

TEST_CASE("views: reshape gradcheck") {
  check_grad("reshape", grad_input(), [](const Var& v) {
    return autograd::reshape(v, {5, -1, 2});
  });
}

TEST_CASE("views: view gradcheck") {
  check_grad("view", grad_input(), [](const Var& v) {
    return autograd::view(autograd::contiguous(v), {2, 6, 5});
  });
}

TEST_CASE("views: permute gradcheck") {
  check_grad("permute", grad_input(), [](const Var& v) { return autograd::permute(v, {1, 2, 0}); });
}

TEST_CASE("views: transpose gradcheck") {
  check_grad("transpose", grad_input(), [](const Var& v) { return autograd::transpose(v, 0, -1); });
}

TEST_CASE("views: slice gradcheck") {
  check_grad("slice", grad_input(), [](const Var& v) { return autograd::slice(v, 2, 1, 5, 2); });
}

TEST_CASE("views: slice gradcheck with negative bounds") {
  check_grad("slice negative", grad_input(),
             [](const Var& v) { return autograd::slice(v, 1, -3, -1); });
}

TEST_CASE("views: narrow gradcheck") {
  check_grad("narrow", grad_input(), [](const Var& v) { return autograd::narrow(v, 0, 1, 2); });
}

TEST_CASE("views: select gradcheck") {
  check_grad("select", grad_input(), [](const Var& v) { return autograd::select(v, 2, -2); });
}

TEST_CASE("views: unsqueeze gradcheck") {
  check_grad("unsqueeze", grad_input(), [](const Var& v) { return autograd::unsqueeze(v, 1); });
}

TEST_CASE("views: squeeze gradcheck") {
  check_grad("squeeze", grad_input().narrow(1, 2, 1),
             [](const Var& v) { return autograd::squeeze(v, 1); });
}

TEST_CASE("views: contiguous gradcheck") {
  check_grad("contiguous", grad_input(), [](const Var& v) { return autograd::contiguous(v); });
}

TEST_CASE("views: flatten gradcheck") {
  check_grad("flatten", grad_input(), [](const Var& v) { return autograd::flatten(v, 1); });
}

// expand: new leading dims and stretched size-1 dims, in the middle and last.
TEST_CASE("views: expand gradcheck, a size-1 dim in the middle") {
  check_grad("expand middle", randn({3, 1, 5}, 3, DType::f64), [](const Var& v) {
    return autograd::expand(v, {2, 3, 4, 5});
  });
}

TEST_CASE("views: expand gradcheck, a size-1 last dim") {
  check_grad("expand last", randn({3, 4, 1}, 4, DType::f64), [](const Var& v) {
    return autograd::expand(v, {2, 3, 4, 7});
  });
}

TEST_CASE("views: expand gradcheck of a one-element tensor") {
  check_grad("expand scalar-like", randn({1}, 5, DType::f64), [](const Var& v) {
    return autograd::expand(v, {3, 2});
  });
}

TEST_CASE("views: expand gradcheck to the same shape") {
  check_grad("expand no-op", grad_input(), [](const Var& v) {
    return autograd::expand(v, {3, 4, 5});
  });
}

TEST_CASE("views: gradcheck of a chain whose reshape must copy") {
  // Permuted input, then views of the copy.
  check_grad("chain", grad_input(), [](const Var& v) {
    Var p = autograd::permute(v, {2, 0, 1});
    Var r = autograd::reshape(p, {15, 4});
    return autograd::select(autograd::slice(r, 0, 2, 13, 3), 1, 1);
  });
}

// ---- exact backwards

TEST_CASE("views: expand's backward sums over the expanded dims") {
  Var x(Tensor::ones({3, 1}, DType::f64), true);
  autograd::expand(x, {2, 3, 4}).backward(Tensor::ones({2, 3, 4}, DType::f64));
  CHECK(x.grad().to_vector<double>() == std::vector<double>{8, 8, 8});
}

TEST_CASE("views: slice's backward fills zeros outside the slice") {
  Var y(Tensor::zeros({2, 5}, DType::f64), true);
  autograd::slice(y, 1, 1, 5, 2).backward(Tensor::full({2, 2}, 3.0, DType::f64));
  CHECK(y.grad().to_vector<double>() == std::vector<double>{0, 3, 0, 3, 0, 0, 3, 0, 3, 0});
}

TEST_CASE("views: f32 gradients flow through expand") {
  Var z(randn({4, 1}, 6), true);
  autograd::expand(z, {4, 6}).backward(Tensor::ones({4, 6}));
  CHECK(z.grad().dtype() == DType::f32);
  CHECK(z.grad().to_vector<float>() == std::vector<float>{6, 6, 6, 6});
}
