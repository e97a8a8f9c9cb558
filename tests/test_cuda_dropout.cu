// The handwritten CUDA dropout kernels (kernels/cuda/dropout.cu), run under the sim: the mask must
// be the CPU op's bit for bit (the same Philox word per row-major element), checked against the
// CPU op and against the definition evaluated here with engine/philox.h, on odd sizes (the scalar
// tail), sizes that take the 4-element vector path, misaligned and strided views, f32, bf16 and
// f64. Fresh device memory is NaN, so an element the kernel skips shows up. Built only in the sim
// build (g++ -x c++ -DENGINE_SIM).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "engine/philox.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "kernels/dropout.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {

Tensor on_dev(const Tensor& t) { return t.to(kernels::cuda::device()); }
Tensor on_cpu(const Tensor& t) { return t.to(engine::Device::cpu()); }

bool same_bits(const Tensor& a, const Tensor& b) {
  if (!(a.shape() == b.shape()) || a.dtype() != b.dtype()) return false;
  Tensor x = on_cpu(a).contiguous(), y = on_cpu(b).contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

// The definition: element i kept iff philox_uniform(seed, stream, i) >= p, kept values scaled by
// 1 / (1 - p). Checks the mask exactly and the values to the dtype's rounding.
void check_definition(const Tensor& got, const Tensor& x, double p, uint64_t seed,
                      uint64_t stream) {
  const std::vector<double> y = got.to_vector<double>(), xv = x.to_vector<double>();
  const double tol = x.dtype() == DType::bf16 ? 8e-3 : x.dtype() == DType::f32 ? 1e-6 : 1e-14;
  size_t wrong = 0, kept = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const bool keep = double(engine::philox_uniform(seed, stream, i)) >= p;
    kept += keep;
    const double want = keep ? xv[i] / (1.0 - p) : 0.0;
    wrong += !(std::abs(y[i] - want) <= tol * std::abs(want));
  }
  INFO(wrong << " of " << y.size() << " elements differ from the definition");
  CHECK(wrong == 0);
  if (y.size() >= 1000) {  // the kept fraction is near 1 - p
    const double frac = double(kept) / double(y.size());
    CHECK(std::abs(frac - (1.0 - p)) < 0.05);
  }
}

}  // namespace

TEST_CASE("cuda dropout: mask and values bit-identical to the CPU op, f32/bf16/f64, odd sizes") {
  uint64_t stream = 1;
  // 1, 3, 7, 1001: scalar tails; 4, 64, 4096: the 4-element vector path.
  for (int64_t n : {1, 3, 4, 7, 64, 1001, 4096})
    for (DType dt : {DType::f32, DType::bf16, DType::f64})
      for (double p : {0.1, 0.5, 0.9}) {
        CAPTURE(n);
        CAPTURE(dt);
        CAPTURE(p);
        Tensor x = randn({n}, stream++, dt);
        const uint64_t seed = 1234 + uint64_t(n), key = stream * 7;
        Tensor got = kernels::cuda::dropout(on_dev(x), p, seed, key);
        CHECK(got.device() == kernels::cuda::device());
        CHECK(got.dtype() == dt);
        CHECK(same_bits(got, kernels::cpu::dropout(x, p, seed, key)));
        check_definition(got, x, p, seed, key);
        Tensor g = randn({n}, stream++, dt);
        CHECK(same_bits(kernels::cuda::dropout_backward(on_dev(g), p, seed, key),
                        kernels::cpu::dropout_backward(g, p, seed, key)));
      }
}

TEST_CASE(
    "cuda dropout: multi-dim, misaligned and strided inputs use the row-major element index") {
  const uint64_t seed = 77, key = 5;
  Tensor x = randn({5, 6, 7}, 20);
  // Transposed storage viewed back: the element index is the view's row-major one.
  Tensor xt_h = x.transpose(0, 2).contiguous().transpose(0, 2);
  Tensor xt_d = on_dev(x.transpose(0, 2).contiguous()).transpose(0, 2);
  CHECK(!xt_d.is_contiguous());
  CHECK(same_bits(kernels::cuda::dropout(xt_d, 0.3, seed, key),
                  kernels::cpu::dropout(xt_h, 0.3, seed, key)));
  // A contiguous slice one element in (not 16-byte aligned: scalar accesses) and a strided one.
  Tensor wide = randn({41}, 21);
  Tensor wd = on_dev(wide);
  CHECK(same_bits(kernels::cuda::dropout(wd.narrow(0, 1, 40), 0.3, seed, key),
                  kernels::cpu::dropout(wide.narrow(0, 1, 40), 0.3, seed, key)));
  CHECK(same_bits(kernels::cuda::dropout(wd.slice(0, 0, 41, 3), 0.6, seed, key),
                  kernels::cpu::dropout(wide.slice(0, 0, 41, 3), 0.6, seed, key)));
  // bf16 3-D contiguous (vector path) and f64 strided.
  Tensor b = randn({3, 4, 8}, 22, DType::bf16);
  CHECK(same_bits(kernels::cuda::dropout(on_dev(b), 0.25, seed, key),
                  kernels::cpu::dropout(b, 0.25, seed, key)));
  Tensor d = randn({9, 5}, 23, DType::f64);
  CHECK(same_bits(kernels::cuda::dropout_backward(on_dev(d).transpose(0, 1), 0.25, seed, key),
                  kernels::cpu::dropout_backward(d.transpose(0, 1), 0.25, seed, key)));
}

TEST_CASE("cuda dropout: keys, NaN and Inf, extreme p, thread orders") {
  Tensor x = randn({1000}, 30);
  Tensor xd = on_dev(x);
  Tensor a = kernels::cuda::dropout(xd, 0.5, 1, 2);
  CHECK(!same_bits(a, kernels::cuda::dropout(xd, 0.5, 1, 3)));  // another stream, another mask
  CHECK(!same_bits(a, kernels::cuda::dropout(xd, 0.5, 2, 2)));  // another seed
  for (auto order : {sim::ThreadOrder::reverse, sim::ThreadOrder::shuffled}) {
    sim::ScopedThreadOrder o(order, 11);
    CHECK(same_bits(kernels::cuda::dropout(xd, 0.5, 1, 2), a));
  }
  // NaN and Inf stay where kept (and become 0 where dropped), as on the CPU.
  std::vector<float> v = x.to_vector<float>();
  for (size_t i = 0; i < v.size(); i += 7) v[i] = i % 2 ? INFINITY : NAN;
  Tensor xn = Tensor::from_vector(v, {1000});
  for (DType dt : {DType::f32, DType::bf16}) {
    Tensor xc = xn.to(dt);
    CHECK(same_bits(kernels::cuda::dropout(on_dev(xc), 0.4, 9, 9),
                    kernels::cpu::dropout(xc, 0.4, 9, 9)));
  }
  // A tiny p keeps nearly everything; a p close to 1 drops nearly everything.
  for (double p : {1e-7, 0.999}) {
    CAPTURE(p);
    Tensor got = kernels::cuda::dropout(xd, p, 4, 4);
    CHECK(same_bits(got, kernels::cpu::dropout(x, p, 4, 4)));
    check_definition(got, x, p, 4, 4);
  }
}

TEST_CASE("cuda dropout: p = 0 returns the input, empty tensors, errors") {
  Tensor xd = on_dev(randn({3, 5}, 40));
  Tensor same = kernels::cuda::dropout(xd, 0.0, 1, 1);
  CHECK(same.shares_storage(xd));
  CHECK(kernels::cuda::dropout(on_dev(Tensor::zeros({0, 4})), 0.5, 1, 1).shape() == Shape{0, 4});
  CHECK_THROWS_CONTAINING(kernels::cuda::dropout(xd, 1.0, 1, 1),
                          "dropout: p must be in [0, 1), got 1");
  CHECK_THROWS_CONTAINING(kernels::cuda::dropout(xd, -0.1, 1, 1), "dropout: p must be in [0, 1)");
  CHECK_THROWS_CONTAINING(kernels::cuda::dropout_backward(xd, 1.5, 1, 1),
                          "dropout_backward: p must be");
  CHECK_THROWS_CONTAINING(kernels::cuda::dropout(on_dev(Tensor::zeros({3}, DType::i64)), 0.5, 1, 1),
                          "dropout: expected a floating dtype");
  CHECK_THROWS_CONTAINING(kernels::cuda::dropout(randn({3}, 41), 0.5, 1, 1),
                          "is not on the CUDA device sim:0");
  CHECK_THROWS_CONTAINING(kernels::cuda::dropout(Tensor(), 0.5, 1, 1), "dropout");
}
