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

// 0 for f32, 1 for f64: keeps the random streams of the two dtypes apart.
int dtype_index(DType dt) { return dt == DType::f64 ? 1 : 0; }

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

// 2-D products of one transpose combination on odd shapes, including size-1 dims.
void check_2d_forward(DType dt, bool ta, bool tb) {
  const int64_t shapes[][3] = {{37, 13, 61}, {1, 1, 1},   {1, 7, 13}, {13, 7, 1},
                               {5, 1, 9},    {3, 130, 7}, {1, 37, 1}};
  for (int si = 0; si < 7; ++si) {
    const int64_t m = shapes[si][0], k = shapes[si][1], n = shapes[si][2];
    CAPTURE(m);
    CAPTURE(k);
    CAPTURE(n);
    uint64_t stream = 2 * (((dtype_index(dt) * 7 + si) * 2 + ta) * 2 + tb);
    Tensor a = randn(stored(m, k, ta), ++stream, dt);
    Tensor b = randn(stored(k, n, tb), ++stream, dt);
    Tensor c = kernels::matmul(a, b, ta, tb);
    CHECK(c.dtype() == dt);
    CHECK(c.shape() == Shape{m, n});
    CHECK_CLOSE(c, kernels::ref::matmul(a, b, ta, tb), 1e-5, atol_for(k, dt));
  }
}

// 37×13 · 13×29 operands and their reference product.
struct Plain2d {
  Tensor a, b, ref;
  double atol;
  explicit Plain2d(DType dt)
      : a(randn({37, 13}, 1, dt)),
        b(randn({13, 29}, 2, dt)),
        ref(kernels::ref::matmul(a, b, false, false)),
        atol(atol_for(13, dt)) {}
};

// bmm operands of one transpose combination and batch pair, from the running `stream`.
struct BmmOperands {
  Tensor a, b;
};
BmmOperands bmm_operands(DType dt, bool ta, bool tb, int64_t ba, int64_t bb, uint64_t& stream) {
  Shape sa = stored(7, 13, ta), sb = stored(13, 3, tb);
  sa.insert(0, ba);
  sb.insert(0, bb);
  Tensor a = randn(sa, ++stream, dt);
  Tensor b = randn(sb, ++stream, dt);
  return {a, b};
}

// Runs f(ta, tb, ba, bb, a, b) over every transpose and batch pair of the bmm sweep.
template <class F>
void bmm_sweep(DType dt, F f) {
  uint64_t stream = 100 + 40 * dtype_index(dt);
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (auto [ba, bb] : {std::pair<int64_t, int64_t>{5, 5}, {1, 5}, {5, 1}, {1, 1}, {17, 17}}) {
        CAPTURE(ta);
        CAPTURE(tb);
        CAPTURE(ba);
        CAPTURE(bb);
        BmmOperands in = bmm_operands(dt, ta, tb, ba, bb, stream);
        f(ta, tb, ba, bb, in.a, in.b);
      }
}

// matmul_out's operands for one transpose combination, the initial output c0 and the expected
// 0.5 · op(a)·op(b) + 2 · c0, from the reference.
struct OutCase {
  Tensor a, b, c0, expected;
  double atol;
  OutCase(DType dt, bool ta, bool tb)
      : a(randn(stored(11, 13, ta), 1, dt)),
        b(randn(stored(13, 9, tb), 2, dt)),
        c0(randn({11, 9}, 3, dt)),
        atol(atol_for(13, dt) * 2) {
    auto r = kernels::ref::matmul(a, b, ta, tb).to_vector<double>();
    auto c = c0.to_vector<double>();
    for (size_t i = 0; i < r.size(); ++i) r[i] = 0.5 * r[i] + 2.0 * c[i];
    expected = Tensor::from_vector(r, {11, 9});
  }
};

template <class F>
void for_each_transpose(F f) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      CAPTURE(ta);
      CAPTURE(tb);
      f(ta, tb);
    }
}

// m × 37 · 37 × n with m = 1 or n = 1 (GEMV shapes): operands, reference and initial output.
struct GemvCase {
  int64_t m, n;
  bool ta, tb;
  Tensor a, b, ref, c0;
};
template <class F>
void gemv_sweep(DType dt, F f) {
  uint64_t stream = 200 + 36 * dtype_index(dt);
  for (auto [m, n] : {std::pair<int64_t, int64_t>{1, 29}, {29, 1}, {1, 1}})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        CAPTURE(m);
        CAPTURE(n);
        CAPTURE(ta);
        CAPTURE(tb);
        Tensor a = randn(stored(m, 37, ta), ++stream, dt);
        Tensor b = randn(stored(37, n, tb), ++stream, dt);
        Tensor c0 = randn({m, n}, ++stream, dt);
        f(GemvCase{m, n, ta, tb, a, b, kernels::ref::matmul(a, b, ta, tb), c0});
      }
}

// Operands stored plain, transposed, padded or strided.
std::vector<Tensor> layouts(const Tensor& t) {
  return {t, testing::non_contiguous(t), padded_rows(t), strided_last(t)};
}

void check_gradcheck(const autograd::GradcheckResult& r) {
  INFO(r.detail);
  CHECK(r.ok);
}

// Gradients of matmul for one transpose combination: 2-D, a with leading dims (the weight
// gradient sums over them), and the same batch dims on both sides.
void gradcheck_matmul(bool ta, bool tb) {
  auto f = [=](const std::vector<autograd::Var>& v) {
    return autograd::matmul(v[0], v[1], ta, tb);
  };
  check_gradcheck(autograd::gradcheck(
      f, {randn(stored(3, 4, ta), 1, DType::f64), randn(stored(4, 5, tb), 2, DType::f64)}));
  Shape sa = stored(3, 4, ta);
  sa.insert(0, 3);
  sa.insert(0, 2);
  check_gradcheck(
      autograd::gradcheck(f, {randn(sa, 3, DType::f64), randn(stored(4, 5, tb), 4, DType::f64)}));
  Shape sb = stored(4, 5, tb);
  sb.insert(0, 3);
  sb.insert(0, 2);
  check_gradcheck(autograd::gradcheck(f, {randn(sa, 5, DType::f64), randn(sb, 6, DType::f64)}));
}

// Gradients of bmm for one transpose combination, with equal and broadcast batches.
void gradcheck_bmm(bool ta, bool tb) {
  for (auto [ba, bb] : {std::pair<int64_t, int64_t>{3, 3}, {1, 3}, {3, 1}}) {
    CAPTURE(ba);
    CAPTURE(bb);
    Shape sa = stored(2, 4, ta), sb = stored(4, 3, tb);
    sa.insert(0, ba);
    sb.insert(0, bb);
    check_gradcheck(autograd::gradcheck(
        [=](const std::vector<autograd::Var>& v) { return autograd::bmm(v[0], v[1], ta, tb); },
        {randn(sa, 1, DType::f64), randn(sb, 2, DType::f64)}));
  }
}

// linear's inputs x [3, 5, 13], w [7, 13], b [7] and the reference x·wᵀ + b.
struct LinearCase {
  Tensor x = randn({3, 5, 13}, 1), w = randn({7, 13}, 2), b = randn({7}, 3);
  Tensor ref;
  LinearCase() {
    auto r = kernels::ref::matmul(x, w, false, true).to_vector<double>();
    auto bv = b.to_vector<double>();
    for (size_t i = 0; i < r.size(); ++i) r[i] += bv[i % 7];
    ref = Tensor::from_vector(r, {3, 5, 7});
  }
};

const Shape linear_grad_shapes[] = {Shape{4, 3}, Shape{2, 3, 3}};

}  // namespace

// ---- 2-D forward

TEST_CASE_TEMPLATE("matmul: 2-D forward matches the reference, a*b", T, float, double) {
  check_2d_forward(engine::dtype_v<T>, false, false);
}

TEST_CASE_TEMPLATE("matmul: 2-D forward matches the reference, a*b^T", T, float, double) {
  check_2d_forward(engine::dtype_v<T>, false, true);
}

TEST_CASE_TEMPLATE("matmul: 2-D forward matches the reference, a^T*b", T, float, double) {
  check_2d_forward(engine::dtype_v<T>, true, false);
}

TEST_CASE_TEMPLATE("matmul: 2-D forward matches the reference, a^T*b^T", T, float, double) {
  check_2d_forward(engine::dtype_v<T>, true, true);
}

// ---- layouts

TEST_CASE_TEMPLATE("matmul: non-contiguous (transposed view) inputs match the reference", T, float,
                   double) {
  const Plain2d p(engine::dtype_v<T>);
  // Transposed-contiguous (strides [1, ld]): flags flipped, no copy.
  CHECK_CLOSE(kernels::matmul(testing::non_contiguous(p.a), p.b), p.ref, 1e-5, p.atol);
  CHECK_CLOSE(kernels::matmul(p.a, testing::non_contiguous(p.b)), p.ref, 1e-5, p.atol);
  CHECK_CLOSE(kernels::matmul(testing::non_contiguous(p.a), testing::non_contiguous(p.b)), p.ref,
              1e-5, p.atol);
  // A transposed view used with the transpose flag: (aᵀ)ᵀ · b.
  CHECK_CLOSE(kernels::matmul(p.a.transpose(0, 1), p.b, true, false), p.ref, 1e-5, p.atol);
  CHECK_CLOSE(kernels::matmul(p.a, p.b.transpose(0, 1), false, true), p.ref, 1e-5, p.atol);
}

TEST_CASE_TEMPLATE("matmul: padded-row inputs (leading dimension > width) match the reference", T,
                   float, double) {
  const Plain2d p(engine::dtype_v<T>);
  CHECK_CLOSE(kernels::matmul(padded_rows(p.a), padded_rows(p.b)), p.ref, 1e-5, p.atol);
  CHECK_CLOSE(kernels::matmul(padded_rows(p.a).transpose(0, 1), p.b.transpose(0, 1), true, true),
              p.ref, 1e-5, p.atol);
}

TEST_CASE_TEMPLATE("matmul: stride-2 inputs (copied before the GEMM) match the reference", T, float,
                   double) {
  const Plain2d p(engine::dtype_v<T>);
  CHECK_CLOSE(kernels::matmul(strided_last(p.a), strided_last(p.b)), p.ref, 1e-5, p.atol);
  CHECK_CLOSE(kernels::matmul(strided_last(p.a).transpose(0, 1), p.b, true, false), p.ref, 1e-5,
              p.atol);
}

// ---- batches and broadcasting

TEST_CASE_TEMPLATE("matmul: leading batch dims of a fold into M", T, float, double) {
  const DType dt = engine::dtype_v<T>;
  const double atol = atol_for(13, dt);
  for (bool tb : {false, true}) {
    CAPTURE(tb);
    Tensor b = randn(stored(13, 7, tb), 3, dt);
    Tensor a = randn({3, 5, 7, 13}, 4, dt);
    Tensor ref = kernels::ref::matmul(a, b, false, tb);
    CHECK(ref.shape() == Shape{3, 5, 7, 7});
    CHECK_CLOSE(kernels::matmul(a, b, false, tb), ref, 1e-5, atol);
    // Transposed a with batch dims: a [..., K, M].
    Tensor at = randn({2, 3, 13, 7}, 6, dt);
    CHECK_CLOSE(kernels::matmul(at, b, true, tb), kernels::ref::matmul(at, b, true, tb), 1e-5,
                atol);
  }
}

TEST_CASE_TEMPLATE("matmul: batched non-contiguous a (per-matrix transposed, batch gaps)", T, float,
                   double) {
  const DType dt = engine::dtype_v<T>;
  const double atol = atol_for(13, dt);
  for (bool tb : {false, true}) {
    CAPTURE(tb);
    Tensor b = randn(stored(13, 7, tb), 3, dt);
    Tensor a = randn({3, 5, 7, 13}, 4, dt);
    Tensor ref = kernels::ref::matmul(a, b, false, tb);
    // Per-matrix transposed layout (cannot fold: one GEMM per batch element).
    CHECK_CLOSE(kernels::matmul(testing::non_contiguous(a), b, false, tb), ref, 1e-5, atol);
    // A batch slice with a gap between elements (partly folds).
    Tensor big = randn({6, 5, 7, 13}, 5, dt);
    Tensor sl = big.slice(0, 0, 6, 2);
    CHECK_CLOSE(kernels::matmul(sl, b, false, tb), kernels::ref::matmul(sl, b, false, tb), 1e-5,
                atol);
  }
}

TEST_CASE_TEMPLATE("matmul: broadcast batches of both operands", T, float, double) {
  const DType dt = engine::dtype_v<T>;
  const double atol = atol_for(13, dt);
  // Both batched, broadcasting [2, 1] against [3].
  Tensor a = randn({2, 1, 7, 13}, 7, dt), b = randn({3, 13, 5}, 8, dt);
  Tensor c = kernels::matmul(a, b);
  CHECK(c.shape() == Shape{2, 3, 7, 5});
  CHECK_CLOSE(c, kernels::ref::matmul(a, b, false, false), 1e-5, atol);
  // 2-D a against a batched b.
  Tensor a2 = randn({7, 13}, 9, dt);
  CHECK_CLOSE(kernels::matmul(a2, b), kernels::ref::matmul(a2, b, false, false), 1e-5, atol);
}

// ---- bmm

TEST_CASE_TEMPLATE("matmul: bmm forward matches the reference, equal and broadcast batches", T,
                   float, double) {
  const DType dt = engine::dtype_v<T>;
  bmm_sweep(dt, [&](bool ta, bool tb, int64_t ba, int64_t bb, const Tensor& a, const Tensor& b) {
    Tensor c = kernels::bmm(a, b, ta, tb);
    CHECK(c.shape() == Shape{std::max(ba, bb), 7, 3});
    CHECK_CLOSE(c, kernels::ref::bmm(a, b, ta, tb), 1e-5, atol_for(13, dt));
  });
}

TEST_CASE_TEMPLATE("matmul: bmm non-contiguous and strided inputs match the reference", T, float,
                   double) {
  const DType dt = engine::dtype_v<T>;
  bmm_sweep(dt, [&](bool ta, bool tb, int64_t, int64_t, const Tensor& a, const Tensor& b) {
    Tensor ref = kernels::ref::bmm(a, b, ta, tb);
    CHECK_CLOSE(kernels::bmm(testing::non_contiguous(a), b, ta, tb), ref, 1e-5, atol_for(13, dt));
    CHECK_CLOSE(kernels::bmm(a, strided_last(b), ta, tb), ref, 1e-5, atol_for(13, dt));
  });
}

TEST_CASE("matmul: bmm of matrices large enough for the threaded GEMM") {
  // Batch not a multiple of the threads.
  Tensor a = randn({3, 150, 130}, 1), b = randn({3, 130, 140}, 2);
  CHECK_CLOSE(kernels::bmm(a, b), kernels::ref::bmm(a, b, false, false), 1e-5,
              atol_for(130, DType::f32));
}

TEST_CASE("matmul: bmm of many small matrices spread over threads") {
  // Enough work in total to be spread over threads (with more than one thread), transposed and
  // broadcast operands included.
  Tensor sa = randn({16, 41, 37}, 3), sb = randn({1, 29, 41}, 4);
  CHECK_CLOSE(kernels::bmm(sa, sb, true, true), kernels::ref::bmm(sa, sb, true, true), 1e-5,
              atol_for(41, DType::f32));
}

// ---- matmul_out

TEST_CASE_TEMPLATE("matmul: matmul_out scales and accumulates", T, float, double) {
  for_each_transpose([](bool ta, bool tb) {
    const OutCase c(engine::dtype_v<T>, ta, tb);
    Tensor out = c.c0.clone();
    kernels::matmul_out(out, c.a, c.b, ta, tb, 0.5, 2.0);
    CHECK_CLOSE(out, c.expected, 1e-5, c.atol);
  });
}

TEST_CASE_TEMPLATE("matmul: matmul_out into non-contiguous outputs", T, float, double) {
  for_each_transpose([](bool ta, bool tb) {
    const OutCase c(engine::dtype_v<T>, ta, tb);
    // Output stored transposed (column-major GEMM) and with stride-2 rows (via a temporary).
    Tensor out_t = testing::non_contiguous(c.c0);
    kernels::matmul_out(out_t, c.a, c.b, ta, tb, 0.5, 2.0);
    CHECK_CLOSE(out_t, c.expected, 1e-5, c.atol);
    Tensor out_s = strided_last(c.c0);
    kernels::matmul_out(out_s, c.a, c.b, ta, tb, 0.5, 2.0);
    CHECK_CLOSE(out_s, c.expected, 1e-5, c.atol);
  });
}

TEST_CASE_TEMPLATE("matmul: matmul_out with beta = 0 ignores NaN in the output", T, float, double) {
  for_each_transpose([](bool ta, bool tb) {
    const DType dt = engine::dtype_v<T>;
    const OutCase c(dt, ta, tb);
    Tensor out_nan = Tensor::full({11, 9}, std::nan(""), dt);
    kernels::matmul_out(out_nan, c.a, c.b, ta, tb);
    CHECK_CLOSE(out_nan, kernels::ref::matmul(c.a, c.b, ta, tb), 1e-5, c.atol);
  });
}

TEST_CASE("matmul: matmul_out with leading dims writes out [..., M, N]") {
  Tensor a = randn({2, 3, 7, 13}, 4), b = randn({13, 5}, 5);
  Tensor out = Tensor::zeros({2, 3, 7, 5});
  kernels::matmul_out(out, a, b, false, false, 1.0, 1.0);
  CHECK_CLOSE(out, kernels::ref::matmul(a, b, false, false), 1e-5, atol_for(13, DType::f32));
}

// ---- GEMV shapes

TEST_CASE_TEMPLATE("matmul: single-row and single-column results (GEMV) in every layout", T, float,
                   double) {
  const DType dt = engine::dtype_v<T>;
  gemv_sweep(dt, [&](const GemvCase& c) {
    for (const Tensor& la : layouts(c.a))
      for (const Tensor& lb : layouts(c.b))
        CHECK_CLOSE(kernels::matmul(la, lb, c.ta, c.tb), c.ref, 1e-5, atol_for(37, dt));
  });
}

TEST_CASE_TEMPLATE("matmul: GEMV matmul_out accumulates and overwrites in every output layout", T,
                   float, double) {
  const DType dt = engine::dtype_v<T>;
  gemv_sweep(dt, [&](const GemvCase& c) {
    // Accumulating and overwriting (beta = 0 ignores NaN) into plain and transposed outputs.
    auto expected = c.ref.to_vector<double>();
    auto cv = c.c0.to_vector<double>();
    for (size_t i = 0; i < expected.size(); ++i) expected[i] = 2.0 * expected[i] - cv[i];
    for (Tensor out : {c.c0.clone(), testing::non_contiguous(c.c0), padded_rows(c.c0)}) {
      kernels::matmul_out(out, c.a, c.b, c.ta, c.tb, 2.0, -1.0);
      CHECK_CLOSE(out, Tensor::from_vector(expected, {c.m, c.n}), 1e-5, 3 * atol_for(37, dt));
      out.fill_(std::nan(""));
      kernels::matmul_out(out, c.a, c.b, c.ta, c.tb);
      CHECK_CLOSE(out, c.ref, 1e-5, atol_for(37, dt));
    }
  });
}

TEST_CASE("matmul: bmm of a batch of matrix-vector products") {
  Tensor a = randn({5, 7, 13}, 1), v = randn({5, 13, 1}, 2);
  CHECK_CLOSE(kernels::bmm(a, v), kernels::ref::bmm(a, v, false, false), 1e-5,
              atol_for(13, DType::f32));
}

TEST_CASE("matmul: a bias-gradient-like column sum (1 × 300 · 300 × 7)") {
  Tensor g = randn({300, 7}, 3), ones = Tensor::ones({1, 300});
  CHECK_CLOSE(kernels::matmul(ones, g), kernels::ref::matmul(ones, g, false, false), 1e-5,
              atol_for(300, DType::f32));
}

// ---- bf16

TEST_CASE("matmul: bf16 operands are computed in f32 and rounded once") {
  Tensor a = randn({37, 13}, 1, DType::bf16), b = randn({13, 21}, 2, DType::bf16);
  Tensor c = kernels::matmul(a, b);
  CHECK(c.dtype() == DType::bf16);
  // The reference uses the same bf16 values exactly; the only error is the final rounding.
  CHECK_CLOSE(c, kernels::ref::matmul(a, b, false, false), 1.0 / 128, 1e-5);
}

TEST_CASE("matmul: bf16 matmul_out accumulates into a bf16 output") {
  Tensor a = randn({37, 13}, 1, DType::bf16), b = randn({13, 21}, 2, DType::bf16);
  Tensor out = Tensor::ones({37, 21}, DType::bf16);
  kernels::matmul_out(out, a, b, false, false, 1.0, 1.0);
  auto r = kernels::ref::matmul(a, b, false, false).to_vector<double>();
  for (double& v : r) v += 1.0;
  CHECK_CLOSE(out, Tensor::from_vector(r, {37, 21}), 1.0 / 128, 1e-2);
}

// ---- edge cases

TEST_CASE("matmul: K = 0 gives a zero product") {
  Tensor c = kernels::matmul(Tensor::empty({3, 0}), Tensor::empty({0, 4}));
  CHECK(c.shape() == Shape{3, 4});
  CHECK(c.to_vector<float>() == std::vector<float>(12, 0.0f));
}

TEST_CASE("matmul: matmul_out with K = 0 only scales the output by beta") {
  Tensor out = Tensor::full({3, 4}, 1.5);
  kernels::matmul_out(out, Tensor::empty({3, 0}), Tensor::empty({0, 4}), false, false, 1.0, 2.0);
  CHECK(out.to_vector<float>() == std::vector<float>(12, 3.0f));
}

TEST_CASE("matmul: empty M, N and batch give empty results") {
  CHECK(kernels::matmul(Tensor::empty({0, 5}), randn({5, 4}, 1)).shape() == Shape{0, 4});
  CHECK(kernels::matmul(randn({3, 5}, 1), Tensor::empty({5, 0})).shape() == Shape{3, 0});
  CHECK(kernels::bmm(Tensor::empty({0, 3, 5}), randn({1, 5, 4}, 1)).shape() == Shape{0, 3, 4});
}

// ---- errors

TEST_CASE("matmul: matmul errors name the op and the shapes") {
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
}

TEST_CASE("matmul: bmm errors name the op and the shapes") {
  CHECK_THROWS_CONTAINING(kernels::bmm(Tensor::zeros({3, 4}), Tensor::zeros({4, 5})),
                          "bmm: expected 3-D");
  CHECK_THROWS_CONTAINING(kernels::bmm(Tensor::zeros({2, 3, 4}), Tensor::zeros({3, 4, 5})),
                          "bmm: batch sizes of [2, 3, 4] and [3, 4, 5] differ");
}

TEST_CASE("matmul: matmul_out errors name the output") {
  Tensor a = Tensor::zeros({3, 4});
  Tensor out = Tensor::zeros({3, 5});
  CHECK_THROWS_CONTAINING(kernels::matmul_out(out, a, Tensor::zeros({4, 6})),
                          "matmul_out: out is f32[3, 5]");
  Tensor bcast = Tensor::zeros({1, 6}).expand({3, 6});
  CHECK_THROWS_CONTAINING(kernels::matmul_out(bcast, a, Tensor::zeros({4, 6})),
                          "is a broadcast view");
}

// ---- gradients

TEST_CASE("matmul: matmul gradcheck, a*b") { gradcheck_matmul(false, false); }
TEST_CASE("matmul: matmul gradcheck, a*b^T") { gradcheck_matmul(false, true); }
TEST_CASE("matmul: matmul gradcheck, a^T*b") { gradcheck_matmul(true, false); }
TEST_CASE("matmul: matmul gradcheck, a^T*b^T") { gradcheck_matmul(true, true); }

TEST_CASE("matmul: autograd matmul rejects broadcast batches") {
  autograd::Var a(Tensor::zeros({2, 3, 4}), true), b(Tensor::zeros({1, 4, 5}), true);
  CHECK_THROWS_CONTAINING(autograd::matmul(a, b), "use bmm for broadcast batches");
}

TEST_CASE("matmul: bmm gradcheck with equal and broadcast batches, a*b") {
  gradcheck_bmm(false, false);
}
TEST_CASE("matmul: bmm gradcheck with equal and broadcast batches, a*b^T") {
  gradcheck_bmm(false, true);
}
TEST_CASE("matmul: bmm gradcheck with equal and broadcast batches, a^T*b") {
  gradcheck_bmm(true, false);
}
TEST_CASE("matmul: bmm gradcheck with equal and broadcast batches, a^T*b^T") {
  gradcheck_bmm(true, true);
}

// ---- linear

TEST_CASE("matmul: linear forward matches the reference") {
  const LinearCase c;
  autograd::Var y = autograd::linear(autograd::Var(c.x), autograd::Var(c.w), autograd::Var(c.b));
  CHECK_CLOSE(y.data(), c.ref, 1e-5, atol_for(13, DType::f32));
}

TEST_CASE("matmul: linear forward on a non-contiguous input") {
  const LinearCase c;
  CHECK_CLOSE(autograd::linear(autograd::Var(testing::non_contiguous(c.x)), autograd::Var(c.w),
                               autograd::Var(c.b))
                  .data(),
              c.ref, 1e-5, atol_for(13, DType::f32));
}

TEST_CASE("matmul: linear gradcheck with bias") {
  for (const Shape& xs : linear_grad_shapes) {
    CAPTURE(xs);
    check_gradcheck(autograd::gradcheck(
        [](const std::vector<autograd::Var>& v) { return autograd::linear(v[0], v[1], v[2]); },
        {randn(xs, 4, DType::f64), randn({5, 3}, 5, DType::f64), randn({5}, 6, DType::f64)}));
  }
}

TEST_CASE("matmul: linear gradcheck without bias") {
  for (const Shape& xs : linear_grad_shapes) {
    CAPTURE(xs);
    check_gradcheck(autograd::gradcheck(
        [](const std::vector<autograd::Var>& v) { return autograd::linear(v[0], v[1]); },
        {randn(xs, 7, DType::f64), randn({5, 3}, 8, DType::f64)}));
  }
}

TEST_CASE("matmul: linear errors name the input, weight and bias") {
  Tensor x = randn({3, 5, 13}, 1);
  CHECK_THROWS_CONTAINING(autograd::linear(autograd::Var(x), autograd::Var(randn({7, 12}, 1))),
                          "linear: input f32[3, 5, 13] does not match weight f32[7, 12]");
  CHECK_THROWS_CONTAINING(autograd::linear(autograd::Var(x), autograd::Var(randn({7, 13}, 2)),
                                           autograd::Var(randn({6}, 1))),
                          "linear: bias f32[6]");
}
