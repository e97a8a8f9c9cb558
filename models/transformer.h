// The pre-LayerNorm transformer block and encoder stack shared by every model family:
//   x = x + drop_path(Attn(LN1(x)));  x = x + drop_path(FFN(LN2(x)))
// The FFN slot holds the dense MLP or an MoE layer (models/moe_*.h, models/spheromoe.h), built by
// a factory so each family decides which blocks are MoE.
#pragma once
#include <functional>

#include "models/layers.h"

namespace models {

struct BlockConfig {
  AttentionConfig attn;
  bool norm_bias = true;   // LayerNorm bias inside blocks (IMP: scale only)
  double norm_eps = 1e-6;
  double drop_path = 0.0;  // stochastic depth of both branches
};

class Block : public Module {
 public:
  Block(const BlockConfig& cfg, std::shared_ptr<FeedForward> ffn);
  // x [B, N, D]; key_mask [B, N] optional (nonzero = real token).
  Var forward(const Var& x, Context& ctx, const Tensor& key_mask = Tensor()) const;
  BlockConfig cfg;
  std::shared_ptr<LayerNorm> norm1, norm2;
  std::shared_ptr<Attention> attn;
  std::shared_ptr<FeedForward> mlp;  // named `mlp` whether dense or MoE (timm-style names)
};

// Builds the FFN of block i (0-based) of a stack of `depth` blocks.
using FfnFactory = std::function<std::shared_ptr<FeedForward>(int index)>;

// `depth` blocks named blocks.0 ... blocks.{depth-1} (registered on `owner`).
std::vector<std::shared_ptr<Block>> make_blocks(Module& owner, int depth, BlockConfig cfg,
                                                const FfnFactory& ffn,
                                                double drop_path_max = 0.0);

// Runs the stack. The MoE layers report into ctx.
Var run_blocks(const std::vector<std::shared_ptr<Block>>& blocks, Var x, Context& ctx,
               const Tensor& key_mask = Tensor());

}  // namespace models
