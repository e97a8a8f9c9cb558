// Drop-token on the CPU: keep counts and the rate check, indices against an independent
// reference (full sort of Philox keys), their invariants (strictly increasing, in range, the same
// key gives the same subset, other keys other subsets, roughly uniform), gather / scatter
// against the reference for several dtypes and trailing shapes, and the autograd op.
#include <cmath>
#include <vector>

#include "autograd/drop_token.h"
#include "autograd/gradcheck.h"
#include "engine/philox.h"
#include "kernels/drop_token.h"
#include "tests/helpers.h"

using autograd::Var;
using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

TEST_CASE("drop_token: keep_count truncates (1 - r)·L and rejects r >= 1 - 1/L") {
  CHECK(kernels::keep_count(1024, 0.75) == 256);
  CHECK(kernels::keep_count(196, 0.0) == 196);
  CHECK(kernels::keep_count(10, 0.25) == 7);  // 7.5 -> 7
  CHECK(kernels::keep_count(1, 0.0) == 1);
  CHECK(kernels::keep_count(5, 0.79) == 1);
  CHECK_THROWS_CONTAINING(kernels::keep_count(5, 0.8), "drop-token rate r must be < 1 - 1/L");
  CHECK_THROWS_CONTAINING(kernels::keep_count(4, 0.9), "got r = 0.9 for L = 4");
  CHECK_THROWS_CONTAINING(kernels::keep_count(8, 1.0), "drop-token rate r must be < 1 - 1/L");
  CHECK_THROWS_CONTAINING(kernels::keep_count(8, -0.1), "drop-token rate r must be < 1 - 1/L");
  CHECK_THROWS_CONTAINING(kernels::keep_count(1, 0.5), "drop-token rate r must be < 1 - 1/L");
}

TEST_CASE("drop_token: indices match the reference and philox_choose_sorted per example") {
  for (int64_t L : {1, 7, 37, 130, 1024})
    for (double rate : {0.0, 0.25, 0.75}) {
      if (rate > 0 && rate >= 1 - 1.0 / L) continue;
      const int64_t B = 5, keep = kernels::keep_count(L, rate);
      INFO("L " << L << " rate " << rate);
      Tensor idx = kernels::drop_token_indices(B, L, keep, 42, 3);
      CHECK(idx.shape() == Shape{B, keep});
      CHECK(idx.dtype() == DType::i64);
      std::vector<int64_t> v = idx.to_vector<int64_t>();
      CHECK(v == kernels::ref::drop_token_indices(B, L, keep, 42, 3).to_vector<int64_t>());
      bool ok = true;
      for (int64_t b = 0; b < B; ++b) {
        std::vector<int64_t> want(static_cast<size_t>(keep));
        engine::philox_choose_sorted(42, kernels::drop_token_stream(3, b), L, keep, want.data());
        for (int64_t p = 0; p < keep; ++p) {
          ok = ok && v[b * keep + p] == want[p] && v[b * keep + p] >= 0 && v[b * keep + p] < L;
          if (p) ok = ok && v[b * keep + p] > v[b * keep + p - 1];
        }
      }
      CHECK(ok);
    }
  // The key decides: same key same subset, a different seed, stream or example another one.
  Tensor a = kernels::drop_token_indices(3, 64, 16, 7, 1);
  CHECK(a.to_vector<int64_t>() ==
        kernels::drop_token_indices(3, 64, 16, 7, 1).to_vector<int64_t>());
  CHECK(a.to_vector<int64_t>() !=
        kernels::drop_token_indices(3, 64, 16, 8, 1).to_vector<int64_t>());
  CHECK(a.to_vector<int64_t>() !=
        kernels::drop_token_indices(3, 64, 16, 7, 2).to_vector<int64_t>());
  CHECK(a.select(0, 0).to_vector<int64_t>() != a.select(0, 1).to_vector<int64_t>());
  // Examples of a batch of 2 under stream 2 are not examples of a batch of 4 under stream 1.
  Tensor b2 = kernels::drop_token_indices(2, 64, 16, 7, 2),
         b4 = kernels::drop_token_indices(4, 64, 16, 7, 1);
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 4; ++j)
      CHECK(b2.select(0, i).to_vector<int64_t>() != b4.select(0, j).to_vector<int64_t>());
  // Every position is kept with probability keep / L: 2000 examples, 6 standard deviations.
  const int64_t B = 2000, L = 20, keep = 5;
  std::vector<int64_t> v = kernels::drop_token_indices(B, L, keep, 11, 0).to_vector<int64_t>();
  std::vector<int64_t> hits(L, 0);
  for (int64_t i : v) hits[i]++;
  const double pk = double(keep) / L, sd = std::sqrt(B * pk * (1 - pk));
  bool uniform = true;
  for (int64_t h : hits) uniform = uniform && std::abs(h - B * pk) < 6 * sd;
  CHECK(uniform);
  // Edge cases: keep = 0 and keep = L.
  CHECK(kernels::drop_token_indices(2, 9, 0, 1, 1).numel() == 0);
  CHECK(kernels::drop_token_indices(2, 9, 9, 1, 1).to_vector<int64_t>() ==
        std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8});
  CHECK_THROWS_CONTAINING(kernels::drop_token_indices(2, 9, 10, 1, 1), "0 <= keep <= L");
}

TEST_CASE("drop_token: gather and scatter match the reference") {
  uint64_t stream = 10;
  for (DType dt : {DType::f32, DType::f64, DType::bf16})
    for (Shape s : {Shape{3, 37, 13}, Shape{2, 17, 3, 5}, Shape{4, 7}}) {
      INFO(engine::dtype_name(dt) << " " << s);
      Tensor x = randn(s, stream++, dt);
      const int64_t keep = kernels::keep_count(s[1], 0.6);
      Tensor idx = kernels::drop_token_indices(s[0], s[1], keep, 5, stream);
      Tensor y = kernels::drop_token_gather(x, idx);
      CHECK(y.dtype() == dt);
      CHECK_CLOSE(y, kernels::ref::drop_token_gather(x, idx), 0, 0);
      CHECK_CLOSE(kernels::drop_token_gather(testing::non_contiguous(x), idx.to(DType::i32)),
                  kernels::ref::drop_token_gather(x, idx), 0, 0);
      Tensor g = randn(y.shape(), stream++, dt);
      Tensor back = kernels::drop_token_scatter(g, idx, s[1]);
      CHECK(back.shape() == s);
      CHECK_CLOSE(back, kernels::ref::drop_token_scatter(g, idx, s[1]), 0, 0);
    }
  // Integer payloads (token coordinates) move too.
  Tensor coords = Tensor::arange(2 * 6 * 3).view({2, 6, 3});
  Tensor idx = Tensor::from_vector<int64_t>({1, 4, 0, 5}, {2, 2});
  CHECK(kernels::drop_token_gather(coords, idx).to_vector<int64_t>() ==
        std::vector<int64_t>{3, 4, 5, 12, 13, 14, 18, 19, 20, 33, 34, 35});
  CHECK_THROWS_CONTAINING(
      kernels::drop_token_gather(coords, Tensor::from_vector<int64_t>({1, 6, 0, 5}, {2, 2})),
      "drop_token_gather: index 6 at position 1 is out of range [0, 6)");
  CHECK_THROWS_CONTAINING(
      kernels::drop_token_scatter(randn({2, 2, 3}, 1),
                                  Tensor::from_vector<int64_t>({1, 1, 0, 5}, {2, 2}), 6),
      "drop_token_scatter: indices of example 0 are not strictly increasing at position 1");
  CHECK_THROWS_CONTAINING(
      kernels::drop_token_gather(coords, Tensor::from_vector<int64_t>({1, 4}, {1, 2})),
      "drop_token_gather: idx i64[1, 2] must be [B, keep] with B = 2");
  CHECK_THROWS_CONTAINING(kernels::drop_token_gather(randn({5}, 1), idx),
                          "drop_token_gather: x must be [B, L, ...]");
}

TEST_CASE("drop_token: autograd op; gradcheck") {
  Tensor idx = kernels::drop_token_indices(2, 9, 4, 3, 3);
  using V = const std::vector<Var>&;
  autograd::GradcheckResult r = autograd::gradcheck(
      [idx](V v) { return autograd::drop_token(v[0], idx); }, {randn({2, 9, 3}, 1, DType::f64)});
  INFO(r.detail);
  CHECK(r.ok);
  Var x(randn({2, 9, 3}, 2), true);
  Var y = autograd::drop_token(x, idx);
  CHECK(y.shape() == Shape{2, 4, 3});
  y.backward(Tensor::ones({2, 4, 3}));
  // Dropped tokens get zero gradient, kept ones 1.
  std::vector<float> gv = x.grad().to_vector<float>();
  std::vector<int64_t> iv = idx.to_vector<int64_t>();
  double kept = 0;
  for (float v : gv) kept += v;
  CHECK(kept == 2 * 4 * 3);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t p = 0; p < 4; ++p) CHECK(gv[(b * 9 + iv[b * 4 + p]) * 3] == 1.0f);
}
