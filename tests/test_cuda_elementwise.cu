// The elementwise kernels (kernels/cuda/elementwise.cu), gradient accumulation
// (kernels/cuda/accumulate.cu) and max_backward (kernels/cuda/reduce.cu), run under the sim and
// compared with the CPU ops (kernels::cpu::...) on odd shapes, NumPy broadcasts, transposed /
// sliced / expanded views, 0-d and empty tensors, f32, bf16 and f64, and special values (±0,
// ±inf, NaN, denormals, exp's overflow and underflow edges).
//
// Under the sim the device code computes with the CPU's formulas and libm, so every result must
// be the CPU's bit for bit (a NaN only has to be a NaN). On a GPU the arithmetic ops stay bit-exact
// but the transcendental ones may move by a few ulp (fused multiply-adds, the device's libm); the
// ulp checks below state that contract and run too. Fresh device memory is NaN-poisoned and
// guarded under the sim, so a missed or stray element shows up; reverse and shuffled thread
// orders must give the same bits. These tests verify our kernels, not NVIDIA libraries.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "kernels/accumulate.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "kernels/elementwise.h"
#include "kernels/reduce.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;

namespace {

engine::Device dev() { return kernels::cuda::device(); }
Tensor on_dev(const Tensor& t) { return t.to(dev()); }
Tensor on_cpu(const Tensor& t) { return t.to(engine::Device::cpu()); }

const DType kFloat[] = {DType::f32, DType::bf16, DType::f64};

std::string name_of(DType dt) { return std::string(engine::dtype_name(dt)); }

// Relative size of one ulp of the dtype (the bound on a single rounding's relative step).
double eps_of(DType dt) {
  return dt == DType::f64 ? 0x1p-52 : dt == DType::f32 ? 0x1p-23 : 0x1p-7;
}

// The comparison every test uses: same shape, dtype and device placement; NaN where the CPU has
// NaN, the same infinity, and otherwise |got - want| <= ulps * eps * |want| + atol (the GPU
// contract) -- and, under the sim, the same bits (a NaN's payload aside).
void check_op(const Tensor& got_in, const Tensor& want, double ulps, double atol,
              const std::string& what, bool sim_bits = true) {
  INFO(what << ": got " << got_in.describe() << ", want " << want.describe());
  REQUIRE(got_in.defined());
  CHECK(got_in.device() == dev());
  REQUIRE(got_in.shape() == want.shape());
  REQUIRE(got_in.dtype() == want.dtype());
  const Tensor got = on_cpu(got_in).contiguous(), w = want.contiguous();
  const std::vector<double> g = got.to_vector<double>(), r = w.to_vector<double>();
  const double eps = eps_of(want.dtype());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    bool ok;
    if (std::isnan(r[i])) ok = std::isnan(g[i]);
    else if (std::isinf(r[i])) ok = g[i] == r[i];
    else ok = std::isfinite(g[i]) && std::abs(g[i] - r[i]) <= ulps * eps * std::abs(r[i]) + atol;
    if (!ok && bad++ == 0) first = i;
  }
  INFO("first bad element " << first << ": got " << (g.empty() ? 0.0 : g[first]) << ", want "
                            << (r.empty() ? 0.0 : r[first]) << " (" << bad << " bad)");
  CHECK(bad == 0);
#if defined(ENGINE_SIM)
  if (!sim_bits) return;
  size_t diff = 0;
  const size_t es = want.element_size();
  const unsigned char* pg = static_cast<const unsigned char*>(got.raw_data());
  const unsigned char* pr = static_cast<const unsigned char*>(w.raw_data());
  for (size_t i = 0; i < g.size(); ++i)
    if (!(std::isnan(g[i]) && std::isnan(r[i])) && std::memcmp(pg + i * es, pr + i * es, es) != 0) {
      if (diff++ == 0) first = i;
    }
  INFO("under the sim the bits must match; first differing element " << first << " (" << diff
                                                                      << " differ)");
  CHECK(diff == 0);
#endif
}

// Same bits (for reruns under other thread orders).
bool same_bits(const Tensor& a, const Tensor& b) {
  if (!(a.shape() == b.shape()) || a.dtype() != b.dtype()) return false;
  Tensor x = on_cpu(a).contiguous(), y = on_cpu(b).contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

void other_orders(const std::function<void()>& f) {
  {
    INFO("thread order: reverse");
    sim::ScopedThreadOrder o(sim::ThreadOrder::reverse);
    f();
  }
  {
    INFO("thread order: shuffled");
    sim::ScopedThreadOrder o(sim::ThreadOrder::shuffled, 4242);
    f();
  }
}

// Views of one base tensor, built the same way on the CPU and on the device.
struct Layout {
  const char* name;
  Shape base;
  std::function<Tensor(const Tensor&)> view;
};
const std::vector<Layout>& unary_layouts() {
  static const std::vector<Layout> v = {
      {"contiguous [37, 29]", {37, 29}, [](const Tensor& t) { return t; }},
      {"transposed", {29, 37}, [](const Tensor& t) { return t.transpose(0, 1); }},
      {"stepped slices", {41, 60}, [](const Tensor& t) { return t.slice(0, 2, 39, 3).slice(1, 1, 60, 2); }},
      {"expanded", {1, 29}, [](const Tensor& t) { return t.expand({13, 29}); }},
      {"permuted 4-d", {3, 5, 4, 7}, [](const Tensor& t) { return t.permute({3, 1, 0, 2}); }},
      {"0-d", {}, [](const Tensor& t) { return t; }},
      {"empty", {0, 7}, [](const Tensor& t) { return t; }},
  };
  return v;
}

// (a, b) operand shapes and views for the binary ops: broadcasts of every kind.
struct BinaryCase {
  const char* name;
  Shape a, b;
  std::function<Tensor(const Tensor&)> va, vb;
};
Tensor same(const Tensor& t) { return t; }
const std::vector<BinaryCase>& binary_cases() {
  static const std::vector<BinaryCase> v = {
      {"same shape", {37, 29}, {37, 29}, same, same},
      {"row broadcast [37, 29] + [29]", {37, 29}, {29}, same, same},
      {"column broadcast [37, 29] + [37, 1]", {37, 29}, {37, 1}, same, same},
      {"both broadcast [3, 1, 5] + [4, 1]", {3, 1, 5}, {4, 1}, same, same},
      {"outer [6, 1] + [1, 9]", {6, 1}, {1, 9}, same, same},
      {"0-d + tensor", {}, {4, 3}, same, same},
      {"tensor + 0-d", {4, 3}, {}, same, same},
      {"transposed + contiguous", {29, 37}, {37, 29}, [](const Tensor& t) { return t.transpose(0, 1); }, same},
      {"sliced + expanded", {20, 31}, {1, 11}, [](const Tensor& t) { return t.slice(1, 0, 31, 3).slice(0, 3, 20); },
       [](const Tensor& t) { return t.expand({17, 11}); }},
      {"3-d transposed + broadcast", {5, 4, 6}, {6, 1, 4}, [](const Tensor& t) { return t.permute({2, 0, 1}); },
       same},
      {"empty", {2, 0, 3}, {3}, same, same},
  };
  return v;
}

// Random inputs in [lo, hi] of the dtype.
Tensor input(const Shape& s, DType dt, uint64_t stream, double lo, double hi) {
  return testing::randu(s, stream, lo, hi, dt);
}

// Special values, as a 1-D f64 tensor.
Tensor specials() {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  const std::vector<double> v = {0.0,   -0.0,  1.0,    -1.0,   inf,     -inf,  nan,  -nan,
                                 1e-40, -1e-40, 88.7,  88.8,   -87.3,   -87.4, -104, 1e30,
                                 -1e30, 0.5,   0.625,  -0.625, 0.62499, 3e38,  -3e38, 9.5,
                                 -9.5,  15.0,  -15.0,  1e-7,   2.5e-3,  -6.0,  7e-4, -0.75};
  return Tensor::from_vector(v, {int64_t(v.size())});
}

using UnaryFn = Tensor (*)(const Tensor&);
struct UnaryOp {
  const char* name;
  UnaryFn cpu, gpu;
  double lo, hi;  // random input range
  bool exact;     // arithmetic op: bit-exact on a GPU too
};
const std::vector<UnaryOp>& unary_ops() {
  static const std::vector<UnaryOp> v = {
      {"neg", kernels::cpu::neg, kernels::cuda::neg, -5, 5, true},
      {"abs", kernels::cpu::abs, kernels::cuda::abs, -5, 5, true},
      {"square", kernels::cpu::square, kernels::cuda::square, -5, 5, true},
      {"sqrt", kernels::cpu::sqrt, kernels::cuda::sqrt, 0, 9, true},
      {"rsqrt", kernels::cpu::rsqrt, kernels::cuda::rsqrt, 0.01, 9, true},
      {"relu", kernels::cpu::relu, kernels::cuda::relu, -5, 5, true},
      {"exp", kernels::cpu::exp, kernels::cuda::exp, -100, 100, false},
      {"log", kernels::cpu::log, kernels::cuda::log, 1e-6, 1e6, false},
      {"tanh", kernels::cpu::tanh, kernels::cuda::tanh, -12, 12, false},
      {"sigmoid", kernels::cpu::sigmoid, kernels::cuda::sigmoid, -40, 40, false},
      {"gelu_tanh", kernels::cpu::gelu_tanh, kernels::cuda::gelu_tanh, -12, 12, false},
      {"gelu_erf", kernels::cpu::gelu_erf, kernels::cuda::gelu_erf, -12, 12, false},
  };
  return v;
}

// Few-ulp tolerance of the transcendental ops on a GPU (the CPU's own approximations are within
// ~2 ulp; the device's FMAs and libm add about as much). bf16 results may round the other way.
double ulps_for(bool exact, DType dt) {
  if (exact) return 0;
  return dt == DType::bf16 ? 1 : 8;
}

using BinaryFn = Tensor (*)(const Tensor&, const Tensor&);
struct BinaryOp {
  const char* name;
  BinaryFn cpu, gpu;
  double lo_a, hi_a, lo_b, hi_b;
  bool exact;
  double atol;  // for the gradients that cross zero (cancellation near the crossing on a GPU)
};
const std::vector<BinaryOp>& binary_ops() {
  static const std::vector<BinaryOp> v = {
      {"add", kernels::cpu::add, kernels::cuda::add, -5, 5, -5, 5, true, 0},
      {"sub", kernels::cpu::sub, kernels::cuda::sub, -5, 5, -5, 5, true, 0},
      {"mul", kernels::cpu::mul, kernels::cuda::mul, -5, 5, -5, 5, true, 0},
      {"div", kernels::cpu::div, kernels::cuda::div, -5, 5, 0.1, 5, true, 0},
      {"relu_backward", kernels::cpu::relu_backward, kernels::cuda::relu_backward, -2, 2, -2, 2, true, 0},
      {"sigmoid_backward", kernels::cpu::sigmoid_backward, kernels::cuda::sigmoid_backward, -2, 2, 0, 1, true, 0},
      {"tanh_backward", kernels::cpu::tanh_backward, kernels::cuda::tanh_backward, -2, 2, -1, 1, true, 0},
      {"gelu_tanh_backward", kernels::cpu::gelu_tanh_backward, kernels::cuda::gelu_tanh_backward, -2, 2, -8, 8,
       false, 1e-6},
      {"gelu_erf_backward", kernels::cpu::gelu_erf_backward, kernels::cuda::gelu_erf_backward, -2, 2, -8, 8,
       false, 1e-6},
  };
  return v;
}

}  // namespace

// --- unary ops ----------------------------------------------------------------------------------

TEST_CASE("cuda elementwise/unary ops vs the CPU op, every layout and float dtype") {
  for (const UnaryOp& op : unary_ops()) {
    for (DType dt : kFloat) {
      for (const Layout& l : unary_layouts()) {
        const Tensor base = input(l.base, dt, 11, op.lo, op.hi);
        const Tensor xc = l.view(base), xd = l.view(on_dev(base));
        check_op(op.gpu(xd), op.cpu(xc), ulps_for(op.exact, dt), 0,
                 std::string(op.name) + " " + name_of(dt) + " " + l.name);
      }
    }
  }
}

TEST_CASE("cuda elementwise/scalar ops: add_scalar, mul_scalar, pow_scalar (shortcut and general powers)") {
  for (DType dt : kFloat) {
    for (const Layout& l : unary_layouts()) {
      const Tensor base = input(l.base, dt, 12, 0.05, 7);
      const Tensor xc = l.view(base), xd = l.view(on_dev(base));
      const std::string where = std::string(name_of(dt)) + " " + l.name;
      for (double s : {0.0, 1.0, -0.37, 1e-3, 12345.678}) {
        check_op(kernels::cuda::add_scalar(xd, s), kernels::cpu::add_scalar(xc, s), 0, 0,
                 "add_scalar " + std::to_string(s) + " " + where);
        check_op(kernels::cuda::mul_scalar(xd, s), kernels::cpu::mul_scalar(xc, s), 0, 0,
                 "mul_scalar " + std::to_string(s) + " " + where);
      }
      for (double p : {1.0, 2.0, 0.5, -0.5}) {  // the CPU's shortcuts: exact
        check_op(kernels::cuda::pow_scalar(xd, p), kernels::cpu::pow_scalar(xc, p), 0, 0,
                 "pow_scalar " + std::to_string(p) + " " + where);
      }
      for (double p : {3.0, -1.3, 0.0, 2.7}) {  // libm's pow
        check_op(kernels::cuda::pow_scalar(xd, p), kernels::cpu::pow_scalar(xc, p),
                 ulps_for(false, dt), 0, "pow_scalar " + std::to_string(p) + " " + where);
      }
    }
  }
}

TEST_CASE("cuda elementwise/special values: ±0, ±inf, NaN, denormals, exp overflow and underflow edges") {
  for (DType dt : kFloat) {
    const Tensor xc = specials().to(dt), xd = on_dev(xc);
    for (const UnaryOp& op : unary_ops())
      check_op(op.gpu(xd), op.cpu(xc), ulps_for(op.exact, dt), 0,
               std::string(op.name) + " " + name_of(dt) + " specials");
    for (double p : {2.0, 0.5, -0.5, 3.0, -1.3})
      check_op(kernels::cuda::pow_scalar(xd, p), kernels::cpu::pow_scalar(xc, p),
               ulps_for(p == 3.0 || p == -1.3 ? false : true, dt), 0,
               "pow_scalar " + std::to_string(p) + " specials");
    check_op(kernels::cuda::add_scalar(xd, -1.5), kernels::cpu::add_scalar(xc, -1.5), 0, 0, "add_scalar");
    check_op(kernels::cuda::mul_scalar(xd, INFINITY), kernels::cpu::mul_scalar(xc, INFINITY), 0, 0,
             "mul_scalar inf");
    // Every pair of specials, by broadcasting a column against a row.
    const int64_t n = xc.numel();
    const Tensor ac = xc.view({n, 1}), bc = xc.view({1, n});
    const Tensor ad = xd.view({n, 1}), bd = xd.view({1, n});
    for (const BinaryOp& op : binary_ops())
      check_op(op.gpu(ad, bd), op.cpu(ac, bc), ulps_for(op.exact, dt), op.atol,
               std::string(op.name) + " " + name_of(dt) + " specials x specials");
  }
}

TEST_CASE("cuda elementwise/NaN propagation keeps positions; bf16 NaN results stay NaN") {
  // A NaN in either operand gives NaN exactly where the CPU gives NaN (checked by check_op);
  // here also that nothing else turned NaN and the count matches.
  for (DType dt : kFloat) {
    Tensor a = input({9, 11}, DType::f64, 13, -3, 3);
    std::vector<double> v = a.to_vector<double>();
    for (size_t i = 0; i < v.size(); i += 7) v[i] = std::nan("");
    const Tensor ac = Tensor::from_vector(v, {9, 11}).to(dt), bc = input({11}, dt, 14, -3, 3);
    const Tensor got = kernels::cuda::mul(on_dev(ac), on_dev(bc));
    check_op(got, kernels::cpu::mul(ac, bc), 0, 0, std::string("mul with NaNs ") + name_of(dt));
    size_t nans = 0;
    for (double x : got.to_vector<double>()) nans += std::isnan(x);
    CHECK(nans == (v.size() + 6) / 7);
  }
}

// --- binary ops ---------------------------------------------------------------------------------

TEST_CASE("cuda elementwise/binary ops and backward formulas vs the CPU op, every broadcast and layout") {
  for (const BinaryOp& op : binary_ops()) {
    for (DType dt : kFloat) {
      for (const BinaryCase& c : binary_cases()) {
        const Tensor a = input(c.a, dt, 15, op.lo_a, op.hi_a), b = input(c.b, dt, 16, op.lo_b, op.hi_b);
        const Tensor ac = c.va(a), bc = c.vb(b), ad = c.va(on_dev(a)), bd = c.vb(on_dev(b));
        check_op(op.gpu(ad, bd), op.cpu(ac, bc), ulps_for(op.exact, dt), op.atol,
                 std::string(op.name) + " " + name_of(dt) + " " + c.name);
      }
    }
  }
}

TEST_CASE("cuda elementwise/reverse and shuffled thread orders give the same bits") {
  const Tensor a = on_dev(input({33, 17}, DType::f32, 17, -3, 3)).transpose(0, 1);
  const Tensor b = on_dev(input({17, 1}, DType::f32, 18, -3, 3));
  const Tensor add = kernels::cuda::add(a, b), gelu = kernels::cuda::gelu_erf_backward(a, b.expand({17, 33}));
  const Tensor big = on_dev(input({9, 3000}, DType::f32, 19, -1, 1));
  const Tensor s0 = kernels::cuda::sum_to_shape(big, {3000}), s1 = kernels::cuda::sum_to_shape(big, {9, 1});
  other_orders([&] {
    CHECK(same_bits(kernels::cuda::add(a, b), add));
    CHECK(same_bits(kernels::cuda::gelu_erf_backward(a, b.expand({17, 33})), gelu));
    CHECK(same_bits(kernels::cuda::sum_to_shape(big, {3000}), s0));
    CHECK(same_bits(kernels::cuda::sum_to_shape(big, {9, 1}), s1));
  });
}

// --- sum_to_shape -------------------------------------------------------------------------------

TEST_CASE("cuda elementwise/sum_to_shape vs the CPU op: leading, inner, middle and mixed reductions") {
  struct Case {
    Shape g, to;
    std::function<Tensor(const Tensor&)> view;
    std::string name;
    bool single_group;  // the reduced axes are neighbours
  };
  const auto tr = [](const Tensor& t) { return t.transpose(0, 1); };
  const std::vector<Case> cases = {
      {{37, 29}, {29}, same, "[37, 29] -> [29]", true},
      {{37, 29}, {37, 1}, same, "[37, 29] -> [37, 1]", true},
      {{37, 29}, {1, 1}, same, "-> [1, 1]", true},
      {{37, 29}, {}, same, "-> []", true},
      {{4, 5, 6}, {5, 1}, same, "[4, 5, 6] -> [5, 1] (kept middle)", false},
      {{4, 5, 6}, {4, 1, 6}, same, "-> [4, 1, 6]", true},
      {{4, 5, 6}, {1, 5, 1}, same, "-> [1, 5, 1]", false},
      {{2, 3, 4, 5}, {3, 1, 5}, same, "[2, 3, 4, 5] -> [3, 1, 5] (alternating)", false},
      {{29, 37}, {29}, tr, "transposed g -> [29]", true},
      {{29, 37}, {37, 1}, tr, "transposed g -> [37, 1]", true},
      {{1, 29}, {29}, [](const Tensor& t) { return t.expand({37, 29}); }, "expanded g -> [29]", true},
      {{3000, 7}, {7}, same, "[3000, 7] -> [7] (many parts, outputs fastest)", true},
      {{7, 3000}, {7, 1}, same, "[7, 3000] -> [7, 1] (many parts, parts fastest)", true},
      {{40000}, {}, same, "[40000] -> [] (one output)", true},
      {{0, 5}, {5}, same, "empty reduced axis -> zeros", true},
      {{5, 0}, {1, 0}, same, "empty output", true},
  };
  for (DType dt : kFloat) {
    for (const Case& c : cases) {
      const Tensor base = input(c.g, dt, 20, -2, 2);
      const Tensor gc = c.view(base), gd = c.view(on_dev(base));
      // The kernel sums in f64 and rounds once. The CPU op rounds to the dtype after each group
      // of reduced axes (one rounding when the reduced axes are one group), so the reference is
      // the CPU op on f64 values, rounded to the dtype: f32 and bf16 agree to an ulp (f64 sums
      // in different orders), f64 to a few ulp of the inputs' magnitude.
      const Tensor want = kernels::cpu::sum_to_shape(gc.to(DType::f64), c.to).to(dt);
      const Tensor got = kernels::cuda::sum_to_shape(gd, c.to);
      const bool f64 = dt == DType::f64;
      check_op(got, want, f64 ? 64 : 1, f64 ? 1e-12 : 0, name_of(dt) + " " + c.name, false);
      // Where one group of axes is reduced the CPU op itself rounds once, too.
      if (!f64 && c.single_group)
        check_op(got, kernels::cpu::sum_to_shape(gc, c.to), 1, 0, name_of(dt) + " " + c.name + " (CPU op)",
                 false);
    }
  }
  // The same shape is the tensor itself, as on the CPU.
  const Tensor g = on_dev(input({3, 4}, DType::f32, 21, -1, 1));
  CHECK(kernels::cuda::sum_to_shape(g, {3, 4}).shares_storage(g));
}

// --- accumulate ---------------------------------------------------------------------------------

TEST_CASE("cuda elementwise/accumulate: dst += alpha * src, strided and broadcast, bit-identical") {
  struct Case {
    Shape dst_base, src_base;
    std::function<Tensor(const Tensor&)> vd, vs;
    const char* name;
  };
  const std::vector<Case> cases = {
      {{37, 29}, {37, 29}, same, same, "contiguous"},
      {{37, 29}, {29}, same, same, "row broadcast"},
      {{29, 37}, {37, 29}, [](const Tensor& t) { return t.transpose(0, 1); }, same, "transposed dst"},
      {{40, 31}, {10, 31}, [](const Tensor& t) { return t.slice(0, 3, 34).slice(1, 0, 30, 3); },
       [](const Tensor& t) { return t.transpose(0, 1); }, "sliced dst, transposed src"},
      {{}, {}, same, same, "0-d"},
      {{5, 1, 3}, {1}, same, same, "single-element src"},
      {{0, 4}, {4}, same, same, "empty"},
  };
  for (DType dt : {DType::f32, DType::f64}) {
    for (DType src_dt : {dt, DType::bf16, DType::f64}) {
      for (const Case& c : cases) {
        for (double alpha : {1.0, -0.37, 0.0}) {
          INFO(std::string(c.name) << " dst " << name_of(dt) << " src " << name_of(src_dt) << " alpha "
                                   << alpha);
          const Tensor d0 = input(c.dst_base, dt, 22, -3, 3), s0 = input(c.src_base, src_dt, 23, -3, 3);
          Tensor dc = d0.clone(), dd = on_dev(d0);
          Tensor vdc = c.vd(dc), vdd = c.vd(dd);
          kernels::cpu::accumulate(vdc, c.vs(s0), alpha);
          kernels::cuda::accumulate(vdd, c.vs(on_dev(s0)), alpha);
          // The whole base tensor: elements outside the view are untouched.
          check_op(dd, dc, 0, 0, "accumulate");
        }
      }
    }
  }
}

TEST_CASE("cuda elementwise/accumulate and max_backward errors match the CPU op's") {
  Tensor d = Tensor::zeros({3, 4}, DType::f32, dev());
  CHECK_THROWS_CONTAINING(kernels::cuda::accumulate(d, on_dev(testing::randn({2, 3, 4}, 1)), 1.0),
                          "accumulate: cannot add f32[2, 3, 4] (sim:0) into f32[3, 4] (sim:0)");
  CHECK_THROWS_CONTAINING(kernels::cuda::accumulate(d, on_dev(testing::randn({4, 4}, 1)), 1.0),
                          "accumulate: shapes [3, 4] and [4, 4] cannot be broadcast");
  Tensor bf = Tensor::zeros({3}, DType::bf16, dev());
  CHECK_THROWS_CONTAINING(kernels::cuda::accumulate(bf, on_dev(testing::randn({3}, 1)), 1.0),
                          "accumulate: expected dtype f32 or f64, got bf16");
  Tensor ex = Tensor::zeros({1, 4}, DType::f32, dev()).expand({3, 4});
  CHECK_THROWS_CONTAINING(kernels::cuda::accumulate(ex, on_dev(testing::randn({3, 4}, 1)), 1.0),
                          "is a broadcast view");
  CHECK_THROWS_CONTAINING(kernels::cuda::accumulate(d, testing::randn({3, 4}, 1), 1.0),
                          "accumulate: src f32[3, 4] is not on sim:0");

  const Tensor g = on_dev(testing::randn({2, 3}, 2));
  const Tensor idx = on_dev(Tensor::from_vector<int64_t>({0, 1, 4, 2, 0, 1}, {2, 3}));
  CHECK_THROWS_CONTAINING(kernels::cuda::max_backward(g, idx, {2, 4, 3}, 1),
                          "max_backward: index 4 out of range for axis 1 of size 4");
  const Tensor neg = on_dev(Tensor::from_vector<int64_t>({0, 1, -1, 2, 0, 1}, {2, 3}));
  CHECK_THROWS_CONTAINING(kernels::cuda::max_backward(g, neg, {2, 4, 3}, 1), "index -1 out of range");
  CHECK_THROWS_CONTAINING(kernels::cuda::max_backward(g, idx, {2, 4, 5}, 1),
                          "does not match the max over axis 1");
  CHECK_THROWS_CONTAINING(kernels::cuda::max_backward(g, idx.to(DType::i32), {2, 4, 3}, 1),
                          "expected i64 indices");
}

// --- max_backward -------------------------------------------------------------------------------

TEST_CASE("cuda elementwise/max_backward scatters like the CPU op: every axis, kept dims, strided g") {
  const Shape in_shape{5, 7, 3};
  for (DType dt : kFloat) {
    for (int axis : {0, 1, 2, -1}) {
      for (bool keepdim : {false, true}) {
        for (bool strided : {false, true}) {
          INFO(name_of(dt) << " axis " << axis << " keepdim " << keepdim << " strided " << strided);
          const Tensor x = input(in_shape, DType::f32, 24, -1, 1);
          const Tensor idx = kernels::cpu::argmax(x, axis, keepdim);
          Tensor g = input(idx.shape(), dt, 25, -2, 2);
          Tensor gd = on_dev(g);
          if (strided && g.dim() == 2) {  // the same values through a transposed layout
            g = g.transpose(0, 1).contiguous().transpose(0, 1);
            gd = gd.transpose(0, 1).contiguous().transpose(0, 1);
          }
          const Tensor want = kernels::cpu::max_backward(g, idx, in_shape, axis);
          check_op(kernels::cuda::max_backward(gd, on_dev(idx), in_shape, axis), want, 0, 0,
                   "max_backward");
        }
      }
    }
  }
  // 0-d input and an empty one.
  const Tensor g0 = Tensor::scalar(1.5), i0 = Tensor::full({}, 0.0, DType::i64);
  check_op(kernels::cuda::max_backward(on_dev(g0), on_dev(i0), {}, 0),
           kernels::cpu::max_backward(g0, i0, {}, 0), 0, 0, "0-d");
  const Tensor ge = Tensor::zeros({0, 3}), ie = Tensor::zeros({0, 3}, DType::i64);
  check_op(kernels::cuda::max_backward(on_dev(ge), on_dev(ie), {0, 4, 3}, 1),
           kernels::cpu::max_backward(ge, ie, {0, 4, 3}, 1), 0, 0, "empty");
}

// --- errors -------------------------------------------------------------------------------------

TEST_CASE("cuda elementwise/errors name the op and the tensors") {
  const Tensor a = on_dev(testing::randn({3, 4}, 3)), b = on_dev(testing::randn({5}, 4));
  CHECK_THROWS_CONTAINING(kernels::cuda::add(a, b), "add: shapes [3, 4] and [5] cannot be broadcast");
  CHECK_THROWS_CONTAINING(kernels::cuda::mul(a, a.to(DType::f64)), "mul: dtype mismatch");
  CHECK_THROWS_CONTAINING(kernels::cuda::exp(a.to(DType::i32)), "exp: expected dtype f32, f64 or bf16, got i32");
  CHECK_THROWS_CONTAINING(kernels::cuda::relu(testing::randn({3}, 5)), "relu: 'x' f32[3] is not on sim:0");
  CHECK_THROWS_CONTAINING(kernels::cuda::sub(a, testing::randn({3, 4}, 5)), "sub: 'b' f32[3, 4] is not on");
  CHECK_THROWS_CONTAINING(kernels::cuda::sum_to_shape(a, {2, 4}), "sum_to_shape: shapes [2, 4] and [3, 4]");
  CHECK_THROWS_CONTAINING(kernels::cuda::sum_to_shape(a, {1, 3, 4}), "sum_to_shape: cannot reduce");
  CHECK_THROWS_CONTAINING(kernels::cuda::div(Tensor(), a), "undefined tensor");
}
