// Checkpoint recycling (models/recycle.h): every expert is an exact slice of the dense source at
// its recorded indices (all four methods), the indices are sorted, unique and in range, the
// statistics equal a reference built from ViT::tokens, importance sampling prefers high-norm
// neurons, co-activation groups correlated neurons, equal widths keep every channel, non-expert
// weights are copied exactly where shapes match, the saved checkpoint loads and runs, timm
// names/layouts map onto ours, and errors name the problem.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "autograd/elementwise.h"
#include "autograd/patchify.h"
#include "engine/safetensors.h"
#include "models/params.h"
#include "models/recycle.h"
#include "models/spheromoe.h"
#include "tests/helpers.h"

using autograd::Var;
using engine::DType;
using engine::Shape;
using engine::Tensor;
using models::Context;
using models::ParamSet;
using models::RecycleMethod;
using models::RecycleOptions;
using models::RecycleResult;
using models::SpheroMoE;
using models::SpheroMoEConfig;
using models::ViT;
using models::ViTConfig;
using testing::randn;

namespace {

ViTConfig tiny_vit(int64_t dim, int64_t depth, int64_t hidden) {
  ViTConfig c;
  c.image_size = 8;
  c.patch = 4;
  c.channels = 2;
  c.classes = 5;
  c.dim = dim;
  c.depth = depth;
  c.heads = 2;
  c.mlp_hidden = hidden;
  c.gelu = autograd::GeluApprox::tanh;
  c.init = models::Init::trunc_normal(0.3);
  return c;
}

SpheroMoEConfig tiny_moe(int64_t dim, int64_t core, int64_t univ, int64_t core_hidden) {
  SpheroMoEConfig m;
  m.dim = dim;
  m.core_experts = core;
  m.univ_experts = univ;
  m.core_hidden = core_hidden;
  m.noise = false;
  m.expert_dropout = 0.0;
  return m;
}

// A ViT whose blocks in `moe_blocks` hold SpheroMoE(m), the others a dense MLP of the config.
std::unique_ptr<ViT> make_vit(const ViTConfig& c, std::set<int> moe_blocks = {},
                              SpheroMoEConfig m = {}) {
  return std::make_unique<ViT>(c, [=](int i) -> std::shared_ptr<models::FeedForward> {
    if (moe_blocks.count(i)) return std::make_shared<SpheroMoE>(m);
    models::MLPConfig mc;
    mc.dim = c.dim;
    mc.hidden = c.mlp_hidden;
    mc.gelu = c.gelu;
    mc.init = c.init;
    return std::make_shared<models::MLP>(mc);
  });
}

// Generic values for the parameters init leaves trivial (biases zero, LayerNorm weights one), so
// copies and slices are distinguishable from a fresh init.
void randomize(ParamSet& ps, uint64_t stream) {
  for (const auto& e : ps.entries()) {
    Tensor t = e.var.data();
    std::vector<double> v = t.to_vector<double>();
    std::vector<double> r = randn(e.shape, stream++, DType::f64, 0.2).to_vector<double>();
    for (size_t j = 0; j < v.size(); ++j) v[j] += r[j];
    t.copy_(Tensor::from_vector(v, e.shape, t.dtype()));
  }
}

Tensor sample_images(int64_t B, uint64_t stream) { return randn({B, 8, 8, 2}, stream); }

struct Models {
  std::unique_ptr<ViT> src, tgt;
  std::unique_ptr<ParamSet> ps_src, ps_tgt;
};

// Source: dense, dim 12, hidden 24, depth 3. Target: dim Dt, depth 3, SpheroMoE in blocks 1, 2
// (3 core experts of hidden 16, 2 universal of hidden 4).
Models make_models(int64_t Dt) {
  Models m;
  m.src = make_vit(tiny_vit(12, 3, 24));
  m.ps_src = std::make_unique<ParamSet>(*m.src, 1);
  randomize(*m.ps_src, 100);
  m.tgt = make_vit(tiny_vit(Dt, 3, 2 * Dt), {1, 2}, tiny_moe(Dt, 3, 2, 16));
  m.ps_tgt = std::make_unique<ParamSet>(*m.tgt, 2);
  return m;
}

bool sorted_unique_in_range(const std::vector<int64_t>& v, int64_t n) {
  for (size_t j = 0; j < v.size(); ++j) {
    if (v[j] < 0 || v[j] >= n) return false;
    if (j > 0 && v[j] <= v[j - 1]) return false;
  }
  return true;
}

// Every expert of every MoE block of the target against plain-loop slices of the source.
void check_expert_slices(const RecycleResult& r, const ViT& src, const ViT& tgt) {
  int experts_checked = 0;
  for (size_t i = 0; i < tgt.blocks.size(); ++i) {
    auto layer = std::dynamic_pointer_cast<SpheroMoE>(tgt.blocks[i]->mlp);
    if (!layer) continue;
    auto mlp = std::dynamic_pointer_cast<models::MLP>(src.blocks[i]->mlp);
    const int64_t Hs = mlp->cfg.hidden, Ds = src.cfg.dim, Dt = tgt.cfg.dim;
    auto W1 = mlp->fc1->weight.data().to_vector<double>();  // [Hs, Ds]
    auto B1 = mlp->fc1->bias.data().to_vector<double>();
    auto W2 = mlp->fc2->weight.data().to_vector<double>();  // [Ds, Hs]
    auto B2 = mlp->fc2->bias.data().to_vector<double>();
    for (std::string path : {"core", "univ"}) {
      const auto& ex = path == "core" ? layer->core : layer->univ;
      const std::string pre = "blocks." + std::to_string(i) + ".mlp." + path + ".";
      const int64_t E = ex->experts, k = ex->hidden;
      auto w1 = r.tensors.at(pre + "fc1.weight").to_vector<double>();  // [E, k, Dt]
      auto b1 = r.tensors.at(pre + "fc1.bias").to_vector<double>();    // [E, k]
      auto w2 = r.tensors.at(pre + "fc2.weight").to_vector<double>();  // [E, Dt, k]
      auto b2 = r.tensors.at(pre + "fc2.bias").to_vector<double>();    // [E, Dt]
      for (int64_t e = 0; e < E; ++e) {
        const std::string key =
            "blocks." + std::to_string(i) + ".mlp." + path + "." + std::to_string(e);
        INFO(key);
        const auto& hid = r.hidden_index.at(key);
        const auto& ch = r.channel_index.at(key);
        REQUIRE(int64_t(hid.size()) == k);
        REQUIRE(int64_t(ch.size()) == Dt);
        CHECK(sorted_unique_in_range(hid, Hs));
        CHECK(sorted_unique_in_range(ch, Ds));
        bool same = true;
        for (int64_t a = 0; a < k; ++a) {
          const int64_t h = hid[size_t(a)];
          same &= b1[size_t(e * k + a)] == B1[size_t(h)];
          for (int64_t c = 0; c < Dt; ++c) {
            const int64_t d = ch[size_t(c)];
            same &= w1[size_t((e * k + a) * Dt + c)] == W1[size_t(h * Ds + d)];
            same &= w2[size_t((e * Dt + c) * k + a)] == W2[size_t(d * Hs + h)];
          }
        }
        for (int64_t c = 0; c < Dt; ++c)
          same &= b2[size_t(e * Dt + c)] == B2[size_t(ch[size_t(c)])];
        CHECK(same);
        ++experts_checked;
      }
    }
  }
  CHECK(experts_checked == 10);  // 2 blocks × (3 core + 2 universal)
}

const RecycleMethod kMethods[] = {RecycleMethod::importance, RecycleMethod::random,
                                  RecycleMethod::uniform, RecycleMethod::coactivation};

struct TempFile {
  std::string path;
  explicit TempFile(const std::string& name)
      : path((std::filesystem::temp_directory_path() /
              ("recycle_" + std::to_string(getpid()) + "_" + name))
                 .string()) {}
  ~TempFile() { std::filesystem::remove(path); }
};

}  // namespace

TEST_CASE("recycle/slices: every expert is an exact slice of the source at its indices") {
  for (int64_t Dt : {8, 12}) {
    Models m = make_models(Dt);
    Tensor images = sample_images(5, 1);
    for (RecycleMethod method : kMethods) {
      INFO("method " << models::recycle_method_name(method) << ", target dim " << Dt);
      RecycleOptions o;
      o.method = method;
      o.seed = 7;
      RecycleResult r = models::recycle(*m.src, *m.tgt, images, o);
      check_expert_slices(r, *m.src, *m.tgt);
      // The result loads into the target (shapes and names are the target's).
      CHECK(m.ps_tgt->load(r.tensors, false).size() == r.tensors.size());
    }
  }
}

TEST_CASE("recycle/statistics: activation norms equal a reference built from ViT::tokens") {
  // MoE in block 1: its input is the output of block 0, which a depth-1 ViT with the same
  // parameters computes through the already-tested ViT::tokens.
  auto src = make_vit(tiny_vit(12, 2, 24));
  ParamSet ps(*src, 1, DType::f64);
  randomize(ps, 300);
  auto tgt = make_vit(tiny_vit(12, 2, 24), {1}, tiny_moe(12, 2, 1, 16));
  ParamSet pt(*tgt, 2);
  auto one = make_vit(tiny_vit(12, 1, 24));
  ParamSet p1(*one, 3, DType::f64);
  std::map<std::string, Tensor> named;
  for (const auto& [n, t] : ps.named_tensors()) named[n] = t;
  p1.load(named, false);

  Tensor images = sample_images(5, 2);
  RecycleOptions o;
  o.max_images = 3;  // only the first 3 images, in chunks of 2
  o.batch = 2;
  RecycleResult r = models::recycle(*src, *tgt, images, o);
  CHECK(r.images_used == 3);

  autograd::NoGradGuard ng;
  Context ctx;
  Var x = one->tokens(Var(images.narrow(0, 0, 3).to(DType::f64)), ctx);
  const models::Block& b = *src->blocks[1];
  Var h = autograd::add(x, b.attn->forward(b.norm1->forward(x), ctx));
  auto z = b.norm2->forward(h).data().to_vector<double>();  // [3, N, 12]
  auto mlp = std::dynamic_pointer_cast<models::MLP>(b.mlp);
  auto g = autograd::gelu(mlp->fc1->forward(b.norm2->forward(h)), autograd::GeluApprox::tanh)
               .data()
               .to_vector<double>();  // [3, N, 24]
  std::vector<double> cref(12, 0.0), href(24, 0.0);
  for (size_t j = 0; j < z.size(); ++j) cref[j % 12] += z[j] * z[j];
  for (size_t j = 0; j < g.size(); ++j) href[j % 24] += g[j] * g[j];
  for (double& v : cref) v = std::sqrt(v);
  for (double& v : href) v = std::sqrt(v);
  CHECK_CLOSE(Tensor::from_vector(r.channel_norm.at("blocks.1"), {12}),
              Tensor::from_vector(cref, {12}), 1e-9, 1e-12);
  CHECK_CLOSE(Tensor::from_vector(r.hidden_norm.at("blocks.1"), {24}),
              Tensor::from_vector(href, {24}), 1e-9, 1e-12);
  CHECK(r.hidden_norm.count("blocks.0") == 0);  // not an MoE block in the target
}

TEST_CASE("recycle/importance: high-norm neurons are drawn far more often than under random") {
  // fc1 rows scaled by 1.2^j: hidden neuron norms span about two orders of magnitude.
  auto src = make_vit(tiny_vit(12, 1, 32));
  ParamSet ps(*src, 1);
  auto mlp = std::dynamic_pointer_cast<models::MLP>(src->blocks[0]->mlp);
  Tensor w = mlp->fc1->weight.data();
  std::vector<double> v = w.to_vector<double>();
  for (int64_t j = 0; j < 32; ++j)
    for (int64_t c = 0; c < 12; ++c) v[size_t(j * 12 + c)] *= 0.02 * std::pow(1.2, double(j));
  w.copy_(Tensor::from_vector(v, w.shape(), w.dtype()));
  auto tgt = make_vit(tiny_vit(12, 1, 24), {0}, tiny_moe(12, 8, 0, 8));
  ParamSet pt(*tgt, 2);
  Tensor images = sample_images(4, 3);

  auto frequencies = [&](RecycleMethod method, std::vector<double>& norm) {
    std::vector<double> count(32, 0.0);
    int draws = 0;
    for (uint64_t seed = 0; seed < 10; ++seed) {
      RecycleOptions o;
      o.method = method;
      o.seed = seed;
      RecycleResult r = models::recycle(*src, *tgt, images, o);
      norm = r.hidden_norm.at("blocks.0");
      for (int e = 0; e < 8; ++e, ++draws)
        for (int64_t j : r.hidden_index.at("blocks.0.mlp.core." + std::to_string(e)))
          count[size_t(j)]++;
    }
    for (double& c : count) c /= draws;
    return count;
  };
  std::vector<double> norm;
  auto imp = frequencies(RecycleMethod::importance, norm);
  auto rnd = frequencies(RecycleMethod::random, norm);
  std::vector<int64_t> order(32);
  for (int64_t j = 0; j < 32; ++j) order[size_t(j)] = j;
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return norm[size_t(a)] > norm[size_t(b)]; });
  auto mean_over = [&](const std::vector<double>& f, int from, int to) {
    double s = 0;
    for (int q = from; q < to; ++q) s += f[size_t(order[size_t(q)])];
    return s / (to - from);
  };
  double top_norm = 0, bottom_norm = 0;
  for (int q = 0; q < 8; ++q) top_norm += norm[size_t(order[size_t(q)])];
  for (int q = 24; q < 32; ++q) bottom_norm += norm[size_t(order[size_t(q)])];
  REQUIRE(top_norm > 20 * bottom_norm);  // the construction worked
  const double imp_top = mean_over(imp, 0, 8), imp_bottom = mean_over(imp, 24, 32);
  const double rnd_top = mean_over(rnd, 0, 8), rnd_bottom = mean_over(rnd, 24, 32);
  INFO("importance top " << imp_top << " bottom " << imp_bottom << "; random top " << rnd_top
                         << " bottom " << rnd_bottom);
  // Random: every neuron with probability k/n = 1/4 (80 draws: standard error of a mean over 8
  // neurons ≈ 0.02).
  CHECK(rnd_top > 0.15);
  CHECK(rnd_top < 0.35);
  CHECK(rnd_bottom > 0.15);
  CHECK(rnd_bottom < 0.35);
  CHECK(imp_top > 2 * rnd_top);
  CHECK(imp_bottom < 0.25 * rnd_bottom);
}

TEST_CASE("recycle/seeds: the same seed gives the same experts, another seed others") {
  Models m = make_models(8);
  Tensor images = sample_images(3, 4);
  RecycleOptions o;
  o.seed = 11;
  RecycleResult a = models::recycle(*m.src, *m.tgt, images, o);
  RecycleResult b = models::recycle(*m.src, *m.tgt, images, o);
  o.seed = 12;
  RecycleResult c = models::recycle(*m.src, *m.tgt, images, o);
  CHECK(a.hidden_index == b.hidden_index);
  CHECK(a.channel_index == b.channel_index);
  CHECK(a.hidden_index != c.hidden_index);
  CHECK(a.channel_index != c.channel_index);
  // Experts within one draw differ from each other.
  CHECK(a.hidden_index.at("blocks.1.mlp.core.0") != a.hidden_index.at("blocks.1.mlp.core.1"));
}

TEST_CASE("recycle/equal width: every channel in order, hidden neurons sampled") {
  Models m = make_models(12);
  Tensor images = sample_images(3, 5);
  for (RecycleMethod method : kMethods) {
    RecycleOptions o;
    o.method = method;
    RecycleResult r = models::recycle(*m.src, *m.tgt, images, o);
    std::vector<int64_t> all(12);
    for (int64_t c = 0; c < 12; ++c) all[size_t(c)] = c;
    for (const auto& [key, ch] : r.channel_index) {
      INFO(key);
      CHECK(ch == all);
    }
    CHECK(r.channel_index.size() == 10);
    // Hidden neurons are a proper subset (16 of 24 for core experts).
    CHECK(r.hidden_index.at("blocks.2.mlp.core.0").size() == 16);
  }
}

TEST_CASE("recycle/uniform: evenly spaced indices with a different offset per expert") {
  Models m = make_models(8);
  RecycleOptions o;
  o.method = RecycleMethod::uniform;
  RecycleResult r = models::recycle(*m.src, *m.tgt, sample_images(2, 6), o);
  // Core experts: 16 of 24 hidden neurons, gaps of 1 or 2 (24/16 = 1.5), offsets differ.
  std::set<std::vector<int64_t>> distinct;
  for (int e = 0; e < 3; ++e) {
    const auto& hid = r.hidden_index.at("blocks.1.mlp.core." + std::to_string(e));
    for (size_t j = 1; j < hid.size(); ++j)
      CHECK((hid[j] - hid[j - 1] == 1 || hid[j] - hid[j - 1] == 2));
    CHECK(hid.front() <= 1);
    CHECK(hid.back() >= 22);
    const auto& ch = r.channel_index.at("blocks.1.mlp.core." + std::to_string(e));
    for (size_t j = 1; j < ch.size(); ++j)
      CHECK((ch[j] - ch[j - 1] == 1 || ch[j] - ch[j - 1] == 2));
    distinct.insert(hid);
  }
  CHECK(distinct.size() == 3);
  // Universal experts: every 4th of the evenly spaced core-width (16) draw: ⌊(4j + e/E)·24/16⌋.
  for (int e = 0; e < 2; ++e) {
    std::vector<int64_t> expect;
    for (int j = 0; j < 4; ++j)
      expect.push_back(int64_t(std::floor((4 * j + e / 2.0) * 24.0 / 16.0)));
    CHECK(r.hidden_index.at("blocks.1.mlp.univ." + std::to_string(e)) == expect);
  }
}

TEST_CASE("recycle/universal experts: an evenly spaced quarter of a core-width draw") {
  // Importance draws for a universal expert use the core width (16 of 24), then keep 4 of them
  // evenly spaced: the kept neurons are spread over the whole range, not the first 4 drawn.
  Models m = make_models(8);
  RecycleOptions o;
  RecycleResult r = models::recycle(*m.src, *m.tgt, sample_images(3, 7), o);
  for (int e = 0; e < 2; ++e) {
    const auto& hid = r.hidden_index.at("blocks.2.mlp.univ." + std::to_string(e));
    REQUIRE(hid.size() == 4);
    // Positions 0, 4, 8, 12 of 16 sorted draws from 24: the last kept one is at least the 13th
    // smallest of 24 possible indices (index >= 12), the first at most the 9th (index <= 8).
    CHECK(hid.back() >= 12);
    CHECK(hid.front() <= 8);
  }
}

TEST_CASE("recycle/coactivation: experts take groups of co-activated neurons") {
  // The source's 24 hidden neurons come in 6 groups of 4 identical fc1 rows (and biases):
  // identical activations, correlation 1 within a group, less across. Experts of hidden width 4
  // must each take one whole group, different groups for different experts.
  auto src = make_vit(tiny_vit(12, 1, 24));
  ParamSet ps(*src, 1);
  randomize(ps, 400);
  auto mlp = std::dynamic_pointer_cast<models::MLP>(src->blocks[0]->mlp);
  for (Tensor t : {mlp->fc1->weight.data(), mlp->fc1->bias.data()})
    for (int64_t j = 0; j < 24; ++j) t.select(0, j).copy_(t.select(0, j - j % 4));
  auto tgt = make_vit(tiny_vit(12, 1, 24), {0}, tiny_moe(12, 5, 0, 4));
  ParamSet pt(*tgt, 2);
  RecycleOptions o;
  o.method = RecycleMethod::coactivation;
  RecycleResult r = models::recycle(*src, *tgt, sample_images(4, 8), o);
  std::set<int64_t> groups;
  for (int e = 0; e < 5; ++e) {
    const auto& hid = r.hidden_index.at("blocks.0.mlp.core." + std::to_string(e));
    INFO("expert " << e);
    REQUIRE(hid.size() == 4);
    CHECK(hid[0] % 4 == 0);
    for (int j = 0; j < 4; ++j) CHECK(hid[size_t(j)] == hid[0] + j);
    groups.insert(hid[0] / 4);
  }
  CHECK(groups.size() == 5);
}

TEST_CASE("recycle/non-expert weights: copied exactly where shapes match, else kept at init") {
  Models m = make_models(12);
  Tensor images = sample_images(2, 9);
  RecycleResult r = models::recycle(*m.src, *m.tgt, images, RecycleOptions());
  std::map<std::string, Tensor> src_params;
  for (const auto& p : m.src->parameters()) src_params[p.name] = p.var.data();
  std::set<std::string> copied(r.copied.begin(), r.copied.end());
  for (const char* n : {"patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token",
                        "pos_embed", "blocks.0.attn.qkv.weight", "blocks.2.attn.proj.bias",
                        "blocks.1.norm2.weight", "blocks.0.mlp.fc1.weight", "norm.bias"}) {
    INFO(n);
    CHECK(copied.count(n) == 1);
    CHECK_CLOSE(r.tensors.at(n), src_params.at(n), 0, 0);
  }
  std::set<std::string> kept(r.kept_init.begin(), r.kept_init.end());
  for (const char* n : {"head.weight", "head.bias", "blocks.1.mlp.phi", "blocks.2.mlp.tau_dispatch",
                        "blocks.2.mlp.phi_norm.weight"}) {
    INFO(n);
    CHECK(kept.count(n) == 1);
    CHECK(r.tensors.count(n) == 0);
  }
  // Every target parameter is accounted for exactly once.
  size_t experts = 0;
  for (const auto& [n, t] : r.tensors) experts += copied.count(n) == 0;
  CHECK(experts == 16);  // 2 blocks × 2 paths × {fc1, fc2} × {weight, bias}
  CHECK(copied.size() + kept.size() + experts == m.tgt->parameters().size());
  CHECK(r.report.find("head.weight (new head)") != std::string::npos);
}

TEST_CASE("recycle/narrow target: non-expert weights from a dense model of the target width") {
  Models m = make_models(8);
  Tensor images = sample_images(2, 10);
  // Without one, the narrower target keeps its attention and embeddings (shapes differ).
  RecycleResult r = models::recycle(*m.src, *m.tgt, images, RecycleOptions());
  std::set<std::string> kept(r.kept_init.begin(), r.kept_init.end());
  CHECK(kept.count("blocks.0.attn.qkv.weight") == 1);
  CHECK(r.report.find("blocks.0.attn.qkv.weight (source [36, 12] vs target [24, 8])") !=
        std::string::npos);
  // With a dense ViT of width 8, every non-expert, non-head parameter comes from it.
  auto base = make_vit(tiny_vit(8, 3, 16));
  ParamSet pb(*base, 5);
  randomize(pb, 600);
  RecycleResult rb = models::recycle(*m.src, *m.tgt, images, RecycleOptions(), base.get());
  std::map<std::string, Tensor> bp;
  for (const auto& p : base->parameters()) bp[p.name] = p.var.data();
  for (const char* n : {"blocks.0.attn.qkv.weight", "pos_embed", "blocks.0.mlp.fc2.bias",
                        "blocks.2.norm1.weight"}) {
    INFO(n);
    CHECK_CLOSE(rb.tensors.at(n), bp.at(n), 0, 0);
  }
  // The experts still come from the (wider) source.
  check_expert_slices(rb, *m.src, *m.tgt);
}

TEST_CASE("recycle/save: the checkpoint loads into a fresh target and the forward runs") {
  Models m = make_models(8);
  RecycleOptions o;
  o.method = RecycleMethod::random;
  o.seed = 3;
  o.source_name = "dense-vit-tiny.safetensors";
  RecycleResult r = models::recycle(*m.src, *m.tgt, sample_images(3, 11), o);
  TempFile f("recycled.safetensors");
  models::save_recycled(f.path, r, *m.tgt);
  engine::SafetensorsFile file = engine::load_safetensors(f.path);
  CHECK(file.metadata.at("recycle_method") == "random");
  CHECK(file.metadata.at("recycle_seed") == "3");
  CHECK(file.metadata.at("recycle_source") == "dense-vit-tiny.safetensors");
  CHECK(file.metadata.at("recycle_images") == "3");

  auto fresh = make_vit(tiny_vit(8, 3, 16), {1, 2}, tiny_moe(8, 3, 2, 16));
  ParamSet pf(*fresh, 99);
  pf.load(file.tensors, /*strict=*/true);
  // Recycled values where given, the target's own values elsewhere.
  for (const auto& p : m.tgt->parameters()) {
    INFO(p.name);
    const Tensor& expect = r.tensors.count(p.name) ? r.tensors.at(p.name) : p.var.data();
    CHECK_CLOSE(pf.at(p.name).var.data(), expect, 0, 0);
  }
  m.ps_tgt->load(r.tensors, false);
  autograd::NoGradGuard ng;
  Context c1, c2;
  Tensor images = sample_images(2, 12);
  Tensor a = fresh->forward(Var(images), c1).data();
  Tensor b = m.tgt->forward(Var(images), c2).data();
  CHECK(a.shape() == Shape({2, 5}));
  for (double v : a.to_vector<double>()) CHECK(std::isfinite(v));
  CHECK_CLOSE(a, b, 0, 0);
}

TEST_CASE("recycle/timm: a Conv2d patch weight maps to the same patch embedding") {
  const int64_t D = 6, C = 2, p = 4;
  Tensor conv_w = randn({D, C, p, p}, 20), conv_b = randn({D}, 21);
  Tensor img = randn({1, 8, 8, C}, 22);
  std::map<std::string, Tensor> timm = {{"module.patch_embed.proj.weight", conv_w},
                                        {"patch_embed.proj.bias", conv_b},
                                        {"blocks.0.attn.qkv.weight", randn({3 * D, D}, 23)},
                                        {"head.weight", randn({5, D}, 24)}};
  auto ours = models::map_timm_vit(timm);
  CHECK(ours.count("patch_embed.proj.weight") == 1);
  CHECK(ours.at("patch_embed.proj.weight").shape() == Shape({D, p * p * C}));
  CHECK_CLOSE(ours.at("blocks.0.attn.qkv.weight"), timm.at("blocks.0.attn.qkv.weight"), 0, 0);
  CHECK(ours.size() == 4);

  ViTConfig c = tiny_vit(D, 1, 12);
  auto vit = make_vit(c);
  ParamSet ps(*vit, 1);
  ps.load(ours, false);
  autograd::NoGradGuard ng;
  auto got = vit->patch_proj->forward(autograd::patchify(Var(img), 1, p)).data();  // [1, 4, D]
  // Reference: the strided convolution, plain loops, on the channels-last image.
  auto w = conv_w.to_vector<double>(), b = conv_b.to_vector<double>(), x = img.to_vector<double>();
  std::vector<double> ref;
  for (int64_t iy = 0; iy < 2; ++iy)
    for (int64_t ix = 0; ix < 2; ++ix)
      for (int64_t d = 0; d < D; ++d) {
        double s = b[size_t(d)];
        for (int64_t ch = 0; ch < C; ++ch)
          for (int64_t dy = 0; dy < p; ++dy)
            for (int64_t dx = 0; dx < p; ++dx)
              s += w[size_t(((d * C + ch) * p + dy) * p + dx)] *
                   x[size_t(((iy * p + dy) * 8 + ix * p + dx) * C + ch)];
        ref.push_back(s);
      }
  CHECK_CLOSE(got, Tensor::from_vector(ref, {1, 4, D}), 1e-5, 1e-5);
}

TEST_CASE("recycle/timm: unknown names are errors when strict, dropped otherwise") {
  std::map<std::string, Tensor> timm = {{"blocks.0.ls1.gamma", randn({4}, 1)},
                                        {"norm_pre.weight", randn({4}, 2)},
                                        {"blocks.x.norm1.weight", randn({4}, 3)},
                                        {"fc_norm.bias", randn({4}, 4)}};
  CHECK_THROWS_CONTAINING(models::map_timm_vit(timm),
                          "map_timm_vit: 3 tensors with no counterpart in our ViT");
  CHECK_THROWS_CONTAINING(models::map_timm_vit(timm), "blocks.0.ls1.gamma");
  auto ours = models::map_timm_vit(timm, false);
  CHECK(ours.size() == 1);
  CHECK(ours.count("fc_norm.bias") == 1);
  CHECK_THROWS_CONTAINING(models::map_timm_vit({{"patch_embed.proj.weight", randn({6, 2, 4}, 5)}}),
                          "must be a square Conv2d weight [D, C, p, p]");
}

TEST_CASE("recycle/errors: inconsistent models, images and options are named") {
  Models m = make_models(8);
  Tensor images = sample_images(2, 13);
  RecycleOptions o;
  // A source without a dense MLP where the target has an MoE.
  auto moe_src = make_vit(tiny_vit(12, 3, 24), {1}, tiny_moe(12, 2, 1, 16));
  ParamSet pm(*moe_src, 1);
  CHECK_THROWS_CONTAINING(models::recycle(*moe_src, *m.tgt, images, o),
                          "recycle: source block 1 has a SpheroMoE feed-forward, not a dense MLP");
  // Source too shallow, too narrow, too few hidden neurons.
  auto shallow = make_vit(tiny_vit(12, 2, 24));
  ParamSet ps2(*shallow, 1);
  CHECK_THROWS_CONTAINING(models::recycle(*shallow, *m.tgt, images, o),
                          "target block 2 holds a SpheroMoE layer but the source has only 2");
  auto narrow = make_vit(tiny_vit(6, 3, 24));
  ParamSet ps3(*narrow, 1);
  CHECK_THROWS_CONTAINING(models::recycle(*narrow, *m.tgt, images, o),
                          "recycle: target dim 8 is wider than the source dim 6");
  auto thin = make_vit(tiny_vit(12, 3, 10));
  ParamSet ps4(*thin, 1);
  CHECK_THROWS_CONTAINING(models::recycle(*thin, *m.tgt, images, o),
                          "core experts have hidden width 16 but the source MLP has only 10");
  // A target without MoE, unmaterialised models, wrong images.
  auto dense = make_vit(tiny_vit(8, 3, 16));
  ParamSet ps5(*dense, 1);
  CHECK_THROWS_CONTAINING(models::recycle(*m.src, *dense, images, o),
                          "recycle: the target has no SpheroMoE block");
  auto bare = make_vit(tiny_vit(8, 3, 16), {1, 2}, tiny_moe(8, 3, 2, 16));
  CHECK_THROWS_CONTAINING(models::recycle(*m.src, *bare, images, o),
                          "(build a ParamSet for the target first)");
  CHECK_THROWS_CONTAINING(models::recycle(*m.src, *m.tgt, randn({2, 8, 8, 3}, 1), o),
                          "images must be [B, 8, 8, 2] for the source ViT, got f32[2, 8, 8, 3]");
  CHECK_THROWS_CONTAINING(models::recycle(*m.src, *m.tgt, images.narrow(0, 0, 0), o),
                          "recycle: no sample images");
  o.batch = 0;
  CHECK_THROWS_CONTAINING(models::recycle(*m.src, *m.tgt, images, o),
                          "recycle: batch must be positive");
  CHECK_THROWS_CONTAINING(models::parse_recycle_method("greedy"),
                          "unknown method 'greedy' (importance, random, uniform, coactivation)");
  CHECK(models::parse_recycle_method("coactivation") == RecycleMethod::coactivation);
  // save_recycled with tensors of another model.
  RecycleResult r;
  r.tensors["blocks.0.attn.qkv.weight"] = Tensor::zeros({3, 3});
  TempFile f("bad.safetensors");
  CHECK_THROWS_CONTAINING(models::save_recycled(f.path, r, *m.tgt),
                          "save_recycled: 'blocks.0.attn.qkv.weight' has shape f32[3, 3]");
  r.tensors.clear();
  r.tensors["nonexistent.weight"] = Tensor::zeros({3});
  CHECK_THROWS_CONTAINING(models::save_recycled(f.path, r, *m.tgt),
                          "1 recycled tensors are not parameters of the target");
}
