// Checkpoint recycling (MoE Jetpack, specs/spheromoe.md): initialise the SpheroMoE layers of a
// ViT from the dense MLPs of a trained dense ViT.
//
// 1. Statistics: the dense source runs over sample images (eval mode, no gradients) block by
//    block; for every block that holds a SpheroMoE layer in the target, the L2 norm over
//    (images, tokens) of each hidden MLP neuron (GELU output) and of each residual channel (the
//    LN2 output) is recorded (RecycleResult::hidden_norm / channel_norm, key "blocks.<i>").
//    Target block i takes its experts from source block i.
// 2. Selection, for each expert of each path independently (H_s, D_s: source hidden width and
//    dim; k: the expert's hidden width; D_t: the target dim):
//    - importance: k hidden neurons and D_t channels drawn without replacement with probability
//      proportional to their norms (Efraimidis–Spirakis: the largest keys log(u)/w with
//      u ~ Philox(seed, a stream per block, path, expert and kind));
//    - random: the same draw with equal weights (a uniform k-subset);
//    - uniform: evenly spaced, index_j = ⌊(j + e/E)·n/k⌋ (a different offset per expert e of E);
//    - coactivation (a simplified graph partitioning): hidden neurons are grouped by the Pearson
//      correlation of their activations over the sample tokens. Expert e of a path is seeded
//      with the most important neuron (largest norm) not yet in an earlier expert of that path
//      (when every neuron is covered: the most important one not yet used as a seed) and takes
//      the k − 1 neurons most correlated with it. Channels are drawn as in importance.
//    Indices are sorted. When D_t == D_s the channels are all of them, in order, whatever the
//    method (recycling samples hidden neurons only).
//    Universal experts draw c = clamp(core_hidden, univ_hidden, H_s) hidden units (the core
//    width) with the method and keep univ_hidden of them evenly spaced (positions ⌊j·c/u⌋ of the
//    sorted draw): "a quarter of the sampled hidden units" with the default widths.
// 3. Slices: W1ᵉ = W1[hid][:, chan], b1ᵉ = b1[hid], W2ᵉ = W2[chan][:, hid], b2ᵉ = b2[chan], into
//    `blocks.<i>.mlp.{core,univ}.{fc1,fc2}.{weight,bias}` ([E, out, in] and [E, out]).
// 4. Every other target parameter except the head is copied by name from the non-expert source
//    (by default the dense source; the spec's "dense model of the target width" when given) where
//    the shapes match exactly; anything else keeps its initial value and is listed in the report
//    (so a narrower target without a dense model of its width gets no attention/embedding
//    weights: we do not slice them). The head (`head.*`) is new, and SpheroMoE's own parameters
//    (phi, phi_norm.*, tau_*) keep their init.
//
// The result holds the recycled/copied tensors by target name; apply it with
// `ps.load(result.tensors, /*strict=*/false)` or write the full checkpoint with save_recycled.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "models/vit.h"

namespace models {

enum class RecycleMethod { importance, random, uniform, coactivation };
std::string recycle_method_name(RecycleMethod m);
// "importance" | "random" | "uniform" | "coactivation"; anything else is an error listing them.
RecycleMethod parse_recycle_method(const std::string& name);

struct RecycleOptions {
  RecycleMethod method = RecycleMethod::importance;
  uint64_t seed = 0;
  int64_t max_images = 0;   // use the first max_images of the sample (0: all of them)
  int64_t batch = 64;       // images per forward pass of the statistics
  std::string source_name;  // where the dense checkpoint came from (metadata and report)
};

struct RecycleResult {
  // Target parameter name -> value (the target's dtype, CPU, contiguous).
  std::map<std::string, Tensor> tensors;
  // Source indices per expert, key "blocks.<i>.mlp.core.<e>" / "blocks.<i>.mlp.univ.<e>"
  // (universal experts: the kept indices, after the evenly spaced selection).
  std::map<std::string, std::vector<int64_t>> hidden_index, channel_index;
  // The statistics per MoE block, key "blocks.<i>": source hidden neurons [H_s], channels [D_s].
  std::map<std::string, std::vector<double>> hidden_norm, channel_norm;
  std::vector<std::string> copied;     // non-expert target parameters copied from the source
  std::vector<std::string> kept_init;  // target parameters left at their initial value
  int64_t images_used = 0;
  RecycleMethod method = RecycleMethod::importance;
  uint64_t seed = 0;
  std::string source_name;
  std::string report;  // human-readable summary of all of the above
};

// source: a dense ViT (an MLP in every block the target has a SpheroMoE in) with materialised
// parameters; target: a ViT with SpheroMoE layers in some blocks, parameters materialised (only
// its shapes, names and dtype are read); images [B, H, W, C] for the source (any float dtype).
// non_expert_source: where the non-expert weights come from (null: the source). Throws
// engine::Error naming the block and the shapes for every inconsistency.
RecycleResult recycle(const ViT& source, const ViT& target, const Tensor& images,
                      const RecycleOptions& opts, const ViT* non_expert_source = nullptr);

// Writes the full target parameter set (target values with result.tensors applied, in the
// target's registration order) as safetensors, atomically, with metadata "format": "pt",
// "recycle_method", "recycle_seed", "recycle_source", "recycle_images".
void save_recycled(const std::string& path, const RecycleResult& result, const ViT& target);

// timm / PyTorch ViT state dict -> our names and layouts. Mapped (with `p` the patch, C the
// channels, D the width):
//   patch_embed.proj.weight   [D, C, p, p] (Conv2d)  -> [D, p·p·C], permuted to our (dy, dx, c)
//                                                       patch flattening (a 2-D [D, p·p·C] passes)
//   patch_embed.proj.bias, cls_token [1,1,D], pos_embed [1, N+1, D] (CLS row first),
//   blocks.<i>.{norm1,norm2}.{weight,bias}, blocks.<i>.attn.{qkv,proj}.{weight,bias},
//   blocks.<i>.mlp.{fc1,fc2}.{weight,bias}, {norm,fc_norm}.{weight,bias}, head.{weight,bias}
//                                                    -> the same name, unchanged
// A leading "module." (DDP) is stripped. Any other name (LayerScale `ls1.gamma`, `norm_pre`,
// `attn.q_norm`, distillation tokens, ...) is an error naming it when strict, else left out.
// Models with pos_embed without the CLS row (timm's no_embed_class) load with a shape error.
std::map<std::string, Tensor> map_timm_vit(const std::map<std::string, Tensor>& timm,
                                           bool strict = true);

}  // namespace models
