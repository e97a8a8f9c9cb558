// The CUDA backend's dense matmul (kernels/cuda/matmul.cu) and its cuBLAS wrapper
// (kernels/cuda/blas.h). Under the sim, cuBLAS is not called: the wrapper carries out cuBLAS's
// column-major contract with the CPU matmul on the host-backed device memory. So these tests
// verify OUR WRAPPER'S PLUMBING -- the row-major to column-major translation, transpose flags,
// leading dimensions, operand swaps for column-major outputs, batch strides and broadcasting,
// the copies for layouts cuBLAS cannot take, alpha/beta, the k = 0 kernel -- and not NVIDIA's
// library. Results are compared with the CPU op (kernels::cpu::matmul, itself checked against
// the f64 reference in tests/test_matmul.cpp) on the same inputs.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "kernels/cuda/blas.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "kernels/matmul.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {

engine::Device dev() { return kernels::cuda::device(); }
const engine::Device kCpu = engine::Device::cpu();

Shape stored(int64_t rows, int64_t cols, bool trans) { return trans ? Shape{cols, rows} : Shape{rows, cols}; }

// Device tensors with the values of a CPU tensor t in several layouts.
Tensor on_dev(const Tensor& t) { return t.to(dev()); }
Tensor dev_transposed(const Tensor& t) {  // each matrix stored transposed: strides [.., 1, ld]
  return t.transpose(-1, -2).contiguous().to(dev()).transpose(-1, -2);
}
Tensor dev_padded(const Tensor& t) {  // rows with a leading dimension larger than their width
  Shape s = t.shape();
  s[s.size() - 1] += 5;
  Tensor v = Tensor::zeros(s, t.dtype(), dev()).narrow(-1, 2, t.size(-1));
  kernels::cuda::copy_strided(v, on_dev(t));
  return v;
}
Tensor dev_strided(const Tensor& t) {  // a stride-2 last dim: cuBLAS cannot take it
  Shape s = t.shape();
  s[s.size() - 1] *= 2;
  Tensor v = Tensor::zeros(s, t.dtype(), dev()).slice(-1, 0, s.back(), 2);
  kernels::cuda::copy_strided(v, on_dev(t));
  return v;
}

// Tensor::to(cpu) cannot copy a strided device tensor itself yet; the backend's copy can.
Tensor to_host(const Tensor& t) { return kernels::cuda::contiguous(t).to(kCpu); }

double atol_for(int64_t k, DType dt) {
  return dt == DType::f64 ? 1e-12 : dt == DType::bf16 ? 1e-2 : 2e-6 * std::sqrt(double(k) + 1);
}
// bf16: both sides round the same fp32 sum once; allow a bf16 ulp or so.
double rtol_for(DType dt) { return dt == DType::bf16 ? 1.0 / 64 : 1e-5; }

// Frees the allocator's cached blocks first, so the result lands in fresh sim memory (NaN) and
// not in a reused block that may hold an earlier, identical result.
#define CHECK_DEV(got, ref, k, dt)                                     \
  do {                                                                 \
    kernels::cuda::release_cached();                                   \
    Tensor got_ = (got);                                               \
    REQUIRE(got_.device() == dev());                                   \
    CHECK(got_.dtype() == (dt));                                       \
    CHECK_CLOSE(to_host(got_), (ref), rtol_for(dt), atol_for(k, dt));  \
  } while (0)

}  // namespace

TEST_CASE("cuda matmul: wrapper plumbing (not cuBLAS) -- 2-D, every transpose, dtype and layout") {
  const int64_t shapes[][3] = {{37, 13, 61}, {1, 7, 13}, {13, 7, 1}, {1, 37, 1}, {5, 1, 9}};
  uint64_t stream = 0;
  for (DType dt : {DType::f32, DType::bf16, DType::f64})
    for (auto& s : shapes)
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          const int64_t m = s[0], k = s[1], n = s[2];
          CAPTURE(engine::dtype_name(dt));
          CAPTURE(m);
          CAPTURE(k);
          CAPTURE(n);
          CAPTURE(ta);
          CAPTURE(tb);
          Tensor a = randn(stored(m, k, ta), ++stream, dt), b = randn(stored(k, n, tb), ++stream, dt);
          Tensor ref = kernels::cpu::matmul(a, b, ta, tb);
          CHECK_DEV(kernels::cuda::matmul(on_dev(a), on_dev(b), ta, tb), ref, k, dt);
          CHECK_DEV(kernels::cuda::matmul(dev_transposed(a), dev_padded(b), ta, tb), ref, k, dt);
          CHECK_DEV(kernels::cuda::matmul(dev_strided(a), dev_transposed(b), ta, tb), ref, k, dt);
          CHECK_DEV(kernels::cuda::matmul(dev_padded(a), dev_strided(b), ta, tb), ref, k, dt);
        }
}

TEST_CASE("cuda matmul: wrapper plumbing (not cuBLAS) -- batch folding, broadcast batches, bmm") {
  for (DType dt : {DType::f32, DType::bf16}) {
    CAPTURE(engine::dtype_name(dt));
    for (bool tb : {false, true}) {
      // a [3, 5, 7, 13] against a 2-D b: folded into one GEMM of 105 rows.
      Tensor a = randn({3, 5, 7, 13}, 1, dt), b = randn(stored(13, 9, tb), 2, dt);
      Tensor ref = kernels::cpu::matmul(a, b, false, tb);
      CHECK_DEV(kernels::cuda::matmul(on_dev(a), on_dev(b), false, tb), ref, 13, dt);
      // Per-matrix transposed a: one strided-batched call per merged batch run.
      CHECK_DEV(kernels::cuda::matmul(dev_transposed(a), on_dev(b), false, tb), ref, 13, dt);
      // A batch slice with a gap (batch strides that do not merge).
      Tensor big = randn({6, 5, 7, 13}, 3, dt);
      Tensor sl = big.to(dev()).slice(0, 0, 6, 2);
      CHECK_DEV(kernels::cuda::matmul(sl, on_dev(b), false, tb),
                kernels::cpu::matmul(big.slice(0, 0, 6, 2), b, false, tb), 13, dt);
    }
    // Both batched, broadcasting [2, 1] against [3] (stride-0 batches).
    Tensor a = randn({2, 1, 7, 13}, 4, dt), b = randn({3, 13, 5}, 5, dt);
    CHECK_DEV(kernels::cuda::matmul(on_dev(a), on_dev(b), false, false), kernels::cpu::matmul(a, b, false, false), 13, dt);
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (auto [ba, bb] : {std::pair<int64_t, int64_t>{5, 5}, {1, 5}, {5, 1}}) {
          CAPTURE(ta);
          CAPTURE(tb);
          CAPTURE(ba);
          CAPTURE(bb);
          Shape sa = stored(7, 13, ta), sb = stored(13, 3, tb);
          sa.insert(0, ba);
          sb.insert(0, bb);
          Tensor x = randn(sa, 6, dt), y = randn(sb, 7, dt);
          Tensor ref = kernels::cpu::bmm(x, y, ta, tb);
          CHECK_DEV(kernels::cuda::bmm(on_dev(x), on_dev(y), ta, tb), ref, 13, dt);
          CHECK_DEV(kernels::cuda::bmm(dev_transposed(x), dev_strided(y), ta, tb), ref, 13, dt);
        }
  }
}

TEST_CASE("cuda matmul: wrapper plumbing (not cuBLAS) -- matmul_out alpha/beta into any output layout") {
  for (DType dt : {DType::f32, DType::bf16})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        CAPTURE(engine::dtype_name(dt));
        CAPTURE(ta);
        CAPTURE(tb);
        Tensor a = randn(stored(11, 13, ta), 1, dt), b = randn(stored(13, 9, tb), 2, dt);
        Tensor c0 = randn({11, 9}, 3, dt);
        Tensor expected = c0.clone();
        kernels::cpu::matmul_out(expected, a, b, ta, tb, 0.5, 2.0);
        // Row-major, column-major (operands swapped) and stride-2 (through a temporary) outputs.
        for (Tensor out : {on_dev(c0), dev_transposed(c0), dev_strided(c0)}) {
          kernels::cuda::matmul_out(out, on_dev(a), on_dev(b), ta, tb, 0.5, 2.0);
          CHECK_DEV(out, expected, 26, dt);
        }
        // beta = 0 ignores the old contents, NaN included (fresh sim memory is NaN).
        kernels::cuda::release_cached();
        Tensor fresh = Tensor::empty({11, 9}, dt, dev());
        kernels::cuda::matmul_out(fresh, on_dev(a), on_dev(b), ta, tb, 1.0, 0.0);
        CHECK_DEV(fresh, kernels::cpu::matmul(a, b, ta, tb), 13, dt);
      }
}

TEST_CASE("cuda matmul: k = 0 and empty products (scale kernel)") {
  for (DType dt : {DType::f32, DType::bf16, DType::f64}) {
    CAPTURE(engine::dtype_name(dt));
    Tensor a = Tensor::zeros({4, 0}, dt, dev()), b = Tensor::zeros({0, 3}, dt, dev());
    kernels::cuda::release_cached();
    Tensor z = kernels::cuda::matmul(a, b, false, false);  // fresh NaN memory must become 0
    for (double v : z.to_vector<double>()) CHECK(v == 0.0);
    Tensor c0 = randn({4, 3}, 1, dt);
    for (Tensor out : {on_dev(c0), dev_strided(c0)}) {
      kernels::cuda::matmul_out(out, a, b, false, false, 1.0, 0.5);
      auto got = to_host(out).to_vector<double>(), want = c0.to_vector<double>();
      for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(0.5 * want[i]).epsilon(1e-2));
    }
    CHECK(kernels::cuda::matmul(Tensor::zeros({0, 5}, dt, dev()), Tensor::zeros({5, 3}, dt, dev()), false, false).shape() ==
          Shape{0, 3});
  }
}

TEST_CASE("cuda matmul: wrapper plumbing (not cuBLAS) -- blas::gemm and gemm_strided_batched, raw pointers") {
  // Row-major contract with leading dimensions larger than the rows and a broadcast (stride 0)
  // A, checked against the CPU op on views with the same strides.
  const int64_t m = 5, n = 7, k = 3, lda = 6, ldb = 9, ldc = 8, batch = 3;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      CAPTURE(ta);
      CAPTURE(tb);
      const int64_t ra = ta ? k : m, rb = tb ? n : k;
      Tensor A = randn({ra, lda}, 1), B = randn({batch, rb, ldb}, 2), C = randn({batch, m, ldc}, 3);
      Tensor Ad = on_dev(A), Bd = on_dev(B), Cd = on_dev(C);
      kernels::cuda::blas::gemm_strided_batched(DType::f32, ta, tb, m, n, k, 1.5, Ad.raw_data(), lda, 0,
                                                Bd.raw_data(), ldb, rb * ldb, -1.0, Cd.raw_data(), ldc, m * ldc,
                                                batch);
      Tensor av = A.narrow(1, 0, ta ? m : k).unsqueeze(0).expand({batch, ra, ta ? m : k});
      Tensor bv = B.narrow(2, 0, tb ? k : n);
      Tensor expected = C.clone();
      Tensor ev = expected.narrow(2, 0, n);
      kernels::cpu::matmul_out(ev, av, bv, ta, tb, 1.5, -1.0);
      CHECK_CLOSE(Cd.to(kCpu), expected, 1e-5, 1e-5);  // the padding columns stay untouched
      Tensor C1 = randn({m, ldc}, 4), C1d = on_dev(C1);
      kernels::cuda::blas::gemm(DType::f32, ta, tb, m, n, k, 1.0, Ad.raw_data(), lda, Bd.raw_data(), ldb, 0.0,
                                C1d.raw_data(), ldc);
      Tensor e1 = C1.clone();
      Tensor e1v = e1.narrow(1, 0, n);
      kernels::cpu::matmul_out(e1v, A.narrow(1, 0, ta ? m : k), B.select(0, 0).narrow(1, 0, tb ? k : n), ta, tb, 1.0,
                               0.0);
      CHECK_CLOSE(C1d.to(kCpu), e1, 1e-5, 1e-5);
    }
  // Leading dimensions that cuBLAS would reject are reported, naming the call.
  Tensor A = Tensor::zeros({4, 4}, DType::f32, dev());
  CHECK_THROWS_CONTAINING(kernels::cuda::blas::gemm(DType::f32, false, false, 4, 4, 4, 1.0, A.raw_data(), 3,
                                                    A.raw_data(), 4, 0.0, A.raw_data(), 4),
                          "cublasGemmEx: invalid arguments");
  CHECK_THROWS_CONTAINING(kernels::cuda::blas::gemm(DType::i32, false, false, 4, 4, 4, 1.0, A.raw_data(), 4,
                                                    A.raw_data(), 4, 0.0, A.raw_data(), 4),
                          "dtype f32, bf16 or f64 expected");
}

TEST_CASE("cuda matmul: bad inputs name the op and the shapes") {
  Tensor a = randn({3, 4}, 1), b = randn({4, 5}, 2);
  CHECK_THROWS_CONTAINING(kernels::cuda::matmul(a, on_dev(b), false, false), "is not on the device");
  CHECK_THROWS_CONTAINING(kernels::cuda::matmul(on_dev(a), on_dev(b), true, false), "inner dimensions 3 and 4 differ");
  CHECK_THROWS_CONTAINING(kernels::cuda::matmul(on_dev(a), on_dev(b.to(DType::f64)), false, false), "f32");
  Tensor out = Tensor::zeros({3, 4}, DType::f32, dev());
  CHECK_THROWS_CONTAINING(kernels::cuda::matmul_out(out, on_dev(a), on_dev(b), false, false, 1.0, 0.0),
                          "matmul_out: out is f32[3, 4]");
  CHECK_THROWS_CONTAINING(kernels::cuda::bmm(on_dev(randn({2, 3, 4}, 3)), on_dev(randn({3, 4, 5}, 4)), false, false),
                          "bmm: batch sizes");
}
