// The models layer's foundation: initialisers, the flat parameter buffer, and the dense modules
// (Linear, LayerNorm, MLP, Attention, drop_path, Block, ViT) against plain references.
#include <cmath>
#include <set>

#include "autograd/ops.h"
#include "models/layers.h"
#include "models/params.h"
#include "models/transformer.h"
#include "models/vit.h"
#include "tests/helpers.h"
#include "tests/module_check.h"

using namespace models;
using testing::randn;
using testing_support::check_module_grads;

namespace {

// y[i, o] = Σ_k x[i, k] · w[o, k] + b[o], plain loops in f64.
std::vector<double> ref_linear(const std::vector<double>& x, const std::vector<double>& w,
                               const std::vector<double>& b, int64_t rows, int64_t in, int64_t out) {
  std::vector<double> y(size_t(rows * out));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double s = b.empty() ? 0.0 : b[o];
      for (int64_t k = 0; k < in; ++k) s += x[i * in + k] * w[o * in + k];
      y[i * out + o] = s;
    }
  return y;
}

std::vector<double> vec(const Tensor& t) { return t.contiguous().to_vector<double>(); }

// A tiny module holding one of everything, for ParamSet tests.
class Toy : public Module {
 public:
  Toy() : Module("Toy") {
    a = child("a", std::make_shared<Linear>(3, 5));
    n = child("n", std::make_shared<LayerNorm>(5));
    t = param("temperature", {}, Init::constant(0.5), false);
  }
  std::shared_ptr<Linear> a;
  std::shared_ptr<LayerNorm> n;
  Var t;
};

}  // namespace

TEST_CASE("models/init: values depend on (seed, name) only, with the requested statistics") {
  Tensor a = Tensor::zeros({64, 96}), b = Tensor::zeros({64, 96}), c = Tensor::zeros({64, 96});
  initialize(a, Init::trunc_normal(0.02), 7, "blocks.0.attn.qkv.weight");
  initialize(b, Init::trunc_normal(0.02), 7, "blocks.0.attn.qkv.weight");
  initialize(c, Init::trunc_normal(0.02), 7, "blocks.1.attn.qkv.weight");
  CHECK(vec(a) == vec(b));
  CHECK(vec(a) != vec(c));
  double s = 0, s2 = 0, mx = 0;
  for (double v : vec(a)) s += v, s2 += v * v, mx = std::max(mx, std::fabs(v));
  const double n = 64 * 96, mean = s / n, sd = std::sqrt(s2 / n - mean * mean);
  CHECK(std::fabs(mean) < 0.002);
  CHECK(sd == doctest::Approx(0.02 * 0.8796).epsilon(0.05));  // std of N(0,1) cut at ±2
  CHECK(mx <= 0.04 + 1e-7);

  Tensor x = Tensor::zeros({40, 30});
  initialize(x, Init::xavier_uniform(), 1, "w");
  const double bound = std::sqrt(6.0 / 70.0);
  for (double v : vec(x)) CHECK(std::fabs(v) <= bound);
}

TEST_CASE("models/init: orthogonal rows are orthonormal (rows <= cols) and columns otherwise") {
  for (auto [r, c] : {std::pair<int64_t, int64_t>{5, 9}, {9, 5}}) {
    Tensor q = Tensor::zeros({r, c}, DType::f64);
    initialize(q, Init::orthogonal(), 3, "phi");
    auto v = vec(q);
    const bool rows = r <= c;
    const int64_t nv = rows ? r : c, len = rows ? c : r;
    for (int64_t i = 0; i < nv; ++i)
      for (int64_t j = 0; j < nv; ++j) {
        double d = 0;
        for (int64_t k = 0; k < len; ++k)
          d += (rows ? v[i * c + k] * v[j * c + k] : v[k * c + i] * v[k * c + j]);
        CHECK(d == doctest::Approx(i == j ? 1.0 : 0.0).epsilon(1e-9).scale(1));
      }
  }
}

TEST_CASE("models/params: one flat buffer, aligned views, preset gradient views, decay mask") {
  Toy toy;
  CHECK(toy.num_parameters() == 3 * 5 + 5 + 5 + 5 + 1);
  ParamSet ps(toy, 1);
  CHECK(ps.num_parameters() == toy.num_parameters());
  std::vector<std::string> names;
  for (const auto& e : ps.entries()) {
    names.push_back(e.name);
    CHECK(e.offset % 16 == 0);
    CHECK(e.var.data().shares_storage(ps.data));
    CHECK(e.var.grad().shares_storage(ps.grad));
  }
  CHECK(names == std::vector<std::string>{"temperature", "a.weight", "a.bias", "n.weight", "n.bias"});
  // Weight decay only on the matrix.
  const auto mask = vec(ps.decay_mask());
  for (const auto& e : ps.entries())
    for (int64_t i = 0; i < e.shape.numel(); ++i)
      CHECK(mask[e.offset + i] == (e.name == "a.weight" ? 1.0 : 0.0));
  CHECK(toy.t.item() == 0.5);
  CHECK(vec(toy.n->weight.data()) == std::vector<double>(5, 1.0));
  // Backward accumulates into the flat gradient buffer.
  Var x(randn({4, 3}, 1));
  autograd::sum_all(toy.n->forward(toy.a->forward(x))).backward();
  double gsum = 0;
  for (double v : vec(ps.grad)) gsum += std::fabs(v);
  CHECK(gsum > 0);
  ps.zero_grad();
  for (double v : vec(ps.grad)) CHECK(v == 0.0);
}

TEST_CASE("models/params: load copies by name and rejects missing, unknown and mis-shaped") {
  Toy toy;
  ParamSet ps(toy, 1);
  std::map<std::string, Tensor> m;
  for (const auto& [name, t] : ps.named_tensors()) m[name] = randn(t.shape(), 5);
  ps.load(m);
  CHECK(vec(toy.a->weight.data()) == vec(m["a.weight"]));
  auto missing = m;
  missing.erase("a.bias");
  CHECK_THROWS_CONTAINING(ps.load(missing), "1 missing (a.bias)");
  CHECK(ps.load(missing, false).size() == 4);
  auto extra = m;
  extra["b.weight"] = Tensor::zeros({1});
  CHECK_THROWS_CONTAINING(ps.load(extra), "not in the model (b.weight)");
  auto bad = m;
  bad["a.weight"] = Tensor::zeros({3, 5});
  CHECK_THROWS_CONTAINING(ps.load(bad), "'a.weight' has shape f32[3, 5]");
  CHECK_THROWS_CONTAINING(toy.parameter("a.nope"), "no parameter named 'nope'");
}

TEST_CASE("models/linear: forward equals the plain product; odd sizes; errors") {
  Linear lin(7, 5);
  ParamSet ps(lin, 3, DType::f64);
  Tensor x = randn({2, 3, 7}, 2, DType::f64);
  Var y = lin.forward(Var(x));
  CHECK(y.shape() == Shape{2, 3, 5});
  auto ref = ref_linear(vec(x), vec(lin.weight.data()), vec(lin.bias.data()), 6, 7, 5);
  CHECK_CLOSE(y.data(), Tensor::from_vector(ref, {2, 3, 5}, DType::f64), 1e-12, 1e-12);
  CHECK_THROWS_CONTAINING(lin.forward(Var(randn({2, 6}, 1, DType::f64))), "Linear(7 -> 5)");
}

TEST_CASE("models/mlp: forward equals Linear → GELU → Linear; gradients match differences") {
  MLPConfig c;
  c.dim = 5;
  c.hidden = 9;
  MLP mlp(c);
  ParamSet ps(mlp, 4, DType::f64);
  Tensor x = randn({2, 3, 5}, 3, DType::f64);
  Context ctx;
  Var y = mlp.forward(Var(x), ctx);
  auto h = ref_linear(vec(x), vec(mlp.fc1->weight.data()), vec(mlp.fc1->bias.data()), 6, 5, 9);
  for (double& v : h)
    v = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
  auto ref = ref_linear(h, vec(mlp.fc2->weight.data()), vec(mlp.fc2->bias.data()), 6, 9, 5);
  CHECK_CLOSE(y.data(), Tensor::from_vector(ref, {2, 3, 5}, DType::f64), 1e-12, 1e-12);
  Tensor w = randn({2, 3, 5}, 4, DType::f64);
  auto r = check_module_grads(ps, [&] {
    Context c2;
    return autograd::sum_all(autograd::mul(mlp.forward(Var(x), c2), Var(w)));
  });
  CHECK_MESSAGE(r.ok, r.worst);
}

TEST_CASE("models/mlp: dropout only in training, keyed by (seed, step)") {
  MLPConfig c;
  c.dim = 4;
  c.hidden = 8;
  c.dropout = 0.5;
  MLP mlp(c);
  ParamSet ps(mlp, 4);
  Var x(randn({3, 4, 4}, 3));
  Context eval;
  Context t1(true, 1, 10), t2(true, 1, 10), t3(true, 1, 11);
  Tensor ye = mlp.forward(x, eval).data(), y1 = mlp.forward(x, t1).data();
  CHECK(vec(y1) == vec(mlp.forward(x, t2).data()));
  CHECK(vec(y1) != vec(mlp.forward(x, t3).data()));
  CHECK(vec(y1) != vec(ye));
  Context e2;
  CHECK(vec(ye) == vec(mlp.forward(x, e2).data()));
}

TEST_CASE("models/attention: forward equals per-head softmax(q kᵀ/√d) v with QK-LN and mask") {
  for (bool qk_norm : {false, true}) {
    AttentionConfig c;
    c.dim = 6;
    c.heads = 2;
    c.qk_norm = qk_norm;
    Attention att(c);
    ParamSet ps(att, 5, DType::f64);
    if (qk_norm) att.qk_norm_weight.mutable_data().copy_(randn({3}, 9, DType::f64));
    const int64_t B = 2, N = 5, D = 6, H = 2, Dh = 3;
    Tensor x = randn({B, N, D}, 6, DType::f64);
    Tensor mask = Tensor::from_vector(std::vector<double>{1, 1, 1, 1, 1, 1, 1, 0, 1, 0}, {B, N},
                                      DType::f64);
    Context ctx;
    Var y = att.forward(Var(x), ctx, mask);
    auto qkv = ref_linear(vec(x), vec(att.qkv->weight.data()), vec(att.qkv->bias.data()), B * N,
                          D, 3 * D);
    auto lnw = qk_norm ? vec(att.qk_norm_weight.data()) : std::vector<double>{};
    auto m = vec(mask);
    std::vector<double> o(size_t(B * N * D));
    auto get = [&](int64_t b, int64_t n, int part, int64_t h) {
      std::vector<double> v(Dh);
      for (int64_t d = 0; d < Dh; ++d) v[d] = qkv[(b * N + n) * 3 * D + part * D + h * Dh + d];
      if (qk_norm && part < 2) {
        double mu = 0, var = 0;
        for (double e : v) mu += e / Dh;
        for (double e : v) var += (e - mu) * (e - mu) / Dh;
        for (int64_t d = 0; d < Dh; ++d) v[d] = (v[d] - mu) / std::sqrt(var + 1e-6) * lnw[d];
      }
      return v;
    };
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < N; ++i) {
          auto q = get(b, i, 0, h);
          std::vector<double> s(N);
          double mx = -1e300;
          for (int64_t j = 0; j < N; ++j) {
            auto k = get(b, j, 1, h);
            double d = 0;
            for (int64_t e = 0; e < Dh; ++e) d += q[e] * k[e];
            s[j] = m[b * N + j] ? d / std::sqrt(double(Dh)) : -1e300;
            mx = std::max(mx, s[j]);
          }
          double z = 0;
          for (auto& e : s) z += (e = m[&e - &s[0] + b * N] ? std::exp(e - mx) : 0.0);
          for (int64_t j = 0; j < N; ++j) {
            auto v = get(b, j, 2, h);
            for (int64_t e = 0; e < Dh; ++e) o[(b * N + i) * D + h * Dh + e] += s[j] / z * v[e];
          }
        }
    auto ref = ref_linear(o, vec(att.proj->weight.data()), vec(att.proj->bias.data()), B * N, D, D);
    CHECK_CLOSE(y.data(), Tensor::from_vector(ref, {B, N, D}, DType::f64), 1e-10, 1e-10);
    Tensor w = randn({B, N, D}, 7, DType::f64);
    auto r = check_module_grads(ps, [&] {
      Context c2;
      return autograd::sum_all(autograd::mul(att.forward(Var(x), c2, mask), Var(w)));
    });
    CHECK_MESSAGE(r.ok, r.worst);
  }
}

TEST_CASE("models/drop_path: per-example keep or zero, scaled by 1/(1-p); identity in eval") {
  Var x(Tensor::ones({400, 3}));
  Context ctx(true, 3, 1);
  auto y = vec(drop_path(x, 0.25, ctx).data());
  int dropped = 0;
  for (int b = 0; b < 400; ++b) {
    const double v = y[b * 3];
    CHECK((v == 0.0 || std::fabs(v - 1 / 0.75) < 1e-6));
    CHECK(y[b * 3 + 1] == v);
    dropped += v == 0.0;
  }
  CHECK(dropped > 70);
  CHECK(dropped < 130);
  Context eval;
  CHECK(drop_path(x, 0.25, eval).data().shares_storage(x.data()));
}

TEST_CASE("models/block: pre-LN residual structure and module gradient check") {
  BlockConfig bc;
  bc.attn.dim = 6;
  bc.attn.heads = 3;
  MLPConfig mc;
  mc.dim = 6;
  mc.hidden = 5;
  Block blk(bc, std::make_shared<MLP>(mc));
  ParamSet ps(blk, 8, DType::f64);
  Tensor x = randn({2, 4, 6}, 8, DType::f64);
  Context ctx;
  Var y = blk.forward(Var(x), ctx);
  Var h = autograd::add(Var(x), blk.attn->forward(blk.norm1->forward(Var(x)), ctx));
  Var ref = autograd::add(h, blk.mlp->forward(blk.norm2->forward(h), ctx));
  CHECK_CLOSE(y.data(), ref.data(), 1e-14, 1e-14);
  Tensor w = randn({2, 4, 6}, 9, DType::f64);
  auto r = check_module_grads(ps, [&] {
    Context c2;
    return autograd::sum_all(autograd::mul(blk.forward(Var(x), c2), Var(w)));
  });
  CHECK_MESSAGE(r.ok, r.worst);
}

TEST_CASE("models/vit: the reference switch-ViT dense model has exactly 12,798,490 parameters") {
  ViTConfig c;  // defaults are the reference CIFAR-10 configuration
  c.pos_rows = 300;
  c.head_hidden = 3072;
  ViT vit(c);
  CHECK(vit.num_parameters() == 12798490);
  int64_t sum = 0;
  for (const auto& r : vit.summary()) sum += r.params;
  CHECK(sum == 12798490);
}

TEST_CASE("models/vit: tiny ViT forward shapes, CLS vs avg pooling, gradient check") {
  for (auto pool : {ViTConfig::Pool::cls, ViTConfig::Pool::avg}) {
    ViTConfig c;
    c.image_size = 6;
    c.patch = 3;
    c.channels = 2;
    c.classes = 3;
    c.dim = 4;
    c.depth = 2;
    c.heads = 2;
    c.mlp_hidden = 5;
    c.pool = pool;
    c.head_hidden = pool == ViTConfig::Pool::cls ? 7 : 0;
    ViT vit(c);
    ParamSet ps(vit, 2, DType::f64);
    Tensor img = randn({2, 6, 6, 2}, 11, DType::f64);
    Context ctx;
    Var logits = vit.forward(Var(img), ctx);
    CHECK(logits.shape() == Shape{2, 3});
    Tensor w = randn({2, 3}, 12, DType::f64);
    auto r = check_module_grads(ps, [&] {
      Context c2;
      return autograd::sum_all(autograd::mul(vit.forward(Var(img), c2), Var(w)));
    }, 60);
    CHECK_MESSAGE(r.ok, r.worst);
    CHECK_THROWS_CONTAINING(vit.forward(Var(randn({2, 8, 8, 2}, 1, DType::f64)), ctx),
                            "ViT: images must be [B, 6, 6, 2]");
  }
}
