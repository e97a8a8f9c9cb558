// Batch assembly for image classification: bytes -> normalised f32 [B, H, W, C] with optional
// random crop + horizontal flip, Mixup / CutMix with soft targets, and label smoothing.
//
// Every random choice is a Philox draw keyed by (seed, batch key, slot), so a batch is a pure
// function of (seed, batch key, its example indices, config): the trainer passes the global batch
// index as the key (which fixes epoch and position, see train/loader.h), and a resumed run
// rebuilds bit-identical batches. Results do not depend on the number of OpenMP threads.
//
// The draws (documented so that tests and other backends can reproduce them):
//   streams   S(key, purpose) = 0xA6 << 56 | key << 4 | purpose   (key < 2^52)
//   an integer in [0, r) from word w: (uint64(w) * r) >> 32
//   crop/flip (purpose 1), slot b (position in the batch), words u32(4b + k):
//     oy = draw(k=0, 2*pad + 1), ox = draw(k=1, 2*pad + 1)   (only with random_crop)
//     flip = word(k=2) >> 31                                  (only with horizontal_flip)
//     out[y][x] = padded[y + oy][x' + ox] with x' = flip ? W-1-x : x, where padded is the image
//     with `pad` black (byte 0) pixels on each side, i.e. crop first, then flip (torchvision's
//     RandomCrop(padding=pad) then RandomHorizontalFlip). Without random_crop oy = ox = pad.
//   mixing (purpose 2), words u32(k):
//     k=0: the batch is mixed iff uniform(k=0) < mix_prob
//     k=1: with both alphas > 0, CutMix iff uniform(k=1) < cutmix_prob, else Mixup
//     k=2, k=3: CutMix box centre cy = draw(k=2, H), cx = draw(k=3, W)
//     lam ~ Beta(alpha, alpha) from sample_beta with normals from purpose 3 and uniforms from
//     purpose 4 (PhiloxCursor below).
//   Slot b is mixed with slot B-1-b (the batch reversed, as timm does; the middle slot of an
//   odd batch is mixed with itself).
//   Mixup: image = lam * own + (1 - lam) * partner; lambda = lam.
//   CutMix (timm's rand_bbox): r = sqrt(1 - lam), ch = floor(H r), cw = floor(W r),
//     box rows [clamp(cy - ch/2), clamp(cy + ch/2)), cols likewise (integer halves, clamped to
//     the image); the partner's pixels are pasted there; lambda = 1 - box area / (H W), the
//     fraction of the image actually kept.
//   targets = smooth(lambda * onehot(own) + (1 - lambda) * onehot(partner)),
//   smooth(t) = t (1 - eps) + eps / K. Rows sum to 1.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/tensor.h"
#include "trainer/image_data.h"

namespace train {

struct AugmentConfig {
  // Per-channel normalisation of pixel / 255 (one value applies to every channel).
  // switch-ViT's [-1, 1] inputs are mean 0.5, std 0.5 (the default).
  std::vector<float> mean = {0.5f};
  std::vector<float> std = {0.5f};
  bool random_crop = false;  // zero-padded random crop back to H x W
  int crop_padding = 4;
  bool horizontal_flip = false;
  float mixup_alpha = 0.f;   // > 0 enables Mixup with lam ~ Beta(alpha, alpha)
  float cutmix_alpha = 0.f;  // > 0 enables CutMix
  float mix_prob = 1.f;      // probability that a batch is mixed (when either is enabled)
  float cutmix_prob = 0.5f;  // with both enabled: probability of CutMix rather than Mixup
  float label_smoothing = 0.f;

  // The same normalisation without any augmentation (evaluation batches).
  AugmentConfig eval() const;
};

enum class MixKind { none, mixup, cutmix };

struct ImageBatch {
  engine::Tensor images;         // f32 [B, H, W, C], normalised
  engine::Tensor targets;        // f32 [B, classes], soft targets (rows sum to 1)
  engine::Tensor labels;         // i64 [B], each slot's own label (for accuracy)
  std::vector<int64_t> indices;  // the dataset examples, by slot
  int64_t key = 0;               // the batch key the draws were made with
  MixKind mix = MixKind::none;
  double lambda = 1.0;  // weight of each slot's own label (CutMix: unpasted area fraction)
  int64_t box_y0 = 0, box_y1 = 0, box_x0 = 0, box_x1 = 0;  // CutMix box, [y0, y1) x [x0, x1)
};

// Assembles the batch of `indices` (dataset examples) with the draws of (seed, key). The number
// of classes is ds.num_classes().
ImageBatch make_batch(const ImageDataset& ds, const std::vector<int64_t>& indices,
                      const AugmentConfig& cfg, uint64_t seed, int64_t key);

// ---- the draws, exposed for tests ------------------------------------------------------------

enum AugmentPurpose : uint64_t { kCropFlip = 1, kMix = 2, kGammaNormal = 3, kGammaUniform = 4 };
uint64_t augment_stream(int64_t key, uint64_t purpose);

// An integer in [0, r) from one Philox word: (w * r) >> 32.
inline int64_t draw_below(uint32_t w, int64_t r) {
  return int64_t((uint64_t(w) * uint64_t(r)) >> 32);
}

// Sequential draws for rejection samplers: the k-th normal is philox_normal(seed, normal_stream,
// k), the k-th uniform is 1 - philox_uniform(seed, uniform_stream, k), in (0, 1].
struct PhiloxCursor {
  uint64_t seed = 0, normal_stream = 0, uniform_stream = 0;
  uint64_t normals = 0, uniforms = 0;  // draws consumed so far
  double normal();
  double uniform();
};

// Gamma(alpha, 1) by Marsaglia & Tsang ("A simple method for generating gamma variables", 2000):
// for alpha >= 1, d = alpha - 1/3, c = 1 / sqrt(9 d); repeat { x = normal; v = (1 + c x)^3;
// if v > 0 { u = uniform; if log(u) < x^2 / 2 + d - d v + d log(v) return d v } }. For
// alpha < 1: Gamma(alpha + 1) * u^(1 / alpha) with one more uniform drawn after it.
double sample_gamma(PhiloxCursor& cur, double alpha);
// Beta(a, b) = X / (X + Y), X ~ Gamma(a) drawn first, then Y ~ Gamma(b) (0.5 if both are 0).
double sample_beta(PhiloxCursor& cur, double a, double b);

}  // namespace train
