// IMP's modality stems (specs/imp.md, "Inputs and embeddings" and "Drop-token"): each modality
// turns its raw input into tokens [B, L, D] for the one shared encoder.
//
//   vision  video [B, T, H, W, C] (or an image [B, H, W, C]) -> t×p×p tubelets -> Linear `proj`
//   audio   log-mel spectrogram [B, frames, mel] -> p×p patches -> Linear `proj`
//   text    byte-level ids [B, L] (i64) -> embedding table, padding mask
//
// Every token carries a normalised coordinate (vision: temporal, vertical, horizontal; audio:
// time, frequency; text: position / max_len), each in [0, 1). Positions come from learned
// factorised tables indexed by those coordinates, pe = LayerNorm(Σ_axis E_axis[id_axis]) with
// id = int(coord × buckets), so any resolution and any drop-token subset keeps true positions.
//
// ModalityStem = embed + positions + per-modality Linear (`pre_proj`, with bias):
//   x = embed(input) + pe(coords);  x = drop_token(x) (training, rate r);  x = pre_proj(x)
// Positions are added before dropping: exact, and the factorised lookup runs once on the [L, k]
// grid shared by every example instead of once per example.
#pragma once
#include <string>
#include <vector>

#include "models/layers.h"

namespace models {

// Byte-level text vocabulary: ids 0..255 are bytes, then the special tokens.
namespace text_vocab {
inline constexpr int64_t kPad = 256;  // padding (masked out; its embedding row gets no gradient)
inline constexpr int64_t kBos = 257;  // start of text
inline constexpr int64_t kEos = 258;  // end of text
inline constexpr int64_t kCls = 259;  // spare classification token (IMP itself pools instead)
inline constexpr int64_t kSize = 260;
}  // namespace text_vocab

enum class Modality { vision, audio, text };
const char* modality_name(Modality m);  // "vision", "audio", "text"

// What a stem hands the encoder.
struct StemOutput {
  Var tokens;     // [B, L, D]
  Tensor coords;  // f32 [B, L, k] on the CPU, each in [0, 1), contiguous
  Tensor mask;    // f32 [B, L] on the tokens' device, 1 = real token, 0 = padding; undefined
                  // when every token is real (vision, audio)
};

// The embedding half of a stem: raw input -> tokens, plus the coordinates of the tokens.
class ModalityEmbed : public Module {
 public:
  using Module::Module;
  // input -> [B, L, D].
  virtual Var tokens(const Var& input) const = 0;
  // f32 [L, k] coordinates of the L tokens an input of this shape gives (the same for every
  // example of the batch), on the CPU.
  virtual Tensor grid(const Shape& input_shape) const = 0;
  // [B, L] f32 padding mask (1 = real), or undefined when every token is real.
  virtual Tensor mask(const Var& input) const { return Tensor(); }
  virtual int coord_dims() const = 0;  // k
  // tokens, grid expanded to [B, L, k], mask.
  StemOutput forward(const Var& input) const;
};

// Tubelets t×p×p×C flattened (autograd::patchify) and projected to `dim` by `proj`.
// An image ([B, H, W, C], or a 1-frame video) with t > 1 is repeated over t frames, so images and
// videos share one projection (its temporal slices are summed for a still image).
class VisionEmbed : public ModalityEmbed {
 public:
  VisionEmbed(int64_t dim, int64_t channels, int64_t patch, int64_t tubelet = 1);
  Var tokens(const Var& video) const override;
  Tensor grid(const Shape& video_shape) const override;  // [N, 3]: (temporal, vertical, horizontal)
  int coord_dims() const override { return 3; }
  int64_t dim, channels, patch, tubelet;
  std::shared_ptr<Linear> proj;  // [dim, tubelet·patch·patch·channels]

 private:
  Var as_video(const Var& x) const;  // [B, T', H, W, C] with T' a multiple of tubelet
};

// Log-mel spectrogram [B, frames, mel] (one channel; [B, frames, mel, 1] is accepted too) cut into
// p×p patches (time-major: patch n = it·(mel/p) + if), projected by `proj`.
class AudioEmbed : public ModalityEmbed {
 public:
  AudioEmbed(int64_t dim, int64_t patch);
  Var tokens(const Var& spectrogram) const override;
  Tensor grid(const Shape& spectrogram_shape) const override;  // [N, 2]: (time, frequency)
  int coord_dims() const override { return 2; }
  int64_t dim, patch;
  std::shared_ptr<Linear> proj;  // [dim, patch·patch]
};

// Byte-level ids [B, L] (i64/i32, L <= max_len) -> rows of `embedding` [vocab, dim] (init
// N(0, 0.02)). Mask: 1 where the id is not text_vocab::kPad. Coordinates: position / max_len.
class TextEmbed : public ModalityEmbed {
 public:
  TextEmbed(int64_t dim, int64_t max_len, int64_t vocab = text_vocab::kSize);
  Var tokens(const Var& ids) const override;
  Tensor grid(const Shape& ids_shape) const override;  // [L, 1]
  Tensor mask(const Var& ids) const override;
  int coord_dims() const override { return 1; }
  int64_t dim, max_len, vocab;
  Var embedding;

 private:
  Tensor real_row_;  // f32 [vocab, 1]: 1, except 0 at kPad (the mask is a lookup of the ids)
};

// One axis of a factorised positional table.
struct PositionAxis {
  std::string name;     // the parameter's name, e.g. "temporal"
  int64_t buckets = 0;  // rows of its table
};

// Learned factorised positions: one table [buckets, dim] per axis (init N(0, 0.02), no weight
// decay) and a LayerNorm (`norm`, scale and bias) over their sum.
class FactorisedPosition : public Module {
 public:
  FactorisedPosition(int64_t dim, std::vector<PositionAxis> axes, double eps = 1e-6);
  // coords [..., k] (k = number of axes, floating, any device) -> pe [..., dim] on the tables'
  // device.
  Var forward(const Tensor& coords) const;
  // i64 ids = int(coord × buckets) clamped to [0, buckets - 1], same shape as `coords`.
  // Coordinates are f32 roundings of fractions i/n; they are nudged up by 2^-20 before the
  // product so that an exact bucket boundary (i/n·buckets an integer) never lands one below.
  // Exact for grids with n·buckets < 2^20.
  static Tensor bucket_ids(const Tensor& coords, int64_t buckets);
  int64_t dim;
  std::vector<PositionAxis> axes;
  std::vector<Var> tables;
  std::shared_ptr<LayerNorm> norm;
};

struct StemConfig {
  Modality modality = Modality::vision;
  int64_t dim = 0;  // d_model of the shared encoder
  // vision: channels, patch side, tubelet length; audio: patch side (one channel)
  int64_t channels = 3, patch = 16, tubelet = 1;
  // text
  int64_t max_len = 64, vocab = text_vocab::kSize;
  // Rows per positional axis; empty gives the default of the modality: vision {8, 14, 14}
  // (temporal, vertical, horizontal), audio {32, 8} (time, frequency), text {max_len}.
  std::vector<int64_t> buckets;
  double norm_eps = 1e-6;
};

// embed (`embed`) + factorised positions (`pos`) + per-modality Linear with bias (`pre_proj`).
class ModalityStem : public Module {
 public:
  explicit ModalityStem(const StemConfig& cfg);
  // input: video/image (vision), spectrogram (audio) or i64 ids held in a Var (text).
  // drop_rate > 0 drops tokens when ctx.training: each example keeps int((1 - r)·L) tokens chosen
  // by kernels::drop_token_indices keyed (ctx.rng_seed(), ctx.next_stream()), in their original
  // order, with their coordinates and mask. The rate is validated even when not training
  // (0 <= r < 1 - 1/L).
  StemOutput forward(const Var& input, Context& ctx, double drop_rate = 0.0) const;
  StemOutput forward(const Tensor& input, Context& ctx, double drop_rate = 0.0) const {
    return forward(Var(input), ctx, drop_rate);
  }
  // Tokens a forward keeps for an input of this shape at this rate (when training).
  int64_t tokens_kept(const Shape& input_shape, double drop_rate) const;

  StemConfig cfg;
  std::shared_ptr<ModalityEmbed> embed;
  std::shared_ptr<FactorisedPosition> pos;
  std::shared_ptr<Linear> pre_proj;
};

}  // namespace models
