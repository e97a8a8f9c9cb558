// Grouped expert matmul on the CPU: forward, input gradient (the same op with the other
// transpose) and weight gradient against the f64 per-expert loop reference, with empty experts,
// all rows in one expert, one expert, odd sizes, both weight layouts, non-contiguous operands,
// both threading policies, bf16, errors, and gradcheck of the autograd op.
#include <cmath>
#include <numeric>
#include <vector>

#include "autograd/grouped_matmul.h"
#include "autograd/gradcheck.h"
#include "kernels/grouped_matmul.h"
#include "kernels/matmul.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {

Tensor counts_of(const std::vector<int64_t>& c) {
  return Tensor::from_vector(c, {int64_t(c.size())});
}
int64_t total(const std::vector<int64_t>& c) { return std::accumulate(c.begin(), c.end(), int64_t(0)); }

// Stored weight shape for E experts of op(w) = K × N.
Shape weight_shape(int64_t e, int64_t k, int64_t n, bool trans_w) {
  return trans_w ? Shape{e, n, k} : Shape{e, k, n};
}

double atol_for(int64_t k, DType dt) { return dt == DType::f64 ? 1e-12 : 2e-6 * std::sqrt(double(k) + 1); }

// A tensor with the values of t but a last dim of stride 2 (BLAS cannot take it as is).
Tensor strided_last(const Tensor& t) {
  Shape s = t.shape();
  s[s.size() - 1] *= 2;
  Tensor big = Tensor::zeros(s, t.dtype());
  Tensor v = big.slice(-1, 0, s.back(), 2);
  v.copy_(t);
  return v;
}

struct Case {
  std::vector<int64_t> counts;
  int64_t k, n;
};

// The count patterns of the brief: zeros, everything in one expert, a single expert, odd sizes.
const Case kCases[] = {
    {{3, 0, 7, 0, 4}, 13, 7},   {{0, 0, 13, 0}, 7, 37}, {{13}, 37, 3}, {{1, 1, 1}, 1, 1},
    {{0, 5, 0}, 130, 13},       {{17, 2, 0, 9}, 3, 130},
};

}  // namespace

TEST_CASE("grouped_matmul: forward vs reference, counts with zeros, one expert, odd shapes") {
  uint64_t stream = 0;
  for (DType dt : {DType::f32, DType::f64})
    for (const Case& c : kCases)
      for (bool tw : {false, true}) {
        const int64_t E = int64_t(c.counts.size()), T = total(c.counts);
        CAPTURE(E);
        CAPTURE(T);
        CAPTURE(c.k);
        CAPTURE(c.n);
        CAPTURE(tw);
        Tensor x = randn({T, c.k}, ++stream, dt), w = randn(weight_shape(E, c.k, c.n, tw), ++stream, dt);
        Tensor cnt = counts_of(c.counts);
        Tensor y = kernels::grouped_matmul(x, w, cnt, tw);
        CHECK(y.dtype() == dt);
        CHECK(y.shape() == Shape{T, c.n});
        Tensor ref = kernels::ref::grouped_matmul(x, w, cnt, tw);
        CHECK_CLOSE(y, ref, 1e-5, atol_for(c.k, dt));
        // Non-contiguous operands: transposed storage (flag flipped, no copy) and a stride-2
        // last dim (copied).
        CHECK_CLOSE(kernels::grouped_matmul(testing::non_contiguous(x), testing::non_contiguous(w), cnt, tw),
                    ref, 1e-5, atol_for(c.k, dt));
        CHECK_CLOSE(kernels::grouped_matmul(strided_last(x), strided_last(w), cnt, tw), ref, 1e-5,
                    atol_for(c.k, dt));
      }
}

TEST_CASE("grouped_matmul: equals one dense matmul per expert, built independently") {
  // y rows of expert e against ref::matmul of that expert's rows and weight.
  const std::vector<int64_t> c = {4, 0, 9, 2};
  Tensor x = randn({15, 11}, 1, DType::f64), w = randn({4, 11, 6}, 2, DType::f64);
  Tensor y = kernels::grouped_matmul(x, w, counts_of(c), false);
  int64_t off = 0;
  for (int64_t e = 0; e < 4; ++e) {
    if (c[e] > 0) {
      Tensor ye = y.narrow(0, off, c[e]);
      CHECK_CLOSE(ye, kernels::ref::matmul(x.narrow(0, off, c[e]), w.select(0, e), false, false), 1e-12,
                  1e-12);
    }
    off += c[e];
  }
}

TEST_CASE("grouped_matmul: both threading policies (many small experts, few large ones)") {
  // 24 experts of ~50 rows: spread over OpenMP threads with single-threaded BLAS (when there are
  // at least 2 threads); one expert of 601 rows beside a small one: one threaded GEMM after
  // another (the large expert is far more than a thread's share).
  std::vector<int64_t> many(24);
  for (size_t e = 0; e < many.size(); ++e) many[e] = int64_t(e % 5 == 0 ? 0 : 13 + 3 * e);
  const std::vector<int64_t> few = {601, 37};
  uint64_t stream = 50;
  for (const auto& counts : {many, few})
    for (bool tw : {false, true}) {
      const int64_t E = int64_t(counts.size()), T = total(counts), K = 131, N = 91;
      CAPTURE(E);
      CAPTURE(tw);
      Tensor x = randn({T, K}, ++stream), w = randn(weight_shape(E, K, N, tw), ++stream);
      Tensor dy = randn({T, N}, ++stream);
      Tensor cnt = counts_of(counts);
      CHECK_CLOSE(kernels::grouped_matmul(x, w, cnt, tw), kernels::ref::grouped_matmul(x, w, cnt, tw), 1e-5,
                  atol_for(K, DType::f32));
      CHECK_CLOSE(kernels::grouped_matmul_wgrad(x, dy, cnt, tw),
                  kernels::ref::grouped_matmul_wgrad(x, dy, cnt, tw), 1e-5, 2e-6 * std::sqrt(602.0));
    }
}

TEST_CASE("grouped_matmul: input gradient is the grouped product with the other transpose") {
  uint64_t stream = 100;
  for (DType dt : {DType::f32, DType::f64})
    for (const Case& c : kCases)
      for (bool tw : {false, true}) {
        const int64_t E = int64_t(c.counts.size()), T = total(c.counts);
        CAPTURE(E);
        CAPTURE(tw);
        Tensor dy = randn({T, c.n}, ++stream, dt), w = randn(weight_shape(E, c.k, c.n, tw), ++stream, dt);
        Tensor cnt = counts_of(c.counts);
        Tensor dx = kernels::grouped_matmul(dy, w, cnt, !tw);
        CHECK(dx.shape() == Shape{T, c.k});
        // Reference: dy · op(w)ᵀ per expert, op(w)ᵀ materialised independently.
        Tensor wt = (tw ? w : w.transpose(1, 2)).contiguous();  // [E, N, K]
        CHECK_CLOSE(dx, kernels::ref::grouped_matmul(dy, wt, cnt, false), 1e-5, atol_for(c.n, dt));
      }
}

TEST_CASE("grouped_matmul: weight gradient vs reference; empty experts get exact zeros") {
  uint64_t stream = 200;
  for (DType dt : {DType::f32, DType::f64})
    for (const Case& c : kCases)
      for (bool tw : {false, true}) {
        const int64_t E = int64_t(c.counts.size()), T = total(c.counts);
        CAPTURE(E);
        CAPTURE(T);
        CAPTURE(tw);
        Tensor x = randn({T, c.k}, ++stream, dt), dy = randn({T, c.n}, ++stream, dt);
        Tensor cnt = counts_of(c.counts);
        Tensor dw = kernels::grouped_matmul_wgrad(x, dy, cnt, tw);
        CHECK(dw.dtype() == dt);
        CHECK(dw.shape() == weight_shape(E, c.k, c.n, tw));
        const int64_t maxc = *std::max_element(c.counts.begin(), c.counts.end());
        CHECK_CLOSE(dw, kernels::ref::grouped_matmul_wgrad(x, dy, cnt, tw), 1e-5, atol_for(maxc, dt));
        CHECK_CLOSE(kernels::grouped_matmul_wgrad(testing::non_contiguous(x), strided_last(dy), cnt, tw),
                    kernels::ref::grouped_matmul_wgrad(x, dy, cnt, tw), 1e-5, atol_for(maxc, dt));
        for (int64_t e = 0; e < E; ++e)
          if (c.counts[e] == 0)
            for (double v : dw.select(0, e).to_vector<double>()) CHECK(v == 0.0);
      }
}

TEST_CASE("grouped_matmul: bf16 inputs computed in f32 and rounded once") {
  const std::vector<int64_t> counts = {5, 0, 12};
  for (bool tw : {false, true}) {
    Tensor x = randn({17, 37}, 1, DType::bf16), w = randn(weight_shape(3, 37, 13, tw), 2, DType::bf16);
    Tensor dy = randn({17, 13}, 3, DType::bf16);
    Tensor cnt = counts_of(counts);
    Tensor y = kernels::grouped_matmul(x, w, cnt, tw);
    CHECK(y.dtype() == DType::bf16);
    // Reference on the same (bf16) values. The output is one rounding of the f32 result, so it
    // is within half a bf16 ulp (at most 2^-8 relative) plus f32 noise: checked at one ulp, far
    // tighter than the general bf16 rule (0.08 relative).
    CHECK_CLOSE(y, kernels::ref::grouped_matmul(x, w, cnt, tw), 1.0 / 128, 1e-4);
    Tensor dw = kernels::grouped_matmul_wgrad(x, dy, cnt, tw);
    CHECK(dw.dtype() == DType::bf16);
    CHECK_CLOSE(dw, kernels::ref::grouped_matmul_wgrad(x, dy, cnt, tw), 1.0 / 128, 1e-4);
  }
}

TEST_CASE("grouped_matmul: empty cases (no rows, K = 0, N = 0)") {
  // No rows at all.
  Tensor y0 = kernels::grouped_matmul(Tensor::zeros({0, 5}), randn({3, 5, 4}, 1), counts_of({0, 0, 0}), false);
  CHECK(y0.shape() == Shape{0, 4});
  Tensor dw0 = kernels::grouped_matmul_wgrad(Tensor::zeros({0, 5}), Tensor::zeros({0, 4}),
                                             counts_of({0, 0, 0}), false);
  CHECK(dw0.shape() == Shape{3, 5, 4});
  for (double v : dw0.to_vector<double>()) CHECK(v == 0.0);
  // K = 0: an empty sum, y = 0.
  Tensor yk = kernels::grouped_matmul(Tensor::zeros({6, 0}), Tensor::zeros({2, 0, 3}), counts_of({2, 4}), false);
  CHECK(yk.shape() == Shape{6, 3});
  for (double v : yk.to_vector<double>()) CHECK(v == 0.0);
  // N = 0.
  Tensor yn = kernels::grouped_matmul(randn({6, 3}, 2), Tensor::zeros({2, 3, 0}), counts_of({2, 4}), false);
  CHECK(yn.shape() == Shape{6, 0});
}

TEST_CASE("grouped_matmul: bad inputs name the op and the shapes") {
  Tensor x = randn({7, 5}, 1), w = randn({3, 5, 4}, 2);
  CHECK_THROWS_CONTAINING(kernels::grouped_matmul(x, w, counts_of({3, 3, 0}), false), "counts sum to 6");
  CHECK_THROWS_CONTAINING(kernels::grouped_matmul(x, w, counts_of({3, 5, -1}), false), "counts[2] = -1 is negative");
  CHECK_THROWS_CONTAINING(kernels::grouped_matmul(x, w, counts_of({7, 0}), false), "counts must be i64 [3]");
  CHECK_THROWS_CONTAINING(kernels::grouped_matmul(x, w, counts_of({3, 4, 0}).to(DType::i32), false),
                          "counts must be i64");
  CHECK_THROWS_CONTAINING(kernels::grouped_matmul(x, w, counts_of({3, 4, 0}), true), "K is 5 vs 4");
  CHECK_THROWS_CONTAINING(kernels::grouped_matmul(x, randn({5, 4}, 3), counts_of({7}), false),
                          "expected x [T, K] and w [E, K, N]");
  CHECK_THROWS_CONTAINING(kernels::grouped_matmul(x, w.to(DType::f64), counts_of({3, 4, 0}), false), "f32");
  CHECK_THROWS_CONTAINING(kernels::grouped_matmul_wgrad(x, randn({6, 4}, 4), counts_of({3, 4, 0}), false),
                          "expected x [T, K] and dy [T, N] with the same rows");
  CHECK_THROWS_CONTAINING(kernels::grouped_matmul_wgrad(x, randn({7, 4}, 4), counts_of({3, 3, 0}), false),
                          "grouped_matmul_wgrad: counts sum to 6");
  CHECK_THROWS_CONTAINING(
      kernels::grouped_matmul(Tensor::zeros({7, 5}, DType::i32), Tensor::zeros({3, 5, 4}, DType::i32),
                              counts_of({3, 4, 0}), false),
      "expected a floating dtype");
}

TEST_CASE("grouped_matmul: gradients of x and w (gradcheck f64)") {
  for (bool tw : {false, true})
    for (const auto& counts : {std::vector<int64_t>{2, 0, 3}, std::vector<int64_t>{0, 4, 0}, std::vector<int64_t>{5}}) {
      CAPTURE(tw);
      const int64_t E = int64_t(counts.size()), T = total(counts);
      auto f = [tw](const std::vector<autograd::Var>& v) {
        return autograd::grouped_matmul(v[0], v[1], v[2].data(), tw);
      };
      auto r = autograd::gradcheck(
          f, {randn({T, 3}, 1, DType::f64), randn(weight_shape(E, 3, 4, tw), 2, DType::f64), counts_of(counts)});
      INFO(r.detail);
      CHECK(r.ok);
    }
}

TEST_CASE("grouped_matmul: autograd gradients equal the dense per-expert formulas") {
  // dW of an empty expert is zero; dx rows follow their own expert's weight.
  const std::vector<int64_t> counts = {3, 0, 2};
  Tensor X = randn({5, 4}, 1, DType::f64), W = randn({3, 4, 2}, 2, DType::f64), G = randn({5, 2}, 3, DType::f64);
  autograd::Var x(X, true), w(W, true);
  autograd::grouped_matmul(x, w, counts_of(counts), false).backward(G);
  for (double v : w.grad().select(0, 1).to_vector<double>()) CHECK(v == 0.0);
  CHECK_CLOSE(w.grad().select(0, 0), kernels::ref::matmul(X.narrow(0, 0, 3), G.narrow(0, 0, 3), true, false),
              1e-12, 1e-12);
  CHECK_CLOSE(x.grad().narrow(0, 3, 2), kernels::ref::matmul(G.narrow(0, 3, 2), W.select(0, 2), false, true),
              1e-12, 1e-12);
}
