// The handwritten CUDA attention kernels (kernels/cuda/attention.cu), executed by the sim, against
// the CPU op (kernels::cpu), the f64 references, and a naive implementation in the same precision
// (the DESIGN rule: the kernel's max error vs f64 is at most 2× the naive one's). These tests
// verify our kernels, not NVIDIA's libraries (the baselines in sdpa_cudnn.cu and sdpa_cublas.cu are nvcc-only).
// Built only in the sim build: g++ -x c++ -DENGINE_SIM.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using kernels::AttentionOptions;
using testing::randn;
using testing::randu;

namespace {

engine::Device dev() { return kernels::cuda::device(); }
Tensor on_dev(const Tensor& t) { return t.defined() ? t.to(dev()) : t; }
// Device → host. The sim device copies only contiguous memory, so a permuted view (token-major
// outputs, transposed storage) is downloaded through the permutation that makes it contiguous.
Tensor on_cpu(const Tensor& t) {
  if (!t.defined() || t.device().is_cpu() || t.is_contiguous()) return t.defined() ? t.to(engine::Device::cpu()) : t;
  for (const std::vector<int>& perm : {std::vector<int>{0, 2, 1, 3}, std::vector<int>{0, 1, 3, 2}})
    if (t.dim() == 4 && t.permute(perm).is_contiguous())
      return t.permute(perm).to(engine::Device::cpu()).permute(perm);
  FAIL("no contiguous permutation of " << t.describe());
  return t;
}

enum class MaskKind { none, one_key, fully_masked_batch };

// [B, Nk] i64 mask as in tests/test_attention.cpp: about 2/3 of keys kept; `one_key` keeps a
// single key of batch 0 (every row of it keeps one key), `fully_masked_batch` masks every key of
// the last batch element.
Tensor make_mask(int64_t B, int64_t Nk, MaskKind kind, uint64_t stream) {
  if (kind == MaskKind::none) return Tensor();
  std::vector<double> u = randu({B, Nk}, stream, 0, 1, DType::f64).to_vector<double>();
  std::vector<int64_t> m(B * Nk);
  for (int64_t i = 0; i < B * Nk; ++i) m[i] = u[i] < 0.67 ? 1 : 0;
  m[(B - 1) * Nk] = 1;
  if (kind == MaskKind::one_key)
    for (int64_t j = 0; j < Nk; ++j) m[j] = j == Nk / 2 ? 1 : 0;
  if (kind == MaskKind::fully_masked_batch)
    for (int64_t j = 0; j < Nk; ++j) m[(B - 1) * Nk + j] = 0;
  return Tensor::from_vector(m, {B, Nk});
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
  if (c.qk_norm) o.qk_norm_weight = randu({c.Dh}, stream + 8, 0.5, 1.5, DType::f32);
  return o;
}
AttentionOptions opts_on(const AttentionOptions& o, engine::Device d, DType wdt = DType::f32) {
  AttentionOptions r = o;
  if (r.key_mask.defined()) r.key_mask = r.key_mask.to(d);
  if (r.qk_norm_weight.defined()) r.qk_norm_weight = r.qk_norm_weight.to(wdt).to(d);
  return r;
}

// Inputs in `dt` (bf16 values are rounded once); q has a larger spread so some rows are peaked.
struct Inputs {
  Tensor q, k, v, g;
};
Inputs make_inputs(const Case& c, uint64_t stream, DType dt) {
  return {randn({c.B, c.H, c.Nq, c.Dh}, stream, DType::f32, 2.0).to(dt),
          randn({c.B, c.H, c.Nk, c.Dh}, stream + 1, DType::f32).to(dt),
          randn({c.B, c.H, c.Nk, c.Dh}, stream + 2, DType::f32).to(dt),
          randn({c.B, c.H, c.Nq, c.Dh}, stream + 3, DType::f32).to(dt)};
}

std::vector<double> host(const Tensor& t) { return on_cpu(t).to_vector<double>(); }

double max_abs_diff(const Tensor& a, const Tensor& b) {
  std::vector<double> x = host(a), y = host(b);
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i)
    if (!(std::isinf(x[i]) && x[i] == y[i])) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}
double rms_diff(const Tensor& a, const Tensor& b) {
  std::vector<double> x = host(a), y = host(b);
  double s = 0;
  size_t n = 0;
  for (size_t i = 0; i < x.size(); ++i)
    if (!(std::isinf(x[i]) && x[i] == y[i])) {
      s += (x[i] - y[i]) * (x[i] - y[i]);
      ++n;
    }
  return n == 0 ? 0 : std::sqrt(s / double(n));
}
double max_abs(const Tensor& t) {
  double m = 0;
  for (double x : host(t))
    if (std::isfinite(x)) m = std::max(m, std::abs(x));
  return m;
}
bool all_finite(const Tensor& t) {
  for (double x : host(t))
    if (!std::isfinite(x)) return false;
  return true;
}
bool bit_equal(const Tensor& a, const Tensor& b) {
  if (!(a.shape() == b.shape()) || a.dtype() != b.dtype()) return false;
  Tensor x = on_cpu(a).contiguous(), y = on_cpu(b).contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

// ---------------------------------------------------------------------------------------------
// Naive attention, forward and backward, in f32 with full N×N matrices. With `bf16` every
// intermediate tensor (q̂, k̂, S, P, out, dP, dS and the gradients) is rounded to bf16, as an
// unfused bf16 implementation stores them: the yardstick for the 2× rule in bf16.

float rnd(float x, bool bf16) { return bf16 ? float(engine::bf16(x)) : x; }

struct Naive {
  Tensor out, dq, dk, dv, dw;
};

Naive naive_attention(const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& g_,
                      const AttentionOptions& o, bool bf16) {
  const int64_t B = q_.size(0), H = q_.size(1), Nq = q_.size(2), Nk = k_.size(2), D = q_.size(3);
  const float scale = o.scale ? float(*o.scale) : 1.0f / std::sqrt(float(D));
  std::vector<float> Q = q_.to_vector<float>(), K = k_.to_vector<float>(), V = v_.to_vector<float>(),
                     G = g_.to_vector<float>();
  std::vector<float> mask = o.key_mask.defined() ? o.key_mask.to_vector<float>() : std::vector<float>();
  std::vector<float> w = o.qk_norm ? o.qk_norm_weight.to_vector<float>() : std::vector<float>(D, 1.0f);
  // LayerNorm rows in place, keeping x̂ and rstd for the backward.
  auto ln = [&](std::vector<float>& x, std::vector<float>& xh, std::vector<float>& rs) {
    const size_t rows = x.size() / D;
    xh.assign(x.size(), 0.0f);
    rs.assign(rows, 0.0f);
    for (size_t r = 0; r < rows; ++r) {
      float* xr = x.data() + r * D;
      float mean = 0, var = 0;
      for (int64_t d = 0; d < D; ++d) mean += xr[d];
      mean /= float(D);
      for (int64_t d = 0; d < D; ++d) var += (xr[d] - mean) * (xr[d] - mean);
      var /= float(D);
      rs[r] = 1.0f / std::sqrt(var + float(o.qk_norm_eps));
      for (int64_t d = 0; d < D; ++d) {
        xh[r * D + d] = (xr[d] - mean) * rs[r];
        xr[d] = rnd(xh[r * D + d] * w[d], bf16);
      }
    }
  };
  std::vector<float> qxh, qrs, kxh, krs;
  if (o.qk_norm) {
    ln(Q, qxh, qrs);
    ln(K, kxh, krs);
  }
  std::vector<float> out(B * H * Nq * D, 0.0f), dq(Q.size(), 0.0f), dk(K.size(), 0.0f),
      dv(V.size(), 0.0f), dw(D, 0.0f);
  std::vector<float> P(Nq * Nk), dS(Nq * Nk), Dl(Nq);
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const float* q = Q.data() + bh * Nq * D;
    const float* k = K.data() + bh * Nk * D;
    const float* v = V.data() + bh * Nk * D;
    const float* g = G.data() + bh * Nq * D;
    float* o_ = out.data() + bh * Nq * D;
    for (int64_t i = 0; i < Nq; ++i) {
      float mx = -INFINITY;
      for (int64_t j = 0; j < Nk; ++j) {
        float acc = 0;
        for (int64_t d = 0; d < D; ++d) acc += q[i * D + d] * k[j * D + d];
        const bool off = (!mask.empty() && mask[(bh / H) * Nk + j] == 0) || (o.causal && j > i);
        P[i * Nk + j] = off ? -INFINITY : rnd(scale * acc, bf16);
        mx = std::max(mx, P[i * Nk + j]);
      }
      float sum = 0;
      for (int64_t j = 0; j < Nk; ++j) {
        const float e = mx == -INFINITY ? 0.0f : std::exp(P[i * Nk + j] - mx);
        P[i * Nk + j] = e;
        sum += e;
      }
      for (int64_t j = 0; j < Nk; ++j) P[i * Nk + j] = sum > 0 ? rnd(P[i * Nk + j] / sum, bf16) : 0.0f;
      for (int64_t d = 0; d < D; ++d) {
        float acc = 0;
        for (int64_t j = 0; j < Nk; ++j) acc += P[i * Nk + j] * v[j * D + d];
        o_[i * D + d] = rnd(acc, bf16);
      }
    }
    // Backward: dV = Pᵀ g, dP = g vᵀ, dS = P ∘ (dP − rowsum(g ∘ out)), dq̂ = s dS k̂, dk̂ = s dSᵀ q̂.
    for (int64_t i = 0; i < Nq; ++i) {
      float s = 0;
      for (int64_t d = 0; d < D; ++d) s += g[i * D + d] * o_[i * D + d];
      Dl[i] = s;
      for (int64_t j = 0; j < Nk; ++j) {
        float dp = 0;
        for (int64_t d = 0; d < D; ++d) dp += g[i * D + d] * v[j * D + d];
        dS[i * Nk + j] = rnd(P[i * Nk + j] * (rnd(dp, bf16) - Dl[i]), bf16);
      }
    }
    for (int64_t j = 0; j < Nk; ++j)
      for (int64_t d = 0; d < D; ++d) {
        float av = 0, ak = 0;
        for (int64_t i = 0; i < Nq; ++i) {
          av += P[i * Nk + j] * g[i * D + d];
          ak += dS[i * Nk + j] * q[i * D + d];
        }
        dv[(bh * Nk + j) * D + d] = av;
        dk[(bh * Nk + j) * D + d] = scale * ak;
      }
    for (int64_t i = 0; i < Nq; ++i)
      for (int64_t d = 0; d < D; ++d) {
        float a = 0;
        for (int64_t j = 0; j < Nk; ++j) a += dS[i * Nk + j] * k[j * D + d];
        dq[(bh * Nq + i) * D + d] = scale * a;
      }
  }
  if (o.qk_norm) {  // through q̂ = LN(q)·w, k̂ = LN(k)·w
    auto ln_back = [&](std::vector<float>& dx, const std::vector<float>& xh, const std::vector<float>& rs) {
      for (size_t r = 0; r < rs.size(); ++r) {
        float a = 0, c = 0;
        for (int64_t d = 0; d < D; ++d) {
          const float gx = dx[r * D + d] * w[d];
          a += gx;
          c += gx * xh[r * D + d];
          dw[d] += dx[r * D + d] * xh[r * D + d];
        }
        a /= float(D);
        c /= float(D);
        for (int64_t d = 0; d < D; ++d)
          dx[r * D + d] = rs[r] * (dx[r * D + d] * w[d] - a - xh[r * D + d] * c);
      }
    };
    ln_back(dq, qxh, qrs);
    ln_back(dk, kxh, krs);
  }
  for (auto* x : {&dq, &dk, &dv, &dw})
    for (float& e : *x) e = rnd(e, bf16);
  Naive n;
  n.out = Tensor::from_vector(out, q_.shape());
  n.dq = Tensor::from_vector(dq, q_.shape());
  n.dk = Tensor::from_vector(dk, k_.shape());
  n.dv = Tensor::from_vector(dv, v_.shape());
  if (o.qk_norm) n.dw = Tensor::from_vector(dw, {D});
  return n;
}

// ---------------------------------------------------------------------------------------------
// The 2× rule: max |kernel − ref| ≤ 2 · max |naive − ref| + floor, with the floor a couple of
// ulps of the tensor's scale (the max over a few thousand values is a noisy statistic); the same
// for the RMS error. For gradients the yardstick is the larger of the naive error and the CPU
// op's: in a row with a single visible key the naive backward computes dP_ij and rowsum(dO ∘ O)
// with identical sums, so dS = P ∘ (dP − D) cancels to exactly 0 by luck of summation order,
// which no implementation that computes D once per row (flash-style, as the CPU op) shares.
void check_rule(const char* what, const Tensor& kernel, const Tensor& naive, const Tensor& ref,
                bool bf16, const Tensor& cpu_op = Tensor()) {
  const double scale = std::max(1.0, max_abs(ref));
  const double floor = (bf16 ? 0x1p-9 : 0x1p-22) * scale;
  const double mk = max_abs_diff(kernel, ref), rk = rms_diff(kernel, ref);
  const double mn = max_abs_diff(naive, ref), rn = rms_diff(naive, ref);
  const double mc = cpu_op.defined() ? max_abs_diff(cpu_op, ref) : 0.0;
  const double rc = cpu_op.defined() ? rms_diff(cpu_op, ref) : 0.0;
  INFO(std::string(what) << ": kernel error max " << mk << " rms " << rk << "; naive "
                         << std::string(bf16 ? "bf16" : "f32") << " error max " << mn << " rms " << rn
                         << "; CPU op error max " << mc << " rms " << rc << " (floor " << floor << ")");
  CHECK(mk <= 2 * std::max(mn, mc) + floor);
  CHECK(rk <= 2 * std::max(rn, rc) + floor / 4);
}

// bf16 tolerance (llm.c style): |err| ≤ atol + 0.08·|ref|, atol relative to the tensor's scale.
void check_bf16(const char* what, const Tensor& got, const Tensor& ref, double atol_rel) {
  INFO(std::string(what));
  CHECK_CLOSE(on_cpu(got), ref, 0.08, atol_rel * std::max(1e-3, max_abs(ref)));
}

struct Runs {
  kernels::AttentionResult fwd;
  kernels::AttentionGrads grads;
};

Runs run_cuda(const Inputs& in, const AttentionOptions& o_dev) {
  Runs r;
  const Tensor q = on_dev(in.q), k = on_dev(in.k), v = on_dev(in.v), g = on_dev(in.g);
  r.fwd = kernels::cuda::attention_forward(q, k, v, o_dev);
  r.grads = kernels::cuda::attention_backward(g, q, k, v, o_dev, r.fwd);
  return r;
}

// Forward and backward of one case in f32 and bf16 against the CPU op, the f64 references and
// the naive implementation.
void check_case(const Case& c, uint64_t stream, DType dt) {
  CAPTURE(c.B);
  CAPTURE(c.H);
  CAPTURE(c.Nq);
  CAPTURE(c.Nk);
  CAPTURE(c.Dh);
  CAPTURE(int(c.mask));
  CAPTURE(c.qk_norm);
  CAPTURE(c.causal);
  CAPTURE(engine::dtype_name(dt));
  const bool bf = dt == DType::bf16;
  const Inputs in = make_inputs(c, stream, dt);
  const AttentionOptions o = options_for(c, stream);
  const AttentionOptions od = opts_on(o, dev());

  const Runs r = run_cuda(in, od);
  CHECK(r.fwd.out.dtype() == dt);
  CHECK(r.fwd.lse.dtype() == DType::f32);
  CHECK(r.fwd.out.device() == dev());
  CHECK(all_finite(r.fwd.out));

  // References: the CPU op on the same (rounded) inputs, in f32 and in f64.
  auto f64 = [](const Tensor& t) { return t.to(DType::f64); };
  AttentionOptions o64 = o;
  if (o.qk_norm) o64.qk_norm_weight = o.qk_norm_weight.to(DType::f64);
  const auto ref = kernels::ref::attention_forward(f64(in.q), f64(in.k), f64(in.v), o64);
  const auto cpu = kernels::cpu::attention_forward(in.q, in.k, in.v, o);
  const Naive nv = naive_attention(in.q, in.k, in.v, in.g, o, bf);

  if (!bf) {
    CHECK_CLOSE(on_cpu(r.fwd.out), ref.out, 1e-5, 2e-6);
    CHECK_CLOSE(on_cpu(r.fwd.lse), ref.lse, 1e-5, 2e-6);
    CHECK_CLOSE(on_cpu(r.fwd.out), cpu.out, 2e-5, 4e-6);
    CHECK_CLOSE(on_cpu(r.fwd.lse), cpu.lse, 2e-5, 4e-6);
  } else {
    check_bf16("out vs cpu", r.fwd.out, cpu.out, 0.02);
    CHECK_CLOSE(on_cpu(r.fwd.lse), cpu.lse, 1e-2, 2e-2);
  }
  check_rule("out", r.fwd.out, nv.out, ref.out, bf);  // the naive forward alone is the yardstick
  if (c.qk_norm) {
    CHECK_CLOSE(on_cpu(r.fwd.q_mean), cpu.q_mean, 1e-5, 1e-6);
    CHECK_CLOSE(on_cpu(r.fwd.q_rstd), cpu.q_rstd, 1e-5, 1e-6);
    CHECK_CLOSE(on_cpu(r.fwd.k_mean), cpu.k_mean, 1e-5, 1e-6);
    CHECK_CLOSE(on_cpu(r.fwd.k_rstd), cpu.k_rstd, 1e-5, 1e-6);
  }

  const auto& gd = r.grads;
  for (const Tensor* t : {&gd.dq, &gd.dk, &gd.dv}) {
    CHECK(t->dtype() == dt);
    CHECK(all_finite(*t));
  }
  CHECK(gd.dq.shape() == in.q.shape());
  CHECK(gd.dk.shape() == in.k.shape());
  if (c.qk_norm) {
    CHECK(gd.dqk_norm_weight.dtype() == DType::f32);
    CHECK(all_finite(gd.dqk_norm_weight));
  } else {
    CHECK(!gd.dqk_norm_weight.defined());
  }
  // f64 gradients of the CPU op (checked by gradcheck in tests/test_attention.cpp) on the same
  // inputs, and the CPU op in the input precision.
  const auto g64 = kernels::cpu::attention_backward(f64(in.g), f64(in.q), f64(in.k), f64(in.v), o64,
                                                    kernels::cpu::attention_forward(
                                                        f64(in.q), f64(in.k), f64(in.v), o64));
  const auto gc = kernels::cpu::attention_backward(in.g, in.q, in.k, in.v, o, cpu);
  struct Item {
    const char* name;
    const Tensor *got, *naive, *ref, *cpu;
  };
  std::vector<Item> items{{"dq", &gd.dq, &nv.dq, &g64.dq, &gc.dq},
                          {"dk", &gd.dk, &nv.dk, &g64.dk, &gc.dk},
                          {"dv", &gd.dv, &nv.dv, &g64.dv, &gc.dv}};
  if (c.qk_norm)
    items.push_back({"dw", &gd.dqk_norm_weight, &nv.dw, &g64.dqk_norm_weight, &gc.dqk_norm_weight});
  for (const Item& it : items) {
    const std::string name = it.name;
    CAPTURE(name);
    const double s = std::max(1.0, max_abs(*it.ref));
    if (!bf) {
      CHECK_CLOSE(on_cpu(*it.got), *it.ref, 1e-4, 1e-5 * s);
      CHECK_CLOSE(on_cpu(*it.got), *it.cpu, 1e-4, 1e-5 * s);
    } else {
      check_bf16(it.name, *it.got, *it.cpu, 0.03);
    }
    check_rule(it.name, *it.got, *it.naive, *it.ref, bf, *it.cpu);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

TEST_CASE("cuda attention: forward and backward vs the CPU op on tile-edge lengths, head dims 32/64/128") {
  // Every length × head dim in f32 and bf16; the mask kind and QK-LN rotate so that every length,
  // head dim and dtype meets all three mask kinds and both QK-LN settings.
  const MaskKind masks[] = {MaskKind::none, MaskKind::one_key, MaskKind::fully_masked_batch};
  const int64_t lengths[] = {1, 17, 63, 65, 130}, dims[] = {32, 64, 128};
  const DType dtypes[] = {DType::f32, DType::bf16};
  uint64_t stream = 1000;
  for (int i = 0; i < 5; ++i)
    for (int d = 0; d < 3; ++d)
      for (int t = 0; t < 2; ++t) {
        const MaskKind mk = masks[(i + d) % 3];
        const bool qkn = (i + t) % 2 == 1;
        check_case({2, 1, lengths[i], lengths[i], dims[d], mk, qkn, false}, stream, dtypes[t]);
        stream += 10;
      }
}

TEST_CASE("cuda attention: masks × QK-LN × dtype at a multi-tile length") {
  uint64_t stream = 2000;
  for (MaskKind mk : {MaskKind::none, MaskKind::one_key, MaskKind::fully_masked_batch})
    for (bool qkn : {false, true})
      for (DType dt : {DType::f32, DType::bf16}) {
        check_case({2, 1, 65, 65, 32, mk, qkn, false}, stream, dt);
        stream += 10;
      }
}

TEST_CASE("cuda attention: causal, cross attention and two heads") {
  uint64_t stream = 3000;
  for (DType dt : {DType::f32, DType::bf16}) {
    check_case({1, 2, 130, 130, 32, MaskKind::none, true, true}, stream, dt);
    check_case({2, 1, 65, 65, 64, MaskKind::fully_masked_batch, false, true}, stream + 10, dt);
    check_case({2, 1, 17, 130, 64, MaskKind::one_key, true, false}, stream + 20, dt);  // Nq < Nk
    check_case({1, 2, 130, 17, 128, MaskKind::none, false, false}, stream + 30, dt);   // Nq > Nk
    stream += 100;
  }
}

TEST_CASE("cuda attention: reverse and shuffled thread order give the same bits") {
  const Case c{2, 1, 65, 65, 32, MaskKind::one_key, true, true};
  for (DType dt : {DType::f32, DType::bf16}) {
    CAPTURE(engine::dtype_name(dt));
    const Inputs in = make_inputs(c, 4000, dt);
    const AttentionOptions od = opts_on(options_for(c, 4000), dev());
    const Runs base = run_cuda(in, od);
    for (sim::ThreadOrder order : {sim::ThreadOrder::reverse, sim::ThreadOrder::shuffled}) {
      sim::ScopedThreadOrder scoped(order, 7);
      const Runs r = run_cuda(in, od);
      CHECK(bit_equal(r.fwd.out, base.fwd.out));
      CHECK(bit_equal(r.fwd.lse, base.fwd.lse));
      CHECK(bit_equal(r.grads.dq, base.grads.dq));
      CHECK(bit_equal(r.grads.dk, base.grads.dk));
      CHECK(bit_equal(r.grads.dv, base.grads.dv));
      CHECK(bit_equal(r.grads.dqk_norm_weight, base.grads.dqk_norm_weight));
    }
    // Deterministic: a second run in forward order gives the same bits too.
    const Runs again = run_cuda(in, od);
    CHECK(bit_equal(again.grads.dq, base.grads.dq));
    CHECK(bit_equal(again.grads.dqk_norm_weight, base.grads.dqk_norm_weight));
  }
}

TEST_CASE("cuda attention: token-major and non-unit-stride layouts, mask and weight dtypes") {
  const int64_t B = 2, N = 29, H = 3, Dh = 32;
  for (DType dt : {DType::f32, DType::bf16}) {
    CAPTURE(engine::dtype_name(dt));
    // Fused QKV projection output [B, N, 3, H, Dh] on the device; q, k, v are strided views.
    const Tensor qkv_h = randn({B, N, 3, H, Dh}, 50, DType::f32, 1.5).to(dt);
    const Tensor g_h = randn({B, N, H, Dh}, 51).to(dt).permute({0, 2, 1, 3});
    auto view = [](const Tensor& x, int i) { return x.select(2, i).permute({0, 2, 1, 3}); };
    const Tensor qkv = on_dev(qkv_h);
    const Tensor q = view(qkv, 0), k = view(qkv, 1), v = view(qkv, 2);
    const Tensor q_h = view(qkv_h, 0), k_h = view(qkv_h, 1), v_h = view(qkv_h, 2);
    const Tensor g = on_dev(g_h.permute({0, 2, 1, 3}).contiguous()).permute({0, 2, 1, 3});
    AttentionOptions o = options_for({B, H, N, N, Dh, MaskKind::one_key, true}, 52);
    AttentionOptions od = opts_on(o, dev());
    od.key_mask = on_dev(o.key_mask.to(DType::f32));  // any mask dtype works
    auto r = kernels::cuda::attention_forward(q, k, v, od);
    auto gr = kernels::cuda::attention_backward(g, q, k, v, od, r);
    // Outputs follow the token-major layout: merging heads back is a free view.
    CHECK(r.out.permute({0, 2, 1, 3}).is_contiguous());
    CHECK(gr.dq.permute({0, 2, 1, 3}).is_contiguous());
    CHECK(gr.dk.permute({0, 2, 1, 3}).is_contiguous());

    // The same values in plain contiguous layout (vector loads) and with transposed storage of
    // the last two dims (column stride ≠ 1: the scalar path) give the same bits.
    auto contig = [](const Tensor& t) { return on_dev(t.contiguous()); };
    auto transposed = [](const Tensor& t) { return on_dev(t.transpose(2, 3).contiguous()).transpose(2, 3); };
    for (int variant = 0; variant < 2; ++variant) {
      CAPTURE(variant);
      auto f = variant == 0 ? +contig : +transposed;
      const Tensor q2 = f(q_h), k2 = f(k_h), v2 = f(v_h), g2 = f(g_h);
      if (variant == 1) CHECK(q2.stride(3) != 1);
      auto r2 = kernels::cuda::attention_forward(q2, k2, v2, od);
      auto gr2 = kernels::cuda::attention_backward(g2, q2, k2, v2, od, r2);
      CHECK(bit_equal(r2.out, r.out));
      CHECK(bit_equal(r2.lse, r.lse));
      CHECK(bit_equal(gr2.dq, gr.dq));
      CHECK(bit_equal(gr2.dk, gr.dk));
      CHECK(bit_equal(gr2.dv, gr.dv));
      CHECK(bit_equal(gr2.dqk_norm_weight, gr.dqk_norm_weight));
    }
    // An i32 mask and a bf16 weight: the weight gradient comes back in the weight's dtype.
    AttentionOptions ob = od;
    ob.key_mask = on_dev(o.key_mask.to(DType::i32));
    ob.qk_norm_weight = on_dev(o.qk_norm_weight.to(DType::bf16));
    auto rb = kernels::cuda::attention_forward(q, k, v, ob);
    auto gb = kernels::cuda::attention_backward(g, q, k, v, ob, rb);
    CHECK(gb.dqk_norm_weight.dtype() == DType::bf16);
    AttentionOptions oc = o;
    oc.qk_norm_weight = o.qk_norm_weight.to(DType::bf16);
    auto rc = kernels::cpu::attention_forward(q_h, k_h, v_h, oc);
    auto gc = kernels::cpu::attention_backward(g_h, q_h, k_h, v_h, oc, rc);
    if (dt == DType::f32) {
      CHECK_CLOSE(on_cpu(rb.out), rc.out, 2e-5, 4e-6);
      CHECK_CLOSE(on_cpu(gb.dq), gc.dq, 1e-4, 1e-4);
      CHECK_CLOSE(on_cpu(gb.dqk_norm_weight), gc.dqk_norm_weight, 1e-4, 1e-4);
    } else {
      check_bf16("out", rb.out, rc.out, 0.02);
      check_bf16("dq", gb.dq, gc.dq, 0.03);
      check_bf16("dw", gb.dqk_norm_weight, gc.dqk_norm_weight, 0.03);
    }
  }
}

TEST_CASE("cuda attention: fully masked rows and empty inputs") {
  const Case c{2, 1, 9, 11, 32, MaskKind::fully_masked_batch, true, false};
  for (DType dt : {DType::f32, DType::bf16}) {
    const Inputs in = make_inputs(c, 60, dt);
    const Runs r = run_cuda(in, opts_on(options_for(c, 60), dev()));
    CHECK(max_abs(on_cpu(r.fwd.out).select(0, 1)) == 0);
    for (double l : host(r.fwd.lse.select(0, 1))) CHECK(l == -INFINITY);
    CHECK(max_abs(on_cpu(r.grads.dq).select(0, 1)) == 0);
    CHECK(max_abs(on_cpu(r.grads.dk).select(0, 1)) == 0);
    CHECK(max_abs(on_cpu(r.grads.dv).select(0, 1)) == 0);
  }
  AttentionOptions o;
  auto e = kernels::cuda::attention_forward(on_dev(Tensor::zeros({0, 2, 5, 32})),
                                            on_dev(Tensor::zeros({0, 2, 5, 32})),
                                            on_dev(Tensor::zeros({0, 2, 5, 32})), o);
  CHECK(e.out.shape() == Shape{0, 2, 5, 32});
  CHECK(e.lse.shape() == Shape{0, 2, 5});
  const Tensor q = on_dev(randn({1, 2, 3, 32}, 61)), k0 = on_dev(Tensor::zeros({1, 2, 0, 32}));
  auto r0 = kernels::cuda::attention_forward(q, k0, k0, o);
  CHECK(max_abs(r0.out) == 0);
  CHECK(all_finite(r0.out));
  for (double l : host(r0.lse)) CHECK(l == -INFINITY);
  auto g0 = kernels::cuda::attention_backward(on_dev(randn({1, 2, 3, 32}, 62)), q, k0, k0, o, r0);
  CHECK(max_abs(g0.dq) == 0);
  CHECK(all_finite(g0.dq));
  CHECK(g0.dk.shape() == Shape{1, 2, 0, 32});
}

TEST_CASE("cuda attention: errors name the op and the shapes") {
  const Tensor q = on_dev(randn({2, 3, 5, 32}, 70)), k = on_dev(randn({2, 3, 7, 32}, 71)),
               v = on_dev(randn({2, 3, 7, 32}, 72));
  AttentionOptions o;
  CHECK_THROWS_CONTAINING(kernels::cuda::attention_forward(on_dev(randn({2, 3, 5, 48}, 73)),
                                                           on_dev(randn({2, 3, 7, 48}, 74)),
                                                           on_dev(randn({2, 3, 7, 48}, 75)), o),
                          "attention: head dim 48 of q f32[2, 3, 5, 48] (sim:0) is not supported "
                          "on the GPU (32, 64 or 128)");
  auto as = [](const Tensor& t, DType dt) { return on_dev(on_cpu(t).to(dt)); };
  CHECK_THROWS_CONTAINING(kernels::cuda::attention_forward(as(q, DType::f64), as(k, DType::f64),
                                                           as(v, DType::f64), o),
                          "attention: f64 is not supported on the GPU");
  CHECK_THROWS_CONTAINING(kernels::cuda::attention_forward(on_cpu(q), k, v, o),
                          "attention: expected q on sim:0, got f32[2, 3, 5, 32] (cpu)");
  CHECK_THROWS_CONTAINING(kernels::cuda::attention_forward(q, on_dev(randn({2, 3, 7, 64}, 76)), v, o),
                          "must agree in batch, heads and head dim");
  CHECK_THROWS_CONTAINING(kernels::cuda::attention_forward(q, k, as(v, DType::bf16), o),
                          "attention: q, k, v must share a dtype");
  AttentionOptions om;
  om.key_mask = on_dev(Tensor::ones({2, 5}, DType::i32));
  CHECK_THROWS_CONTAINING(kernels::cuda::attention_forward(q, k, v, om),
                          "attention: key_mask i32[2, 5] (sim:0) must be [batch, keys] = [2, 7]");
  om.key_mask = Tensor::ones({2, 7}, DType::i32);
  CHECK_THROWS_CONTAINING(kernels::cuda::attention_forward(q, k, v, om),
                          "attention: expected key_mask on sim:0");
  AttentionOptions on;
  on.qk_norm = true;
  CHECK_THROWS_CONTAINING(kernels::cuda::attention_forward(q, k, v, on),
                          "attention: qk_norm needs qk_norm_weight of shape [32]");
  AttentionOptions oc;
  oc.causal = true;
  CHECK_THROWS_CONTAINING(kernels::cuda::attention_forward(q, k, v, oc),
                          "attention: causal attention needs as many queries as keys");
  auto r = kernels::cuda::attention_forward(q, k, v, o);
  CHECK_THROWS_CONTAINING(
      kernels::cuda::attention_backward(on_dev(randn({2, 3, 5, 32}, 77, DType::bf16)), q, k, v, o, r),
      "attention_backward: g_out bf16[2, 3, 5, 32] (sim:0) and out f32[2, 3, 5, 32] (sim:0) must "
      "have the dtype of q");
  kernels::AttentionResult bad = r;
  bad.lse = on_dev(Tensor::zeros({2, 3, 4}));
  CHECK_THROWS_CONTAINING(kernels::cuda::attention_backward(on_dev(randn({2, 3, 5, 32}, 78)), q, k,
                                                            v, o, bad),
                          "attention_backward: lse f32[2, 3, 4] (sim:0) must be [2, 3, 5]");
}
