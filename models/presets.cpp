#include "models/presets.h"

#include <algorithm>

#include "engine/error.h"
#include "models/imp.h"
#include "models/moe_expert_choice.h"
#include "models/moe_token_choice.h"
#include "models/spheromoe.h"
#include "models/vit.h"

namespace models {

namespace {

// ---- the ViT family (vit, switch_vit, vit_t/s, spheromoe_*) ------------------------------------

Json moe_defaults() {
  return Json{
      {"type", "none"},        // none | switch (token choice) | expert_choice | soft (SpheroMoE)
      {"layers", Json::array()},  // indices of the blocks whose MLP is an MoE layer
      {"experts", 0},          // switch / expert_choice: number of experts
      {"hidden", 0},           // expert hidden width (0: the dense mlp_hidden)
      {"top_k", 1},            // switch: experts per token
      {"mode", "dropless"},    // switch: dropless | capacity
      {"capacity_factor", 1.0},
      {"load_balance_weight", 0.0},
      {"z_loss_weight", 0.0},
      {"router_bias", true},
      {"random_routing", false},
      {"random_routing_per_layer", false},
      {"group_size", 2048},    // expert_choice: tokens per routing group (at most)
      {"expert_dropout", -1.0},  // dropout inside experts (-1: the model's dropout)
      {"core_experts", 0},     // soft: experts of the wide path (hidden = 4·dim)
      {"univ_experts", 0},     // soft: experts of the narrow path (a quarter of the width)
      {"slots", 1},            // soft: slots per expert
      {"noise", true},         // soft: routing noise in training
      {"moe_drop_path", 0.0},  // soft: drop-path of the whole MoE branch (linear over depth)
      {"tau_init", 0.5},
  };
}

Json vit_config(int64_t image, int64_t patch, int64_t channels, int64_t classes, int64_t dim,
                int64_t depth, int64_t heads, int64_t mlp, const std::string& pool,
                int64_t head_hidden, int64_t pos_rows, double dropout, double drop_path,
                double norm_eps, const std::string& gelu) {
  return Json{{"family", "vit"},       {"image_size", image}, {"patch", patch},
              {"channels", channels},  {"classes", classes},  {"dim", dim},
              {"depth", depth},        {"heads", heads},      {"mlp_hidden", mlp},
              {"pool", pool},          {"head_hidden", head_hidden}, {"pos_rows", pos_rows},
              {"dropout", dropout},    {"drop_path", drop_path}, {"norm_eps", norm_eps},
              {"gelu", gelu},          {"init_std", 0.02},    {"moe", moe_defaults()}};
}

// The reference switch-ViT: CIFAR 32×32, patch 4, d 300, 12 layers, 12 heads, MLP 1024,
// positional table of d rows, MLP head of 3072, dropout 0.1.
Json switch_vit_base() {
  return vit_config(32, 4, 3, 10, 300, 12, 12, 1024, "cls", 3072, 300, 0.1, 0.0, 1e-5, "erf");
}

Json with_moe(Json c, const Json& moe) {
  merge_strict(c["moe"], moe, "moe");
  return c;
}

std::vector<int64_t> range(int64_t a, int64_t b) {
  std::vector<int64_t> v;
  for (int64_t i = a; i < b; ++i) v.push_back(i);
  return v;
}

autograd::GeluApprox gelu_of(const Json& c, const std::string& path) {
  const auto g = cfg_get<std::string>(c, path, "gelu");
  require(g == "tanh" || g == "erf", c, path, "gelu", "must be \"tanh\" or \"erf\"");
  return g == "tanh" ? autograd::GeluApprox::tanh : autograd::GeluApprox::erf;
}

std::shared_ptr<Model> build_vit(const Json& c) {
  const std::string P = "model";
  ViTConfig v;
  v.image_size = cfg_get<int64_t>(c, P, "image_size");
  v.patch = cfg_get<int64_t>(c, P, "patch");
  v.channels = cfg_get<int64_t>(c, P, "channels");
  v.classes = cfg_get<int64_t>(c, P, "classes");
  v.dim = cfg_get<int64_t>(c, P, "dim");
  v.depth = cfg_get<int64_t>(c, P, "depth");
  v.heads = cfg_get<int64_t>(c, P, "heads");
  v.mlp_hidden = cfg_get<int64_t>(c, P, "mlp_hidden");
  v.head_hidden = cfg_get<int64_t>(c, P, "head_hidden");
  v.pos_rows = cfg_get<int64_t>(c, P, "pos_rows");
  v.dropout = cfg_get<double>(c, P, "dropout");
  v.drop_path = cfg_get<double>(c, P, "drop_path");
  v.norm_eps = cfg_get<double>(c, P, "norm_eps");
  v.gelu = gelu_of(c, P);
  v.init = Init::trunc_normal(cfg_get<double>(c, P, "init_std"));
  const auto pool = cfg_get<std::string>(c, P, "pool");
  require(pool == "cls" || pool == "avg", c, P, "pool", "must be \"cls\" or \"avg\"");
  v.pool = pool == "cls" ? ViTConfig::Pool::cls : ViTConfig::Pool::avg;
  for (const char* k : {"image_size", "patch", "channels", "classes", "dim", "depth", "heads",
                        "mlp_hidden"})
    require(cfg_get<int64_t>(c, P, k) > 0, c, P, k, "must be positive");
  require(v.image_size % v.patch == 0, c, P, "patch", "must divide image_size");
  require(v.dim % v.heads == 0, c, P, "heads", "must divide dim");
  require(v.dropout >= 0 && v.dropout < 1, c, P, "dropout", "must be in [0, 1)");
  require(v.drop_path >= 0 && v.drop_path < 1, c, P, "drop_path", "must be in [0, 1)");

  const Json& m = c.at("moe");
  const std::string M = "model.moe";
  const auto type = cfg_get<std::string>(m, M, "type");
  require(type == "none" || type == "switch" || type == "expert_choice" || type == "soft", m, M,
          "type", "must be none, switch, expert_choice or soft");
  auto layers = cfg_get<std::vector<int64_t>>(m, M, "layers");
  for (int64_t l : layers) require(l >= 0 && l < v.depth, m, M, "layers", "index out of range");
  if (type != "none") require(!layers.empty(), m, M, "layers", "an MoE type needs MoE layers");
  const int64_t hidden = cfg_get<int64_t>(m, M, "hidden") > 0 ? cfg_get<int64_t>(m, M, "hidden")
                                                               : v.mlp_hidden;
  const double edrop = cfg_get<double>(m, M, "expert_dropout") >= 0
                           ? cfg_get<double>(m, M, "expert_dropout") : v.dropout;

  FfnFactory ffn = [=](int i) -> std::shared_ptr<FeedForward> {
    const bool is_moe = std::find(layers.begin(), layers.end(), i) != layers.end();
    if (type == "none" || !is_moe) return ViT::dense_mlp(v);
    const std::string name = "blocks." + std::to_string(i) + ".mlp";
    ExpertsConfig ec;
    ec.dim = v.dim;
    ec.hidden = hidden;
    ec.num_experts = cfg_get<int64_t>(m, M, "experts");
    ec.dropout = edrop;
    ec.gelu = v.gelu;
    ec.init = v.init;
    if (type == "switch") {
      require(ec.num_experts >= 1, m, M, "experts", "must be >= 1");
      TokenChoiceConfig t;
      t.experts = ec;
      t.k = cfg_get<int64_t>(m, M, "top_k");
      t.router_bias = cfg_get<bool>(m, M, "router_bias");
      t.router_init = v.init;
      const auto mode = cfg_get<std::string>(m, M, "mode");
      require(mode == "dropless" || mode == "capacity", m, M, "mode",
              "must be \"dropless\" or \"capacity\"");
      t.mode = mode == "dropless" ? TokenChoiceConfig::Mode::dropless
                                  : TokenChoiceConfig::Mode::capacity;
      t.capacity_factor = cfg_get<double>(m, M, "capacity_factor");
      t.load_balance_weight = cfg_get<double>(m, M, "load_balance_weight");
      t.z_loss_weight = cfg_get<double>(m, M, "z_loss_weight");
      t.random_routing = cfg_get<bool>(m, M, "random_routing");
      t.random_routing_per_layer = cfg_get<bool>(m, M, "random_routing_per_layer");
      t.layer_index = i;
      t.name = name;
      return std::make_shared<TokenChoiceMoE>(t);
    }
    if (type == "expert_choice") {
      require(ec.num_experts >= 1, m, M, "experts", "must be >= 1");
      ExpertChoiceConfig e;
      e.experts = ec;
      e.capacity_factor = cfg_get<double>(m, M, "capacity_factor");
      e.group_size = cfg_get<int64_t>(m, M, "group_size");
      e.z_loss_weight = cfg_get<double>(m, M, "z_loss_weight");
      e.name = name;
      return std::make_shared<ExpertChoiceMoE>(e);
    }
    SpheroMoEConfig s;
    s.dim = v.dim;
    s.core_experts = cfg_get<int64_t>(m, M, "core_experts");
    s.univ_experts = cfg_get<int64_t>(m, M, "univ_experts");
    require(s.core_experts + s.univ_experts >= 1, m, M, "core_experts",
            "soft MoE needs core_experts + univ_experts >= 1");
    s.slots_per_expert = cfg_get<int64_t>(m, M, "slots");
    s.core_hidden = hidden;
    s.noise = cfg_get<bool>(m, M, "noise");
    s.expert_dropout = edrop;
    // MoE drop-path rises linearly over the depth of the whole network, as stochastic depth.
    s.drop_path = cfg_get<double>(m, M, "moe_drop_path") * i / std::max<int64_t>(1, v.depth - 1);
    s.tau_init = cfg_get<double>(m, M, "tau_init");
    s.gelu = v.gelu;
    s.init = v.init;
    s.flops_tokens = (v.image_size / v.patch) * (v.image_size / v.patch) + 1;
    s.stats_name = name;
    return std::make_shared<SpheroMoE>(s);
  };
  return std::make_shared<ViT>(v, ffn);
}

std::vector<Preset> make_presets() {
  std::vector<Preset> p;
  // switch-ViT (specs/switch_vit.md), CIFAR-10 heads.
  p.push_back({"vit", "dense ViT of the switch-ViT paper (CIFAR 32x32, d 300, 12 layers), 12.8M",
               switch_vit_base()});
  p.push_back({"switch_vit",
               "switch-ViT: top-1 Switch MoE in all 12 blocks, 32 experts of 1010, 238.7M",
               with_moe(switch_vit_base(), {{"type", "switch"}, {"layers", range(0, 12)},
                                            {"experts", 32}, {"hidden", 1010}})});
  p.push_back({"switch_vit_random",
               "switch-ViT with random routing (4 experts of 1024) and expert averaging",
               with_moe(switch_vit_base(), {{"type", "switch"}, {"layers", range(0, 12)},
                                            {"experts", 4}, {"hidden", 1024},
                                            {"random_routing", true}})});
  // ViT-T / ViT-S (SpheroMoE backbones and dense recycling sources), 224 / patch 16, ImageNet.
  auto vit_t = vit_config(224, 16, 3, 1000, 192, 12, 3, 768, "avg", 0, 0, 0.0, 0.1, 1e-6, "erf");
  auto vit_s = vit_config(224, 16, 3, 1000, 384, 12, 6, 1536, "avg", 0, 0, 0.0, 0.1, 1e-6, "erf");
  p.push_back({"vit_t", "ViT-T/16 (224px, d 192, 12 layers, avg pool), 5.7M", vit_t});
  p.push_back({"vit_s", "ViT-S/16 (224px, d 384), dense recycling source for ViT-T MoE", vit_s});
  const Json sphero = {{"type", "soft"}, {"layers", range(6, 12)}, {"core_experts", 98},
                       {"univ_experts", 196}, {"slots", 1}, {"expert_dropout", 0.4},
                       {"moe_drop_path", 0.1}};
  p.push_back({"spheromoe_vit_t",
               "SpheroMoE ViT-T/16: blocks 6-11 dual-path soft MoE, 98 core + 196 universal",
               with_moe(vit_t, sphero)});
  // Small images (32×32, patch 4: 64 tokens + CLS), the CPU-sized SpheroMoE experiments.
  auto small = [](int64_t dim, int64_t heads) {
    return vit_config(32, 4, 3, 10, dim, 12, heads, 4 * dim, "avg", 0, 0, 0.0, 0.1, 1e-6, "erf");
  };
  p.push_back({"vit_t_32", "ViT-T layout for 32x32 images (patch 4, d 192)", small(192, 3)});
  p.push_back({"vit_s_32", "ViT-S layout for 32x32 images (patch 4, d 384): recycling source",
               small(384, 6)});
  p.push_back({"spheromoe_vit_t_32",
               "SpheroMoE ViT-T for 32x32 images: blocks 6-11, 32 core + 64 universal experts",
               with_moe(small(192, 3), {{"type", "soft"}, {"layers", range(6, 12)},
                                        {"core_experts", 32}, {"univ_experts", 64},
                                        {"expert_dropout", 0.4}, {"moe_drop_path", 0.1}})});
  // Tiny versions (tests, CPU experiments on 28×28 grey images such as Fashion-MNIST).
  auto tiny = vit_config(28, 7, 1, 10, 64, 4, 4, 128, "cls", 0, 0, 0.0, 0.0, 1e-6, "tanh");
  p.push_back({"vit_tiny", "tiny dense ViT for 28x28 grey images (d 64, 4 layers)", tiny});
  p.push_back({"switch_vit_tiny", "tiny switch-ViT: blocks 2-3 top-1, 4 experts",
               with_moe(tiny, {{"type", "switch"}, {"layers", range(2, 4)}, {"experts", 4},
                               {"load_balance_weight", 0.01}})});
  p.push_back({"ec_vit_tiny", "tiny ViT with expert-choice MoE in blocks 2-3, 4 experts",
               with_moe(tiny, {{"type", "expert_choice"}, {"layers", range(2, 4)},
                               {"experts", 4}, {"z_loss_weight", 1e-3}})});
  p.push_back({"spheromoe_tiny", "tiny SpheroMoE ViT: blocks 2-3, 4 core + 8 universal",
               with_moe(tiny, {{"type", "soft"}, {"layers", range(2, 4)}, {"core_experts", 4},
                               {"univ_experts", 8}, {"expert_dropout", 0.1},
                               {"moe_drop_path", 0.1}})});
  for (auto& imp : imp_presets()) p.push_back({imp.name, imp.description, imp.config});
  return p;
}

}  // namespace

const std::vector<Preset>& presets() {
  static const std::vector<Preset> all = make_presets();
  return all;
}

Json preset_config(const std::string& name) {
  std::string valid;
  for (const auto& p : presets()) {
    if (p.name == name) return p.config;
    valid += (valid.empty() ? "" : ", ") + p.name;
  }
  ENGINE_FAIL("unknown model '", name, "'; valid models: ", valid);
}

std::shared_ptr<Model> build_model(const Json& config) {
  const auto family = cfg_get<std::string>(config, "model", "family");
  if (family == "vit") return build_vit(config);
  if (family == "imp") return build_imp(config);
  ENGINE_FAIL("config: model.family = \"", family, "\": must be \"vit\" or \"imp\"");
}

Json switch_vit_flags(int64_t experts, bool noswitch, int64_t dmodel, bool cifar100) {
  Json o = Json::object();
  if (dmodel > 0) o["dim"] = dmodel, o["pos_rows"] = dmodel;  // the reference's d-row table
  if (cifar100) o["classes"] = 100;
  if (noswitch) {
    o["moe"] = {{"type", "none"}};
  } else if (experts > 0) {
    o["moe"] = {{"type", "switch"}, {"layers", range(0, 12)}, {"experts", experts},
                {"hidden", 1024 - experts / 2 + 2}};
  }
  return o;
}

}  // namespace models
