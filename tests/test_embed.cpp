// IMP's modality stems and heads (models/embed.h, models/heads.h): outputs against plain loops on
// odd sizes, coordinates, the factorised positions (a token's position depends only on its
// coordinate, at any resolution and under drop-token), drop-token's keep count / order / rate
// check, padding masks, masked pooling, and f64 finite-difference checks of every module.
#include <cmath>
#include <functional>
#include <map>
#include <vector>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "kernels/drop_token.h"
#include "models/embed.h"
#include "models/heads.h"
#include "models/params.h"
#include "tests/helpers.h"

using autograd::Var;
using engine::DType;
using engine::Shape;
using engine::Tensor;
using models::Context;
using models::ModalityStem;
using models::ParamSet;
using models::StemConfig;
using testing::randn;
using testing::randu;

namespace {

std::vector<double> values(const Tensor& t) { return t.to_vector<double>(); }
std::vector<double> param(const ParamSet& ps, const std::string& name) {
  return values(ps.at(name).var.data());
}

// y[r, o] = b[o] + Σ_i W[o, i] x[r, i] over rows of x (plain loops).
std::vector<double> linear_ref(const std::vector<double>& x, int64_t rows, int64_t in,
                               const std::vector<double>& w, const std::vector<double>& b,
                               int64_t out) {
  std::vector<double> y(size_t(rows * out));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double s = b.empty() ? 0.0 : b[size_t(o)];
      for (int64_t i = 0; i < in; ++i) s += w[size_t(o * in + i)] * x[size_t(r * in + i)];
      y[size_t(r * out + o)] = s;
    }
  return y;
}

std::vector<double> layernorm_ref(const std::vector<double>& x, int64_t rows, int64_t d,
                                  const std::vector<double>& w, const std::vector<double>& b,
                                  double eps) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mu = 0, var = 0;
    for (int64_t i = 0; i < d; ++i) mu += x[size_t(r * d + i)];
    mu /= double(d);
    for (int64_t i = 0; i < d; ++i) var += std::pow(x[size_t(r * d + i)] - mu, 2);
    var /= double(d);
    for (int64_t i = 0; i < d; ++i)
      y[size_t(r * d + i)] =
          (x[size_t(r * d + i)] - mu) / std::sqrt(var + eps) * w[size_t(i)] + b[size_t(i)];
  }
  return y;
}

Tensor make(const std::vector<double>& v, const Shape& s) {
  return Tensor::from_vector(v, s, DType::f64);
}

// Central differences of loss() with respect to the parameters in ps.data (every element, or
// `max_checks` of them spread over the buffer), against the analytic gradient in ps.grad.
void check_param_grads(ParamSet& ps, const std::function<Var()>& loss, int64_t max_checks = 0,
                       double eps = 1e-6, double atol = 1e-7, double rtol = 1e-5) {
  REQUIRE(ps.data.dtype() == DType::f64);
  ps.zero_grad();
  loss().backward();
  const std::vector<double> analytic = values(ps.grad);
  std::vector<int64_t> positions;
  for (const auto& e : ps.entries())
    for (int64_t i = 0; i < e.shape.numel(); ++i) positions.push_back(e.offset + i);
  if (max_checks > 0 && int64_t(positions.size()) > max_checks) {
    std::vector<int64_t> some;
    const double step = double(positions.size()) / double(max_checks);
    for (int64_t j = 0; j < max_checks; ++j) some.push_back(positions[size_t(double(j) * step)]);
    positions = some;
  }
  double* d = ps.data.data<double>();
  autograd::NoGradGuard ng;
  int bad = 0;
  for (int64_t pos : positions) {
    const double orig = d[pos];
    d[pos] = orig + eps;
    const double lp = loss().item();
    d[pos] = orig - eps;
    const double lm = loss().item();
    d[pos] = orig;
    const double num = (lp - lm) / (2 * eps), an = analytic[size_t(pos)];
    if (std::abs(num - an) > atol + rtol * std::abs(num)) {
      std::string name;
      for (const auto& e : ps.entries())
        if (pos >= e.offset && pos < e.offset + e.shape.numel()) name = e.name;
      INFO(name << " element " << pos << ": analytic " << an << ", numeric " << num);
      CHECK(false);
      if (++bad > 5) break;
    }
  }
  CHECK(bad == 0);
}

// sum(out * R) for a fixed random R of out's shape: every output element matters.
Var project(const Var& out, uint64_t stream) {
  return autograd::sum_all(autograd::mul(out, Var(randn(out.shape(), stream, out.dtype()))));
}

StemConfig vision_cfg(int64_t dim, int64_t channels, int64_t patch, int64_t tubelet) {
  StemConfig c;
  c.modality = models::Modality::vision;
  c.dim = dim;
  c.channels = channels;
  c.patch = patch;
  c.tubelet = tubelet;
  return c;
}

// Row of `coords` [L, k] equal to `c` (coordinates of one grid are distinct), or -1.
int64_t find_row(const std::vector<double>& coords, int64_t L, int64_t k, const double* c) {
  for (int64_t l = 0; l < L; ++l) {
    bool eq = true;
    for (int64_t j = 0; j < k; ++j) eq = eq && coords[size_t(l * k + j)] == c[j];
    if (eq) return l;
  }
  return -1;
}

}  // namespace

// ---- stems: outputs against plain loops ------------------------------------------------------

TEST_CASE("embed/vision: tokens are proj(tubelets) with (t, y, x) coordinates on odd sizes") {
  const int64_t B = 2, T = 4, H = 6, W = 9, C = 2, t = 2, p = 3, D = 5;
  models::VisionEmbed emb(D, C, p, t);
  ParamSet ps(emb, 3, DType::f64);
  Tensor video = randn({B, T, H, W, C}, 1, DType::f64);
  models::StemOutput out = emb.forward(Var(video));
  const int64_t nt = T / t, nh = H / p, nw = W / p, N = nt * nh * nw, P = t * p * p * C;
  REQUIRE(out.tokens.shape() == Shape{B, N, D});
  REQUIRE(out.coords.shape() == Shape{B, N, 3});
  CHECK(out.coords.dtype() == DType::f32);
  CHECK_FALSE(out.mask.defined());
  // Flatten each tubelet as (dt, dy, dx, c) by hand, then the Linear.
  const auto x = values(video);
  std::vector<double> patches(size_t(B * N * P)), coords;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t it = 0; it < nt; ++it)
      for (int64_t ih = 0; ih < nh; ++ih)
        for (int64_t iw = 0; iw < nw; ++iw) {
          const int64_t n = (it * nh + ih) * nw + iw;
          for (int64_t dt = 0; dt < t; ++dt)
            for (int64_t dy = 0; dy < p; ++dy)
              for (int64_t dx = 0; dx < p; ++dx)
                for (int64_t c = 0; c < C; ++c)
                  patches[size_t((b * N + n) * P + ((dt * p + dy) * p + dx) * C + c)] = x[size_t(
                      (((b * T + it * t + dt) * H + ih * p + dy) * W + iw * p + dx) * C + c)];
          coords.push_back(float(double(it * t) / T));
          coords.push_back(float(double(ih * p) / H));
          coords.push_back(float(double(iw * p) / W));
        }
  auto ref = linear_ref(patches, B * N, P, param(ps, "proj.weight"), param(ps, "proj.bias"), D);
  CHECK_CLOSE(out.tokens.data(), make(ref, {B, N, D}), 1e-12, 1e-12);
  CHECK(values(out.coords) == coords);
  for (double c : coords) CHECK((c >= 0 && c < 1));
}

TEST_CASE("embed/vision: an image is a 1-frame video, repeated over the tubelet") {
  const int64_t B = 2, H = 6, W = 3, C = 2, p = 3, D = 4;
  Tensor image = randn({B, H, W, C}, 2, DType::f64);
  {  // t = 1: [B, H, W, C] and [B, 1, H, W, C] give the same tokens and coordinates
    models::VisionEmbed emb(D, C, p, 1);
    ParamSet ps(emb, 1, DType::f64);
    auto a = emb.forward(Var(image)), b = emb.forward(Var(image.reshape({B, 1, H, W, C})));
    CHECK(values(a.tokens.data()) == values(b.tokens.data()));
    CHECK(values(a.coords) == values(b.coords));
  }
  {  // t = 3: the image equals a video of 3 copies of it
    models::VisionEmbed emb(D, C, p, 3);
    ParamSet ps(emb, 1, DType::f64);
    Tensor video = image.reshape({B, 1, H, W, C}).expand({B, 3, H, W, C}).contiguous();
    auto a = emb.forward(Var(image)), b = emb.forward(Var(video));
    REQUIRE(a.tokens.shape() == Shape{B, 2, D});
    CHECK_CLOSE(a.tokens.data(), b.tokens.data(), 1e-14, 1e-14);
    CHECK(values(a.coords) == values(b.coords));
    for (int64_t n = 0; n < 2; ++n) CHECK(a.coords.at({0, n, 0}) == 0.0);  // all at time 0
    // The gradient of the repeated frame sums the tubelet's temporal slices.
    auto r = autograd::gradcheck(
        [&](const std::vector<Var>& v) { return emb.forward(v[0]).tokens; }, {image});
    INFO(r.detail);
    CHECK(r.ok);
  }
  models::VisionEmbed emb(D, C, p, 2);
  ParamSet ps(emb, 1);
  CHECK_THROWS_CONTAINING(emb.forward(Var(randn({1, 6, 6, 3}, 3))), "the stem expects 2");
  CHECK_THROWS_CONTAINING(emb.forward(Var(randn({1, 6, 7, 2}, 3))), "divisible by the patch size");
  CHECK_THROWS_CONTAINING(emb.forward(Var(randn({1, 3, 6, 6, 2}, 3))), "tubelet length");
  CHECK_THROWS_CONTAINING(emb.forward(Var(randn({6, 6, 2}, 3))), "expected a video");
}

TEST_CASE("embed/audio: p×p patches of the spectrogram with (time, frequency) coordinates") {
  const int64_t B = 2, F = 9, M = 6, p = 3, D = 5, nf = F / p, nm = M / p, N = nf * nm;
  models::AudioEmbed emb(D, p);
  ParamSet ps(emb, 4, DType::f64);
  Tensor spec = randn({B, F, M}, 5, DType::f64);
  auto out = emb.forward(Var(spec));
  REQUIRE(out.tokens.shape() == Shape{B, N, D});
  REQUIRE(out.coords.shape() == Shape{B, N, 2});
  const auto x = values(spec);
  std::vector<double> patches, coords;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < nf; ++i)
      for (int64_t j = 0; j < nm; ++j) {
        for (int64_t dt = 0; dt < p; ++dt)
          for (int64_t df = 0; df < p; ++df)
            patches.push_back(x[size_t((b * F + i * p + dt) * M + j * p + df)]);
        coords.push_back(float(double(i * p) / F));
        coords.push_back(float(double(j * p) / M));
      }
  auto ref = linear_ref(patches, B * N, p * p, param(ps, "proj.weight"), param(ps, "proj.bias"), D);
  CHECK_CLOSE(out.tokens.data(), make(ref, {B, N, D}), 1e-12, 1e-12);
  CHECK(values(out.coords) == coords);
  auto four = emb.forward(Var(spec.reshape({B, F, M, 1})));
  CHECK(values(four.tokens.data()) == values(out.tokens.data()));
  CHECK_THROWS_CONTAINING(emb.forward(Var(randn({B, 10, M}, 6, DType::f64))),
                          "multiples of the patch size 3");
  CHECK_THROWS_CONTAINING(emb.forward(Var(randn({B, F, M, 2}, 6, DType::f64))),
                          "expected a log-mel spectrogram");
}

TEST_CASE("embed/text: embedding rows, padding mask and position / max_len coordinates") {
  using namespace models::text_vocab;
  const int64_t B = 3, L = 5, D = 4, max_len = 7;
  models::TextEmbed emb(D, max_len);
  ParamSet ps(emb, 5, DType::f64);
  CHECK(ps.at("embedding").shape == Shape{kSize, D});
  std::vector<int64_t> ids = {kBos, 'h',  'i',  kEos, kPad,  //
                              kBos, 0,    255,  'x',  kEos,  //
                              kBos, kEos, kPad, kPad, kPad};
  Tensor t = Tensor::from_vector(ids, {B, L});
  auto out = emb.forward(Var(t));
  REQUIRE(out.tokens.shape() == Shape{B, L, D});
  REQUIRE(out.mask.shape() == Shape{B, L});
  REQUIRE(out.coords.shape() == Shape{B, L, 1});
  const auto table = param(ps, "embedding");
  const auto tok = values(out.tokens.data()), mask = values(out.mask), coords = values(out.coords);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l) {
      const int64_t id = ids[size_t(b * L + l)];
      CHECK(mask[size_t(b * L + l)] == (id == kPad ? 0.0 : 1.0));
      CHECK(coords[size_t(b * L + l)] == double(float(double(l) / max_len)));
      for (int64_t d = 0; d < D; ++d)
        CHECK(tok[size_t((b * L + l) * D + d)] == table[size_t(id * D + d)]);
    }
  // int32 ids work too
  auto out32 = emb.forward(Var(t.to(DType::i32)));
  CHECK(values(out32.tokens.data()) == tok);
  CHECK_THROWS_CONTAINING(emb.forward(Var(Tensor::zeros({1, 8}, DType::i64))), "max_len = 7");
  CHECK_THROWS_CONTAINING(emb.forward(Var(Tensor::full({1, 2}, 300, DType::i64))), "out of range");
  CHECK_THROWS_CONTAINING(emb.forward(Var(Tensor::zeros({1, 2}, DType::f32))), "token ids");
}

// ---- positions -------------------------------------------------------------------------------

TEST_CASE("embed/positions: bucket ids are int(coord × buckets) for grid coordinates, clamped") {
  // Coordinates as the stems make them: f32 roundings of i/n. The bucket must be floor(i·b/n)
  // exactly, including the boundaries where i·b/n is an integer.
  std::vector<float> cs;
  std::vector<int64_t> ns, is;
  for (int64_t n = 1; n <= 40; ++n)
    for (int64_t i = 0; i < n; ++i) {
      cs.push_back(float(double(i) / double(n)));
      ns.push_back(n);
      is.push_back(i);
    }
  Tensor coords = Tensor::from_vector(cs, {int64_t(cs.size())});
  for (int64_t b : {1, 2, 3, 5, 7, 8, 10, 14, 16, 17, 64}) {
    auto ids = models::FactorisedPosition::bucket_ids(coords, b).to_vector<int64_t>();
    int bad = 0;
    for (size_t j = 0; j < cs.size() && bad < 3; ++j)
      if (ids[j] != is[j] * b / ns[j]) {
        ++bad;
        INFO("i " << is[j] << " n " << ns[j] << " buckets " << b << ": got " << ids[j]);
        CHECK(false);
      }
  }
  Tensor odd = Tensor::from_vector<float>({1.0f, 1.7f, -0.3f, 0.999f, 0.5f}, {5});
  CHECK(models::FactorisedPosition::bucket_ids(odd, 4).to_vector<int64_t>() ==
        std::vector<int64_t>{3, 3, 0, 3, 2});
  CHECK(models::FactorisedPosition::bucket_ids(odd.to(DType::f64), 4).dtype() == DType::i64);
}

TEST_CASE("embed/positions: pe = LayerNorm(Σ_axis table[int(coord × buckets)]) per token") {
  const int64_t D = 7;
  models::FactorisedPosition pos(D, {{"a", 3}, {"b", 5}});
  ParamSet ps(pos, 6, DType::f64);
  CHECK_FALSE(ps.at("a").decay);
  CHECK_FALSE(ps.at("b").decay);
  Tensor coords = randu({2, 4, 2}, 7, 0.0, 1.0);
  Var pe = pos.forward(coords);
  REQUIRE(pe.shape() == Shape{2, 4, D});
  const auto c = values(coords), ta = param(ps, "a"), tb = param(ps, "b");
  std::vector<double> sum;
  for (int64_t r = 0; r < 8; ++r) {
    const int64_t ia = int64_t(c[size_t(2 * r)] * 3), ib = int64_t(c[size_t(2 * r + 1)] * 5);
    for (int64_t d = 0; d < D; ++d) sum.push_back(ta[size_t(ia * D + d)] + tb[size_t(ib * D + d)]);
  }
  auto ref = layernorm_ref(sum, 8, D, param(ps, "norm.weight"), param(ps, "norm.bias"), 1e-6);
  CHECK_CLOSE(pe.data(), make(ref, {2, 4, D}), 1e-12, 1e-12);
  CHECK_THROWS_CONTAINING(pos.forward(randu({4, 3}, 8, 0.0, 1.0)),
                          "coordinates must be floating [..., 2]");
}

TEST_CASE("embed/positions: a token's position depends only on its coordinate, at any resolution") {
  // The same stem at two resolutions: every coarse-grid coordinate also appears on the fine grid
  // (and under drop-token, see below), and its positional embedding is bit-identical there.
  const int64_t D = 6;
  StemConfig cfg = vision_cfg(D, 1, 3, 1);
  cfg.buckets = {4, 8, 8};
  ModalityStem stem(cfg);
  ParamSet ps(stem, 9, DType::f64);
  Tensor coarse = stem.embed->grid({1, 2, 6, 9, 1}), fine = stem.embed->grid({1, 4, 12, 18, 1});
  const auto cc = values(coarse), cf = values(fine);
  const auto pc = values(stem.pos->forward(coarse).data()),
             pf = values(stem.pos->forward(fine).data());
  const int64_t Lc = coarse.size(0), Lf = fine.size(0);
  REQUIRE(Lc == 2 * 2 * 3);
  REQUIRE(Lf == 4 * 4 * 6);
  for (int64_t l = 0; l < Lc; ++l) {
    const int64_t m = find_row(cf, Lf, 3, &cc[size_t(3 * l)]);
    REQUIRE(m >= 0);
    for (int64_t d = 0; d < D; ++d) CHECK(pc[size_t(l * D + d)] == pf[size_t(m * D + d)]);
  }
  // Different coordinates in different buckets give different embeddings.
  bool differ = false;
  for (int64_t d = 0; d < D; ++d) differ = differ || pf[size_t(d)] != pf[size_t(D + d)];
  CHECK(differ);
}

// ---- drop-token ------------------------------------------------------------------------------

TEST_CASE("embed/drop-token: keeps int((1 - r)·L) tokens in order with their true coordinates") {
  const int64_t B = 3, D = 5, L = 2 * 3 * 4;  // video [3, 2, 9, 12, 1], p = 3, t = 1
  ModalityStem stem(vision_cfg(D, 1, 3, 1));
  ParamSet ps(stem, 10, DType::f64);
  Tensor video = randn({B, 2, 9, 12, 1}, 11, DType::f64);
  const double r = 0.6;
  const int64_t keep = int64_t((1 - r) * L);  // 9.6 -> 9
  CHECK(stem.tokens_kept(video.shape(), r) == keep);
  Context eval;
  auto full = stem.forward(video, eval, r);  // not training: nothing is dropped
  REQUIRE(full.tokens.shape() == Shape{B, L, D});
  Context train(true, 7, 3);
  auto kept = stem.forward(video, train, r);
  REQUIRE(kept.tokens.shape() == Shape{B, keep, D});
  REQUIRE(kept.coords.shape() == Shape{B, keep, 3});
  // The subset is the one kernels::drop_token_indices draws for this step's key.
  Context key(true, 7, 3);
  const auto idx = kernels::drop_token_indices(B, L, keep, key.rng_seed(), key.next_stream())
                       .to_vector<int64_t>();
  const auto fc = values(full.coords), kc = values(kept.coords);
  const auto ft = values(full.tokens.data()), kt = values(kept.tokens.data());
  std::vector<std::vector<int64_t>> chosen(B);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < keep; ++j) {
      // Find the kept token in the full run by its coordinate: same position, same output.
      const int64_t l =
          find_row(std::vector<double>(fc.begin() + b * L * 3, fc.begin() + (b + 1) * L * 3), L, 3,
                   &kc[size_t((b * keep + j) * 3)]);
      REQUIRE(l >= 0);
      CHECK(l == idx[size_t(b * keep + j)]);
      if (j > 0) CHECK(l > chosen[size_t(b)].back());  // original order
      chosen[size_t(b)].push_back(l);
      for (int64_t d = 0; d < D; ++d)
        CHECK(std::abs(kt[size_t((b * keep + j) * D + d)] - ft[size_t((b * L + l) * D + d)]) <
              1e-13);
    }
  CHECK((chosen[0] != chosen[1] || chosen[1] != chosen[2]));  // per-example subsets
}

TEST_CASE("embed/drop-token: text keeps its padding mask with the kept tokens") {
  using namespace models::text_vocab;
  StemConfig cfg;
  cfg.modality = models::Modality::text;
  cfg.dim = 4;
  cfg.max_len = 9;
  ModalityStem stem(cfg);
  ParamSet ps(stem, 12, DType::f64);
  const int64_t B = 2, L = 8;
  std::vector<int64_t> ids = {kBos, 'a', 'b',  'c',  kEos, kPad, kPad, kPad,  //
                              kBos, 'z', kEos, kPad, kPad, kPad, kPad, kPad};
  Tensor t = Tensor::from_vector(ids, {B, L});
  Context eval, train(true, 1, 2);
  auto full = stem.forward(t, eval, 0.5);
  auto kept = stem.forward(t, train, 0.5);
  REQUIRE(kept.mask.shape() == Shape{B, 4});
  const auto fm = values(full.mask), km = values(kept.mask), kc = values(kept.coords);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < 4; ++j) {
      const int64_t l = std::lround(kc[size_t(b * 4 + j)] * cfg.max_len);
      CHECK(km[size_t(b * 4 + j)] == fm[size_t(b * L + l)]);
      CHECK(km[size_t(b * 4 + j)] == (ids[size_t(b * L + l)] == kPad ? 0.0 : 1.0));
    }
}

TEST_CASE("embed/drop-token: rejects r >= 1 - 1/L with the clear message") {
  ModalityStem stem(vision_cfg(4, 1, 3, 1));
  ParamSet ps(stem, 13);
  Tensor image = randn({2, 6, 6, 1}, 14);  // L = 4: r must be < 0.75
  Context train(true, 1, 1), eval;
  CHECK_THROWS_CONTAINING(stem.forward(image, train, 0.75), "drop-token rate r must be < 1 - 1/L");
  CHECK_THROWS_CONTAINING(stem.forward(image, eval, 0.9), "drop-token rate r must be < 1 - 1/L");
  CHECK_THROWS_CONTAINING(stem.forward(image, train, -0.1), "drop-token rate r must be < 1 - 1/L");
  CHECK(stem.forward(image, train, 0.7).tokens.shape() == Shape{2, 1, 4});  // int(0.3·4) = 1
  CHECK(stem.forward(image, train, 0.0).tokens.shape() == Shape{2, 4, 4});
}

// ---- stems: structure and gradients ----------------------------------------------------------

TEST_CASE("embed/stem: parameter names, shapes and weight decay") {
  ModalityStem stem(vision_cfg(8, 3, 4, 2));
  ParamSet ps(stem, 1);
  std::vector<std::string> names;
  for (const auto& e : ps.entries()) names.push_back(e.name);
  CHECK(names == std::vector<std::string>{"embed.proj.weight", "embed.proj.bias", "pos.temporal",
                                          "pos.vertical", "pos.horizontal", "pos.norm.weight",
                                          "pos.norm.bias", "pre_proj.weight", "pre_proj.bias"});
  CHECK(ps.at("embed.proj.weight").shape == Shape{8, 2 * 4 * 4 * 3});
  CHECK(ps.at("pos.temporal").shape == Shape{8, 8});
  CHECK(ps.at("pos.vertical").shape == Shape{14, 8});
  CHECK(ps.at("embed.proj.weight").decay);
  CHECK(ps.at("pre_proj.weight").decay);
  CHECK_FALSE(ps.at("pos.horizontal").decay);
  CHECK_FALSE(ps.at("pre_proj.bias").decay);
  StemConfig audio;
  audio.modality = models::Modality::audio;
  audio.dim = 8;
  audio.patch = 2;
  audio.buckets = {5, 3};
  ModalityStem a(audio);
  CHECK(a.num_parameters() == (8 * 4 + 8) + (5 + 3) * 8 + 2 * 8 + (8 * 8 + 8));
  audio.buckets = {5};
  CHECK_THROWS_CONTAINING(ModalityStem{audio}, "2 positional axes, but 1 bucket counts");
}

TEST_CASE("embed/vision stem: gradients match finite differences (with drop-token)") {
  StemConfig cfg = vision_cfg(4, 2, 2, 2);
  cfg.buckets = {2, 3, 3};
  ModalityStem stem(cfg);
  ParamSet ps(stem, 21, DType::f64);
  Tensor video = randn({2, 4, 4, 6, 2}, 22, DType::f64);  // L = 2·2·3 = 12
  auto loss = [&] {
    Context ctx(true, 5, 1);
    return project(stem.forward(video, ctx, 0.5).tokens, 23);
  };
  check_param_grads(ps, loss);
}

TEST_CASE("embed/audio stem: gradients match finite differences") {
  StemConfig cfg;
  cfg.modality = models::Modality::audio;
  cfg.dim = 5;
  cfg.patch = 2;
  cfg.buckets = {3, 2};
  ModalityStem stem(cfg);
  ParamSet ps(stem, 24, DType::f64);
  Tensor spec = randn({2, 6, 4}, 25, DType::f64);
  auto loss = [&] {
    Context ctx;
    return project(stem.forward(spec, ctx).tokens, 26);
  };
  check_param_grads(ps, loss);
}

TEST_CASE("embed/text stem: gradients match finite differences (padding masked)") {
  using namespace models::text_vocab;
  StemConfig cfg;
  cfg.modality = models::Modality::text;
  cfg.dim = 3;
  cfg.max_len = 6;
  cfg.vocab = 262;
  ModalityStem stem(cfg);
  ParamSet ps(stem, 27, DType::f64);
  Tensor ids = Tensor::from_vector<int64_t>({kBos, 'q', 261, kEos, kPad,  //
                                             kBos, 'q', 'q', kPad, kPad},
                                            {2, 5});
  auto loss = [&] {
    Context ctx;
    auto out = stem.forward(ids, ctx);
    // The padded positions are what the encoder masks: weight them out of the loss, as pooling
    // does (the PAD row itself gets no gradient).
    Var m(out.mask.to(DType::f64).reshape({2, 5, 1}));
    return project(autograd::mul(out.tokens, m), 28);
  };
  // The embedding table is mostly rows no id uses (gradient 0 either way): check every element
  // of the rows in play plus the rest of the stem.
  check_param_grads(ps, loss);
  const auto g = values(ps.at("embed.embedding").var.grad());
  for (int64_t d = 0; d < 3; ++d) CHECK(g[size_t(kPad * 3 + d)] == 0.0);
  bool used = false;
  for (int64_t d = 0; d < 3; ++d) used = used || g[size_t('q' * 3 + d)] != 0.0;
  CHECK(used);
}

// ---- heads -----------------------------------------------------------------------------------

TEST_CASE("heads/pool: masked mean pooling equals a plain loop and ignores padded tokens") {
  const int64_t B = 3, L = 5, D = 4;
  Tensor x = randn({B, L, D}, 30, DType::f64);
  std::vector<double> m = {1, 1, 0, 1, 0,  //
                           0, 0, 0, 0, 0,  // nothing real: pools to 0
                           1, 1, 1, 1, 1};
  Tensor mask = Tensor::from_vector(m, {B, L}, DType::f32);
  const auto xv = values(x);
  std::vector<double> ref(size_t(B * D), 0.0), mean(size_t(B * D), 0.0);
  for (int64_t b = 0; b < B; ++b) {
    double n = 0;
    for (int64_t l = 0; l < L; ++l) n += m[size_t(b * L + l)];
    for (int64_t d = 0; d < D; ++d) {
      double s = 0, all = 0;
      for (int64_t l = 0; l < L; ++l) {
        s += m[size_t(b * L + l)] * xv[size_t((b * L + l) * D + d)];
        all += xv[size_t((b * L + l) * D + d)];
      }
      ref[size_t(b * D + d)] = n > 0 ? s / n : 0.0;
      mean[size_t(b * D + d)] = all / L;
    }
  }
  CHECK_CLOSE(models::masked_mean_pool(Var(x), mask).data(), make(ref, {B, D}), 1e-14, 1e-14);
  CHECK_CLOSE(models::masked_mean_pool(Var(x)).data(), make(mean, {B, D}), 1e-14, 1e-14);
  // Changing padded tokens (even to huge values) changes nothing.
  Tensor y = x.clone();
  y.select(0, 0).select(0, 2).fill_(1e6);
  y.select(0, 1).fill_(-3e5);
  CHECK(values(models::masked_mean_pool(Var(y), mask).data()) ==
        values(models::masked_mean_pool(Var(x), mask).data()));
  auto r = autograd::gradcheck(
      [&](const std::vector<Var>& v) { return models::masked_mean_pool(v[0], mask); }, {x});
  INFO(r.detail);
  CHECK(r.ok);
  CHECK_THROWS_CONTAINING(models::masked_mean_pool(Var(x), Tensor::ones({B, L + 1})),
                          "does not match x");
  CHECK_THROWS_CONTAINING(models::masked_mean_pool(Var(randn({B, D}, 31))), "must be [B, L, D]");
}

TEST_CASE("heads/output pool: out_proj on every token, then the masked mean; gradients") {
  const int64_t B = 2, L = 3, D = 4;
  models::OutputPool pool(D);
  ParamSet ps(pool, 32, DType::f64);
  Tensor x = randn({B, L, D}, 33, DType::f64);
  Tensor mask = Tensor::from_vector<float>({1, 0, 1, 1, 1, 0}, {B, L});
  auto proj =
      linear_ref(values(x), B * L, D, param(ps, "out_proj.weight"), param(ps, "out_proj.bias"), D);
  const auto m = values(mask);
  std::vector<double> ref(size_t(B * D), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t d = 0; d < D; ++d) {
      double s = 0, n = 0;
      for (int64_t l = 0; l < L; ++l) {
        s += m[size_t(b * L + l)] * proj[size_t((b * L + l) * D + d)];
        n += m[size_t(b * L + l)];
      }
      ref[size_t(b * D + d)] = s / n;
    }
  CHECK_CLOSE(pool.forward(Var(x), mask).data(), make(ref, {B, D}), 1e-12, 1e-12);
  check_param_grads(ps, [&] { return project(pool.forward(Var(x), mask), 34); });
}

TEST_CASE("heads/classifier: logits = Linear(pooled); gradients") {
  models::ClassifierHead head(5, 3);
  ParamSet ps(head, 35, DType::f64);
  Tensor pooled = randn({4, 5}, 36, DType::f64);
  Var logits = head.forward(Var(pooled));
  REQUIRE(logits.shape() == Shape{4, 3});
  auto ref = linear_ref(values(pooled), 4, 5, param(ps, "fc.weight"), param(ps, "fc.bias"), 3);
  CHECK_CLOSE(logits.data(), make(ref, {4, 3}), 1e-12, 1e-12);
  Tensor targets = Tensor::from_vector<int64_t>({0, 2, 1, 2}, {4});
  check_param_grads(ps,
                    [&] { return autograd::cross_entropy(head.forward(Var(pooled)), targets); });
  models::ClassifierHead zero(5, 3, models::Init::zeros());
  ParamSet pz(zero, 1);
  CHECK(values(zero.fc->weight.data()) == std::vector<double>(15, 0.0));
}

TEST_CASE("heads/cross-modal: Linear → GELU(tanh) → Linear → LayerNorm; gradients") {
  const int64_t B = 3, D = 5, Hd = 7, O = 6;
  models::CrossModalHead head({D, Hd, O});
  ParamSet ps(head, 37, DType::f64);
  Tensor pooled = randn({B, D}, 38, DType::f64);
  Var out = head.forward(Var(pooled));
  REQUIRE(out.shape() == Shape{B, O});
  auto h = linear_ref(values(pooled), B, D, param(ps, "fc1.weight"), param(ps, "fc1.bias"), Hd);
  for (double& v : h)
    v = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
  auto y = linear_ref(h, B, Hd, param(ps, "fc2.weight"), param(ps, "fc2.bias"), O);
  auto ref = layernorm_ref(y, B, O, param(ps, "norm.weight"), param(ps, "norm.bias"), 1e-6);
  CHECK_CLOSE(out.data(), make(ref, {B, O}), 1e-11, 1e-11);
  check_param_grads(ps, [&] { return project(head.forward(Var(pooled)), 39); });
  models::CrossModalHead full({768});  // IMP's widths by default
  CHECK(full.num_parameters() == (768 * 1024 + 1024) + (1024 * 1024 + 1024) + 2 * 1024);
}

TEST_CASE("heads/temperature: tau = relu(param) + 1e-6, no weight decay; gradients") {
  models::Temperature dense(0.2), moe(1.0);
  ParamSet pd(dense, 1, DType::f64), pm(moe, 1, DType::f64);
  CHECK(dense.tau().shape() == Shape{1});
  CHECK(dense.tau().item() == doctest::Approx(0.2 + 1e-6).epsilon(1e-15));
  CHECK(moe.tau().item() == doctest::Approx(1.0 + 1e-6).epsilon(1e-15));
  CHECK_FALSE(pd.at("temperature").decay);
  CHECK(values(pd.decay_mask()) == std::vector<double>(size_t(pd.data.numel()), 0.0));
  // S / tau for a similarity matrix: d/dparam of sum(S / tau) = -sum(S) / tau² while param > 0.
  Tensor s = randn({3, 3}, 40, DType::f64);
  check_param_grads(pd, [&] { return autograd::sum_all(autograd::div(Var(s), dense.tau())); });
  double sum_s = 0;
  for (double v : values(s)) sum_s += v;
  pd.zero_grad();
  autograd::sum_all(autograd::div(Var(s), dense.tau())).backward();
  CHECK(pd.grad.at({0}) == doctest::Approx(-sum_s / std::pow(0.2 + 1e-6, 2)).epsilon(1e-12));
  // Below zero the relu floors tau at 1e-6 (and the gradient is 0).
  pd.data.fill_(-0.5);
  CHECK(dense.tau().item() == 1e-6);
  CHECK_THROWS_CONTAINING(models::Temperature(0.0), "must be positive");
}
