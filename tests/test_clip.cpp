// Gradient clipping: the global L2 norm against a sequential double loop, its NaN/Inf behaviour,
// thread-count independence, torch's clip factor and the in-place scale.
#include <omp.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/clip.h"
#include "tests/helpers.h"

using engine::bf16;
using engine::DType;
using engine::Tensor;
using testing::randn;

namespace {

// Every kind of gradient list entry: odd sizes, strided, f32/f64/bf16, undefined (a parameter
// without a gradient: skipped), empty, large (parallel), 0-d.
std::vector<Tensor> mixed_grads() {
  return {
      randn({37}, 1),
      testing::non_contiguous(randn({13, 7}, 2)),
      Tensor(),
      randn({3, 5, 7}, 3, DType::f64),
      randn({130}, 4, DType::bf16, 3.0),
      Tensor::empty({0, 4}),
      testing::non_contiguous(randn({100003}, 5, DType::f32, 0.01)),
      Tensor::scalar(-2.5),
  };
}

// A large and a small gradient of dtype dt.
struct NonFinite {
  Tensor a, b;
  explicit NonFinite(DType dt) : a(randn({100003}, 1, dt)), b(randn({13}, 2, dt)) {}
};

}  // namespace

TEST_CASE("clip: grad_norm over many tensors matches the reference") {
  const std::vector<Tensor> ts = mixed_grads();
  const double got = kernels::grad_norm(ts), want = kernels::ref::grad_norm(ts);
  CHECK(got == doctest::Approx(want).epsilon(1e-13));
}

TEST_CASE("clip: grad_norm of each tensor alone matches the reference") {
  // Through the single-buffer overload.
  for (const Tensor& t : mixed_grads()) {
    if (!t.defined()) continue;
    CAPTURE(t.describe());
    CHECK(kernels::grad_norm(t) == doctest::Approx(kernels::ref::grad_norm({t})).epsilon(1e-13));
  }
}

TEST_CASE("clip: grad_norm of no tensors and of an empty tensor is 0") {
  CHECK(kernels::grad_norm(std::vector<Tensor>{}) == 0.0);
  CHECK(kernels::grad_norm(Tensor::empty({0})) == 0.0);
}

TEST_CASE("clip: grad_norm of 16M+1 elements accumulates in double") {
  // 2^24 + 1 ones: a float accumulator stalls at 2^24, so only a double sum gets this exactly.
  const int64_t n = (int64_t(1) << 24) + 1;
  Tensor g = Tensor::ones({n});
  g.narrow(0, 1000, 1000).fill_(3.0);  // 1000 elements of 9 instead of 1
  const double exact = std::sqrt(double(n) + 1000.0 * 8.0);
  const double got = kernels::grad_norm(g);
  CHECK(got == doctest::Approx(exact).epsilon(1e-14));
  CHECK(got == doctest::Approx(kernels::ref::grad_norm({g})).epsilon(1e-14));
}

TEST_CASE("clip: grad_norm does not depend on the number of threads") {
  std::vector<Tensor> ts = {randn({300007}, 1), randn({77}, 2), randn({150001}, 3)};
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = kernels::grad_norm(ts);
  omp_set_num_threads(3);
  const double three = kernels::grad_norm(ts);
  omp_set_num_threads(saved);
  CHECK(one == three);  // bit-identical: fixed chunks summed in order
  CHECK(one == doctest::Approx(kernels::ref::grad_norm(ts)).epsilon(1e-13));
}

TEST_CASE_TEMPLATE("clip: a NaN gradient makes the norm NaN", T, float, double, bf16) {
  const NonFinite c(engine::dtype_v<T>);
  Tensor bn = c.b.clone();
  bn.narrow(0, 7, 1).fill_(NAN);
  CHECK(std::isnan(kernels::grad_norm({c.a, bn})));
}

TEST_CASE_TEMPLATE("clip: an infinite gradient makes the norm infinite; NaN wins over it", T, float,
                   double, bf16) {
  const NonFinite c(engine::dtype_v<T>);
  Tensor ai = c.a.clone();
  ai.narrow(0, 99999, 1).fill_(-INFINITY);
  CHECK(std::isinf(kernels::grad_norm({ai, c.b})));
  ai.narrow(0, 5, 1).fill_(NAN);
  CHECK(std::isnan(kernels::grad_norm({ai, c.b})));
}

TEST_CASE("clip: clip_scale follows torch's clip_grad_norm_ rule") {
  CHECK(kernels::clip_scale(10.0, 1.0) == 1.0 / (10.0 + 1e-6));
  CHECK(kernels::clip_scale(0.5, 1.0) == 1.0);
  CHECK(kernels::clip_scale(0.0, 1.0) == 1.0);
  CHECK(kernels::clip_scale(1.0, 1.0) == 1.0 / (1.0 + 1e-6));  // at the threshold: just below 1
}

TEST_CASE("clip: clip_scale of a zero max_norm, an infinite and a NaN norm") {
  CHECK(kernels::clip_scale(3.0, 0.0) == 0.0);
  CHECK(kernels::clip_scale(INFINITY, 1.0) == 0.0);
  CHECK(std::isnan(kernels::clip_scale(NAN, 1.0)));
}

TEST_CASE("clip: clip_scale errors for a negative or NaN max_norm and a negative norm") {
  CHECK_THROWS_CONTAINING(kernels::clip_scale(1.0, -1.0),
                          "clip_scale: max_norm must be >= 0, got -1");
  CHECK_THROWS_CONTAINING(kernels::clip_scale(1.0, NAN), "max_norm must be >= 0");
  CHECK_THROWS_CONTAINING(kernels::clip_scale(-2.0, 1.0), "clip_scale: norm must be >= 0, got -2");
}

TEST_CASE_TEMPLATE("clip: scale_ in place on contiguous buffers, small and parallel", T, float,
                   double) {
  const DType dt = engine::dtype_v<T>;
  for (int64_t n : {int64_t(37), int64_t(200003)}) {
    CAPTURE(n);
    Tensor t = randn({n}, 1, dt);
    std::vector<double> want = t.to_vector<double>();
    for (double& x : want) x *= 0.3;
    kernels::scale_(t, 0.3);
    CHECK_CLOSE(t, Tensor::from_vector(want, {n}, DType::f64), dt == DType::f32 ? 1e-7 : 1e-16, 0);
  }
}

TEST_CASE_TEMPLATE("clip: scale_ in place on a strided view touches only its elements", T, float,
                   double) {
  Tensor base = randn({7, 13}, 2, engine::dtype_v<T>);
  Tensor nc = testing::non_contiguous(base);
  kernels::scale_(nc.slice(1, 0, 13, 2), -2.0);  // every other column of a strided view
  for (int64_t i = 0; i < 7; ++i)
    for (int64_t j = 0; j < 13; ++j)
      CHECK(nc.at({i, j}) == (j % 2 == 0 ? -2.0 : 1.0) * base.at({i, j}));
}

TEST_CASE("clip: scale_ of an integer tensor is an error") {
  CHECK_THROWS_CONTAINING(kernels::scale_(Tensor::zeros({3}, DType::i64), 2.0),
                          "scale_: expected dtype f32 or f64, got i64");
}

TEST_CASE("clip: grad_norm of an integer tensor is an error") {
  CHECK_THROWS_CONTAINING(kernels::grad_norm({Tensor::zeros({3}), Tensor::zeros({2}, DType::i32)}),
                          "grad_norm: tensor 1 is i32[2], expected f32, f64 or bf16");
}
