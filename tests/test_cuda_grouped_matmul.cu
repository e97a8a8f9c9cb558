// The handwritten grouped-matmul CUDA kernels (kernels/cuda/grouped_matmul.cu), executed under
// the sim, against the CPU op (kernels::cpu::grouped_matmul, itself checked against the f64
// reference in tests/test_grouped_matmul.cpp): forward, input gradient and weight gradient, f32
// (CUDA cores) and bf16 (tensor cores through kernels/cuda/wmma.cuh), both CTA tile sizes, edge
// counts, aligned (16-byte vector) and unaligned (element) access, non-contiguous operands, bad
// counts, and thread orders that expose missing barriers. Outputs are fresh device memory (NaN
// under the sim), so an element a kernel forgets to write fails the comparison; guard bytes
// around every allocation turn an out-of-bounds write into a launch error.
#include <doctest/doctest.h>

#include <cmath>
#include <numeric>
#include <type_traits>
#include <vector>

#include "kernels/cuda/blas.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/wmma.cuh"
#include "kernels/grouped_matmul.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using kernels::cuda::GroupedTile;
using testing::randn;

namespace {

engine::Device dev() { return kernels::cuda::device(); }
const engine::Device kCpu = engine::Device::cpu();

// Returns the caching allocator's free blocks, so that the next device allocations are fresh
// sim memory (0xFF bytes: NaN) rather than a reused block that may hold an earlier, correct
// result: an output element a kernel forgets to write then shows up as NaN.
template <class F>
auto fresh(F&& f) {
  kernels::cuda::release_cached();
  return f();
}

struct ScopedTile {
  GroupedTile old;
  explicit ScopedTile(GroupedTile t) : old(kernels::cuda::grouped_matmul_tile()) {
    kernels::cuda::set_grouped_matmul_tile(t);
  }
  ~ScopedTile() { kernels::cuda::set_grouped_matmul_tile(old); }
};

Tensor counts_of(const std::vector<int64_t>& c) { return Tensor::from_vector(c, {int64_t(c.size())}); }
int64_t total(const std::vector<int64_t>& c) { return std::accumulate(c.begin(), c.end(), int64_t(0)); }
Shape weight_shape(int64_t e, int64_t k, int64_t n, bool tw) { return tw ? Shape{e, n, k} : Shape{e, k, n}; }

bool all_finite(const Tensor& t) {
  for (double v : t.to_vector<double>())
    if (!std::isfinite(v)) return false;
  return true;
}

// f32: as the CPU matmul tests (sums of `k` products of unit normals in another order).
// bf16: the rule |err| <= atol + 0.08·|ref| (both sides round an fp32 sum to bf16 once).
void check_output(const Tensor& got_dev, const Tensor& ref, DType dt, int64_t k, const char* what) {
  INFO(what);
  REQUIRE(got_dev.device() == dev());
  CHECK(got_dev.dtype() == dt);
  Tensor got = got_dev.to(kCpu);
  CHECK(all_finite(got));
  if (dt == DType::f32)
    CHECK_CLOSE(got, ref, 1e-5, 2e-6 * std::sqrt(double(k) + 1));
  else
    CHECK_CLOSE(got, ref, 0.08, 1e-3);
}

struct Case {
  std::vector<int64_t> counts;
  int64_t k, n;
};

// E in {1, 3, 8}; counts with zeros, all rows in one expert, odd counts (1, 17, 33, 130);
// K and N in {16, 48, 64, 72, 130} around the 64/128 tile edges.
const Case kCases[] = {
    {{130}, 64, 48},
    {{17, 0, 33}, 130, 72},
    {{1, 17, 0, 33, 130, 0, 2, 5}, 48, 130},
    {{0, 0, 0, 0, 0, 0, 65, 0}, 16, 64},
};

// Forward, input gradient and weight gradient of one case on the device vs the CPU op.
void run_case(const Case& c, DType dt, bool tw, uint64_t seed) {
  const int64_t E = int64_t(c.counts.size()), T = total(c.counts);
  CAPTURE(E);
  CAPTURE(T);
  CAPTURE(c.k);
  CAPTURE(c.n);
  CAPTURE(tw);
  CAPTURE(engine::dtype_name(dt));
  Tensor x = randn({T, c.k}, seed, dt), w = randn(weight_shape(E, c.k, c.n, tw), seed + 1, dt);
  Tensor dy = randn({T, c.n}, seed + 2, dt);
  Tensor cnt = counts_of(c.counts);
  Tensor xd = x.to(dev()), wd = w.to(dev()), dyd = dy.to(dev()), cd = cnt.to(dev());
  check_output(fresh([&] { return kernels::cuda::grouped_matmul(xd, wd, cd, tw); }),
               kernels::cpu::grouped_matmul(x, w, cnt, tw), dt, c.k, "forward");
  check_output(fresh([&] { return kernels::cuda::grouped_matmul(dyd, wd, cd, !tw); }),
               kernels::cpu::grouped_matmul(dy, w, cnt, !tw), dt, c.n, "input gradient");
  const int64_t maxc = *std::max_element(c.counts.begin(), c.counts.end());
  check_output(fresh([&] { return kernels::cuda::grouped_matmul_wgrad(xd, dyd, cd, tw); }),
               kernels::cpu::grouped_matmul_wgrad(x, dy, cnt, tw), dt, maxc, "weight gradient");
}

// One warp: D = A·B + C through the wmma wrapper, every operand layout, C loaded and D stored in
// row- or column-major order; lane `skip` (if in 0..31) leaves out its share of the store.
template <bool A_COL, bool B_COL>
__global__ void wmma_one_tile(const __nv_bfloat16* a, const __nv_bfloat16* b, const float* c, float* d,
                              int c_col, int d_col, int skip) {
  namespace wm = kernels::cuda::wmma;
  wm::fragment<wm::matrix_a, 16, 16, 16, __nv_bfloat16, std::conditional_t<A_COL, wm::col_major, wm::row_major>> fa;
  wm::fragment<wm::matrix_b, 16, 16, 16, __nv_bfloat16, std::conditional_t<B_COL, wm::col_major, wm::row_major>> fb;
  wm::fragment<wm::accumulator, 16, 16, 16, float> fc, fd;
  wm::load_matrix_sync(fa, a, 24);  // ldm 24: a padded tile, as the kernels use
  wm::load_matrix_sync(fb, b, 24);
  wm::load_matrix_sync(fc, c, 16, c_col ? wm::mem_col_major : wm::mem_row_major);
  wm::fill_fragment(fd, 123.0f);  // overwritten by the mma
  wm::mma_sync(fd, fa, fb, fc);
  if (int(threadIdx.x) != skip) wm::store_matrix_sync(d, fd, 16, d_col ? wm::mem_col_major : wm::mem_row_major);
}

template <bool A_COL, bool B_COL>
void check_wmma_tile(bool c_col, bool d_col, uint64_t seed) {
  CAPTURE(A_COL);
  CAPTURE(B_COL);
  CAPTURE(c_col);
  CAPTURE(d_col);
  Tensor a = randn({16, 24}, seed, DType::bf16), b = randn({16, 24}, seed + 1, DType::bf16);
  Tensor c = randn({16, 16}, seed + 2);
  Tensor ad = a.to(dev()), bd = b.to(dev()), cd = c.to(dev());
  Tensor dd = Tensor::full({16, 16}, std::nan(""), DType::f32, dev());
  LAUNCH((wmma_one_tile<A_COL, B_COL>), 1, 32, 0, 0)(
      static_cast<const __nv_bfloat16*>(ad.raw_data()), static_cast<const __nv_bfloat16*>(bd.raw_data()),
      cd.data<float>(), dd.data<float>(), int(c_col), int(d_col), -1);
  CHECK_LAUNCH("wmma_one_tile");
  // Expected in f64 from the stored bf16 values: A(m, k), B(k, n), C(m, n) per layout.
  auto av = a.to_vector<double>(), bv = b.to_vector<double>(), cv = c.to_vector<double>();
  auto got = dd.to_vector<double>();
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      double s = c_col ? cv[n * 16 + m] : cv[m * 16 + n];
      for (int k = 0; k < 16; ++k)
        s += (A_COL ? av[k * 24 + m] : av[m * 24 + k]) * (B_COL ? bv[n * 24 + k] : bv[k * 24 + n]);
      const double g = d_col ? got[n * 16 + m] : got[m * 16 + n];
      CHECK(std::abs(g - s) <= 1e-5 * (1 + std::abs(s)));
    }
}

}  // namespace

TEST_CASE("cuda grouped_matmul: the wmma wrapper computes D = A·B + C for every layout") {
  check_wmma_tile<false, false>(false, false, 1);
  check_wmma_tile<false, true>(true, false, 4);
  check_wmma_tile<true, false>(false, true, 7);
  check_wmma_tile<true, true>(true, true, 10);
  // A lane that skips the (warp-collective) store leaves part of the tile unwritten: NaN in
  // fresh memory. Which part is unspecified on the device; here it is lane 5's share.
  Tensor t = Tensor::zeros({16, 24}, DType::bf16, dev());
  Tensor c = Tensor::zeros({16, 16}, DType::f32, dev()), d = Tensor::full({16, 16}, std::nan(""), DType::f32, dev());
  const auto* tp = static_cast<const __nv_bfloat16*>(t.raw_data());
  LAUNCH((wmma_one_tile<false, false>), 1, 32, 0, 0)(tp, tp, c.data<float>(), d.data<float>(), 0, 0, 5);
  CHECK_LAUNCH("wmma_one_tile");
  int nan = 0;
  for (double v : d.to_vector<double>()) nan += std::isnan(v);
  CHECK(nan == 8);
  // A pointer that is not 32-byte aligned is refused, as on the device.
  LAUNCH((wmma_one_tile<false, false>), 1, 32, 0, 0)(tp + 1, tp, c.data<float>(), d.data<float>(), 0, 0, -1);
  CHECK_THROWS_CONTAINING(CHECK_LAUNCH("wmma_one_tile"), "wmma_one_tile");
}

TEST_CASE("cuda grouped_matmul: small tile, f32 and bf16, forward, dx and dW vs the CPU op") {
  ScopedTile tile(GroupedTile::small);
  uint64_t seed = 1;
  for (DType dt : {DType::f32, DType::bf16})
    for (const Case& c : kCases)
      for (bool tw : {false, true}) run_case(c, dt, tw, seed += 3);
}

TEST_CASE("cuda grouped_matmul: large tile (128x128), f32 and bf16") {
  ScopedTile tile(GroupedTile::large);
  uint64_t seed = 100;
  for (DType dt : {DType::f32, DType::bf16}) {
    run_case(kCases[1], dt, false, seed += 3);
    run_case(kCases[2], dt, true, seed += 3);
  }
  run_case({{0, 130, 0}, 72, 130}, DType::bf16, false, seed += 3);
}

TEST_CASE("cuda grouped_matmul: automatic tile choice") {
  ScopedTile tile(GroupedTile::automatic);
  run_case(kCases[1], DType::bf16, true, 200);
  run_case(kCases[1], DType::f32, false, 203);
}

TEST_CASE("cuda grouped_matmul: reverse and shuffled thread orders (missing barriers)") {
  for (auto order : {sim::ThreadOrder::reverse, sim::ThreadOrder::shuffled}) {
    sim::ScopedThreadOrder o(order, 7);
    {
      ScopedTile tile(GroupedTile::small);
      run_case(kCases[1], DType::bf16, false, 300);
      run_case(kCases[1], DType::f32, true, 303);
    }
    ScopedTile tile(GroupedTile::large);
    run_case({{3, 0, 130}, 48, 72}, DType::bf16, true, 306);
  }
}

TEST_CASE("cuda grouped_matmul: unaligned and non-contiguous operands") {
  ScopedTile tile(GroupedTile::small);
  const std::vector<int64_t> counts = {17, 0, 33};
  Tensor cnt = counts_of(counts), cd = cnt.to(dev());
  for (DType dt : {DType::f32, DType::bf16}) {
    CAPTURE(engine::dtype_name(dt));
    // K = N = 64 would allow 16-byte vectors; a base pointer one element off disables them.
    Tensor x = randn({50, 64}, 1, dt), w = randn({3, 64, 64}, 2, dt);
    Tensor big = randn({50 * 64 + 1}, 3, dt).to(dev());
    Tensor xd = big.narrow(0, 1, 50 * 64).view({50, 64});
    kernels::cuda::copy_strided(xd, x.to(dev()));
    Tensor ref = kernels::cpu::grouped_matmul(x, w, cnt, false);
    check_output(fresh([&] { return kernels::cuda::grouped_matmul(xd, w.to(dev()), cd, false); }), ref, dt, 64, "misaligned x");
    // Weights stored transposed (strides [.., 1, ld]): the kernel flips its B layout, no copy.
    Tensor wt = w.transpose(1, 2).contiguous().to(dev()).transpose(1, 2);
    CHECK(!wt.is_contiguous());
    check_output(fresh([&] { return kernels::cuda::grouped_matmul(x.to(dev()), wt, cd, false); }), ref, dt, 64, "transposed w");
    // Rows with padding (ld > K) are taken as is; a stride-2 last dim is copied on the device.
    Tensor xpad = Tensor::zeros({50, 72}, dt).to(dev()).narrow(1, 0, 64);
    kernels::cuda::copy_strided(xpad, x.to(dev()));
    check_output(fresh([&] { return kernels::cuda::grouped_matmul(xpad, w.to(dev()), cd, false); }), ref, dt, 64, "padded rows");
    Tensor x2 = Tensor::zeros({50, 128}, dt).to(dev()).slice(1, 0, 128, 2);
    kernels::cuda::copy_strided(x2, x.to(dev()));
    check_output(fresh([&] { return kernels::cuda::grouped_matmul(x2, w.to(dev()), cd, false); }), ref, dt, 64, "stride-2 x");
    Tensor dy = randn({50, 64}, 4, dt);
    Tensor dyd = dy.to(dev());
    check_output(fresh([&] { return kernels::cuda::grouped_matmul_wgrad(x2, dyd, cd, true); }),
                 kernels::cpu::grouped_matmul_wgrad(x, dy, cnt, true), dt, 33, "stride-2 x, wgrad");
  }
}

TEST_CASE("cuda grouped_matmul: empty experts, no rows, K = 0") {
  ScopedTile tile(GroupedTile::small);
  for (DType dt : {DType::f32, DType::bf16}) {
    // No rows at all: y is empty, dW is all zeros (every expert empty).
    Tensor cd = counts_of({0, 0, 0}).to(dev());
    Tensor y = kernels::cuda::grouped_matmul(Tensor::zeros({0, 72}, dt, dev()), Tensor::zeros({3, 72, 16}, dt, dev()), cd, false);
    CHECK(y.shape() == Shape{0, 16});
    Tensor x0 = Tensor::zeros({0, 72}, dt, dev()), dy0 = Tensor::zeros({0, 16}, dt, dev());
    Tensor dw = fresh([&] { return kernels::cuda::grouped_matmul_wgrad(x0, dy0, cd, false); });
    CHECK(dw.shape() == Shape{3, 72, 16});
    for (double v : dw.to_vector<double>()) CHECK(v == 0.0);
    // K = 0: an empty sum, y = 0 everywhere (written, not left NaN).
    Tensor c2 = counts_of({2, 0, 5}).to(dev());
    Tensor xk = Tensor::zeros({7, 0}, dt, dev()), wk = Tensor::zeros({3, 0, 9}, dt, dev());
    Tensor yk = fresh([&] { return kernels::cuda::grouped_matmul(xk, wk, c2, false); });
    CHECK(yk.shape() == Shape{7, 9});
    for (double v : yk.to_vector<double>()) CHECK(v == 0.0);
  }
}

TEST_CASE("cuda grouped_matmul: bad inputs and bad counts are reported") {
  Tensor xh = randn({7, 16}, 1), wh = randn({3, 16, 8}, 2);
  Tensor x = xh.to(dev()), w = wh.to(dev());
  Tensor good = counts_of({3, 4, 0});
  CHECK_THROWS_CONTAINING(kernels::cuda::grouped_matmul(x, w, good, false), "is not on the device");
  CHECK_THROWS_CONTAINING(kernels::cuda::grouped_matmul(xh, w, good.to(dev()), false), "is not on the device");
  CHECK_THROWS_CONTAINING(kernels::cuda::grouped_matmul(xh.to(DType::f64).to(dev()), wh.to(DType::f64).to(dev()),
                                                        good.to(dev()), false),
                          "takes f32 or bf16");
  CHECK_THROWS_CONTAINING(kernels::cuda::grouped_matmul(x, w, good.to(dev()), true), "K is 16 vs 8");
  CHECK_THROWS_CONTAINING(kernels::cuda::grouped_matmul(x, w, counts_of({7, 0}).to(dev()), false),
                          "counts must be i64 [3]");
  CHECK_THROWS_CONTAINING(kernels::cuda::grouped_matmul_wgrad(x, randn({6, 8}, 3).to(dev()), good.to(dev()), false),
                          "with the same rows");
  CHECK_THROWS_CONTAINING(kernels::cuda::grouped_matmul(x, Tensor::zeros({0, 16, 8}, DType::f32, dev()),
                                                        Tensor::zeros({0}, DType::i64, dev()), false),
                          "no experts for the 7 rows");
  // Counts live on the device, so they are checked by the kernel: a sum other than T, or a
  // negative count, traps it (a device-side assert), and the launch error names the kernel.
  for (DType dt : {DType::f32, DType::bf16}) {
    Tensor xd = xh.to(dt).to(dev()), wd = wh.to(dt).to(dev()), dyd = randn({7, 8}, 4, dt).to(dev());
    CHECK_THROWS_CONTAINING(kernels::cuda::grouped_matmul(xd, wd, counts_of({3, 3, 0}).to(dev()), false),
                            "grouped_gemm");
    CHECK_THROWS_CONTAINING(kernels::cuda::grouped_matmul(xd, wd, counts_of({3, 5, -1}).to(dev()), false),
                            "grouped_gemm");
    CHECK_THROWS_CONTAINING(kernels::cuda::grouped_matmul_wgrad(xd, dyd, counts_of({3, 5, 0}).to(dev()), false),
                            "grouped_gemm");
  }
}
