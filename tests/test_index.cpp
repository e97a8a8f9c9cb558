// Indexing ops: embedding, index_select/index_add, gather/scatter_add — forward against the f64
// loop references on odd shapes, every axis, repeated and non-contiguous indices, errors, and
// gradchecks of the differentiable versions.
#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/index.h"
#include "kernels/index.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {

// Uniform random integers in [0, n) with the given shape and index dtype.
Tensor rand_ids(const Shape& s, int64_t n, uint64_t stream, DType dt = DType::i64) {
  std::vector<double> u = testing::randu(s, stream, 0.0, double(n), DType::f64).to_vector<double>();
  std::vector<int64_t> v;
  for (double x : u) v.push_back(std::min<int64_t>(n - 1, int64_t(std::floor(x))));
  return Tensor::from_vector(v, s, DType::i64).to(dt);
}

// Bit-exact comparison for ops that only move elements.
void check_same(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  CHECK(a.to_vector<double>() == b.to_vector<double>());
}

double tol_for(DType dt) { return dt == DType::f32 ? 1e-5 : 1e-12; }

// expected = ref + base, elementwise: what an in-place add into `base` must give.
Tensor plus(const Tensor& ref, const Tensor& base) {
  auto e = ref.to_vector<double>();
  auto b = base.to_vector<double>();
  for (size_t i = 0; i < e.size(); ++i) e[i] += b[i];
  return Tensor::from_vector(e, ref.shape());
}

void check_gradcheck(const autograd::GradcheckResult& r) {
  INFO(r.detail);
  CHECK(r.ok);
}

// ---- embedding

// A [37, 13] table with 1-D (130, i64) and 2-D ([7, 5], i32) ids.
struct EmbeddingCase {
  Tensor table, ids1, ids2;
  explicit EmbeddingCase(DType dt)
      : table(randn({37, 13}, 1, dt)),
        ids1(rand_ids({130}, 37, 2)),
        ids2(rand_ids({7, 5}, 37, 3, DType::i32)) {}
};

// 35 ids over 6 rows (many repeats) and a [7, 5, 13] gradient, for 9 table rows.
struct EmbeddingBackwardCase {
  Tensor ids, g;
  explicit EmbeddingBackwardCase(DType dt)
      : ids(rand_ids({7, 5}, 6, 10)), g(randn({7, 5, 13}, 11, dt)) {}
};

// ---- index_select / index_add on a [5, 7, 3] tensor

// Calls f(x, axis, idx, src) on every axis: 11 indices (i32 on axis 1) and a matching src.
template <class F>
void select_sweep(DType dt, F f) {
  Tensor x = randn({5, 7, 3}, 20, dt);
  for (int axis = 0; axis < 3; ++axis) {
    INFO("axis " << axis);
    Tensor idx = rand_ids({11}, x.size(axis), 21 + axis, axis == 1 ? DType::i32 : DType::i64);
    Shape ss = x.shape();
    ss[axis] = 11;
    f(x, axis, idx, randn(ss, 30 + axis, dt));
  }
}

// ---- gather / scatter_add on a [4, 7, 5] tensor

// Calls f(x, axis, idx, src) on every axis, for idx with x's shape except 3 along the axis and
// for a smaller one (torch allows idx.size(d) <= x.size(d) off the axis; larger than x along
// the axis is fine: positions repeat). idx is i32 on axis 2; src has idx's shape.
template <class F>
void gather_sweep(DType dt, F f) {
  Tensor x = randn({4, 7, 5}, 60, dt);
  for (int axis = 0; axis < 3; ++axis) {
    INFO("axis " << axis);
    Shape is = x.shape();
    is[axis] = 3;
    Shape small = {3, 4, 2};
    small[axis] = 9;
    for (const Shape& s : {is, small}) {
      CAPTURE(s);
      Tensor idx = rand_ids(s, x.size(axis), 61 + axis, axis == 2 ? DType::i32 : DType::i64);
      f(x, axis, idx, randn(s, 70 + axis, dt));
    }
  }
}

}  // namespace

// ---- embedding forward

TEST_CASE_TEMPLATE("index: embedding forward matches the reference for 1-D and 2-D ids", T, float,
                   double) {
  const EmbeddingCase c(engine::dtype_v<T>);
  check_same(kernels::embedding(c.table, c.ids1), kernels::ref::embedding(c.table, c.ids1));
  check_same(kernels::embedding(c.table, c.ids2), kernels::ref::embedding(c.table, c.ids2));
  CHECK(kernels::embedding(c.table, c.ids2).shape() == Shape{7, 5, 13});
}

TEST_CASE_TEMPLATE("index: embedding forward on non-contiguous table and ids", T, float, double) {
  const DType dt = engine::dtype_v<T>;
  const EmbeddingCase c(dt);
  check_same(kernels::embedding(testing::non_contiguous(c.table), testing::non_contiguous(c.ids2)),
             kernels::ref::embedding(c.table, c.ids2));
  // A column slice of a wider table is read in place (rows contiguous, row stride 20).
  Tensor wide = randn({37, 20}, 4, dt);
  Tensor part = wide.slice(1, 3, 16);
  check_same(kernels::embedding(part, c.ids1), kernels::ref::embedding(part, c.ids1));
}

TEST_CASE("index: embedding copies bf16 rows bit for bit") {
  Tensor tb = randn({11, 7}, 5).to(DType::bf16);
  Tensor ids = rand_ids({9}, 11, 6);
  Tensor out = kernels::embedding(tb, ids);
  CHECK(out.dtype() == DType::bf16);
  check_same(out, kernels::ref::embedding(tb, ids));
}

TEST_CASE("index: embedding forward on the parallel path") {
  Tensor big = randn({301, 67}, 7);
  Tensor bids = rand_ids({997}, 301, 8);
  check_same(kernels::embedding(big, bids), kernels::ref::embedding(big, bids));
}

// ---- embedding backward

TEST_CASE_TEMPLATE("index: embedding_backward matches the reference, with and without padding_idx",
                   T, float, double) {
  const DType dt = engine::dtype_v<T>;
  const EmbeddingBackwardCase c(dt);
  const double tol = tol_for(dt);
  CHECK_CLOSE(kernels::embedding_backward(c.g, c.ids, 9, -1),
              kernels::ref::embedding_backward(c.g, c.ids, 9, -1), tol, tol);
  CHECK_CLOSE(kernels::embedding_backward(c.g, c.ids, 9, 3),
              kernels::ref::embedding_backward(c.g, c.ids, 9, 3), tol, tol);
}

TEST_CASE_TEMPLATE("index: embedding_backward zeroes the padding row and unused rows", T, float,
                   double) {
  const EmbeddingBackwardCase c(engine::dtype_v<T>);
  Tensor gp = kernels::embedding_backward(c.g, c.ids, 9, 3);
  // The padding row is zero even though id 3 occurs; unused rows 6..8 are zero.
  for (int64_t r : {3, 6, 7, 8})
    for (double v : gp.select(0, r).to_vector<double>()) CHECK(v == 0.0);
}

TEST_CASE_TEMPLATE("index: embedding_backward sums the gradient rows of repeated ids", T, float,
                   double) {
  const EmbeddingBackwardCase c(engine::dtype_v<T>);
  Tensor gp = kernels::embedding_backward(c.g, c.ids, 9, 3);
  auto iv = c.ids.to_vector<int64_t>();
  auto gv = c.g.to_vector<double>();
  double expect = 0;
  for (size_t p = 0; p < iv.size(); ++p)
    if (iv[p] == iv[0]) expect += gv[p * 13 + 4];
  CHECK(gp.at({iv[0], 4}) == doctest::Approx(iv[0] == 3 ? 0.0 : expect).epsilon(1e-5));
}

TEST_CASE_TEMPLATE("index: embedding_backward on a non-contiguous gradient with i32 ids", T, float,
                   double) {
  const DType dt = engine::dtype_v<T>;
  const EmbeddingBackwardCase c(dt);
  CHECK_CLOSE(kernels::embedding_backward(testing::non_contiguous(c.g), c.ids.to(DType::i32), 9, 0),
              kernels::ref::embedding_backward(c.g, c.ids, 9, 0), tol_for(dt), tol_for(dt));
}

TEST_CASE("index: embedding_backward on the parallel path is exact and deterministic") {
  // Rows partitioned among threads: same sums, deterministic.
  Tensor ids = rand_ids({4001}, 97, 12);
  Tensor g = randn({4001, 17}, 13, DType::f64);
  Tensor a = kernels::embedding_backward(g, ids, 97, 5);
  CHECK_CLOSE(a, kernels::ref::embedding_backward(g, ids, 97, 5), 1e-12, 1e-12);
  CHECK(kernels::embedding_backward(g, ids, 97, 5).to_vector<double>() == a.to_vector<double>());
}

// ---- index_select / index_add

TEST_CASE_TEMPLATE("index: index_select forward matches the reference on every axis", T, float,
                   double) {
  select_sweep(engine::dtype_v<T>, [](const Tensor& x, int axis, const Tensor& idx, const Tensor&) {
    check_same(kernels::index_select(x, axis, idx), kernels::ref::index_select(x, axis, idx));
  });
}

TEST_CASE_TEMPLATE("index: index_select on non-contiguous input with a negative axis", T, float,
                   double) {
  select_sweep(engine::dtype_v<T>, [](const Tensor& x, int axis, const Tensor& idx, const Tensor&) {
    check_same(kernels::index_select(testing::non_contiguous(x), axis - 3, idx),
               kernels::ref::index_select(x, axis, idx));
  });
}

TEST_CASE_TEMPLATE("index: index_add forward matches the reference on every axis", T, float,
                   double) {
  const DType dt = engine::dtype_v<T>;
  select_sweep(dt, [&](const Tensor& x, int axis, const Tensor& idx, const Tensor& src) {
    CHECK_CLOSE(kernels::index_add(x.shape(), axis, idx, src),
                kernels::ref::index_add(x.shape(), axis, idx, src), tol_for(dt), tol_for(dt));
  });
}

TEST_CASE_TEMPLATE("index: index_add on non-contiguous indices and src", T, float, double) {
  const DType dt = engine::dtype_v<T>;
  select_sweep(dt, [&](const Tensor& x, int axis, const Tensor& idx, const Tensor& src) {
    CHECK_CLOSE(kernels::index_add(x.shape(), axis, testing::non_contiguous(idx),
                                   testing::non_contiguous(src)),
                kernels::ref::index_add(x.shape(), axis, idx, src), tol_for(dt), tol_for(dt));
  });
}

TEST_CASE_TEMPLATE("index: index_add_ in place into a non-contiguous destination", T, float,
                   double) {
  const DType dt = engine::dtype_v<T>;
  select_sweep(dt, [&](const Tensor& x, int axis, const Tensor& idx, const Tensor& src) {
    // The destination already holds values.
    Tensor base = randn(x.shape(), 40 + axis, dt);
    Tensor into = testing::non_contiguous(base);
    kernels::index_add_(into, axis, idx, src);
    CHECK_CLOSE(into, plus(kernels::ref::index_add(x.shape(), axis, idx, src), base), tol_for(dt),
                tol_for(dt));
  });
}

TEST_CASE("index: index_select with an empty index list") {
  Tensor x = randn({4, 6}, 50);
  CHECK(kernels::index_select(x, 1, Tensor::empty({0}, DType::i64)).shape() == Shape{4, 0});
}

TEST_CASE("index: index_select on the parallel path") {
  Tensor big = randn({130, 301}, 51, DType::f64);
  Tensor idx = rand_ids({257}, 301, 52);
  check_same(kernels::index_select(big, 1, idx), kernels::ref::index_select(big, 1, idx));
}

TEST_CASE("index: index_add on the parallel path") {
  const Shape shape = {130, 301};
  Tensor src = randn({257, 301}, 53, DType::f64);
  Tensor idx0 = rand_ids({257}, 130, 54);
  CHECK_CLOSE(kernels::index_add(shape, 0, idx0, src), kernels::ref::index_add(shape, 0, idx0, src),
              1e-12, 1e-12);
}

// ---- gather / scatter_add

TEST_CASE_TEMPLATE("index: gather forward matches the reference on every axis", T, float, double) {
  gather_sweep(engine::dtype_v<T>, [](const Tensor& x, int axis, const Tensor& idx, const Tensor&) {
    check_same(kernels::gather(x, axis, idx), kernels::ref::gather(x, axis, idx));
  });
}

TEST_CASE_TEMPLATE("index: gather on non-contiguous input and indices", T, float, double) {
  gather_sweep(engine::dtype_v<T>, [](const Tensor& x, int axis, const Tensor& idx, const Tensor&) {
    check_same(kernels::gather(testing::non_contiguous(x), axis, testing::non_contiguous(idx)),
               kernels::ref::gather(x, axis, idx));
  });
}

TEST_CASE_TEMPLATE("index: scatter_add forward matches the reference on every axis", T, float,
                   double) {
  const DType dt = engine::dtype_v<T>;
  gather_sweep(dt, [&](const Tensor& x, int axis, const Tensor& idx, const Tensor& src) {
    CHECK_CLOSE(kernels::scatter_add(x.shape(), axis, idx, src),
                kernels::ref::scatter_add(x.shape(), axis, idx, src), tol_for(dt), tol_for(dt));
  });
}

TEST_CASE_TEMPLATE("index: scatter_add on non-contiguous indices and src", T, float, double) {
  const DType dt = engine::dtype_v<T>;
  gather_sweep(dt, [&](const Tensor& x, int axis, const Tensor& idx, const Tensor& src) {
    CHECK_CLOSE(kernels::scatter_add(x.shape(), axis, testing::non_contiguous(idx),
                                     testing::non_contiguous(src)),
                kernels::ref::scatter_add(x.shape(), axis, idx, src), tol_for(dt), tol_for(dt));
  });
}

TEST_CASE_TEMPLATE("index: scatter_add uses only idx's extent of a larger src", T, float, double) {
  const DType dt = engine::dtype_v<T>;
  gather_sweep(dt, [&](const Tensor& x, int axis, const Tensor& idx, const Tensor&) {
    Shape bigger = idx.shape();
    for (int d = 0; d < 3; ++d) bigger[d] += 2;
    Tensor src_big = randn(bigger, 80 + axis, dt);
    CHECK_CLOSE(kernels::scatter_add(x.shape(), axis, idx, src_big),
                kernels::ref::scatter_add(x.shape(), axis, idx, src_big), tol_for(dt), tol_for(dt));
  });
}

TEST_CASE_TEMPLATE("index: scatter_add_ in place into a non-contiguous destination", T, float,
                   double) {
  const DType dt = engine::dtype_v<T>;
  gather_sweep(dt, [&](const Tensor& x, int axis, const Tensor& idx, const Tensor& src) {
    Tensor base = randn(x.shape(), 90 + axis, dt);
    Tensor into = testing::non_contiguous(base);
    kernels::scatter_add_(into, axis, idx, src);
    CHECK_CLOSE(into, plus(kernels::ref::scatter_add(x.shape(), axis, idx, src), base), tol_for(dt),
                tol_for(dt));
  });
}

TEST_CASE("index: gather on the parallel paths, leading and last axis") {
  Tensor x = randn({301, 131}, 95, DType::f64);
  for (int axis : {0, 1}) {
    CAPTURE(axis);
    Tensor idx = rand_ids({301, 131}, x.size(axis), 96 + axis);
    check_same(kernels::gather(x, axis, idx), kernels::ref::gather(x, axis, idx));
  }
}

TEST_CASE("index: scatter_add on the parallel paths, leading and last axis") {
  Tensor x = randn({301, 131}, 95, DType::f64);
  for (int axis : {0, 1}) {
    CAPTURE(axis);
    Tensor idx = rand_ids({301, 131}, x.size(axis), 96 + axis);
    CHECK_CLOSE(kernels::scatter_add(x.shape(), axis, idx, x),
                kernels::ref::scatter_add(x.shape(), axis, idx, x), 1e-12, 1e-12);
  }
}

// ---- errors

TEST_CASE("index: embedding errors name the index and the valid range") {
  Tensor table = randn({37, 4}, 100);
  Tensor bad = Tensor::from_vector<int64_t>({0, 5, 37, 1}, {4});
  CHECK_THROWS_CONTAINING(kernels::embedding(table, bad),
                          "embedding: index 37 at position 2 is out of range [0, 37)");
  CHECK_THROWS_CONTAINING(kernels::embedding(table, Tensor::from_vector<int32_t>({-1}, {1})),
                          "embedding: index -1 at position 0 is out of range [0, 37)");
  CHECK_THROWS_CONTAINING(kernels::embedding(table, Tensor::zeros({3})),
                          "embedding: indices must be i64 or i32, got f32");
  CHECK_THROWS_CONTAINING(kernels::embedding(randn({37}, 1), bad), "embedding: expected 'table'");
}

TEST_CASE("index: embedding_backward errors name the index, shapes and padding_idx") {
  Tensor bad = Tensor::from_vector<int64_t>({0, 5, 37, 1}, {4});
  CHECK_THROWS_CONTAINING(kernels::embedding_backward(randn({4, 4}, 1), bad, 37),
                          "embedding_backward: index 37 at position 2");
  CHECK_THROWS_CONTAINING(kernels::embedding_backward(randn({3, 4}, 1), bad, 40),
                          "does not match ids");
  CHECK_THROWS_CONTAINING(kernels::embedding_backward(randn({4, 4}, 1), bad, 40, 40),
                          "padding_idx 40 out of range [-1, 40)");
}

TEST_CASE("index: index_select errors name the index and the axis") {
  Tensor x = randn({3, 5}, 101);
  CHECK_THROWS_CONTAINING(kernels::index_select(x, 0, Tensor::from_vector<int64_t>({3}, {1})),
                          "index_select: index 3 at position 0 is out of range [0, 3)");
  CHECK_THROWS_CONTAINING(kernels::index_select(x, 2, Tensor::from_vector<int64_t>({0}, {1})),
                          "index_select: axis 2 out of range");
}

TEST_CASE("index: index_add errors name the index and src") {
  CHECK_THROWS_CONTAINING(
      kernels::index_add({3, 5}, 1, Tensor::from_vector<int64_t>({5}, {1}), randn({3, 1}, 1)),
      "index_add: index 5 at position 0 is out of range [0, 5)");
  CHECK_THROWS_CONTAINING(
      kernels::index_add({3, 5}, 1, Tensor::from_vector<int64_t>({4}, {1}), randn({3, 2}, 1)),
      "index_add: src f32[3, 2] does not match");
}

TEST_CASE("index: gather errors name the index and the shapes") {
  Tensor x = randn({3, 5}, 101);
  Tensor gi = Tensor::from_vector<int64_t>({0, 1, 2, 5, 0, 1}, {3, 2});
  CHECK_THROWS_CONTAINING(kernels::gather(x, 1, gi),
                          "gather: index 5 at position 3 is out of range [0, 5)");
  CHECK_THROWS_CONTAINING(kernels::gather(x, 1, Tensor::zeros({6}, DType::i64)),
                          "must have the rank of x");
  CHECK_THROWS_CONTAINING(kernels::gather(x, 0, Tensor::zeros({2, 6}, DType::i64)),
                          "is larger than x f32[3, 5] in dim 1");
}

TEST_CASE("index: scatter_add errors name the index, src and overlapping destinations") {
  Tensor gi = Tensor::from_vector<int64_t>({0, 1, 2, 5, 0, 1}, {3, 2});
  CHECK_THROWS_CONTAINING(kernels::scatter_add({3, 4}, 1, gi, randn({3, 2}, 1)),
                          "scatter_add: index 5 at position 3 is out of range [0, 4)");
  CHECK_THROWS_CONTAINING(kernels::scatter_add({3, 9}, 1, gi, randn({3, 1}, 1)),
                          "is larger than src");
  Tensor overlapping = Tensor::zeros({1, 5}).expand({3, 5});
  CHECK_THROWS_CONTAINING(
      kernels::scatter_add_(overlapping, 1, Tensor::zeros({3, 2}, DType::i64), randn({3, 2}, 1)),
      "overlapping elements");
}

TEST_CASE("index: scatter_add_ writes nothing when an index is bad") {
  Tensor gi = Tensor::from_vector<int64_t>({0, 1, 2, 5, 0, 1}, {3, 2});
  Tensor into = Tensor::zeros({3, 5});
  CHECK_THROWS_AS(kernels::scatter_add_(into, 1, gi, randn({3, 2}, 1)), engine::Error);
  for (double v : into.to_vector<double>()) CHECK(v == 0.0);
}

// ---- gradients

TEST_CASE("index: embedding gradcheck with repeated ids") {
  Tensor ids = Tensor::from_vector<int64_t>({1, 4, 1, 0, 4, 1}, {2, 3});
  check_gradcheck(autograd::gradcheck(
      [&](const std::vector<autograd::Var>& v) { return autograd::embedding(v[0], ids); },
      {randn({6, 3}, 110, DType::f64)}));
}

TEST_CASE("index: embedding gradient with padding_idx is exact") {
  // The padding row is excluded from training: its gradient is exactly zero (finite differences
  // would see it), the repeated row's is the sum of its 3 occurrences.
  Tensor ids = Tensor::from_vector<int64_t>({1, 4, 1, 0, 4, 1}, {2, 3});
  autograd::Var t(randn({6, 3}, 110, DType::f64), true);
  autograd::embedding(t, ids, 4).backward(Tensor::ones({2, 3, 3}, DType::f64));
  CHECK(t.grad().at({4, 0}) == 0.0);
  CHECK(t.grad().at({1, 2}) == 3.0);
  CHECK(t.grad().at({2, 1}) == 0.0);
}

TEST_CASE("index: index_select gradcheck on every axis") {
  Tensor x = randn({3, 4, 5}, 111, DType::f64);
  for (int axis = 0; axis < 3; ++axis) {
    INFO("axis " << axis);
    Tensor sel = rand_ids({5}, x.size(axis), 112 + axis);
    check_gradcheck(autograd::gradcheck(
        [&](const std::vector<autograd::Var>& v) {
          return autograd::index_select(v[0], axis, sel);
        },
        {x}));
  }
}

TEST_CASE("index: gather gradcheck on every axis") {
  Tensor x = randn({3, 4, 5}, 111, DType::f64);
  for (int axis = 0; axis < 3; ++axis) {
    INFO("axis " << axis);
    Shape is = x.shape();
    is[axis] = 4;
    Tensor gi = rand_ids(is, x.size(axis), 120 + axis, DType::i32);
    check_gradcheck(autograd::gradcheck(
        [&](const std::vector<autograd::Var>& v) { return autograd::gather(v[0], axis, gi); },
        {x}));
  }
}
