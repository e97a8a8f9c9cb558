#include "models/vit.h"

#include "autograd/concat.h"
#include "autograd/dropout.h"
#include "autograd/patchify.h"
#include "autograd/reduce.h"
#include "autograd/views.h"
#include "engine/error.h"
#include "engine/profile.h"

namespace models {

namespace {
// A named group of parameters with no forward of its own (patch_embed, head).
class Group : public Module {
 public:
  Group() : Module("Group") {}
};
}  // namespace

std::shared_ptr<FeedForward> ViT::dense_mlp(const ViTConfig& cfg) {
  MLPConfig m;
  m.dim = cfg.dim;
  m.hidden = cfg.mlp_hidden;
  m.dropout = cfg.dropout;
  m.gelu = cfg.gelu;
  m.init = cfg.init;
  return std::make_shared<MLP>(m);
}

ViT::ViT(const ViTConfig& c, const FfnFactory& ffn) : Model("ViT"), cfg(c) {
  ENGINE_CHECK(cfg.image_size % cfg.patch == 0, "ViT: image size ", cfg.image_size,
               " is not divisible by the patch size ", cfg.patch);
  const int64_t side = cfg.image_size / cfg.patch;
  num_patches = side * side;
  const int64_t n_tok = num_patches + (cfg.cls_token ? 1 : 0);
  if (cfg.pos_rows == 0) cfg.pos_rows = n_tok;
  ENGINE_CHECK(cfg.pos_rows >= n_tok, "ViT: the positional table has ", cfg.pos_rows,
               " rows but the model has ", n_tok, " tokens");
  auto pe = child("patch_embed", std::make_shared<Group>());
  patch_proj = pe->child("proj", std::make_shared<Linear>(cfg.patch * cfg.patch * cfg.channels,
                                                          cfg.dim, true, cfg.init));
  if (cfg.cls_token) cls = param("cls_token", {1, 1, cfg.dim}, Init::trunc_normal(0.02), false);
  pos = param("pos_embed", {1, cfg.pos_rows, cfg.dim}, Init::trunc_normal(0.02), false);

  BlockConfig bc;
  bc.attn.dim = cfg.dim;
  bc.attn.heads = cfg.heads;
  bc.attn.proj_dropout = cfg.dropout;
  bc.attn.init = cfg.init;
  bc.norm_eps = cfg.norm_eps;
  blocks = make_blocks(*this, int(cfg.depth), bc,
                       ffn ? ffn : [this](int) { return dense_mlp(cfg); }, cfg.drop_path);
  if (cfg.pool == ViTConfig::Pool::cls)
    norm = child("norm", std::make_shared<LayerNorm>(cfg.dim, true, cfg.norm_eps));
  else
    fc_norm = child("fc_norm", std::make_shared<LayerNorm>(cfg.dim, true, cfg.norm_eps));
  auto head = child("head", std::make_shared<Group>());
  if (cfg.head_hidden > 0) {
    head_fc1 = head->child("fc1", std::make_shared<Linear>(cfg.dim, cfg.head_hidden, true, cfg.init));
    head_fc2 = head->child("fc2", std::make_shared<Linear>(cfg.head_hidden, cfg.classes, true,
                                                           cfg.init));
  } else {
    // A one-layer head is a Linear named `head` itself (timm: head.weight, head.bias).
    head_fc2 = head->child("", std::make_shared<Linear>(cfg.dim, cfg.classes, true, cfg.init));
  }
}

Var ViT::tokens(const Var& images, Context& ctx) const {
  const Tensor& x = images.data();
  ENGINE_CHECK(x.dim() == 4 && x.size(1) == cfg.image_size && x.size(2) == cfg.image_size &&
                   x.size(3) == cfg.channels,
               "ViT: images must be [B, ", cfg.image_size, ", ", cfg.image_size, ", ",
               cfg.channels, "] (channels last), got ", x.describe());
  PROFILE_RANGE("vit.embed");
  const int64_t B = x.size(0);
  Var t = patch_proj->forward(autograd::patchify(images, 1, cfg.patch));  // [B, Np, D]
  if (cfg.cls_token)
    t = autograd::concat({autograd::expand(cls, {B, 1, cfg.dim}), t}, 1);
  const int64_t n = t.size(1);
  t = autograd::add(t, autograd::narrow(pos, 1, 0, n));
  if (ctx.training && cfg.dropout > 0)
    t = autograd::dropout(t, cfg.dropout, ctx.rng_seed(), ctx.next_stream());
  return run_blocks(blocks, t, ctx);
}

Var ViT::features(const Var& images, Context& ctx) const {
  Var t = tokens(images, ctx);
  if (cfg.pool == ViTConfig::Pool::cls) return autograd::select(norm->forward(t), 1, 0);
  const int64_t first = cfg.cls_token ? 1 : 0;
  Var patches = autograd::narrow(t, 1, first, t.size(1) - first);
  return fc_norm->forward(autograd::mean(patches, 1));
}

Var ViT::forward(const Var& images, Context& ctx) const {
  Var f = features(images, ctx);
  PROFILE_RANGE("vit.head");
  if (head_fc1) f = autograd::gelu(head_fc1->forward(f), cfg.gelu);
  return head_fc2->forward(f);
}

std::vector<SummaryRow> ViT::summary() const {
  std::vector<SummaryRow> rows;
  const int64_t n = num_patches + (cfg.cls_token ? 1 : 0);
  const int64_t pin = cfg.patch * cfg.patch * cfg.channels;
  int64_t stem = patch_proj->num_parameters() + pos.defined() * cfg.pos_rows * cfg.dim +
                 (cfg.cls_token ? cfg.dim : 0);
  rows.push_back({"patch_embed + cls + pos_embed", stem, stem, 2.0 * num_patches * pin * cfg.dim});
  for (size_t i = 0; i < blocks.size(); ++i) {
    const auto& b = blocks[i];
    const int64_t p = b->num_parameters();
    const int64_t active = p - b->mlp->num_parameters() + b->mlp->active_parameters();
    std::string name = "blocks." + std::to_string(i);
    if (b->mlp->type() != "MLP") name += " (" + b->mlp->type() + ")";
    rows.push_back({name, p, active, block_flops(n, cfg.dim, b->mlp->macs_per_token())});
  }
  const auto& nm = norm ? norm : fc_norm;
  rows.push_back({norm ? "norm" : "fc_norm", nm->num_parameters(), nm->num_parameters(), 0});
  int64_t hp = head_fc2->num_parameters() + (head_fc1 ? head_fc1->num_parameters() : 0);
  double hf = 2.0 * (head_fc1 ? cfg.dim * cfg.head_hidden + cfg.head_hidden * cfg.classes
                              : cfg.dim * cfg.classes);
  rows.push_back({"head", hp, hp, hf});
  return rows;
}

}  // namespace models
