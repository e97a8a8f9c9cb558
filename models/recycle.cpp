#include "models/recycle.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "autograd/concat.h"
#include "autograd/elementwise.h"
#include "autograd/index.h"
#include "autograd/matmul.h"
#include "autograd/patchify.h"
#include "autograd/reduce.h"
#include "autograd/views.h"
#include "engine/error.h"
#include "engine/philox.h"
#include "engine/safetensors.h"
#include "models/spheromoe.h"

namespace models {

std::string recycle_method_name(RecycleMethod m) {
  switch (m) {
    case RecycleMethod::importance:
      return "importance";
    case RecycleMethod::random:
      return "random";
    case RecycleMethod::uniform:
      return "uniform";
    case RecycleMethod::coactivation:
      return "coactivation";
  }
  return "?";
}

RecycleMethod parse_recycle_method(const std::string& name) {
  for (auto m : {RecycleMethod::importance, RecycleMethod::random, RecycleMethod::uniform,
                 RecycleMethod::coactivation})
    if (recycle_method_name(m) == name) return m;
  ENGINE_CHECK(false, "recycle: unknown method '", name,
               "' (importance, random, uniform, coactivation)");
  return RecycleMethod::importance;
}

namespace {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

std::string block_key(size_t i) { return "blocks." + std::to_string(i); }

void check_materialised(const Module& m, const char* what) {
  for (const auto& p : m.parameters())
    ENGINE_CHECK(p.var.data().defined(), "recycle: the ", what, "'s parameter '", p.name,
                 "' has no data (build a ParamSet for the ", what, " first)");
}

// Per MoE block: sums over every (image, token) of the source's activations.
struct BlockStats {
  std::vector<double> hid_sq, chan_sq;  // Σ h², Σ z² per hidden neuron / residual channel
  std::vector<double> hid_sum;          // Σ h (coactivation only)
  Tensor hid_gram;                      // Σ h hᵀ, f64 [H, H] (coactivation only)
  int64_t tokens = 0;
};

void accumulate(std::vector<double>& acc, const Var& rows /* [T, K] f64 */, bool square) {
  Var s = autograd::sum(square ? autograd::square(rows) : rows, 0);
  std::vector<double> v = s.data().to_vector<double>();
  if (acc.empty()) acc.assign(v.size(), 0.0);
  for (size_t j = 0; j < v.size(); ++j) acc[j] += v[j];
}

// The dense source's patch embedding + CLS + positions (ViT::tokens before the blocks, eval).
Var embed(const ViT& vit, const Var& images) {
  const int64_t B = images.size(0), D = vit.cfg.dim;
  Var t = vit.patch_proj->forward(autograd::patchify(images, 1, vit.cfg.patch));
  if (vit.cfg.cls_token) t = autograd::concat({autograd::expand(vit.cls, {B, 1, D}), t}, 1);
  return autograd::add(t, autograd::narrow(vit.pos, 1, 0, t.size(1)));
}

// k of n indices without replacement with probability proportional to w (Efraimidis–Spirakis:
// the k largest keys log(u)/w, u ∈ (0, 1] from Philox), sorted. Zero weights come last.
std::vector<int64_t> weighted_choose(const std::vector<double>& w, int64_t k, uint64_t seed,
                                     uint64_t stream) {
  const int64_t n = int64_t(w.size());
  std::vector<int64_t> out;
  if (k >= n) {
    for (int64_t j = 0; j < n; ++j) out.push_back(j);
    return out;
  }
  struct Key {
    double key, u;
    int64_t j;
  };
  std::vector<Key> keys(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    const double u =
        double((engine::philox_u32(seed, stream, uint64_t(j)) >> 8) + 1u) * 5.9604644775390625e-08;
    const double wj = w[size_t(j)];
    keys[size_t(j)] = {wj > 0 ? std::log(u) / wj : -std::numeric_limits<double>::infinity(), u, j};
  }
  std::partial_sort(keys.begin(), keys.begin() + k, keys.end(), [](const Key& a, const Key& b) {
    if (a.key != b.key) return a.key > b.key;
    if (a.u != b.u) return a.u > b.u;
    return a.j < b.j;
  });
  for (int64_t i = 0; i < k; ++i) out.push_back(keys[size_t(i)].j);
  std::sort(out.begin(), out.end());
  return out;
}

// k evenly spaced indices of n with offset e/E of a step: ⌊(j + e/E)·n/k⌋ (distinct as n ≥ k).
std::vector<int64_t> evenly_spaced(int64_t n, int64_t k, int64_t e, int64_t E) {
  std::vector<int64_t> out;
  for (int64_t j = 0; j < std::min(n, k); ++j) out.push_back((j * E + e) * n / (k * E));
  return out;
}

// Pearson correlation of the hidden neurons over the sample tokens, [H·H] row-major.
std::vector<double> correlation(const BlockStats& st) {
  const int64_t H = int64_t(st.hid_sq.size());
  const double T = double(st.tokens);
  // cov = Σhhᵀ/T − μμᵀ, with autograd ops on the [H, H] matrix; the normalisation by the
  // standard deviations needs only the diagonal (Σh²/T − μ²), done below on the host vectors.
  std::vector<double> mu(static_cast<size_t>(H));
  for (int64_t j = 0; j < H; ++j) mu[size_t(j)] = st.hid_sum[size_t(j)] / T;
  Var m(Tensor::from_vector(mu, {H, 1}, DType::f64));
  Var cov = autograd::sub(autograd::mul_scalar(Var(st.hid_gram), 1.0 / T),
                          autograd::matmul(m, m, false, true));
  std::vector<double> inv_sd(static_cast<size_t>(H));
  for (int64_t j = 0; j < H; ++j) {
    const double var = st.hid_sq[size_t(j)] / T - mu[size_t(j)] * mu[size_t(j)];
    inv_sd[size_t(j)] = var > 1e-12 ? 1.0 / std::sqrt(var) : 0.0;
  }
  Var s(Tensor::from_vector(inv_sd, {H, 1}, DType::f64));
  return autograd::mul(cov, autograd::matmul(s, s, false, true)).data().to_vector<double>();
}

// Co-activation groups of one path: expert e seeded by the most important neuron not covered by
// an earlier expert (else the most important not yet a seed), plus its k − 1 most correlated.
std::vector<std::vector<int64_t>> coactivation_groups(const std::vector<double>& corr,
                                                      const std::vector<double>& norm,
                                                      int64_t experts, int64_t k) {
  const int64_t H = int64_t(norm.size());
  std::vector<int64_t> by_importance(static_cast<size_t>(H));
  for (int64_t j = 0; j < H; ++j) by_importance[size_t(j)] = j;
  std::stable_sort(by_importance.begin(), by_importance.end(),
                   [&](int64_t a, int64_t b) { return norm[size_t(a)] > norm[size_t(b)]; });
  std::vector<char> covered(size_t(H), 0), seeded(size_t(H), 0);
  std::vector<std::vector<int64_t>> groups;
  for (int64_t e = 0; e < experts; ++e) {
    int64_t seed = -1;
    for (int64_t j : by_importance)
      if (!covered[size_t(j)]) {
        seed = j;
        break;
      }
    if (seed < 0)
      for (int64_t j : by_importance)
        if (!seeded[size_t(j)]) {
          seed = j;
          break;
        }
    if (seed < 0) seed = by_importance[size_t(e % H)];
    seeded[size_t(seed)] = 1;
    std::vector<int64_t> others;
    for (int64_t j = 0; j < H; ++j)
      if (j != seed) others.push_back(j);
    const double* row = corr.data() + seed * H;
    const int64_t take = std::min<int64_t>(k - 1, int64_t(others.size()));
    std::partial_sort(others.begin(), others.begin() + take, others.end(),
                      [&](int64_t a, int64_t b) {
                        if (row[a] != row[b]) return row[a] > row[b];
                        return a < b;
                      });
    std::vector<int64_t> g(others.begin(), others.begin() + take);
    g.push_back(seed);
    std::sort(g.begin(), g.end());
    for (int64_t j : g) covered[size_t(j)] = 1;
    groups.push_back(std::move(g));
  }
  return groups;
}

Tensor index_tensor(const std::vector<int64_t>& idx) {
  return Tensor::from_vector(idx, {int64_t(idx.size())}, DType::i64);
}

// w[rows][:, cols] (either may be empty = all), as a plain tensor.
Tensor take(const Tensor& w, const std::vector<int64_t>* rows, const std::vector<int64_t>* cols) {
  Var v(w);
  if (rows) v = autograd::index_select(v, 0, index_tensor(*rows));
  if (cols) v = autograd::index_select(v, 1, index_tensor(*cols));
  return v.data();
}

std::string list_indices(const std::vector<int64_t>& v, size_t max_shown = 12) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < v.size() && i < max_shown; ++i) os << (i ? ", " : "") << v[i];
  if (v.size() > max_shown) os << ", ... (" << v.size() << ")";
  os << "]";
  return os.str();
}

}  // namespace

RecycleResult recycle(const ViT& source, const ViT& target, const Tensor& images,
                      const RecycleOptions& opts, const ViT* non_expert_source) {
  const ViT& base = non_expert_source ? *non_expert_source : source;
  check_materialised(source, "source");
  check_materialised(target, "target");
  check_materialised(base, "non-expert source");
  ENGINE_CHECK(opts.batch > 0, "recycle: batch must be positive, got ", opts.batch);
  ENGINE_CHECK(opts.max_images >= 0, "recycle: max_images must be >= 0, got ", opts.max_images);

  // Which target blocks are SpheroMoE, and whether the source can feed them.
  const int64_t Ds = source.cfg.dim, Dt = target.cfg.dim;
  std::vector<std::shared_ptr<SpheroMoE>> moe(target.blocks.size());
  size_t last = 0;
  bool any = false;
  for (size_t i = 0; i < target.blocks.size(); ++i) {
    moe[i] = std::dynamic_pointer_cast<SpheroMoE>(target.blocks[i]->mlp);
    if (!moe[i]) continue;
    ENGINE_CHECK(i < source.blocks.size(), "recycle: target block ", i,
                 " holds a SpheroMoE layer but the source has only ", source.blocks.size(),
                 " blocks");
    auto mlp = std::dynamic_pointer_cast<MLP>(source.blocks[i]->mlp);
    ENGINE_CHECK(mlp != nullptr, "recycle: source block ", i, " has a ",
                 source.blocks[i]->mlp->type(),
                 " feed-forward, not a dense MLP (recycling needs a dense source)");
    const auto& c = moe[i]->cfg;
    ENGINE_CHECK(c.dim == Dt, "recycle: target block ", i, " SpheroMoE has dim ", c.dim,
                 " but the target ViT has dim ", Dt);
    ENGINE_CHECK(Dt <= Ds, "recycle: target dim ", Dt, " is wider than the source dim ", Ds,
                 " (experts are cut out of the source, not grown)");
    ENGINE_CHECK(mlp->cfg.out == Ds, "recycle: source block ", i, " MLP maps to ", mlp->cfg.out,
                 " channels, not the model dim ", Ds);
    const int64_t Hs = mlp->cfg.hidden;
    ENGINE_CHECK(!moe[i]->core || c.core_hidden <= Hs, "recycle: block ", i,
                 " core experts have hidden width ", c.core_hidden, " but the source MLP has only ",
                 Hs, " hidden neurons");
    ENGINE_CHECK(!moe[i]->univ || c.univ_hidden <= Hs, "recycle: block ", i,
                 " universal experts have hidden width ", c.univ_hidden,
                 " but the source MLP has only ", Hs, " hidden neurons");
    last = i;
    any = true;
  }
  ENGINE_CHECK(any, "recycle: the target has no SpheroMoE block (nothing to recycle)");

  ENGINE_CHECK(images.defined() && images.dim() == 4 && images.size(1) == source.cfg.image_size &&
                   images.size(2) == source.cfg.image_size && images.size(3) == source.cfg.channels,
               "recycle: images must be [B, ", source.cfg.image_size, ", ", source.cfg.image_size,
               ", ", source.cfg.channels, "] for the source ViT, got ",
               images.defined() ? images.describe() : std::string("an undefined tensor"));
  const int64_t use =
      opts.max_images > 0 ? std::min(images.size(0), opts.max_images) : images.size(0);
  ENGINE_CHECK(use > 0, "recycle: no sample images (the statistics need at least one)");

  RecycleResult res;
  res.method = opts.method;
  res.seed = opts.seed;
  res.source_name = opts.source_name;
  res.images_used = use;
  const bool coact = opts.method == RecycleMethod::coactivation;

  // 1. Statistics of the dense source, block by block up to the last MoE block.
  std::vector<BlockStats> stats(last + 1);
  {
    autograd::NoGradGuard ng;
    Context ctx;  // eval: no dropout, no drop-path
    const DType sdt = source.patch_proj->weight.data().dtype();
    for (int64_t start = 0; start < use; start += opts.batch) {
      const int64_t len = std::min(opts.batch, use - start);
      Tensor chunk = images.narrow(0, start, len);
      chunk = chunk.dtype() == sdt ? chunk.contiguous() : chunk.to(sdt);
      Var x = embed(source, Var(chunk));
      for (size_t i = 0; i <= last; ++i) {
        const Block& b = *source.blocks[i];
        if (!moe[i]) {
          x = b.forward(x, ctx);
          continue;
        }
        const MLP& mlp = static_cast<const MLP&>(*b.mlp);
        Var h = autograd::add(x, b.attn->forward(b.norm1->forward(x), ctx));
        Var z = b.norm2->forward(h);
        Var hid = mlp.hidden(z, ctx);  // GELU output [B, N, H]
        x = autograd::add(h, mlp.fc2->forward(hid));
        BlockStats& st = stats[i];
        Var z2(z.data().reshape({-1, Ds}).to(DType::f64));
        Var h2(hid.data().reshape({-1, mlp.cfg.hidden}).to(DType::f64));
        accumulate(st.chan_sq, z2, true);
        accumulate(st.hid_sq, h2, true);
        if (coact) {
          accumulate(st.hid_sum, h2, false);
          Tensor g = autograd::matmul(h2, h2, true, false).data();
          st.hid_gram = st.hid_gram.defined() ? autograd::add(Var(st.hid_gram), Var(g)).data() : g;
        }
        st.tokens += z2.size(0);
      }
    }
  }

  // 2-3. Selection and slicing, block by block, path by path, expert by expert.
  std::ostringstream rep;
  rep << "checkpoint recycling (" << recycle_method_name(opts.method) << ", seed " << opts.seed
      << ") from " << (opts.source_name.empty() ? std::string("a dense ViT") : opts.source_name)
      << " over " << use << " images\n";
  const DType tdt = target.patch_proj->weight.data().dtype();
  for (size_t i = 0; i <= last; ++i) {
    if (!moe[i]) continue;
    const MLP& mlp = static_cast<const MLP&>(*source.blocks[i]->mlp);
    const SpheroMoE& layer = *moe[i];
    const int64_t Hs = mlp.cfg.hidden;
    BlockStats& st = stats[i];
    std::vector<double> hnorm(st.hid_sq.size()), cnorm(st.chan_sq.size());
    for (size_t j = 0; j < hnorm.size(); ++j) hnorm[j] = std::sqrt(st.hid_sq[j]);
    for (size_t j = 0; j < cnorm.size(); ++j) cnorm[j] = std::sqrt(st.chan_sq[j]);
    for (double v : hnorm)
      ENGINE_CHECK(std::isfinite(v), "recycle: non-finite hidden activations in source block ", i);
    for (double v : cnorm)
      ENGINE_CHECK(std::isfinite(v), "recycle: non-finite LN2 outputs in source block ", i);
    res.hidden_norm[block_key(i)] = hnorm;
    res.channel_norm[block_key(i)] = cnorm;
    std::vector<double> corr;
    if (coact) corr = correlation(st);
    if (mlp.cfg.gelu != layer.cfg.gelu)
      rep << "  note: block " << i << " source MLP and target experts use different GELU "
          << "approximations (erf vs tanh); the recycled experts compute a slightly different "
             "function\n";

    const Tensor W1 = mlp.fc1->weight.data(), W2 = mlp.fc2->weight.data();
    const Tensor b1 = mlp.fc1->bias.defined() ? mlp.fc1->bias.data() : Tensor();
    const Tensor b2 = mlp.fc2->bias.defined() ? mlp.fc2->bias.data() : Tensor();
    const std::string prefix = block_key(i) + ".mlp.";
    for (int path = 0; path < 2; ++path) {
      const auto& ex = path == 0 ? layer.core : layer.univ;
      if (!ex) continue;
      const std::string pname = path == 0 ? "core" : "univ";
      const int64_t E = ex->experts, k = ex->hidden;
      // Universal experts: draw the core width, then keep k of the draw evenly spaced.
      const int64_t draw = path == 0 ? k : std::clamp(layer.cfg.core_hidden, k, Hs);
      std::vector<std::vector<int64_t>> groups;
      if (coact) groups = coactivation_groups(corr, hnorm, E, draw);
      std::vector<char> used(static_cast<size_t>(Hs), 0);
      rep << "  " << prefix << pname << ": " << E << " experts, " << k << " of " << Hs
          << " hidden neurons"
          << (k != draw ? " (evenly spaced from a draw of " + std::to_string(draw) + ")"
                        : std::string())
          << ", " << Dt << " of " << Ds << " channels\n";
      Tensor w1 = Tensor::zeros({E, k, Dt}, tdt), w2 = Tensor::zeros({E, Dt, k}, tdt);
      Tensor c1 = Tensor::zeros({E, k}, tdt), c2 = Tensor::zeros({E, Dt}, tdt);
      for (int64_t e = 0; e < E; ++e) {
        // One Philox stream per (block, path, expert, hidden/channel).
        const uint64_t stream = (uint64_t(i) << 40) | (uint64_t(path) << 32) | (uint64_t(e) << 1);
        std::vector<int64_t> hid, chan;
        const std::vector<double> ones_h(size_t(Hs), 1.0), ones_c(size_t(Ds), 1.0);
        switch (opts.method) {
          case RecycleMethod::importance:
            hid = weighted_choose(hnorm, draw, opts.seed, stream);
            chan = weighted_choose(cnorm, Dt, opts.seed, stream | 1);
            break;
          case RecycleMethod::random:
            hid = weighted_choose(ones_h, draw, opts.seed, stream);
            chan = weighted_choose(ones_c, Dt, opts.seed, stream | 1);
            break;
          case RecycleMethod::uniform:
            hid = evenly_spaced(Hs, draw, e, E);
            chan = evenly_spaced(Ds, Dt, e, E);
            break;
          case RecycleMethod::coactivation:
            hid = groups[size_t(e)];
            chan = weighted_choose(cnorm, Dt, opts.seed, stream | 1);
            break;
        }
        if (Dt == Ds) chan = evenly_spaced(Ds, Ds, 0, 1);  // equal widths: every channel, in order
        if (int64_t(hid.size()) != k) {
          std::vector<int64_t> kept;
          for (int64_t j = 0; j < k; ++j) kept.push_back(hid[size_t(j * int64_t(hid.size()) / k)]);
          hid = std::move(kept);
        }
        w1.select(0, e).copy_(take(W1, &hid, &chan));
        w2.select(0, e).copy_(take(W2, &chan, &hid));
        if (b1.defined()) c1.select(0, e).copy_(take(b1, &hid, nullptr));
        if (b2.defined()) c2.select(0, e).copy_(take(b2, &chan, nullptr));
        const std::string key = prefix + pname + "." + std::to_string(e);
        for (int64_t j : hid) used[size_t(j)] = 1;
        if (e == 0)  // one example per path; every expert's indices are in the result's maps
          rep << "    expert 0: hidden " << list_indices(hid) << " channels "
              << (Dt == Ds ? std::string("all") : list_indices(chan)) << "\n";
        res.hidden_index[key] = std::move(hid);
        res.channel_index[key] = std::move(chan);
      }
      int64_t covered = 0;
      for (char u : used) covered += u;
      rep << "    source hidden neurons used by at least one expert: " << covered << " of " << Hs
          << "\n";
      res.tensors[prefix + pname + ".fc1.weight"] = w1;
      res.tensors[prefix + pname + ".fc2.weight"] = w2;
      if (b1.defined()) res.tensors[prefix + pname + ".fc1.bias"] = c1;
      if (b2.defined()) res.tensors[prefix + pname + ".fc2.bias"] = c2;
    }
  }

  // 4. Everything else: copied by name where the shapes match, else left at its init.
  std::map<std::string, Tensor> base_params;
  for (const auto& p : base.parameters()) base_params[p.name] = p.var.data();
  std::ostringstream kept;
  for (const auto& p : target.parameters()) {
    if (res.tensors.count(p.name)) continue;
    const bool head = p.name.rfind("head.", 0) == 0;
    bool moe_own = false;
    for (size_t i = 0; i < moe.size(); ++i)
      if (moe[i] && p.name.rfind(block_key(i) + ".mlp.", 0) == 0) moe_own = true;
    std::string why;
    auto it = base_params.find(p.name);
    if (head)
      why = "new head";
    else if (moe_own)
      why = p.name.find(".mlp.core.") != std::string::npos ||
                    p.name.find(".mlp.univ.") != std::string::npos
                ? "the source MLP has no bias"
                : "SpheroMoE routing parameter";
    else if (it == base_params.end())
      why = "not in the source";
    else if (!(it->second.shape() == p.shape))
      why = "source " + shape_str(it->second.shape()) + " vs target " + shape_str(p.shape);
    if (why.empty()) {
      res.tensors[p.name] = it->second.to(tdt).contiguous().clone();
      res.copied.push_back(p.name);
    } else {
      res.kept_init.push_back(p.name);
      kept << "    " << p.name << " (" << why << ")\n";
    }
  }
  rep << "  copied from the " << (non_expert_source ? "non-expert source" : "source") << ": "
      << res.copied.size() << " tensors\n";
  if (Dt != Ds && !non_expert_source)
    rep << "  note: the target (dim " << Dt << ") is narrower than the source (dim " << Ds
        << "); pass a dense model of the target width for the non-expert weights\n";
  rep << "  kept their init: " << res.kept_init.size() << " tensors\n" << kept.str();
  res.report = rep.str();
  return res;
}

void save_recycled(const std::string& path, const RecycleResult& result, const ViT& target) {
  check_materialised(target, "target");
  std::vector<std::pair<std::string, Tensor>> out;
  size_t used = 0;
  for (const auto& p : target.parameters()) {
    auto it = result.tensors.find(p.name);
    if (it == result.tensors.end()) {
      out.emplace_back(p.name, p.var.data());
      continue;
    }
    ENGINE_CHECK(it->second.shape() == p.shape, "save_recycled: '", p.name, "' has shape ",
                 it->second.describe(), " in the recycled tensors but ", p.shape, " in the target");
    out.emplace_back(p.name, it->second.dtype() == p.var.data().dtype()
                                 ? it->second
                                 : it->second.to(p.var.data().dtype()));
    ++used;
  }
  ENGINE_CHECK(used == result.tensors.size(), "save_recycled: ", result.tensors.size() - used,
               " recycled tensors are not parameters of the target (a different model?)");
  std::map<std::string, std::string> meta = {
      {"format", "pt"},
      {"recycle_method", recycle_method_name(result.method)},
      {"recycle_seed", std::to_string(result.seed)},
      {"recycle_source", result.source_name},
      {"recycle_images", std::to_string(result.images_used)}};
  engine::save_safetensors(path, out, meta);
}

std::map<std::string, Tensor> map_timm_vit(const std::map<std::string, Tensor>& timm, bool strict) {
  static const char* kBlockParts[] = {"norm1.weight",  "norm1.bias",       "attn.qkv.weight",
                                      "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                                      "norm2.weight",  "norm2.bias",       "mlp.fc1.weight",
                                      "mlp.fc1.bias",  "mlp.fc2.weight",   "mlp.fc2.bias"};
  static const char* kTop[] = {"patch_embed.proj.bias", "cls_token",   "pos_embed",
                               "norm.weight",           "norm.bias",   "fc_norm.weight",
                               "fc_norm.bias",          "head.weight", "head.bias"};
  auto known = [&](const std::string& n) {
    for (const char* t : kTop)
      if (n == t) return true;
    if (n.rfind("blocks.", 0) != 0) return false;
    const size_t dot = n.find('.', 7);
    if (dot == std::string::npos || dot == 7) return false;
    for (size_t c = 7; c < dot; ++c)
      if (n[c] < '0' || n[c] > '9') return false;
    const std::string rest = n.substr(dot + 1);
    for (const char* t : kBlockParts)
      if (rest == t) return true;
    return false;
  };
  std::map<std::string, Tensor> out;
  std::vector<std::string> unknown;
  for (const auto& [raw, t] : timm) {
    const std::string name = raw.rfind("module.", 0) == 0 ? raw.substr(7) : raw;
    ENGINE_CHECK(!out.count(name), "map_timm_vit: '", name,
                 "' appears twice (with and without "
                 "the 'module.' prefix)");
    if (name == "patch_embed.proj.weight") {
      // Conv2d [D, C, p, p] -> Linear over (dy, dx, c)-flattened patches [D, p·p·C].
      if (t.dim() == 2) {
        out[name] = t.contiguous();
        continue;
      }
      ENGINE_CHECK(t.dim() == 4 && t.size(2) == t.size(3), "map_timm_vit: ", name,
                   " must be a square Conv2d weight [D, C, p, p] (or already [D, p*p*C]), got ",
                   t.describe());
      out[name] = t.permute({0, 2, 3, 1}).contiguous().reshape({t.size(0), -1});
      continue;
    }
    if (known(name)) {
      out[name] = t.contiguous();
      continue;
    }
    unknown.push_back(raw);
  }
  if (strict && !unknown.empty()) {
    std::ostringstream os;
    for (size_t i = 0; i < unknown.size() && i < 5; ++i) os << (i ? ", " : "") << unknown[i];
    if (unknown.size() > 5) os << " and " << unknown.size() - 5 << " more";
    ENGINE_CHECK(false, "map_timm_vit: ", unknown.size(),
                 " tensors with no counterpart in our "
                 "ViT (",
                 os.str(), ")");
  }
  return out;
}

}  // namespace models
