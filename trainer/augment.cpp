#include "trainer/augment.h"

#include <algorithm>
#include <cmath>

#include "engine/philox.h"

namespace train {
namespace {

constexpr const char* kOp = "make_batch";
constexpr int64_t kParallelMin = int64_t(1) << 15;  // floats per batch before threads pay off

void check_config(const AugmentConfig& cfg, int64_t channels) {
  for (const auto* v : {&cfg.mean, &cfg.std})
    ENGINE_CHECK(v->size() == 1 || int64_t(v->size()) == channels, kOp, ": ",
                 v == &cfg.mean ? "mean" : "std", " has ", v->size(),
                 " values, expected 1 or one per channel (", channels, ")");
  for (float s : cfg.std)
    ENGINE_CHECK(s > 0 && std::isfinite(s), kOp, ": std must be positive, got ", s);
  ENGINE_CHECK(cfg.crop_padding >= 0, kOp, ": crop_padding must be >= 0, got ", cfg.crop_padding);
  ENGINE_CHECK(cfg.mixup_alpha >= 0 && std::isfinite(cfg.mixup_alpha), kOp,
               ": mixup_alpha must be >= 0, got ", cfg.mixup_alpha);
  ENGINE_CHECK(cfg.cutmix_alpha >= 0 && std::isfinite(cfg.cutmix_alpha), kOp,
               ": cutmix_alpha must be >= 0, got ", cfg.cutmix_alpha);
  ENGINE_CHECK(cfg.mix_prob >= 0 && cfg.mix_prob <= 1, kOp, ": mix_prob must be in [0, 1], got ",
               cfg.mix_prob);
  ENGINE_CHECK(cfg.cutmix_prob >= 0 && cfg.cutmix_prob <= 1, kOp,
               ": cutmix_prob must be in [0, 1], got ", cfg.cutmix_prob);
  ENGINE_CHECK(cfg.label_smoothing >= 0 && cfg.label_smoothing < 1, kOp,
               ": label_smoothing must be in [0, 1), got ", cfg.label_smoothing);
}

}  // namespace

AugmentConfig AugmentConfig::eval() const {
  AugmentConfig c;
  c.mean = mean;
  c.std = std;
  return c;
}

uint64_t augment_stream(int64_t key, uint64_t purpose) {
  ENGINE_CHECK(key >= 0 && key < (int64_t(1) << 52), kOp, ": batch key ", key,
               " is outside [0, 2^52)");
  return uint64_t(0xA6) << 56 | uint64_t(key) << 4 | (purpose & 15u);
}

double PhiloxCursor::normal() { return engine::philox_normal(seed, normal_stream, normals++); }

double PhiloxCursor::uniform() {
  return 1.0 - double(engine::philox_uniform(seed, uniform_stream, uniforms++));
}

double sample_gamma(PhiloxCursor& cur, double alpha) {
  ENGINE_CHECK(alpha > 0 && std::isfinite(alpha), "sample_gamma: alpha must be positive, got ",
               alpha);
  if (alpha < 1) {
    // Boost: Gamma(a) = Gamma(a + 1) * U^(1/a); the uniform is drawn after the Gamma(a + 1).
    const double g = sample_gamma(cur, alpha + 1);
    return g * std::pow(cur.uniform(), 1.0 / alpha);
  }
  const double d = alpha - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    const double x = cur.normal();
    double v = 1.0 + c * x;
    if (v <= 0) continue;
    v = v * v * v;
    const double u = cur.uniform();
    if (std::log(u) < 0.5 * x * x + d - d * v + d * std::log(v)) return d * v;
  }
}

double sample_beta(PhiloxCursor& cur, double a, double b) {
  const double x = sample_gamma(cur, a);
  const double y = sample_gamma(cur, b);
  return x + y > 0 ? x / (x + y) : 0.5;  // both underflowed (tiny alphas): the symmetric middle
}

ImageBatch make_batch(const ImageDataset& ds, const std::vector<int64_t>& indices,
                      const AugmentConfig& cfg, uint64_t seed, int64_t key) {
  const int64_t B = int64_t(indices.size());
  const int64_t H = ds.height, W = ds.width, C = ds.channels, K = ds.num_classes();
  ENGINE_CHECK(B > 0, kOp, ": empty batch");
  ENGINE_CHECK(K > 0, kOp, ": dataset ", ds.name, " has no class names (number of classes)");
  ENGINE_CHECK(H > 0 && W > 0 && C > 0, kOp, ": dataset ", ds.name, " has images of ", H, "x", W,
               "x", C);
  check_config(cfg, C);
  for (int64_t i : indices)
    ENGINE_CHECK(i >= 0 && i < ds.n, kOp, ": example index ", i, " out of range for ", ds.name,
                 " (", ds.n, " examples)");
  const uint64_t s_crop = augment_stream(key, kCropFlip), s_mix = augment_stream(key, kMix);

  // Byte -> normalised value, per channel: every pixel is a table lookup.
  std::vector<float> lut(size_t(C * 256));
  for (int64_t c = 0; c < C; ++c) {
    const double m = cfg.mean[cfg.mean.size() == 1 ? 0 : size_t(c)];
    const double s = cfg.std[cfg.std.size() == 1 ? 0 : size_t(c)];
    for (int v = 0; v < 256; ++v) lut[size_t(c * 256 + v)] = float((v / 255.0 - m) / s);
  }

  ImageBatch out;
  out.indices = indices;
  out.key = key;
  out.images = engine::Tensor::empty({B, H, W, C}, engine::DType::f32);
  float* img = out.images.data<float>();
  const int64_t isz = H * W * C, pad = cfg.crop_padding;
  const float* lutp = lut.data();
  const bool parallel = B * isz >= kParallelMin;

#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t b = 0; b < B; ++b) {
    int64_t dy = 0, dx = 0;  // source offset of the crop window
    bool flip = false;
    if (cfg.random_crop) {
      dy = draw_below(engine::philox_u32(seed, s_crop, uint64_t(4 * b)), 2 * pad + 1) - pad;
      dx = draw_below(engine::philox_u32(seed, s_crop, uint64_t(4 * b + 1)), 2 * pad + 1) - pad;
    }
    if (cfg.horizontal_flip) flip = engine::philox_u32(seed, s_crop, uint64_t(4 * b + 2)) >> 31;
    const uint8_t* src = ds.image(indices[size_t(b)]);
    float* dst = img + b * isz;
    for (int64_t y = 0; y < H; ++y) {
      const int64_t sy = y + dy;
      for (int64_t x = 0; x < W; ++x) {
        const int64_t sx = (flip ? W - 1 - x : x) + dx;
        float* o = dst + (y * W + x) * C;
        if (sy < 0 || sy >= H || sx < 0 || sx >= W) {
          for (int64_t c = 0; c < C; ++c) o[c] = lutp[c * 256];  // black padding
        } else {
          const uint8_t* p = src + (sy * W + sx) * C;
          for (int64_t c = 0; c < C; ++c) o[c] = lutp[c * 256 + p[c]];
        }
      }
    }
  }

  // Mixing: slot b with slot B-1-b; a pair is handled by one iteration, so it reads both
  // unmixed images before writing either.
  const bool can_mix = cfg.mixup_alpha > 0 || cfg.cutmix_alpha > 0;
  if (can_mix && engine::philox_uniform(seed, s_mix, 0) < cfg.mix_prob) {
    const bool cut =
        cfg.cutmix_alpha > 0 &&
        (cfg.mixup_alpha <= 0 || engine::philox_uniform(seed, s_mix, 1) < cfg.cutmix_prob);
    PhiloxCursor cur{seed, augment_stream(key, kGammaNormal), augment_stream(key, kGammaUniform)};
    const double alpha = cut ? cfg.cutmix_alpha : cfg.mixup_alpha;
    const double lam = sample_beta(cur, alpha, alpha);
    const int64_t pairs = (B + 1) / 2;
    if (!cut) {
      out.mix = MixKind::mixup;
      out.lambda = lam;
      const float l = float(lam), r = 1.f - l;
#pragma omp parallel for schedule(static) if (parallel)
      for (int64_t b = 0; b < pairs; ++b) {
        float* u = img + b * isz;
        float* v = img + (B - 1 - b) * isz;
        if (u == v) {
          for (int64_t i = 0; i < isz; ++i) u[i] = l * u[i] + r * u[i];
        } else {
          for (int64_t i = 0; i < isz; ++i) {
            const float a = u[i], q = v[i];
            u[i] = l * a + r * q;
            v[i] = l * q + r * a;
          }
        }
      }
    } else {
      out.mix = MixKind::cutmix;
      const double ratio = std::sqrt(1.0 - lam);
      const int64_t ch = int64_t(double(H) * ratio), cw = int64_t(double(W) * ratio);
      const int64_t cy = draw_below(engine::philox_u32(seed, s_mix, 2), H);
      const int64_t cx = draw_below(engine::philox_u32(seed, s_mix, 3), W);
      out.box_y0 = std::clamp<int64_t>(cy - ch / 2, 0, H);
      out.box_y1 = std::clamp<int64_t>(cy + ch / 2, 0, H);
      out.box_x0 = std::clamp<int64_t>(cx - cw / 2, 0, W);
      out.box_x1 = std::clamp<int64_t>(cx + cw / 2, 0, W);
      const int64_t area = (out.box_y1 - out.box_y0) * (out.box_x1 - out.box_x0);
      out.lambda = 1.0 - double(area) / double(H * W);
      const int64_t y0 = out.box_y0, y1 = out.box_y1, x0 = out.box_x0, x1 = out.box_x1;
#pragma omp parallel for schedule(static) if (parallel)
      for (int64_t b = 0; b < pairs; ++b) {
        float* u = img + b * isz;
        float* v = img + (B - 1 - b) * isz;
        if (u == v) continue;  // pasting an image into itself changes nothing
        for (int64_t y = y0; y < y1; ++y)
          std::swap_ranges(u + (y * W + x0) * C, u + (y * W + x1) * C, v + (y * W + x0) * C);
      }
    }
  }

  out.labels = engine::Tensor::empty({B}, engine::DType::i64);
  out.targets = engine::Tensor::empty({B, K}, engine::DType::f32);
  int64_t* lab = out.labels.data<int64_t>();
  float* tgt = out.targets.data<float>();
  const double eps = cfg.label_smoothing, w = out.lambda;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t own = ds.labels[size_t(indices[size_t(b)])];
    const int64_t partner = ds.labels[size_t(indices[size_t(B - 1 - b)])];
    ENGINE_CHECK(own >= 0 && own < K, kOp, ": label ", own, " of example ", indices[size_t(b)],
                 " is outside the ", K, " classes of ", ds.name);
    lab[b] = own;
    std::vector<double> t(size_t(K), eps / double(K));
    t[size_t(own)] += w * (1 - eps);
    if (out.mix != MixKind::none) t[size_t(partner)] += (1 - w) * (1 - eps);
    for (int64_t k = 0; k < K; ++k) tgt[b * K + k] = float(t[size_t(k)]);
  }
  return out;
}

}  // namespace train
