// Attention: the CPU kernel against the f64 reference (odd sizes, masks, QK LayerNorm, causal,
// strided layouts, bf16), the DESIGN rule "kernel error ≤ 2 × naive error in the same precision",
// gradients by finite differences, and error messages.
#include <cmath>
#include <limits>
#include <vector>

#include "autograd/attention.h"
#include "autograd/gradcheck.h"
#include "kernels/attention.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using kernels::AttentionOptions;
using testing::randn;
using testing::randu;

namespace {

enum class MaskKind { none, one_key, fully_masked_batch };

// [B, Nk] i64 mask: about 2/3 of keys kept at random; `one_key` keeps a single key of batch 0,
// `fully_masked_batch` masks every key of the last batch element.
Tensor make_mask(int64_t B, int64_t Nk, MaskKind kind, uint64_t stream) {
  if (kind == MaskKind::none) return Tensor();
  std::vector<double> u = randu({B, Nk}, stream, 0, 1, DType::f64).to_vector<double>();
  std::vector<int64_t> m(B * Nk);
  for (int64_t i = 0; i < B * Nk; ++i) m[i] = u[i] < 0.67 ? 1 : 0;
  m[(B - 1) * Nk] = 1;  // at least one key in the last element unless masked below
  if (kind == MaskKind::one_key)
    for (int64_t j = 0; j < Nk; ++j) m[j] = j == Nk / 2 ? 1 : 0;
  if (kind == MaskKind::fully_masked_batch)
    for (int64_t j = 0; j < Nk; ++j) m[(B - 1) * Nk + j] = 0;
  return Tensor::from_vector(m, {B, Nk});
}

// Naive attention in f32 (float everywhere, full score matrix, std::exp): the yardstick for the
// DESIGN rule that the kernel's f32 error is at most twice that of a naive f32 implementation.
Tensor naive_f32(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& o) {
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), Nk = k.size(2), Dh = q.size(3);
  const float scale = o.scale ? float(*o.scale) : 1.0f / std::sqrt(float(Dh));
  std::vector<float> Q = q.to_vector<float>(), K = k.to_vector<float>(), V = v.to_vector<float>();
  std::vector<float> mask = o.key_mask.defined() ? o.key_mask.to_vector<float>() : std::vector<float>();
  if (o.qk_norm) {
    std::vector<float> w = o.qk_norm_weight.to_vector<float>();
    for (std::vector<float>* x : {&Q, &K})
      for (size_t r = 0; r * Dh < x->size(); ++r) {
        float* xr = x->data() + r * Dh;
        float mean = 0, var = 0;
        for (int64_t d = 0; d < Dh; ++d) mean += xr[d];
        mean /= float(Dh);
        for (int64_t d = 0; d < Dh; ++d) var += (xr[d] - mean) * (xr[d] - mean);
        var /= float(Dh);
        const float rstd = 1.0f / std::sqrt(var + float(o.qk_norm_eps));
        for (int64_t d = 0; d < Dh; ++d) xr[d] = (xr[d] - mean) * rstd * w[d];
      }
  }
  std::vector<float> out(B * H * Nq * Dh, 0.0f), s(Nk);
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t i = 0; i < Nq; ++i) {
      float mx = -INFINITY;
      for (int64_t j = 0; j < Nk; ++j) {
        float acc = 0;
        for (int64_t d = 0; d < Dh; ++d) acc += Q[(bh * Nq + i) * Dh + d] * K[(bh * Nk + j) * Dh + d];
        const bool off = (!mask.empty() && mask[(bh / H) * Nk + j] == 0) || (o.causal && j > i);
        s[j] = off ? -INFINITY : scale * acc;
        mx = std::max(mx, s[j]);
      }
      if (mx == -INFINITY) continue;
      float sum = 0;
      for (int64_t j = 0; j < Nk; ++j) sum += (s[j] = std::exp(s[j] - mx));
      for (int64_t j = 0; j < Nk; ++j)
        for (int64_t d = 0; d < Dh; ++d)
          out[(bh * Nq + i) * Dh + d] += s[j] / sum * V[(bh * Nk + j) * Dh + d];
    }
  return Tensor::from_vector(out, {B, H, Nq, Dh});
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

double rms_diff(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += (x[i] - y[i]) * (x[i] - y[i]);
  return x.empty() ? 0 : std::sqrt(s / double(x.size()));
}

bool all_finite(const Tensor& t) {
  for (double x : t.to_vector<double>())
    if (!std::isfinite(x)) return false;
  return true;
}

struct Case {
  int64_t B, H, Nq, Nk, Dh;
  MaskKind mask = MaskKind::none;
  bool qk_norm = false, causal = false;
};

AttentionOptions options_for(const Case& c, uint64_t stream) {
  AttentionOptions o;
  o.key_mask = make_mask(c.B, c.Nk, c.mask, stream + 7);
  o.causal = c.causal;
  o.qk_norm = c.qk_norm;
  if (c.qk_norm) o.qk_norm_weight = randu({c.Dh}, stream + 8, 0.5, 1.5, DType::f64);
  return o;
}

// q, k, v (f64 values) for a case; q has a larger spread so some softmax rows are peaked.
struct Inputs {
  Tensor q, k, v;
};
Inputs make_inputs(const Case& c, uint64_t stream) {
  return {randn({c.B, c.H, c.Nq, c.Dh}, stream, DType::f64, 2.0),
          randn({c.B, c.H, c.Nk, c.Dh}, stream + 1, DType::f64),
          randn({c.B, c.H, c.Nk, c.Dh}, stream + 2, DType::f64)};
}

AttentionOptions with_weight_dtype(AttentionOptions o, DType dt) {
  if (o.qk_norm) o.qk_norm_weight = o.qk_norm_weight.to(dt);
  return o;
}

// Forward in f64 and f32 against the reference, lse included, plus the 2× naive-error rule.
void check_forward(const Case& c, uint64_t stream) {
  CAPTURE(c.B);
  CAPTURE(c.H);
  CAPTURE(c.Nq);
  CAPTURE(c.Nk);
  CAPTURE(c.Dh);
  CAPTURE(int(c.mask));
  CAPTURE(c.qk_norm);
  CAPTURE(c.causal);
  const Inputs in = make_inputs(c, stream);
  const AttentionOptions o = options_for(c, stream);

  // f64
  auto ref = kernels::ref::attention_forward(in.q, in.k, in.v, o);
  auto r64 = kernels::attention_forward(in.q, in.k, in.v, o);
  CHECK(r64.out.dtype() == DType::f64);
  CHECK(r64.lse.dtype() == DType::f64);
  CHECK_CLOSE(r64.out, ref.out, 1e-12, 1e-12);
  CHECK_CLOSE(r64.lse, ref.lse, 1e-12, 1e-12);

  // f32: the reference runs on the f32-rounded inputs, so only the arithmetic differs.
  const Tensor q = in.q.to(DType::f32), k = in.k.to(DType::f32), v = in.v.to(DType::f32);
  const AttentionOptions o32 = with_weight_dtype(o, DType::f32);
  auto ref32 = kernels::ref::attention_forward(q, k, v, o32);
  auto r32 = kernels::attention_forward(q, k, v, o32);
  CHECK(r32.out.dtype() == DType::f32);
  CHECK(r32.lse.dtype() == DType::f32);
  CHECK_CLOSE(r32.out, ref32.out, 1e-5, 2e-6);
  CHECK_CLOSE(r32.lse, ref32.lse, 1e-5, 2e-6);
  CHECK(all_finite(r32.out));

  // The max error over a few thousand outputs is a noisy statistic (a naive run may be lucky by
  // 2×), so the max gets a floor of two ulps of 1.0; the RMS error has no floor.
  const Tensor naive = naive_f32(q, k, v, o32);
  const double max_kernel = max_abs_diff(r32.out, ref32.out);
  const double max_naive = max_abs_diff(naive, ref32.out);
  const double rms_kernel = rms_diff(r32.out, ref32.out), rms_naive = rms_diff(naive, ref32.out);
  INFO("kernel error max " << max_kernel << " rms " << rms_kernel << "; naive f32 error max "
                           << max_naive << " rms " << rms_naive);
  CHECK(max_kernel <= 2 * max_naive + 0x1p-22);
  CHECK(rms_kernel <= 2 * rms_naive);
}

// The odd-size sweep over n, head dim, mask kind and QK LayerNorm (fewer cases at head dim 32
// to keep the suite fast), each case with its own random streams; checks the cases of one mask
// kind and QK-LN setting.
void forward_sweep(MaskKind only_mask, bool only_qk_norm) {
  uint64_t stream = 100;
  for (int64_t n : {1, 17, 63, 65, 130})
    for (int64_t dh : {8, 32, 64})
      for (MaskKind mk : {MaskKind::none, MaskKind::one_key, MaskKind::fully_masked_batch})
        for (bool qkn : {false, true}) {
          if (dh == 32 && mk != MaskKind::none && n != 130) continue;
          if (mk == only_mask && qkn == only_qk_norm)
            check_forward({2, 3, n, n, dh, mk, qkn, false}, stream);
          stream += 10;
        }
}

// Fully masked last batch element (an f32 0/1 mask), f64 inputs and options.
struct FullyMasked {
  Case c{2, 3, 9, 11, 8, MaskKind::fully_masked_batch, true, false};
  Inputs in = make_inputs(c, 40);
  AttentionOptions o = options_for(c, 40);
  FullyMasked() { o.key_mask = o.key_mask.to(DType::f32); }
};

// q, k, v: strided [B, H, N, Dh] views of a fused QKV projection output [B, N, 3, H, Dh], with
// an i32 mask (any integer or 0/1 float mask dtype works) and QK LayerNorm.
struct StridedQkv {
  static constexpr int64_t B = 2, N = 29, H = 3, Dh = 16;
  Tensor qkv = randn({B, N, 3, H, Dh}, 50, DType::f32, 1.5);
  Tensor q = qkv.select(2, 0).permute({0, 2, 1, 3});
  Tensor k = qkv.select(2, 1).permute({0, 2, 1, 3});
  Tensor v = qkv.select(2, 2).permute({0, 2, 1, 3});
  AttentionOptions o =
      with_weight_dtype(options_for({B, H, N, N, Dh, MaskKind::one_key, true}, 50), DType::f32);
  // A strided gradient of the output: token-major [B, N, H, Dh] storage.
  Tensor g = randn({B, N, H, Dh}, 51).permute({0, 2, 1, 3});
  StridedQkv() { o.key_mask = o.key_mask.to(DType::i32); }
};

// Gradcheck of q, k, v (and the QK-LN weight) for every mask kind.
void gradcheck_attention(bool qkn, bool causal) {
  for (MaskKind mk : {MaskKind::none, MaskKind::one_key, MaskKind::fully_masked_batch}) {
    const int64_t B = mk == MaskKind::none ? 1 : 2, N = causal ? 5 : 9, Dh = qkn ? 4 : 6;
    const Case c{B, 2, N, N, Dh, mk, qkn, causal};
    CAPTURE(int(mk));
    const uint64_t stream = 200 + 10 * ((uint64_t(mk) * 2 + qkn) * 2 + causal);
    const Inputs in = make_inputs(c, stream);
    const AttentionOptions o = options_for(c, stream);
    std::vector<Tensor> xs{in.q, in.k, in.v};
    if (qkn) xs.push_back(o.qk_norm_weight);
    auto f = [&](const std::vector<autograd::Var>& x) {
      return autograd::attention(x[0], x[1], x[2], o.key_mask, qkn ? x[3] : autograd::Var(), 0.7,
                                 causal);
    };
    auto res = autograd::gradcheck(f, xs);
    INFO(res.detail);
    CHECK(res.ok);
  }
}

// The sizes that take the blocked, multi-threaded paths that gradcheck's tiny inputs do not,
// with their random streams.
const Case kBlocked[] = {Case{2, 3, 130, 130, 32, MaskKind::one_key, true, false},
                         Case{2, 3, 67, 67, 16, MaskKind::fully_masked_batch, true, true},
                         Case{1, 1, 97, 61, 8, MaskKind::none, false, false}};
uint64_t blocked_stream(int i) { return 300 + 10 * uint64_t(i); }

// The f64 gradient must match a central difference of L(x) = <g, out(x)> along a random
// direction d: dL along d = <grad, d>.
void check_directional_derivative(int i) {
  const Case& c = kBlocked[i];
  const uint64_t stream = blocked_stream(i);
  const Inputs in = make_inputs(c, stream);
  const AttentionOptions o = options_for(c, stream);
  const Tensor g = randn({c.B, c.H, c.Nq, c.Dh}, stream + 3, DType::f64);
  auto fwd = kernels::attention_forward(in.q, in.k, in.v, o);
  auto gr = kernels::attention_backward(g, in.q, in.k, in.v, o, fwd);

  auto loss = [&](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& w) {
    AttentionOptions ow = o;
    if (o.qk_norm) ow.qk_norm_weight = w;
    auto r = kernels::attention_forward(q, k, v, ow);
    std::vector<double> a = r.out.to_vector<double>(), b = g.to_vector<double>();
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
  };
  auto shifted = [](const Tensor& x, const Tensor& d, double eps) {
    std::vector<double> a = x.to_vector<double>(), b = d.to_vector<double>();
    for (size_t i = 0; i < a.size(); ++i) a[i] += eps * b[i];
    return Tensor::from_vector(a, x.shape());
  };
  auto dot = [](const Tensor& a, const Tensor& b) {
    std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
    double s = 0;
    for (size_t i = 0; i < x.size(); ++i) s += x[i] * y[i];
    return s;
  };
  const double eps = 1e-5;
  const Tensor w = o.qk_norm ? o.qk_norm_weight : Tensor::zeros({c.Dh}, DType::f64);
  for (int which = 0; which < (o.qk_norm ? 4 : 3); ++which) {
    CAPTURE(which);
    const Tensor* x = which == 0 ? &in.q : which == 1 ? &in.k : which == 2 ? &in.v : &w;
    const Tensor* an = which == 0   ? &gr.dq
                       : which == 1 ? &gr.dk
                       : which == 2 ? &gr.dv
                                    : &gr.dqk_norm_weight;
    const Tensor d = randn(x->shape(), stream + 10 + which, DType::f64);
    auto at = [&](double e) {
      Tensor xs = shifted(*x, d, e);
      return loss(which == 0 ? xs : in.q, which == 1 ? xs : in.k, which == 2 ? xs : in.v,
                  which == 3 ? xs : w);
    };
    const double numeric = (at(eps) - at(-eps)) / (2 * eps);
    const double analytic = dot(*an, d);
    CHECK(std::abs(numeric - analytic) <= 1e-6 * (1 + std::abs(numeric)));
  }
}

// The f32 backward kernel against the f64 one on the same (f32-rounded) inputs.
void check_backward_f32_vs_f64(int i) {
  const Case& c = kBlocked[i];
  const uint64_t stream = blocked_stream(i);
  const Inputs in = make_inputs(c, stream);
  const AttentionOptions o = options_for(c, stream);
  const Tensor g = randn({c.B, c.H, c.Nq, c.Dh}, stream + 3, DType::f64);
  const AttentionOptions o32 = with_weight_dtype(o, DType::f32);
  const Tensor q = in.q.to(DType::f32), k = in.k.to(DType::f32), v = in.v.to(DType::f32);
  auto gr32 = kernels::attention_backward(g.to(DType::f32), q, k, v, o32,
                                          kernels::attention_forward(q, k, v, o32));
  auto gr64 = kernels::attention_backward(
      g, q.to(DType::f64), k.to(DType::f64), v.to(DType::f64), o,
      kernels::attention_forward(q.to(DType::f64), k.to(DType::f64), v.to(DType::f64), o));
  CHECK_CLOSE(gr32.dq, gr64.dq, 1e-4, 1e-4);
  CHECK_CLOSE(gr32.dk, gr64.dk, 1e-4, 1e-4);
  CHECK_CLOSE(gr32.dv, gr64.dv, 1e-4, 1e-4);
  if (o.qk_norm) CHECK_CLOSE(gr32.dqk_norm_weight, gr64.dqk_norm_weight, 1e-4, 1e-3);
}

// q [2, 3, 11, 8] etc. with one key kept and QK LayerNorm, for the autograd op.
struct AutogradCase {
  Case c{2, 3, 11, 11, 8, MaskKind::one_key, true, false};
  Inputs in = make_inputs(c, 400);
  AttentionOptions o = options_for(c, 400);
};

// Valid f32 q [2, 3, 5, 8], k and v [2, 3, 7, 8] for the error checks.
struct ErrorInputs {
  Tensor q = randn({2, 3, 5, 8}, 500), k = randn({2, 3, 7, 8}, 501), v = randn({2, 3, 7, 8}, 502);
};

}  // namespace

// ---- forward

TEST_CASE("attention: forward matches the reference on odd sizes, no mask") {
  forward_sweep(MaskKind::none, false);
}
TEST_CASE("attention: forward matches the reference on odd sizes, no mask, QK LayerNorm") {
  forward_sweep(MaskKind::none, true);
}
TEST_CASE("attention: forward matches the reference on odd sizes, one key kept") {
  forward_sweep(MaskKind::one_key, false);
}
TEST_CASE("attention: forward matches the reference on odd sizes, one key kept, QK LayerNorm") {
  forward_sweep(MaskKind::one_key, true);
}
TEST_CASE("attention: forward matches the reference on odd sizes, a fully masked batch") {
  forward_sweep(MaskKind::fully_masked_batch, false);
}
TEST_CASE(
    "attention: forward matches the reference on odd sizes, a fully masked batch, QK LayerNorm") {
  forward_sweep(MaskKind::fully_masked_batch, true);
}

TEST_CASE("attention: forward with head dim 128, one key kept and QK LayerNorm") {
  check_forward({1, 2, 37, 37, 128, MaskKind::one_key, true, false}, 11);
}
TEST_CASE("attention: forward with head dim 128") {
  check_forward({2, 3, 37, 37, 128, MaskKind::none, false, false}, 12);
}
TEST_CASE("attention: forward of cross attention with fewer queries than keys") {
  check_forward({2, 3, 13, 71, 32, MaskKind::one_key, true, false}, 13);
}
TEST_CASE("attention: forward of cross attention with more queries than keys") {
  check_forward({2, 3, 71, 5, 16, MaskKind::fully_masked_batch, false, false}, 14);
}
TEST_CASE("attention: forward with a causal mask") {
  check_forward({2, 3, 67, 67, 24, MaskKind::none, false, true}, 15);
}
TEST_CASE("attention: forward with a causal mask, a fully masked batch and QK LayerNorm") {
  check_forward({2, 3, 67, 67, 24, MaskKind::fully_masked_batch, true, true}, 16);
}
TEST_CASE("attention: forward with a causal mask and one key kept") {
  check_forward({2, 3, 130, 130, 8, MaskKind::one_key, false, true}, 17);
}
TEST_CASE("attention: forward with one query and one key, causal, QK LayerNorm") {
  check_forward({3, 1, 1, 1, 7, MaskKind::none, true, true}, 18);
}

// ---- fully masked rows

TEST_CASE_TEMPLATE("attention: fully masked rows give zero output and -inf lse, no NaN", T, float,
                   double) {
  const DType dt = engine::dtype_v<T>;
  const FullyMasked m;
  const AttentionOptions o = with_weight_dtype(m.o, dt);
  auto r = kernels::attention_forward(m.in.q.to(dt), m.in.k.to(dt), m.in.v.to(dt), o);
  CHECK(all_finite(r.out));
  CHECK(max_abs_diff(r.out.select(0, 1), Tensor::zeros({3, 9, 8})) == 0);
  for (double l : r.lse.select(0, 1).to_vector<double>()) CHECK(l == -INFINITY);
}

TEST_CASE_TEMPLATE("attention: backward of fully masked rows is finite and zero", T, float,
                   double) {
  const DType dt = engine::dtype_v<T>;
  const FullyMasked m;
  const AttentionOptions o = with_weight_dtype(m.o, dt);
  const Tensor q = m.in.q.to(dt), k = m.in.k.to(dt), v = m.in.v.to(dt);
  auto r = kernels::attention_forward(q, k, v, o);
  Tensor g = randn({2, 3, 9, 8}, 41, dt);
  auto gr = kernels::attention_backward(g, q, k, v, o, r);
  for (const Tensor* t : {&gr.dq, &gr.dk, &gr.dv, &gr.dqk_norm_weight}) CHECK(all_finite(*t));
  CHECK(max_abs_diff(gr.dq.select(0, 1), Tensor::zeros({3, 9, 8})) == 0);
  CHECK(max_abs_diff(gr.dv.select(0, 1), Tensor::zeros({3, 11, 8})) == 0);
}

// ---- layouts and bf16

TEST_CASE("attention: strided q, k, v views of a fused QKV output match the reference") {
  const StridedQkv s;
  auto ref = kernels::ref::attention_forward(s.q, s.k, s.v, s.o);
  auto r = kernels::attention_forward(s.q, s.k, s.v, s.o);
  CHECK_CLOSE(r.out, ref.out, 1e-5, 2e-6);
  CHECK_CLOSE(r.lse, ref.lse, 1e-5, 2e-6);
}

TEST_CASE("attention: the output follows q's token-major layout") {
  // Merging heads back is a free view.
  const StridedQkv s;
  auto r = kernels::attention_forward(s.q, s.k, s.v, s.o);
  CHECK(r.out.permute({0, 2, 1, 3}).is_contiguous());
}

TEST_CASE("attention: inputs whose rows are not unit-stride are copied, with the same result") {
  // Transposed storage.
  const StridedQkv s;
  auto ref = kernels::ref::attention_forward(s.q, s.k, s.v, s.o);
  Tensor qn = testing::non_contiguous(s.q.contiguous()),
         kn = testing::non_contiguous(s.k.contiguous());
  Tensor vn = testing::non_contiguous(s.v.contiguous());
  CHECK(qn.stride(3) != 1);
  auto rn = kernels::attention_forward(qn, kn, vn, s.o);
  CHECK_CLOSE(rn.out, ref.out, 1e-5, 2e-6);
}

TEST_CASE("attention: backward of strided inputs and gradient matches the contiguous one") {
  // And the gradients are token-major.
  const StridedQkv s;
  auto r = kernels::attention_forward(s.q, s.k, s.v, s.o);
  auto gs = kernels::attention_backward(s.g, s.q, s.k, s.v, s.o, r);
  auto gc = kernels::attention_backward(
      s.g.contiguous(), s.q.contiguous(), s.k.contiguous(), s.v.contiguous(), s.o,
      kernels::attention_forward(s.q.contiguous(), s.k.contiguous(), s.v.contiguous(), s.o));
  CHECK(gs.dq.permute({0, 2, 1, 3}).is_contiguous());
  CHECK_CLOSE(gs.dq, gc.dq, 1e-5, 1e-6);
  CHECK_CLOSE(gs.dk, gc.dk, 1e-5, 1e-6);
  CHECK_CLOSE(gs.dv, gc.dv, 1e-5, 1e-6);
  CHECK_CLOSE(gs.dqk_norm_weight, gc.dqk_norm_weight, 1e-5, 1e-6);
}

TEST_CASE("attention: bf16 forward is computed in f32, output bf16 (rounded once), lse f32") {
  const StridedQkv s;
  Tensor qb = s.q.to(DType::bf16), kb = s.k.to(DType::bf16), vb = s.v.to(DType::bf16);
  auto rb = kernels::attention_forward(qb, kb, vb, s.o);
  auto refb = kernels::ref::attention_forward(qb, kb, vb, s.o);
  CHECK(rb.out.dtype() == DType::bf16);
  CHECK(rb.lse.dtype() == DType::f32);
  CHECK_CLOSE(rb.out, refb.out, 8e-3, 1e-3);
  CHECK_CLOSE(rb.lse, refb.lse, 1e-5, 2e-6);
}

TEST_CASE("attention: bf16 backward gives bf16 input gradients and an f32 weight gradient") {
  const StridedQkv s;
  Tensor qb = s.q.to(DType::bf16), kb = s.k.to(DType::bf16), vb = s.v.to(DType::bf16);
  auto rb = kernels::attention_forward(qb, kb, vb, s.o);
  auto gb = kernels::attention_backward(s.g.to(DType::bf16), qb, kb, vb, s.o, rb);
  CHECK(gb.dq.dtype() == DType::bf16);
  CHECK(gb.dqk_norm_weight.dtype() == DType::f32);
}

// ---- edge cases

TEST_CASE("attention: an empty batch gives empty outputs") {
  AttentionOptions o;
  auto r = kernels::attention_forward(Tensor::zeros({0, 2, 5, 4}), Tensor::zeros({0, 2, 5, 4}),
                                      Tensor::zeros({0, 2, 5, 4}), o);
  CHECK(r.out.shape() == Shape{0, 2, 5, 4});
  CHECK(r.lse.shape() == Shape{0, 2, 5});
}

TEST_CASE("attention: no keys give zero output and -inf lse") {
  AttentionOptions o;
  auto r0 = kernels::attention_forward(randn({1, 2, 3, 4}, 60), Tensor::zeros({1, 2, 0, 4}),
                                       Tensor::zeros({1, 2, 0, 4}), o);
  CHECK(max_abs_diff(r0.out, Tensor::zeros({1, 2, 3, 4})) == 0);
  for (double l : r0.lse.to_vector<double>()) CHECK(l == -INFINITY);
}

// ---- gradients

TEST_CASE("attention: gradcheck of q, k, v for every mask kind") {
  gradcheck_attention(false, false);
}
TEST_CASE("attention: gradcheck of q, k, v for every mask kind, causal") {
  gradcheck_attention(false, true);
}
TEST_CASE("attention: gradcheck of q, k, v and the QK-LN weight for every mask kind") {
  gradcheck_attention(true, false);
}
TEST_CASE("attention: gradcheck of q, k, v and the QK-LN weight for every mask kind, causal") {
  gradcheck_attention(true, true);
}

TEST_CASE("attention: backward directional derivative on blocked sizes, one key kept, QK-LN") {
  check_directional_derivative(0);
}
TEST_CASE(
    "attention: backward directional derivative on blocked sizes, causal, fully masked batch") {
  check_directional_derivative(1);
}
TEST_CASE("attention: backward directional derivative on blocked sizes, cross attention") {
  check_directional_derivative(2);
}
TEST_CASE("attention: backward f32 matches f64 on blocked sizes, one key kept, QK-LN") {
  check_backward_f32_vs_f64(0);
}
TEST_CASE("attention: backward f32 matches f64 on blocked sizes, causal, fully masked batch") {
  check_backward_f32_vs_f64(1);
}
TEST_CASE("attention: backward f32 matches f64 on blocked sizes, cross attention") {
  check_backward_f32_vs_f64(2);
}

TEST_CASE("attention: autograd op forward matches the reference") {
  const AutogradCase a;
  autograd::Var q(a.in.q, true), k(a.in.k, true), v(a.in.v, false), w(a.o.qk_norm_weight, true);
  autograd::Var y = autograd::attention(q, k, v, a.o.key_mask, w);
  CHECK_CLOSE(y.data(), kernels::ref::attention_forward(a.in.q, a.in.k, a.in.v, a.o).out, 1e-12,
              1e-12);
}

TEST_CASE("attention: autograd op routes the kernel's gradients to the inputs that need them") {
  const AutogradCase a;
  autograd::Var q(a.in.q, true), k(a.in.k, true), v(a.in.v, false), w(a.o.qk_norm_weight, true);
  autograd::Var y = autograd::attention(q, k, v, a.o.key_mask, w);
  Tensor g = randn(y.shape(), 401, DType::f64);
  y.backward(g);
  auto gr = kernels::attention_backward(g, a.in.q, a.in.k, a.in.v, a.o,
                                        kernels::attention_forward(a.in.q, a.in.k, a.in.v, a.o));
  CHECK_CLOSE(q.grad(), gr.dq, 0, 0);
  CHECK_CLOSE(k.grad(), gr.dk, 0, 0);
  CHECK_CLOSE(w.grad(), gr.dqk_norm_weight, 0, 0);
  CHECK(!v.grad().defined());
}

// ---- errors

TEST_CASE("attention: q, k, v of the wrong rank, shape or dtype are errors") {
  const ErrorInputs e;
  const Tensor &q = e.q, &k = e.k, &v = e.v;
  AttentionOptions o;
  CHECK_THROWS_CONTAINING(kernels::attention_forward(q.select(0, 0), k, v, o),
                          "attention: expected 'q' to have 4 dimensions");
  CHECK_THROWS_CONTAINING(kernels::attention_forward(q, randn({2, 3, 7, 6}, 503), v, o),
                          "attention: q f32[2, 3, 5, 8] and k f32[2, 3, 7, 6]");
  CHECK_THROWS_CONTAINING(kernels::attention_forward(q, randn({2, 4, 7, 8}, 503), v, o),
                          "must agree in batch, heads and head dim");
  CHECK_THROWS_CONTAINING(kernels::attention_forward(q, k, randn({2, 3, 6, 8}, 504), o),
                          "attention: v f32[2, 3, 6, 8] must have the shape of k");
  CHECK_THROWS_CONTAINING(kernels::attention_forward(q, k, v.to(DType::f64), o),
                          "attention: q, k, v must share a dtype");
  CHECK_THROWS_CONTAINING(
      kernels::attention_forward(q.to(DType::i32), k.to(DType::i32), v.to(DType::i32), o),
      "attention: expected floating q");
}

TEST_CASE("attention: a key_mask of the wrong shape is an error") {
  const ErrorInputs e;
  AttentionOptions om;
  om.key_mask = Tensor::ones({2, 5}, DType::i32);
  CHECK_THROWS_CONTAINING(kernels::attention_forward(e.q, e.k, e.v, om),
                          "attention: key_mask i32[2, 5] must be [batch, keys] = [2, 7]");
  om.key_mask = Tensor::ones({7}, DType::i32);
  CHECK_THROWS_CONTAINING(kernels::attention_forward(e.q, e.k, e.v, om),
                          "attention: key_mask i32[7]");
}

TEST_CASE("attention: a missing, misshapen or unused qk_norm_weight is an error") {
  const ErrorInputs e;
  AttentionOptions on;
  on.qk_norm = true;
  CHECK_THROWS_CONTAINING(kernels::attention_forward(e.q, e.k, e.v, on),
                          "attention: qk_norm needs qk_norm_weight of shape [8]");
  on.qk_norm_weight = Tensor::ones({6});
  CHECK_THROWS_CONTAINING(kernels::attention_forward(e.q, e.k, e.v, on),
                          "attention: qk_norm_weight f32[6] must be a floating vector of "
                          "the head dim [8]");
  AttentionOptions ow;
  ow.qk_norm_weight = Tensor::ones({8});
  CHECK_THROWS_CONTAINING(kernels::attention_forward(e.q, e.k, e.v, ow),
                          "attention: qk_norm_weight given but qk_norm is false");
}

TEST_CASE("attention: causal attention with fewer queries than keys is an error") {
  const ErrorInputs e;
  AttentionOptions oc;
  oc.causal = true;
  CHECK_THROWS_CONTAINING(kernels::attention_forward(e.q, e.k, e.v, oc),
                          "attention: causal attention needs as many queries as keys");
}

TEST_CASE("attention: backward errors name the gradient and the saved lse") {
  const ErrorInputs e;
  AttentionOptions o;
  auto r = kernels::attention_forward(e.q, e.k, e.v, o);
  CHECK_THROWS_CONTAINING(
      kernels::attention_backward(randn({2, 3, 5, 7}, 505), e.q, e.k, e.v, o, r),
      "attention_backward: g_out f32[2, 3, 5, 7]");
  kernels::AttentionResult bad = r;
  bad.lse = Tensor::zeros({2, 3, 4});
  CHECK_THROWS_CONTAINING(
      kernels::attention_backward(randn({2, 3, 5, 8}, 505), e.q, e.k, e.v, o, bad),
      "attention_backward: lse f32[2, 3, 4] must be [2, 3, 5]");
}

TEST_CASE("attention: the autograd op checks the key_mask too") {
  const ErrorInputs e;
  CHECK_THROWS_CONTAINING(autograd::attention(autograd::Var(e.q), autograd::Var(e.k),
                                              autograd::Var(e.v), Tensor::ones({7}, DType::i32)),
                          "attention: key_mask");
}
