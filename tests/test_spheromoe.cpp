// SpheroMoE layer (models/spheromoe.h): parameter names and counts, the forward against a
// plain-loop version of the spec's pseudo-code (entmax by sorting), the routing invariants
// (dispatch columns and combine rows sum to 1, sparse combine), the noise (one draw for both
// logits, training only), dropout / drop-path only in training, statistics, whole-module
// gradients by central differences in f64, and configuration errors.
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "autograd/elementwise.h"
#include "autograd/reduce.h"
#include "models/params.h"
#include "models/spheromoe.h"
#include "tests/helpers.h"

using autograd::Var;
using engine::DType;
using engine::Shape;
using engine::Tensor;
using models::Context;
using models::ParamSet;
using models::SpheroMoE;
using models::SpheroMoEConfig;
using testing::randn;

namespace {

SpheroMoEConfig tiny_config(int64_t S) {
  SpheroMoEConfig c;
  c.dim = 6;
  c.core_experts = 2;
  c.univ_experts = 3;
  c.slots_per_expert = S;
  c.noise = false;
  c.expert_dropout = 0.0;
  c.drop_path = 0.0;
  return c;
}

// Gives the parameters that init leaves trivial (LayerNorm affine, biases, temperatures) generic
// values, so the reference comparison and the gradient check exercise every term.
void randomize_trivial_params(ParamSet& ps, double tau_d = 0.7, double tau_c = 0.4) {
  uint64_t stream = 500;
  for (const auto& e : ps.entries()) {
    Tensor t = e.var.data();
    if (e.name == "tau_dispatch") {
      t.fill_(tau_d);
    } else if (e.name == "tau_combine") {
      t.fill_(tau_c);
    } else if (e.name == "phi_norm.weight") {
      std::vector<double> v = randn(e.shape, stream++, DType::f64, 0.3).to_vector<double>();
      for (double& w : v) w += 1.0;  // a scale around 1
      t.copy_(Tensor::from_vector(v, e.shape, t.dtype()));
    } else if (e.name.size() >= 4 && e.name.compare(e.name.size() - 4, 4, "bias") == 0) {
      t.copy_(randn(e.shape, stream++, t.dtype(), 0.2));
    }
  }
}

double gelu_ref(double v, autograd::GeluApprox a) {
  if (a == autograd::GeluApprox::erf) return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
  const double c = std::sqrt(2.0 / M_PI);
  return 0.5 * v * (1 + std::tanh(c * (v + 0.044715 * v * v * v)));
}

// The spec's exact sort-based entmax-1.5 of one row.
std::vector<double> entmax_ref(const std::vector<double>& z) {
  const size_t K = z.size();
  const double mx = *std::max_element(z.begin(), z.end());
  std::vector<double> x(K);
  for (size_t i = 0; i < K; ++i) x[i] = (z[i] - mx) / 2;
  std::vector<double> s = x;
  std::sort(s.begin(), s.end(), std::greater<double>());
  double sum = 0, sumsq = 0, tau_star = 0;
  for (size_t k = 1; k <= K; ++k) {
    sum += s[k - 1];
    sumsq += s[k - 1] * s[k - 1];
    const double mean = sum / double(k), msq = sumsq / double(k);
    const double ss = double(k) * (msq - mean * mean);
    const double delta = (1 - ss) / double(k);
    const double tau = mean - std::sqrt(std::max(delta, 0.0));
    if (tau <= s[k - 1]) tau_star = tau;  // the support is a prefix: the last such k is k*
  }
  std::vector<double> p(K);
  for (size_t i = 0; i < K; ++i) p[i] = std::pow(std::max(x[i] - tau_star, 0.0), 2);
  return p;
}

struct RefOut {
  std::vector<double> out, dispatch, combine;  // [B,N,D], [B,N,M], [B,N,M]
};

// The spec's pseudo-code with loops, from the module's parameters. noise: [B,N,M] or empty.
RefOut reference(SpheroMoE& m, const Tensor& xt, const std::vector<double>& noise) {
  const auto& c = m.cfg;
  const int64_t B = xt.size(0), N = xt.size(1), D = c.dim, S = c.slots_per_expert;
  const int64_t E = m.num_experts(), M = E * S;
  auto P = [&](const std::string& name) { return m.parameter(name).data().to_vector<double>(); };
  const std::vector<double> x = xt.to_vector<double>(), phi = P("phi"),
                            lnw = P("phi_norm.weight"), lnb = P("phi_norm.bias");
  const double td = P("tau_dispatch")[0], tc = P("tau_combine")[0];
  // q = l2norm(LN(phi)); k = l2norm(x).
  std::vector<double> q(M * D), k(B * N * D);
  for (int64_t r = 0; r < M; ++r) {
    double mean = 0, var = 0;
    for (int64_t d = 0; d < D; ++d) mean += phi[r * D + d] / D;
    for (int64_t d = 0; d < D; ++d) var += std::pow(phi[r * D + d] - mean, 2) / D;
    std::vector<double> v(D);
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) {
      v[d] = (phi[r * D + d] - mean) / std::sqrt(var + c.norm_eps) * lnw[d] + lnb[d];
      ss += v[d] * v[d];
    }
    for (int64_t d = 0; d < D; ++d) q[r * D + d] = v[d] / std::sqrt(ss + c.l2_eps);
  }
  for (int64_t t = 0; t < B * N; ++t) {
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += x[t * D + d] * x[t * D + d];
    for (int64_t d = 0; d < D; ++d) k[t * D + d] = x[t * D + d] / std::sqrt(ss + c.l2_eps);
  }
  RefOut r;
  std::vector<double> ld(B * N * M), lc(B * N * M);
  for (int64_t t = 0; t < B * N; ++t)
    for (int64_t s = 0; s < M; ++s) {
      double l = 0;
      for (int64_t d = 0; d < D; ++d) l += k[t * D + d] * q[s * D + d];
      const double nz = noise.empty() ? 0.0 : noise[t * M + s];
      ld[t * M + s] = l / td + nz;
      lc[t * M + s] = l / tc + nz;
    }
  // Dispatch: softmax over the tokens of each (b, slot).
  r.dispatch.assign(B * N * M, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < M; ++s) {
      double mx = -INFINITY, z = 0;
      for (int64_t n = 0; n < N; ++n) mx = std::max(mx, ld[(b * N + n) * M + s]);
      for (int64_t n = 0; n < N; ++n) z += std::exp(ld[(b * N + n) * M + s] - mx);
      for (int64_t n = 0; n < N; ++n)
        r.dispatch[(b * N + n) * M + s] = std::exp(ld[(b * N + n) * M + s] - mx) / z;
    }
  // Combine: entmax-1.5 over the slots of each token.
  r.combine.assign(B * N * M, 0);
  for (int64_t t = 0; t < B * N; ++t) {
    std::vector<double> row(lc.begin() + t * M, lc.begin() + (t + 1) * M);
    std::vector<double> p = entmax_ref(row);
    std::copy(p.begin(), p.end(), r.combine.begin() + t * M);
  }
  // Slots, experts, combine.
  std::vector<double> y(B * M * D, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < M; ++s) {
      std::vector<double> in(D, 0);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t d = 0; d < D; ++d)
          in[d] += r.dispatch[(b * N + n) * M + s] * x[(b * N + n) * D + d];
      const int64_t e = s / S;
      const bool is_core = e < c.core_experts;
      const int64_t pe = is_core ? e : e - c.core_experts;
      const int64_t H = is_core ? c.core_hidden : c.univ_hidden;
      const std::string path = is_core ? "core" : "univ";
      const std::vector<double> w1 = P(path + ".fc1.weight"), b1 = P(path + ".fc1.bias"),
                                w2 = P(path + ".fc2.weight"), b2 = P(path + ".fc2.bias");
      std::vector<double> h(H);
      for (int64_t j = 0; j < H; ++j) {
        double a = b1[pe * H + j];
        for (int64_t d = 0; d < D; ++d) a += w1[(pe * H + j) * D + d] * in[d];
        h[j] = gelu_ref(a, c.gelu);
      }
      for (int64_t i = 0; i < D; ++i) {
        double a = b2[pe * D + i];
        for (int64_t j = 0; j < H; ++j) a += w2[(pe * D + i) * H + j] * h[j];
        y[(b * M + s) * D + i] = a;
      }
    }
  r.out.assign(B * N * D, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t s = 0; s < M; ++s)
        for (int64_t d = 0; d < D; ++d)
          r.out[(b * N + n) * D + d] += r.combine[(b * N + n) * M + s] * y[(b * M + s) * D + d];
  return r;
}

Tensor as_tensor(const std::vector<double>& v, const Shape& s) {
  return Tensor::from_vector(v, s, DType::f64);
}

Var run(const SpheroMoE& m, const Tensor& x, bool training, uint64_t seed = 7, uint64_t step = 3) {
  Context ctx(training, seed, step);
  return m.forward(Var(x), ctx);
}

bool all_equal(const Tensor& a, const Tensor& b) {
  return a.to_vector<double>() == b.to_vector<double>();
}

// Central-difference check of every parameter's gradient (and x's) for loss = Σ out ⊙ R, with a
// fresh Context (same seed and step) per evaluation so random draws are keyed identically.
void check_module_gradients(SpheroMoE& m, ParamSet& ps, const Tensor& x, bool training) {
  Tensor R = randn(Shape{x.size(0), x.size(1), x.size(2)}, 99, DType::f64);
  auto loss_value = [&](const Tensor& xin) {
    autograd::NoGradGuard ng;
    return autograd::sum_all(autograd::mul(run(m, xin, training), Var(R))).item();
  };
  ps.zero_grad();
  Var xv(x.clone(), true);
  Context ctx(training, 7, 3);
  autograd::sum_all(autograd::mul(m.forward(xv, ctx), Var(R))).backward();
  const double h = 1e-6, atol = 1e-6, rtol = 1e-4;
  std::vector<double> analytic = ps.grad.to_vector<double>();
  double* p = ps.data.data<double>();
  int bad = 0;
  std::string where;
  for (const auto& e : ps.entries())
    for (int64_t i = 0; i < e.shape.numel(); ++i) {
      double* v = p + e.offset + i;
      const double keep = *v;
      *v = keep + h;
      const double up = loss_value(x);
      *v = keep - h;
      const double down = loss_value(x);
      *v = keep;
      const double num = (up - down) / (2 * h), an = analytic[size_t(e.offset + i)];
      if (std::abs(num - an) > atol + rtol * std::abs(num)) {
        if (!bad) where = e.name + "[" + std::to_string(i) + "]: numeric " + std::to_string(num) +
                          " analytic " + std::to_string(an);
        ++bad;
      }
    }
  std::vector<double> xg = xv.grad().to_vector<double>();
  Tensor xp = x.clone();
  double* xd = xp.data<double>();
  for (int64_t i = 0; i < xp.numel(); ++i) {
    const double keep = xd[i];
    xd[i] = keep + h;
    const double up = loss_value(xp);
    xd[i] = keep - h;
    const double down = loss_value(xp);
    xd[i] = keep;
    const double num = (up - down) / (2 * h);
    if (std::abs(num - xg[size_t(i)]) > atol + rtol * std::abs(num)) {
      if (!bad) where = "x[" + std::to_string(i) + "]";
      ++bad;
    }
  }
  INFO("mismatches: " << bad << ", first at " << where);
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("spheromoe/parameters: PyTorch-like names, stacked expert shapes, decay and counts") {
  SpheroMoEConfig c = tiny_config(2);
  SpheroMoE m(c);
  CHECK(m.cfg.core_hidden == 24);  // 4·D
  CHECK(m.cfg.univ_hidden == 6);   // a quarter of the core width
  struct Want {
    const char* name;
    Shape shape;
    bool decay;
  };
  const int64_t M = 5 * 2, D = 6;
  std::vector<Want> want = {{"phi", {M, D}, true},
                            {"tau_dispatch", {1}, false},
                            {"tau_combine", {1}, false},
                            {"phi_norm.weight", {D}, false},
                            {"phi_norm.bias", {D}, false},
                            {"core.fc1.weight", {2, 24, D}, true},
                            {"core.fc1.bias", {2, 24}, false},
                            {"core.fc2.weight", {2, D, 24}, true},
                            {"core.fc2.bias", {2, D}, false},
                            {"univ.fc1.weight", {3, 6, D}, true},
                            {"univ.fc1.bias", {3, 6}, false},
                            {"univ.fc2.weight", {3, D, 6}, true},
                            {"univ.fc2.bias", {3, D}, false}};
  auto params = m.parameters();
  REQUIRE(params.size() == want.size());
  int64_t total = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    INFO(params[i].name);
    CHECK(params[i].name == want[i].name);
    CHECK(params[i].shape == want[i].shape);
    CHECK(params[i].decay == want[i].decay);
    total += want[i].shape.numel();
  }
  CHECK(m.num_parameters() == total);
  CHECK(m.active_parameters() == total);  // soft MoE: every expert sees every example

  // Initial values: temperatures 0.5, phi with orthonormal columns (M > D), LN identity.
  ParamSet ps(m, 1, DType::f64);
  CHECK(m.tau_dispatch.data().item() == 0.5);
  CHECK(m.tau_combine.data().item() == 0.5);
  std::vector<double> phi = m.phi.data().to_vector<double>();
  for (int64_t a = 0; a < D; ++a)
    for (int64_t b = 0; b < D; ++b) {
      double dot = 0;
      for (int64_t r = 0; r < M; ++r) dot += phi[r * D + a] * phi[r * D + b];
      CHECK(dot == doctest::Approx(a == b ? 1.0 : 0.0).epsilon(1e-9));
    }

  // A path with no experts is allowed and has no parameters.
  SpheroMoEConfig only_core = c;
  only_core.univ_experts = 0;
  SpheroMoE mc(only_core);
  for (const auto& p : mc.parameters()) CHECK(p.name.rfind("univ.", 0) != 0);
}

TEST_CASE("spheromoe/macs: routing, dispatch and combine per token plus the experts over N") {
  SpheroMoEConfig c = tiny_config(2);
  c.flops_tokens = 5;
  SpheroMoE m(c);
  const double M = 10, D = 6;
  // Per example: B·M slots, each through one expert: core 2·D·24 MACs, universal 2·D·6.
  const double per_example = 2 * (2 * (2 * D * 24) + 3 * (2 * D * 6));
  for (int64_t n : {1, 5, 197})
    CHECK(m.macs_per_token_for(n) == doctest::Approx(3 * M * D + per_example / double(n)));
  CHECK(m.macs_per_token() == doctest::Approx(m.macs_per_token_for(5)));
  CHECK_THROWS_CONTAINING(m.macs_per_token_for(0), "token count must be positive");
}

TEST_CASE("spheromoe/forward: output shape and values match a plain-loop reference") {
  for (int64_t S : {1, 2}) {
    for (DType dt : {DType::f64, DType::f32}) {
      INFO("S " << S << " dtype " << engine::dtype_name(dt));
      SpheroMoEConfig c = tiny_config(S);
      if (S == 2) c.gelu = autograd::GeluApprox::erf;
      SpheroMoE m(c);
      ParamSet ps(m, 3, dt);
      randomize_trivial_params(ps);
      const int64_t B = 2, N = 5, D = 6;
      Tensor x = randn({B, N, D}, 1, dt);
      Var out = run(m, x, false);
      CHECK(out.shape() == Shape{B, N, D});
      CHECK(out.dtype() == dt);
      RefOut r = reference(m, x, {});
      const double tol = dt == DType::f64 ? 1e-10 : 2e-5;
      CHECK_CLOSE(out.data(), as_tensor(r.out, {B, N, D}), tol, tol);
      Context ctx(false, 7, 3);
      models::SpheroRouting rt = m.routing(Var(x), ctx);
      CHECK_CLOSE(rt.dispatch.data(), as_tensor(r.dispatch, {B, N, 5 * S}), tol, tol);
      CHECK_CLOSE(rt.combine.data(), as_tensor(r.combine, {B, N, 5 * S}), tol, tol);
    }
  }
}

TEST_CASE("spheromoe/routing: dispatch columns sum to 1 over tokens, combine rows to 1, sparse") {
  const int64_t B = 3, N = 7, S = 2;
  SpheroMoEConfig c = tiny_config(S);
  SpheroMoE m(c);
  ParamSet ps(m, 5, DType::f32);
  randomize_trivial_params(ps, 0.5, 0.05);  // a cold combine temperature: entmax is sparse
  Tensor x = randn({B, N, 6}, 2);
  Context ctx(false, 1, 1);
  models::SpheroRouting rt = m.routing(Var(x), ctx);
  const int64_t M = m.num_slots();
  CHECK(rt.logits.shape() == Shape{B, N, M});
  std::vector<double> d = rt.dispatch.data().to_vector<double>(),
                      cw = rt.combine.data().to_vector<double>(),
                      l = rt.logits.data().to_vector<double>();
  bool cols_ok = true, rows_ok = true, nonneg = true, cosine = true;
  int64_t zeros = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < M; ++s) {
      double sum = 0;
      for (int64_t n = 0; n < N; ++n) sum += d[(b * N + n) * M + s];
      cols_ok = cols_ok && std::abs(sum - 1) < 1e-5;
    }
  for (int64_t t = 0; t < B * N; ++t) {
    double sum = 0;
    for (int64_t s = 0; s < M; ++s) {
      sum += cw[t * M + s];
      zeros += cw[t * M + s] == 0.0;
      nonneg = nonneg && cw[t * M + s] >= 0 && d[t * M + s] > 0;
      cosine = cosine && std::abs(l[t * M + s]) <= 1 + 1e-6;
    }
    rows_ok = rows_ok && std::abs(sum - 1) < 1e-5;
  }
  CHECK(cols_ok);
  CHECK(rows_ok);
  CHECK(nonneg);
  CHECK(cosine);        // logits are cosines of unit vectors
  CHECK(zeros > B * N);  // more than one exact zero per token on average
}

TEST_CASE("spheromoe/noise: one draw shared by dispatch and combine, in training only") {
  const int64_t B = 2, N = 5, D = 6;
  SpheroMoEConfig c = tiny_config(1);
  c.noise = true;
  SpheroMoE m(c);
  ParamSet ps(m, 3, DType::f64);
  randomize_trivial_params(ps);
  Tensor x = randn({B, N, D}, 1, DType::f64);
  Tensor eval = run(m, x, false).data();
  // Eval ignores the noise (and the seed); it equals the noise-free reference.
  CHECK(all_equal(eval, run(m, x, false, 100, 200).data()));
  CHECK_CLOSE(eval, as_tensor(reference(m, x, {}).out, {B, N, D}), 1e-10, 1e-10);
  // Training: the noise is N(0, (1/E)²) from the first stream of the step's key, added to both
  // logits (the reference adds the same tensor to Ld and Lc).
  Context ctx(true, 7, 3);
  Tensor noise = Tensor::normal({B, N, 5}, ctx.rng_seed(), 1, 0.0, 1.0 / 5, DType::f64);
  Tensor train = run(m, x, true).data();
  CHECK_CLOSE(train, as_tensor(reference(m, x, noise.to_vector<double>()).out, {B, N, D}), 1e-10,
              1e-10);
  CHECK_FALSE(testing::compare(train, eval, 1e-6, 1e-6).ok);
  CHECK_FALSE(all_equal(train, run(m, x, true, 7, 4).data()));  // a new draw each step
  CHECK(all_equal(train, run(m, x, true, 7, 3).data()));        // reproducible from the key
  // Noise off: training equals eval (no dropout, no drop-path here).
  SpheroMoEConfig quiet = c;
  quiet.noise = false;
  SpheroMoE mq(quiet);
  ParamSet psq(mq, 3, DType::f64);
  randomize_trivial_params(psq);
  CHECK(all_equal(run(mq, x, true).data(), eval));
}

TEST_CASE("spheromoe/regularisation: expert dropout and drop-path act in training only") {
  const int64_t B = 6, N = 4, D = 6;
  Tensor x = randn({B, N, D}, 4, DType::f64);
  SpheroMoEConfig plain = tiny_config(1);
  SpheroMoE m0(plain);
  ParamSet ps0(m0, 3, DType::f64);
  const std::vector<double> base = run(m0, x, false).data().to_vector<double>();

  // Dropout: eval is untouched; training changes the output, reproducibly per (seed, step).
  SpheroMoEConfig cd = plain;
  cd.expert_dropout = 0.4;
  SpheroMoE md(cd);
  ParamSet psd(md, 3, DType::f64);
  CHECK(run(md, x, false).data().to_vector<double>() == base);
  Tensor t1 = run(md, x, true).data();
  CHECK_FALSE(testing::compare(t1, as_tensor(base, {B, N, D}), 1e-6, 1e-6).ok);
  CHECK(all_equal(t1, run(md, x, true).data()));
  CHECK_FALSE(all_equal(t1, run(md, x, true, 7, 9).data()));

  // Drop-path: eval is untouched; in training every example is either dropped (all zeros) or
  // kept and scaled by 1 / (1 - p), and both happen over a few steps.
  SpheroMoEConfig cp = plain;
  cp.drop_path = 0.5;
  SpheroMoE mp(cp);
  ParamSet psp(mp, 3, DType::f64);
  CHECK(run(mp, x, false).data().to_vector<double>() == base);
  int dropped = 0, kept = 0;
  bool each_ok = true;
  for (uint64_t step = 0; step < 4; ++step) {
    std::vector<double> t = run(mp, x, true, 7, step).data().to_vector<double>();
    for (int64_t b = 0; b < B; ++b) {
      bool zero = true, scaled = true;
      for (int64_t i = b * N * D; i < (b + 1) * N * D; ++i) {
        zero = zero && t[i] == 0.0;
        scaled = scaled && std::abs(t[i] - 2.0 * base[i]) <= 1e-12 * (1 + std::abs(base[i]));
      }
      each_ok = each_ok && (zero || scaled);
      dropped += zero;
      kept += scaled;
    }
  }
  CHECK(each_ok);
  CHECK(dropped > 0);
  CHECK(kept > 0);
}

TEST_CASE("spheromoe/gradients: every parameter and the input match central differences") {
  for (int64_t S : {1, 2}) {
    INFO("S " << S);
    SpheroMoEConfig c = tiny_config(S);
    SpheroMoE m(c);
    ParamSet ps(m, 11, DType::f64);
    randomize_trivial_params(ps);
    check_module_gradients(m, ps, randn({2, 5, 6}, 21, DType::f64), false);
  }
}

TEST_CASE("spheromoe/gradients: training with noise, dropout and drop-path keyed identically") {
  SpheroMoEConfig c = tiny_config(1);
  c.noise = true;
  c.expert_dropout = 0.3;
  c.drop_path = 0.3;
  SpheroMoE m(c);
  ParamSet ps(m, 12, DType::f64);
  randomize_trivial_params(ps);
  check_module_gradients(m, ps, randn({2, 5, 6}, 22, DType::f64), true);
}

TEST_CASE("spheromoe/stats: expert load is each expert's share of the combine weights") {
  SpheroMoEConfig c = tiny_config(2);
  c.stats_name = "blocks.3.mlp";
  SpheroMoE m(c);
  ParamSet ps(m, 3, DType::f32);
  randomize_trivial_params(ps, 0.5, 0.2);
  const int64_t B = 2, N = 5, S = 2, E = 5;
  Tensor x = randn({B, N, 6}, 1);
  Context ctx(false, 1, 1);
  m.forward(Var(x), ctx);
  REQUIRE(ctx.moe_stats.count("blocks.3.mlp") == 1);
  const models::MoEStats& st = ctx.moe_stats["blocks.3.mlp"];
  REQUIRE(st.load.size() == size_t(E));
  Context ctx2(false, 1, 1);
  std::vector<double> cw = m.routing(Var(x), ctx2).combine.data().to_vector<double>();
  for (int64_t e = 0; e < E; ++e) {
    double mass = 0;
    for (int64_t t = 0; t < B * N; ++t)
      for (int64_t s = 0; s < S; ++s) mass += cw[t * E * S + e * S + s];
    CHECK(st.load[size_t(e)] == doctest::Approx(mass / double(B * N)).epsilon(1e-5));
  }
  CHECK(st.drop_rate == 0.0);
}

TEST_CASE("spheromoe/errors: bad configurations and inputs are named") {
  SpheroMoEConfig c = tiny_config(1);
  c.core_experts = c.univ_experts = 0;
  CHECK_THROWS_CONTAINING(SpheroMoE{c}, "needs at least one expert");
  c = tiny_config(1);
  c.slots_per_expert = 0;
  CHECK_THROWS_CONTAINING(SpheroMoE{c}, "slots_per_expert must be positive");
  c = tiny_config(1);
  c.expert_dropout = 1.0;
  CHECK_THROWS_CONTAINING(SpheroMoE{c}, "expert_dropout must be in [0, 1)");
  c = tiny_config(1);
  c.drop_path = -0.1;
  CHECK_THROWS_CONTAINING(SpheroMoE{c}, "drop_path must be in [0, 1)");
  c = tiny_config(1);
  c.tau_init = 0;
  CHECK_THROWS_CONTAINING(SpheroMoE{c}, "tau_init must be positive");
  SpheroMoE m(tiny_config(1));
  ParamSet ps(m, 1, DType::f32);
  Context ctx;
  CHECK_THROWS_CONTAINING(m.forward(Var(randn({2, 5, 7}, 1)), ctx), "input must be [B, N, 6]");
  CHECK_THROWS_CONTAINING(m.forward(Var(randn({10, 6}, 1)), ctx), "input must be [B, N, 6]");
  CHECK_THROWS_CONTAINING(m.experts_forward(Var(randn({2, 4, 6}, 1)), ctx), "slots");
}
