// Matrix products: matmul / matmul_out / bmm against the f64 triple-loop reference, every
// transpose combination, layouts that go to BLAS without a copy and ones that need one, batches
// and broadcasting, bf16, empty and K = 0 cases, errors; gradients of matmul, bmm and linear.
#include <cmath>
#include <limits>

#include "autograd/gradcheck.h"
#include "autograd/matmul.h"
#include "kernels/matmul.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {

// Stored operand shape for op(x) of rows×cols.
Shape stored(int64_t rows, int64_t cols, bool trans) {
  return trans ? Shape{cols, rows} : Shape{rows, cols};
}

// f32 tolerance for K-term dot products of unit normals.
double atol_for(int64_t k, DType dt) {
  return dt == DType::f64 ? 1e-12 : 2e-6 * std::sqrt(double(k) + 1);
}

// A tensor with the values of t but a last dim of stride 2 (BLAS cannot take it as is).
Tensor strided_last(const Tensor& t) {
  Shape s = t.shape();
  s[s.size() - 1] *= 2;
  Tensor big = Tensor::zeros(s, t.dtype());
  Tensor v = big.slice(-1, 0, s.back(), 2);
  v.copy_(t);
  return v;
}

// The values of t inside a wider buffer: rows have a leading dimension larger than their width.
Tensor padded_rows(const Tensor& t) {
  Shape s = t.shape();
  s[s.size() - 1] += 5;
  Tensor big = randn(s, 99, t.dtype());
  Tensor v = big.narrow(-1, 2, t.size(-1));
  v.copy_(t);
  return v;
}

}  // namespace

TEST_CASE("matmul: 2-D forward vs reference, every transpose combination, odd shapes") {
  const int64_t shapes[][3] = {{37, 13, 61}, {1, 1, 1},   {1, 7, 13}, {13, 7, 1},
                               {5, 1, 9},    {3, 130, 7}, {1, 37, 1}};
  uint64_t stream = 0;
  for (DType dt : {DType::f32, DType::f64})
    for (auto& s : shapes)
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          const int64_t m = s[0], k = s[1], n = s[2];
          CAPTURE(m);
          CAPTURE(k);
          CAPTURE(n);
          CAPTURE(ta);
          CAPTURE(tb);
          Tensor a = randn(stored(m, k, ta), ++stream, dt);
          Tensor b = randn(stored(k, n, tb), ++stream, dt);
          Tensor c = kernels::matmul(a, b, ta, tb);
          CHECK(c.dtype() == dt);
          CHECK(c.shape() == Shape{m, n});
          CHECK_CLOSE(c, kernels::ref::matmul(a, b, ta, tb), 1e-5, atol_for(k, dt));
        }
}

TEST_CASE("matmul: transposed views, padded rows and irregular strides") {
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor a = randn({37, 13}, 1, dt), b = randn({13, 29}, 2, dt);
    Tensor ref = kernels::ref::matmul(a, b, false, false);
    const double atol = atol_for(13, dt);
    // Transposed-contiguous (strides [1, ld]): flags flipped, no copy.
    CHECK_CLOSE(kernels::matmul(testing::non_contiguous(a), b), ref, 1e-5, atol);
    CHECK_CLOSE(kernels::matmul(a, testing::non_contiguous(b)), ref, 1e-5, atol);
    CHECK_CLOSE(kernels::matmul(testing::non_contiguous(a), testing::non_contiguous(b)), ref, 1e-5,
                atol);
    // A transposed view used with the transpose flag: (aᵀ)ᵀ · b.
    Tensor at = a.transpose(0, 1);
    CHECK_CLOSE(kernels::matmul(at, b, true, false), ref, 1e-5, atol);
    CHECK_CLOSE(kernels::matmul(a, b.transpose(0, 1), false, true), ref, 1e-5, atol);
    // Rows with a leading dimension larger than the width.
    CHECK_CLOSE(kernels::matmul(padded_rows(a), padded_rows(b)), ref, 1e-5, atol);
    CHECK_CLOSE(kernels::matmul(padded_rows(a).transpose(0, 1), b.transpose(0, 1), true, true), ref,
                1e-5, atol);
    // Stride-2 last dim: copied before the GEMM.
    CHECK_CLOSE(kernels::matmul(strided_last(a), strided_last(b)), ref, 1e-5, atol);
    CHECK_CLOSE(kernels::matmul(strided_last(a).transpose(0, 1), b, true, false), ref, 1e-5, atol);
  }
}

TEST_CASE("matmul: leading batch dims of a fold into M; broadcast batches") {
  for (DType dt : {DType::f32, DType::f64}) {
    const double atol = atol_for(13, dt);
    for (bool tb : {false, true}) {
      Tensor b = randn(stored(13, 7, tb), 3, dt);
      Tensor a = randn({3, 5, 7, 13}, 4, dt);
      Tensor ref = kernels::ref::matmul(a, b, false, tb);
      CHECK(ref.shape() == Shape{3, 5, 7, 7});
      CHECK_CLOSE(kernels::matmul(a, b, false, tb), ref, 1e-5, atol);
      // Per-matrix transposed layout (cannot fold: one GEMM per batch element).
      CHECK_CLOSE(kernels::matmul(testing::non_contiguous(a), b, false, tb), ref, 1e-5, atol);
      // A batch slice with a gap between elements (partly folds).
      Tensor big = randn({6, 5, 7, 13}, 5, dt);
      Tensor sl = big.slice(0, 0, 6, 2);
      CHECK_CLOSE(kernels::matmul(sl, b, false, tb), kernels::ref::matmul(sl, b, false, tb), 1e-5,
                  atol);
      // Transposed a with batch dims: a [..., K, M].
      Tensor at = randn({2, 3, 13, 7}, 6, dt);
      CHECK_CLOSE(kernels::matmul(at, b, true, tb), kernels::ref::matmul(at, b, true, tb), 1e-5,
                  atol);
    }
    // Both batched, broadcasting [2, 1] against [3].
    Tensor a = randn({2, 1, 7, 13}, 7, dt), b = randn({3, 13, 5}, 8, dt);
    Tensor c = kernels::matmul(a, b);
    CHECK(c.shape() == Shape{2, 3, 7, 5});
    CHECK_CLOSE(c, kernels::ref::matmul(a, b, false, false), 1e-5, atol);
    // 2-D a against a batched b.
    Tensor a2 = randn({7, 13}, 9, dt);
    CHECK_CLOSE(kernels::matmul(a2, b), kernels::ref::matmul(a2, b, false, false), 1e-5, atol);
  }
}

TEST_CASE("matmul: bmm with equal and broadcast batches, every transpose") {
  uint64_t stream = 100;
  for (DType dt : {DType::f32, DType::f64})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (auto [ba, bb] :
             {std::pair<int64_t, int64_t>{5, 5}, {1, 5}, {5, 1}, {1, 1}, {17, 17}}) {
          CAPTURE(ta);
          CAPTURE(tb);
          CAPTURE(ba);
          CAPTURE(bb);
          const int64_t m = 7, k = 13, n = 3;
          Shape sa = stored(m, k, ta), sb = stored(k, n, tb);
          sa.insert(0, ba);
          sb.insert(0, bb);
          Tensor a = randn(sa, ++stream, dt), b = randn(sb, ++stream, dt);
          Tensor ref = kernels::ref::bmm(a, b, ta, tb);
          Tensor c = kernels::bmm(a, b, ta, tb);
          CHECK(c.shape() == Shape{std::max(ba, bb), m, n});
          CHECK_CLOSE(c, ref, 1e-5, atol_for(k, dt));
          CHECK_CLOSE(kernels::bmm(testing::non_contiguous(a), b, ta, tb), ref, 1e-5,
                      atol_for(k, dt));
          CHECK_CLOSE(kernels::bmm(a, strided_last(b), ta, tb), ref, 1e-5, atol_for(k, dt));
        }
  // Large enough per matrix for the threaded-GEMM policy, batch not a multiple of the threads.
  Tensor a = randn({3, 150, 130}, 1), b = randn({3, 130, 140}, 2);
  CHECK_CLOSE(kernels::bmm(a, b), kernels::ref::bmm(a, b, false, false), 1e-5,
              atol_for(130, DType::f32));
  // Many small matrices with enough work in total to be spread over threads (with more than
  // one thread), transposed and broadcast operands included.
  Tensor sa = randn({16, 41, 37}, 3), sb = randn({1, 29, 41}, 4);
  CHECK_CLOSE(kernels::bmm(sa, sb, true, true), kernels::ref::bmm(sa, sb, true, true), 1e-5,
              atol_for(41, DType::f32));
}

TEST_CASE("matmul: matmul_out scales and accumulates into any output layout") {
  for (DType dt : {DType::f32, DType::f64})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        CAPTURE(ta);
        CAPTURE(tb);
        Tensor a = randn(stored(11, 13, ta), 1, dt), b = randn(stored(13, 9, tb), 2, dt);
        Tensor c0 = randn({11, 9}, 3, dt);
        // Expected: 0.5 · op(a)·op(b) + 2 · c0, from the reference.
        auto expected = [&] {
          auto r = kernels::ref::matmul(a, b, ta, tb).to_vector<double>();
          auto c = c0.to_vector<double>();
          for (size_t i = 0; i < r.size(); ++i) r[i] = 0.5 * r[i] + 2.0 * c[i];
          return Tensor::from_vector(r, {11, 9});
        }();
        const double atol = atol_for(13, dt) * 2;
        Tensor out = c0.clone();
        kernels::matmul_out(out, a, b, ta, tb, 0.5, 2.0);
        CHECK_CLOSE(out, expected, 1e-5, atol);
        // Output stored transposed (column-major GEMM) and with stride-2 rows (via a temporary).
        Tensor out_t = testing::non_contiguous(c0);
        kernels::matmul_out(out_t, a, b, ta, tb, 0.5, 2.0);
        CHECK_CLOSE(out_t, expected, 1e-5, atol);
        Tensor out_s = strided_last(c0);
        kernels::matmul_out(out_s, a, b, ta, tb, 0.5, 2.0);
        CHECK_CLOSE(out_s, expected, 1e-5, atol);
        // beta = 0 ignores whatever the output held, NaN included.
        Tensor out_nan = Tensor::full({11, 9}, std::nan(""), dt);
        kernels::matmul_out(out_nan, a, b, ta, tb);
        CHECK_CLOSE(out_nan, kernels::ref::matmul(a, b, ta, tb), 1e-5, atol);
      }
  // Leading dims: out [..., M, N].
  Tensor a = randn({2, 3, 7, 13}, 4), b = randn({13, 5}, 5);
  Tensor out = Tensor::zeros({2, 3, 7, 5});
  kernels::matmul_out(out, a, b, false, false, 1.0, 1.0);
  CHECK_CLOSE(out, kernels::ref::matmul(a, b, false, false), 1e-5, atol_for(13, DType::f32));
}

TEST_CASE("matmul: single-row and single-column results (GEMV) in every layout") {
  // m × k · k × n with m = 1 or n = 1, operands stored plain, transposed, padded or strided.
  auto layouts = [](const Tensor& t) {
    return std::vector<Tensor>{t, testing::non_contiguous(t), padded_rows(t), strided_last(t)};
  };
  uint64_t stream = 200;
  for (DType dt : {DType::f32, DType::f64})
    for (auto [m, n] : {std::pair<int64_t, int64_t>{1, 29}, {29, 1}, {1, 1}})
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          CAPTURE(m);
          CAPTURE(n);
          CAPTURE(ta);
          CAPTURE(tb);
          Tensor a = randn(stored(m, 37, ta), ++stream, dt),
                 b = randn(stored(37, n, tb), ++stream, dt);
          Tensor ref = kernels::ref::matmul(a, b, ta, tb);
          for (const Tensor& la : layouts(a))
            for (const Tensor& lb : layouts(b))
              CHECK_CLOSE(kernels::matmul(la, lb, ta, tb), ref, 1e-5, atol_for(37, dt));
          // Accumulating and overwriting (beta = 0 ignores NaN) into plain and transposed outputs.
          Tensor c0 = randn({m, n}, ++stream, dt);
          auto expected = ref.to_vector<double>();
          auto cv = c0.to_vector<double>();
          for (size_t i = 0; i < expected.size(); ++i) expected[i] = 2.0 * expected[i] - cv[i];
          for (Tensor out : {c0.clone(), testing::non_contiguous(c0), padded_rows(c0)}) {
            kernels::matmul_out(out, a, b, ta, tb, 2.0, -1.0);
            CHECK_CLOSE(out, Tensor::from_vector(expected, {m, n}), 1e-5, 3 * atol_for(37, dt));
            out.fill_(std::nan(""));
            kernels::matmul_out(out, a, b, ta, tb);
            CHECK_CLOSE(out, ref, 1e-5, atol_for(37, dt));
          }
        }
  // A batch of matrix-vector products, and a bias-gradient-like column sum.
  Tensor a = randn({5, 7, 13}, 1), v = randn({5, 13, 1}, 2);
  CHECK_CLOSE(kernels::bmm(a, v), kernels::ref::bmm(a, v, false, false), 1e-5,
              atol_for(13, DType::f32));
  Tensor g = randn({300, 7}, 3), ones = Tensor::ones({1, 300});
  CHECK_CLOSE(kernels::matmul(ones, g), kernels::ref::matmul(ones, g, false, false), 1e-5,
              atol_for(300, DType::f32));
}

TEST_CASE("matmul: bf16 operands are computed in f32 and rounded once") {
  Tensor a = randn({37, 13}, 1, DType::bf16), b = randn({13, 21}, 2, DType::bf16);
  Tensor c = kernels::matmul(a, b);
  CHECK(c.dtype() == DType::bf16);
  // The reference uses the same bf16 values exactly; the only error is the final rounding.
  CHECK_CLOSE(c, kernels::ref::matmul(a, b, false, false), 1.0 / 128, 1e-5);
  Tensor out = Tensor::ones({37, 21}, DType::bf16);
  kernels::matmul_out(out, a, b, false, false, 1.0, 1.0);
  auto r = kernels::ref::matmul(a, b, false, false).to_vector<double>();
  for (double& v : r) v += 1.0;
  CHECK_CLOSE(out, Tensor::from_vector(r, {37, 21}), 1.0 / 128, 1e-2);
}

TEST_CASE("matmul: empty operands and K = 0") {
  Tensor a = Tensor::empty({3, 0}), b = Tensor::empty({0, 4});
  Tensor c = kernels::matmul(a, b);
  CHECK(c.shape() == Shape{3, 4});
  CHECK(c.to_vector<float>() == std::vector<float>(12, 0.0f));
  Tensor out = Tensor::full({3, 4}, 1.5);
  kernels::matmul_out(out, a, b, false, false, 1.0, 2.0);
  CHECK(out.to_vector<float>() == std::vector<float>(12, 3.0f));
  CHECK(kernels::matmul(Tensor::empty({0, 5}), randn({5, 4}, 1)).shape() == Shape{0, 4});
  CHECK(kernels::matmul(randn({3, 5}, 1), Tensor::empty({5, 0})).shape() == Shape{3, 0});
  CHECK(kernels::bmm(Tensor::empty({0, 3, 5}), randn({1, 5, 4}, 1)).shape() == Shape{0, 3, 4});
}

TEST_CASE("matmul: errors name the op and the shapes") {
  Tensor a = Tensor::zeros({3, 4}), b = Tensor::zeros({5, 6});
  CHECK_THROWS_CONTAINING(kernels::matmul(a, b), "matmul: cannot multiply [3, 4] and [5, 6]");
  CHECK_THROWS_CONTAINING(kernels::matmul(a, b, true, false), "inner dimensions 3 and 5 differ");
  CHECK_THROWS_CONTAINING(kernels::matmul(a, Tensor::zeros({4, 2}, DType::f64)), "dtype mismatch");
  CHECK_THROWS_CONTAINING(kernels::matmul(a, Tensor::zeros({4})), "at least 2-D");
  CHECK_THROWS_CONTAINING(
      kernels::matmul(Tensor::zeros({3, 4}, DType::i64), Tensor::zeros({4, 2}, DType::i64)),
      "expected a floating dtype");
  CHECK_THROWS_CONTAINING(kernels::matmul(Tensor::zeros({2, 3, 4}), Tensor::zeros({3, 4, 5})),
                          "cannot be broadcast");
  CHECK_THROWS_CONTAINING(kernels::bmm(Tensor::zeros({3, 4}), Tensor::zeros({4, 5})),
                          "bmm: expected 3-D");
  CHECK_THROWS_CONTAINING(kernels::bmm(Tensor::zeros({2, 3, 4}), Tensor::zeros({3, 4, 5})),
                          "bmm: batch sizes of [2, 3, 4] and [3, 4, 5] differ");
  Tensor out = Tensor::zeros({3, 5});
  CHECK_THROWS_CONTAINING(kernels::matmul_out(out, a, Tensor::zeros({4, 6})),
                          "matmul_out: out is f32[3, 5]");
  Tensor bcast = Tensor::zeros({1, 6}).expand({3, 6});
  CHECK_THROWS_CONTAINING(kernels::matmul_out(bcast, a, Tensor::zeros({4, 6})),
                          "is a broadcast view");
}

TEST_CASE("matmul: gradients of matmul for every transpose combination (gradcheck f64)") {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      CAPTURE(ta);
      CAPTURE(tb);
      auto f = [=](const std::vector<autograd::Var>& v) {
        return autograd::matmul(v[0], v[1], ta, tb);
      };
      // 2-D.
      auto r = autograd::gradcheck(
          f, {randn(stored(3, 4, ta), 1, DType::f64), randn(stored(4, 5, tb), 2, DType::f64)});
      INFO(r.detail);
      CHECK(r.ok);
      // a with leading dims, b 2-D (the weight gradient sums over them).
      Shape sa = stored(3, 4, ta);
      sa.insert(0, 3);
      sa.insert(0, 2);
      auto r2 = autograd::gradcheck(
          f, {randn(sa, 3, DType::f64), randn(stored(4, 5, tb), 4, DType::f64)});
      INFO(r2.detail);
      CHECK(r2.ok);
      // Same batch dims on both sides.
      Shape sb = stored(4, 5, tb);
      sb.insert(0, 3);
      sb.insert(0, 2);
      auto r3 = autograd::gradcheck(f, {randn(sa, 5, DType::f64), randn(sb, 6, DType::f64)});
      INFO(r3.detail);
      CHECK(r3.ok);
    }
  autograd::Var a(Tensor::zeros({2, 3, 4}), true), b(Tensor::zeros({1, 4, 5}), true);
  CHECK_THROWS_CONTAINING(autograd::matmul(a, b), "use bmm for broadcast batches");
}

TEST_CASE("matmul: gradients of bmm, including broadcast batches (gradcheck f64)") {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (auto [ba, bb] : {std::pair<int64_t, int64_t>{3, 3}, {1, 3}, {3, 1}}) {
        CAPTURE(ta);
        CAPTURE(tb);
        CAPTURE(ba);
        CAPTURE(bb);
        Shape sa = stored(2, 4, ta), sb = stored(4, 3, tb);
        sa.insert(0, ba);
        sb.insert(0, bb);
        auto r = autograd::gradcheck(
            [=](const std::vector<autograd::Var>& v) { return autograd::bmm(v[0], v[1], ta, tb); },
            {randn(sa, 1, DType::f64), randn(sb, 2, DType::f64)});
        INFO(r.detail);
        CHECK(r.ok);
      }
}

TEST_CASE("matmul: linear forward vs reference and gradients with and without bias") {
  Tensor x = randn({3, 5, 13}, 1), w = randn({7, 13}, 2), b = randn({7}, 3);
  auto ref = kernels::ref::matmul(x, w, false, true).to_vector<double>();
  auto bv = b.to_vector<double>();
  for (size_t i = 0; i < ref.size(); ++i) ref[i] += bv[i % 7];
  autograd::Var y = autograd::linear(autograd::Var(x), autograd::Var(w), autograd::Var(b));
  CHECK_CLOSE(y.data(), Tensor::from_vector(ref, {3, 5, 7}), 1e-5, atol_for(13, DType::f32));
  CHECK_CLOSE(autograd::linear(autograd::Var(testing::non_contiguous(x)), autograd::Var(w),
                               autograd::Var(b))
                  .data(),
              Tensor::from_vector(ref, {3, 5, 7}), 1e-5, atol_for(13, DType::f32));

  auto with_bias = [](const std::vector<autograd::Var>& v) {
    return autograd::linear(v[0], v[1], v[2]);
  };
  auto no_bias = [](const std::vector<autograd::Var>& v) { return autograd::linear(v[0], v[1]); };
  for (Shape xs : {Shape{4, 3}, Shape{2, 3, 3}}) {
    auto r1 = autograd::gradcheck(
        with_bias,
        {randn(xs, 4, DType::f64), randn({5, 3}, 5, DType::f64), randn({5}, 6, DType::f64)});
    INFO(r1.detail);
    CHECK(r1.ok);
    auto r2 =
        autograd::gradcheck(no_bias, {randn(xs, 7, DType::f64), randn({5, 3}, 8, DType::f64)});
    INFO(r2.detail);
    CHECK(r2.ok);
  }
  CHECK_THROWS_CONTAINING(autograd::linear(autograd::Var(x), autograd::Var(randn({7, 12}, 1))),
                          "linear: input f32[3, 5, 13] does not match weight f32[7, 12]");
  CHECK_THROWS_CONTAINING(
      autograd::linear(autograd::Var(x), autograd::Var(w), autograd::Var(randn({6}, 1))),
      "linear: bias f32[6]");
}
