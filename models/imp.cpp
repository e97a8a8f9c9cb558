#include "models/imp.h"

#include "engine/error.h"
#include "engine/profile.h"
#include "models/moe_expert_choice.h"
#include "models/moe_token_choice.h"

namespace models {

namespace {

const Modality kModalities[] = {Modality::vision, Modality::audio, Modality::text};

std::string pair_key(Modality a, Modality b) {
  return std::string(modality_name(a)) + "_" + modality_name(b);
}

// Presets of imp.md's table; `tiny` shapes for tests and CPU runs.
Json imp_config(int64_t dim, int64_t depth, int64_t heads, int64_t mlp, bool moe,
                int64_t experts, int64_t moe_layers, int64_t head_width, int64_t image_size,
                int64_t patch) {
  Json layers = Json::array();
  if (moe)
    for (int64_t i = depth - moe_layers; i < depth; ++i) layers.push_back(i);
  return Json{
      {"family", "imp"},
      {"dim", dim},
      {"depth", depth},
      {"heads", heads},
      {"mlp_hidden", mlp},
      {"qk_norm", moe},
      {"norm_eps", 1e-6},
      {"moe",
       {{"type", moe ? "expert_choice" : "none"},  // none | expert_choice | token_choice
        {"layers", layers},
        {"experts", experts},
        {"capacity_factor", 1.0},
        {"group_size", 2048},
        {"z_loss_weight", 1.0},
        {"top_k", 1},                   // token_choice only
        {"load_balance_weight", 0.01},  // token_choice only
        {"router_bias", false}}},
      {"vision", {{"channels", 3}, {"patch", patch}, {"tubelet", 1},
                  {"buckets", Json::array({8, image_size / patch, image_size / patch})},
                  {"image_size", image_size}}},
      {"audio", {{"patch", patch}, {"buckets", Json::array({32, 8})}}},
      {"text", {{"max_len", 64}}},
      {"cross_head", {{"hidden", head_width}, {"out", head_width}}},
      {"temperature_init", moe ? 1.0 : 0.2},
      // Contrastive pairs (each gets heads in both directions and one temperature).
      {"pairs", Json::array({Json::array({"vision", "text"}), Json::array({"vision", "audio"}),
                             Json::array({"audio", "text"})})},
      // Supervised classifiers: name, modality, classes.
      {"classifiers",
       Json::array({Json{{"name", "image"}, {"modality", "vision"}, {"classes", 10}},
                    Json{{"name", "video"}, {"modality", "vision"}, {"classes", 10}},
                    Json{{"name", "audio"}, {"modality", "audio"}, {"classes", 10}}})},
  };
}

}  // namespace

Modality modality_from_name(const std::string& name) {
  for (Modality m : kModalities)
    if (name == modality_name(m)) return m;
  ENGINE_FAIL("unknown modality '", name, "'; valid: vision, audio, text");
}

IMP::IMP(const Json& c) : Model("IMP"), cfg_(c) {
  const std::string P = "model";
  dim = cfg_get<int64_t>(c, P, "dim");
  const int64_t depth = cfg_get<int64_t>(c, P, "depth"), heads = cfg_get<int64_t>(c, P, "heads");
  const int64_t mlp = cfg_get<int64_t>(c, P, "mlp_hidden");
  const double eps = cfg_get<double>(c, P, "norm_eps");
  for (const char* k : {"dim", "depth", "heads", "mlp_hidden"})
    require(cfg_get<int64_t>(c, P, k) > 0, c, P, k, "must be positive");
  require(dim % heads == 0, c, P, "heads", "must divide dim");

  // Stems.
  auto stem_list = child("stems", std::make_shared<ModuleList>());
  {
    const Json& v = c.at("vision");
    StemConfig s;
    s.modality = Modality::vision;
    s.dim = dim;
    s.channels = cfg_get<int64_t>(v, "model.vision", "channels");
    s.patch = cfg_get<int64_t>(v, "model.vision", "patch");
    s.tubelet = cfg_get<int64_t>(v, "model.vision", "tubelet");
    s.buckets = cfg_get<std::vector<int64_t>>(v, "model.vision", "buckets");
    require(s.buckets.size() == 3, v, "model.vision", "buckets", "needs 3 entries (t, h, w)");
    s.norm_eps = eps;
    stems[Modality::vision] = stem_list->child("vision", std::make_shared<ModalityStem>(s));
  }
  {
    const Json& a = c.at("audio");
    StemConfig s;
    s.modality = Modality::audio;
    s.dim = dim;
    s.patch = cfg_get<int64_t>(a, "model.audio", "patch");
    s.buckets = cfg_get<std::vector<int64_t>>(a, "model.audio", "buckets");
    require(s.buckets.size() == 2, a, "model.audio", "buckets", "needs 2 entries (time, freq)");
    s.norm_eps = eps;
    stems[Modality::audio] = stem_list->child("audio", std::make_shared<ModalityStem>(s));
  }
  {
    StemConfig s;
    s.modality = Modality::text;
    s.dim = dim;
    s.max_len = cfg_get<int64_t>(c.at("text"), "model.text", "max_len");
    s.norm_eps = eps;
    stems[Modality::text] = stem_list->child("text", std::make_shared<ModalityStem>(s));
  }

  // Encoder: no biases in Q/K/V/O and MLPs, scale-only LayerNorms, tanh GELU, no dropout.
  BlockConfig bc;
  bc.attn.dim = dim;
  bc.attn.heads = heads;
  bc.attn.qkv_bias = bc.attn.proj_bias = false;
  bc.attn.qk_norm = cfg_get<bool>(c, P, "qk_norm");
  bc.attn.init = Init::lecun_normal();
  bc.norm_bias = false;
  bc.norm_eps = eps;
  const Json& m = c.at("moe");
  const std::string M = "model.moe";
  const auto type = cfg_get<std::string>(m, M, "type");
  require(type == "none" || type == "expert_choice" || type == "token_choice", m, M, "type",
          "must be none, expert_choice or token_choice");
  const auto layers = cfg_get<std::vector<int64_t>>(m, M, "layers");
  for (int64_t l : layers) require(l >= 0 && l < depth, m, M, "layers", "index out of range");
  blocks = make_blocks(*this, int(depth), bc, [&](int i) -> std::shared_ptr<FeedForward> {
    const bool is_moe =
        type != "none" && std::find(layers.begin(), layers.end(), int64_t(i)) != layers.end();
    if (!is_moe) {
      MLPConfig mc;
      mc.dim = dim;
      mc.hidden = mlp;
      mc.bias = false;
      mc.init = Init::lecun_normal();
      return std::make_shared<MLP>(mc);
    }
    ExpertsConfig ec;
    ec.dim = dim;
    ec.hidden = mlp;
    ec.num_experts = cfg_get<int64_t>(m, M, "experts");
    require(ec.num_experts >= 1, m, M, "experts", "must be >= 1");
    ec.bias = false;
    ec.init = Init::lecun_normal();
    const std::string name = "blocks." + std::to_string(i) + ".mlp";
    if (type == "expert_choice") {
      ExpertChoiceConfig e;
      e.experts = ec;
      e.capacity_factor = cfg_get<double>(m, M, "capacity_factor");
      e.group_size = cfg_get<int64_t>(m, M, "group_size");
      e.z_loss_weight = cfg_get<double>(m, M, "z_loss_weight");
      e.name = name;
      return std::make_shared<ExpertChoiceMoE>(e);
    }
    TokenChoiceConfig t;
    t.experts = ec;
    t.k = cfg_get<int64_t>(m, M, "top_k");
    t.router_bias = cfg_get<bool>(m, M, "router_bias");
    t.router_init = Init::normal(0.02);
    t.capacity_factor = cfg_get<double>(m, M, "capacity_factor");
    t.load_balance_weight = cfg_get<double>(m, M, "load_balance_weight");
    t.z_loss_weight = cfg_get<double>(m, M, "z_loss_weight");
    t.layer_index = i;
    t.name = name;
    return std::make_shared<TokenChoiceMoE>(t);
  });
  norm = child("norm", std::make_shared<LayerNorm>(dim, true, eps));

  // Heads.
  auto pool_list = child("pool", std::make_shared<ModuleList>());
  for (Modality md : kModalities)
    pools[md] = pool_list->child(modality_name(md), std::make_shared<OutputPool>(dim));
  auto cls_list = child("classifiers", std::make_shared<ModuleList>());
  for (const auto& h : c.at("classifiers")) {
    const auto name = cfg_get<std::string>(h, "model.classifiers[]", "name");
    const auto classes = cfg_get<int64_t>(h, "model.classifiers[]", "classes");
    modality_from_name(cfg_get<std::string>(h, "model.classifiers[]", "modality"));
    require(classes >= 1, h, "model.classifiers." + name, "classes", "must be >= 1");
    ENGINE_CHECK(!classifiers_.count(name), "config: model.classifiers: '", name, "' twice");
    classifiers_[name] = cls_list->child(name, std::make_shared<ClassifierHead>(dim, classes));
  }
  CrossModalHeadConfig hc;
  hc.dim = dim;
  hc.hidden = cfg_get<int64_t>(c.at("cross_head"), "model.cross_head", "hidden");
  hc.out = cfg_get<int64_t>(c.at("cross_head"), "model.cross_head", "out");
  hc.norm_eps = eps;
  auto cross_list = child("cross", std::make_shared<ModuleList>());
  auto temp_list = child("temperature", std::make_shared<ModuleList>());
  const double t0 = cfg_get<double>(c, P, "temperature_init");
  for (const auto& pr : c.at("pairs")) {
    ENGINE_CHECK(pr.is_array() && pr.size() == 2 && pr[0].is_string() && pr[1].is_string(),
                 "config: model.pairs: each pair is [\"a\", \"b\"], got ", pr.dump());
    Modality a = modality_from_name(pr[0]), b = modality_from_name(pr[1]);
    ENGINE_CHECK(a != b, "config: model.pairs: a pair needs two modalities, got ", pr.dump());
    if (int(a) > int(b)) std::swap(a, b);
    const std::string key = pair_key(a, b);
    ENGINE_CHECK(!temps_.count(key), "config: model.pairs: ", key, " twice");
    pairs_.emplace_back(a, b);
    temps_[key] = temp_list->child(key, std::make_shared<Temperature>(t0));
    for (auto [x, y] : {std::pair{a, b}, std::pair{b, a}}) {
      const std::string hk = std::string(modality_name(x)) + "_to_" + modality_name(y);
      cross_[hk] = cross_list->child(hk, std::make_shared<CrossModalHead>(hc));
    }
  }
}

IMP::Encoded IMP::encode(Modality m, const Var& input, Context& ctx, double drop_rate) const {
  PROFILE_RANGE("imp.encode");
  StemOutput s = stems.at(m)->forward(input, ctx, drop_rate);
  Var t = run_blocks(blocks, s.tokens, ctx, s.mask);
  t = norm->forward(t);
  return {t, s.mask, pools.at(m)->forward(t, s.mask)};
}

Var IMP::classify(const std::string& task, const Var& pooled) const {
  auto it = classifiers_.find(task);
  ENGINE_CHECK(it != classifiers_.end(), "IMP: no classifier named '", task,
               "' (configure it in model.classifiers)");
  return it->second->forward(pooled);
}

Var IMP::project(Modality from, Modality to, const Var& pooled) const {
  const std::string hk = std::string(modality_name(from)) + "_to_" + modality_name(to);
  auto it = cross_.find(hk);
  ENGINE_CHECK(it != cross_.end(), "IMP: no cross-modal head ", hk,
               " (add the pair to model.pairs)");
  return it->second->forward(pooled);
}

Var IMP::temperature(Modality a, Modality b) const {
  if (int(a) > int(b)) std::swap(a, b);
  auto it = temps_.find(pair_key(a, b));
  ENGINE_CHECK(it != temps_.end(), "IMP: no temperature for ", pair_key(a, b));
  return it->second->tau();
}

std::vector<std::string> IMP::classifier_names() const {
  std::vector<std::string> v;
  for (const auto& [k, h] : classifiers_) v.push_back(k);
  return v;
}

int64_t IMP::classifier_classes(const std::string& task) const {
  auto it = classifiers_.find(task);
  ENGINE_CHECK(it != classifiers_.end(), "IMP: no classifier named '", task, "'");
  return it->second->classes;
}

std::vector<SummaryRow> IMP::summary() const {
  // FLOPs for one image at the configured resolution through the vision stem.
  const Json& v = cfg_.at("vision");
  const int64_t S = v.at("image_size").get<int64_t>(), p = v.at("patch").get<int64_t>();
  const int64_t C = v.at("channels").get<int64_t>();
  const int64_t n = (S / p) * (S / p);
  std::vector<SummaryRow> rows;
  for (Modality m : kModalities) {
    const auto& s = stems.at(m);
    double f = 0;
    if (m == Modality::vision) f = 2.0 * n * (p * p * C * dim + dim * dim);
    rows.push_back({std::string("stems.") + modality_name(m), s->num_parameters(),
                    m == Modality::vision ? s->num_parameters() : 0, f});
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    const auto& b = blocks[i];
    const int64_t prm = b->num_parameters();
    std::string name = "blocks." + std::to_string(i);
    if (b->mlp->type() != "MLP") name += " (" + b->mlp->type() + ")";
    rows.push_back({name, prm, prm - b->mlp->num_parameters() + b->mlp->active_parameters(),
                    block_flops(n, dim, b->mlp->macs_per_token())});
  }
  rows.push_back({"norm", norm->num_parameters(), norm->num_parameters(), 0});
  int64_t pool_p = 0;
  for (const auto& [m, pl] : pools) pool_p += pl->num_parameters();
  rows.push_back({"pool (out_proj per modality)", pool_p, pools.at(Modality::vision)->num_parameters(),
                  2.0 * n * dim * dim});
  int64_t cls_p = 0, cross_p = 0, temp_p = 0;
  for (const auto& [k, h] : classifiers_) cls_p += h->num_parameters();
  for (const auto& [k, h] : cross_) cross_p += h->num_parameters();
  for (const auto& [k, h] : temps_) temp_p += h->num_parameters();
  rows.push_back({"classifiers", cls_p, 0, 0});
  rows.push_back({"cross-modal heads", cross_p, 0, 0});
  rows.push_back({"temperatures", temp_p, 0, 0});
  return rows;
}

std::vector<ImpPreset> imp_presets() {
  return {
      {"imp_small", "IMP-S dense encoder (d 384, 12 layers, 6 heads)",
       imp_config(384, 12, 6, 1536, false, 0, 0, 1024, 224, 16)},
      {"imp_moe_small", "IMP-MoE-S: expert choice in the last 6 layers, 4 experts, QK-LN",
       imp_config(384, 12, 6, 1536, true, 4, 6, 1024, 224, 16)},
      {"imp_base", "IMP-B dense encoder (d 768, 12 layers, ~85M)",
       imp_config(768, 12, 12, 3072, false, 0, 0, 1024, 224, 16)},
      {"imp_moe_base", "IMP-MoE-B: expert choice in the last 6 layers, 16 experts, QK-LN",
       imp_config(768, 12, 12, 3072, true, 16, 6, 1024, 224, 16)},
      {"imp_moe_large", "IMP-MoE-L: 24 layers, d 1024, 16 experts in the last 6 layers",
       imp_config(1024, 24, 16, 4096, true, 16, 6, 1024, 224, 16)},
      {"imp_tiny", "tiny dense IMP for tests and CPU runs (d 128, 4 layers, 28px, patch 7)",
       imp_config(128, 4, 4, 512, false, 0, 0, 128, 28, 7)},
      {"imp_moe_tiny", "tiny IMP-MoE: last 2 of 4 layers expert choice, 4 experts",
       imp_config(128, 4, 4, 512, true, 4, 2, 128, 28, 7)},
  };
}

std::shared_ptr<Model> build_imp(const Json& config) { return std::make_shared<IMP>(config); }

}  // namespace models
