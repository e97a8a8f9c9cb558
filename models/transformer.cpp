#include "models/transformer.h"

#include "engine/error.h"
#include "engine/profile.h"

namespace models {

Block::Block(const BlockConfig& c, std::shared_ptr<FeedForward> ffn) : Module("Block"), cfg(c) {
  norm1 = child("norm1", std::make_shared<LayerNorm>(cfg.attn.dim, cfg.norm_bias, cfg.norm_eps));
  attn = child("attn", std::make_shared<Attention>(cfg.attn));
  norm2 = child("norm2", std::make_shared<LayerNorm>(cfg.attn.dim, cfg.norm_bias, cfg.norm_eps));
  mlp = child("mlp", std::move(ffn));
}

Var Block::forward(const Var& x, Context& ctx, const Tensor& key_mask) const {
  Var a = attn->forward(norm1->forward(x), ctx, key_mask);
  Var h = autograd::add(x, drop_path(a, cfg.drop_path, ctx));
  Var f = mlp->forward(norm2->forward(h), ctx);
  return autograd::add(h, drop_path(f, cfg.drop_path, ctx));
}


std::vector<std::shared_ptr<Block>> make_blocks(Module& owner, int depth, BlockConfig cfg,
                                                const FfnFactory& ffn, double drop_path_max) {
  ENGINE_CHECK(depth >= 1, "make_blocks: depth must be >= 1, got ", depth);
  auto list = std::make_shared<ModuleList>();
  std::vector<std::shared_ptr<Block>> blocks;
  for (int i = 0; i < depth; ++i) {
    // Stochastic depth rises linearly from 0 at the first block to drop_path_max at the last.
    cfg.drop_path = depth > 1 ? drop_path_max * i / (depth - 1) : drop_path_max;
    blocks.push_back(list->child(std::to_string(i), std::make_shared<Block>(cfg, ffn(i))));
  }
  owner.child("blocks", list);
  return blocks;
}

Var run_blocks(const std::vector<std::shared_ptr<Block>>& blocks, Var x, Context& ctx,
               const Tensor& key_mask) {
  for (const auto& b : blocks) {
    PROFILE_RANGE("block");
    x = b->forward(x, ctx, key_mask);
  }
  return x;
}

}  // namespace models
