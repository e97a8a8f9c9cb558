#include "models/embed.h"

#include "autograd/drop_token.h"
#include "autograd/index.h"
#include "autograd/patchify.h"
#include "autograd/views.h"
#include "engine/error.h"
#include "kernels/drop_token.h"
#include "kernels/elementwise.h"
#include "kernels/index.h"
#include "kernels/patchify.h"

namespace models {

const char* modality_name(Modality m) {
  switch (m) {
    case Modality::vision: return "vision";
    case Modality::audio: return "audio";
    case Modality::text: return "text";
  }
  return "?";
}

StemOutput ModalityEmbed::forward(const Var& input) const {
  StemOutput out;
  out.tokens = tokens(input);
  const Tensor g = grid(input.shape());
  const int64_t B = out.tokens.size(0), L = g.size(0);
  out.coords = g.unsqueeze(0).expand({B, L, g.size(1)}).contiguous();
  out.mask = mask(input);
  return out;
}

// ---- vision ----------------------------------------------------------------------------------

VisionEmbed::VisionEmbed(int64_t dim_, int64_t channels_, int64_t patch_, int64_t tubelet_)
    : ModalityEmbed("VisionEmbed"),
      dim(dim_),
      channels(channels_),
      patch(patch_),
      tubelet(tubelet_) {
  ENGINE_CHECK(dim > 0 && channels > 0 && patch > 0 && tubelet > 0,
               "VisionEmbed: dim, channels, patch and tubelet must be positive, got dim = ", dim,
               ", channels = ", channels, ", patch = ", patch, ", tubelet = ", tubelet);
  proj = child("proj", std::make_shared<Linear>(tubelet * patch * patch * channels, dim));
}

namespace {
// [B, T, H, W, C] of a video or image shape (an image is one frame), checked against C.
Shape video_shape(const Shape& s, int64_t channels, const char* op) {
  ENGINE_CHECK(s.size() == 4 || s.size() == 5, op,
               ": expected a video [B, T, H, W, C] or an image [B, H, W, C], got ", s);
  Shape v = s.size() == 5 ? s : Shape{s[0], 1, s[1], s[2], s[3]};
  ENGINE_CHECK(v[4] == channels, op, ": input ", s, " has ", v[4], " channels, the stem expects ",
               channels);
  return v;
}
}  // namespace

Var VisionEmbed::as_video(const Var& x) const {
  const Shape v = video_shape(x.shape(), channels, "VisionEmbed");
  Var video = x.dim() == 5 ? x : autograd::unsqueeze(x, 1);
  // A still frame under a longer tubelet: repeat it (a stride-0 view; the gradient sums back).
  if (v[1] == 1 && tubelet > 1) video = autograd::expand(video, {v[0], tubelet, v[2], v[3], v[4]});
  return video;
}

Var VisionEmbed::tokens(const Var& video) const {
  return proj->forward(autograd::patchify(as_video(video), tubelet, patch));
}

Tensor VisionEmbed::grid(const Shape& s) const {
  const Shape v = video_shape(s, channels, "VisionEmbed");
  const int64_t T = v[1] == 1 ? tubelet : v[1];
  return kernels::patch_coordinates(T, v[2], v[3], tubelet, patch);
}

// ---- audio -----------------------------------------------------------------------------------

AudioEmbed::AudioEmbed(int64_t dim_, int64_t patch_)
    : ModalityEmbed("AudioEmbed"), dim(dim_), patch(patch_) {
  ENGINE_CHECK(dim > 0 && patch > 0, "AudioEmbed: dim and patch must be positive, got dim = ", dim,
               ", patch = ", patch);
  proj = child("proj", std::make_shared<Linear>(patch * patch, dim));
}

namespace {
void check_spectrogram(const Shape& s, int64_t p) {
  ENGINE_CHECK(s.size() == 3 || (s.size() == 4 && s[3] == 1),
               "AudioEmbed: expected a log-mel spectrogram [B, frames, mel] (or [B, frames, mel, ",
               "1]), got ", s);
  ENGINE_CHECK(s[1] >= 1 && s[2] >= 1 && s[1] % p == 0 && s[2] % p == 0, "AudioEmbed: spectrogram ",
               s, ": frames = ", s[1], " and mel bins = ", s[2],
               " must both be positive multiples of the patch size ", p);
}
}  // namespace

Var AudioEmbed::tokens(const Var& spec) const {
  check_spectrogram(spec.shape(), patch);
  // A one-channel image [B, frames, mel, 1]: patch n = it·(mel/p) + if, features (dt, df).
  Var img = spec.dim() == 3 ? autograd::unsqueeze(spec, 3) : spec;
  return proj->forward(autograd::patchify(img, 1, patch));
}

Tensor AudioEmbed::grid(const Shape& s) const {
  check_spectrogram(s, patch);
  // The (vertical, horizontal) columns of the image coordinates are (time, frequency).
  return kernels::patch_coordinates(1, s[1], s[2], 1, patch).slice(1, 1, 3).contiguous();
}

// ---- text ------------------------------------------------------------------------------------

TextEmbed::TextEmbed(int64_t dim_, int64_t max_len_, int64_t vocab_)
    : ModalityEmbed("TextEmbed"), dim(dim_), max_len(max_len_), vocab(vocab_) {
  ENGINE_CHECK(dim > 0 && max_len > 0,
               "TextEmbed: dim and max_len must be positive, got dim = ", dim,
               ", max_len = ", max_len);
  ENGINE_CHECK(vocab > text_vocab::kPad, "TextEmbed: vocab ", vocab,
               " must hold the 256 bytes and the special ids (PAD = ", text_vocab::kPad, ")");
  embedding = param("embedding", {vocab, dim}, Init::normal(0.02), true);
  real_row_ = Tensor::ones({vocab, 1}, DType::f32);
  real_row_.narrow(0, text_vocab::kPad, 1).fill_(0.0);
}

namespace {
void check_ids(const Tensor& ids, int64_t max_len) {
  ENGINE_CHECK(
      ids.defined() && ids.dim() == 2 && (ids.dtype() == DType::i64 || ids.dtype() == DType::i32),
      "TextEmbed: expected token ids [B, L] (i64 or i32), got ",
      ids.defined() ? ids.describe() : std::string("an undefined tensor"));
  ENGINE_CHECK(ids.size(1) >= 1 && ids.size(1) <= max_len, "TextEmbed: sequence length ",
               ids.size(1), " of ", ids.describe(), " must be in [1, max_len = ", max_len, "]");
}
}  // namespace

Var TextEmbed::tokens(const Var& ids) const {
  check_ids(ids.data(), max_len);
  // PAD is masked everywhere downstream; its row gets no gradient (torch's padding_idx).
  return autograd::embedding(embedding, ids.data(), text_vocab::kPad);
}

Tensor TextEmbed::mask(const Var& ids) const {
  check_ids(ids.data(), max_len);
  const Tensor& t = ids.data();
  const Tensor rows = t.device() == real_row_.device() ? real_row_ : real_row_.to(t.device());
  return kernels::embedding(rows, t).reshape({t.size(0), t.size(1)});
}

Tensor TextEmbed::grid(const Shape& s) const {
  ENGINE_CHECK(s.size() == 2 && s[1] >= 1 && s[1] <= max_len,
               "TextEmbed: expected ids [B, L] with 1 <= L <= max_len = ", max_len, ", got ", s);
  const int64_t L = s[1];
  // position / max_len, divided in f64 and rounded once to f32 (as patch_coordinates does).
  Tensor pos =
      kernels::div(Tensor::arange(L, DType::f64), Tensor::full({L}, double(max_len), DType::f64));
  return pos.to(DType::f32).reshape({L, 1});
}

// ---- positions -------------------------------------------------------------------------------

FactorisedPosition::FactorisedPosition(int64_t dim_, std::vector<PositionAxis> axes_, double eps)
    : Module("FactorisedPosition"), dim(dim_), axes(std::move(axes_)) {
  ENGINE_CHECK(dim > 0 && !axes.empty(), "FactorisedPosition: need dim > 0 and at least one axis, ",
               "got dim = ", dim, " and ", axes.size(), " axes");
  for (const auto& a : axes) {
    ENGINE_CHECK(a.buckets >= 1, "FactorisedPosition: axis '", a.name, "' needs buckets >= 1, got ",
                 a.buckets);
    tables.push_back(param(a.name, {a.buckets, dim}, Init::normal(0.02), false));
  }
  norm = child("norm", std::make_shared<LayerNorm>(dim, true, eps));
}

Tensor FactorisedPosition::bucket_ids(const Tensor& coords, int64_t buckets) {
  ENGINE_CHECK(buckets >= 1, "FactorisedPosition::bucket_ids: buckets must be >= 1, got ", buckets);
  const Tensor c = coords.to(engine::Device::cpu()).to(DType::f64);
  const double top = double(buckets - 1);
  Tensor v = kernels::mul_scalar(kernels::add_scalar(c, 0x1p-20), double(buckets));
  // Clamp to [0, top]: min(v, top) = top - relu(top - v), then max(., 0) = relu(.); the
  // conversion to i64 truncates, which is floor for v >= 0.
  v = kernels::relu(kernels::add_scalar(
      kernels::neg(kernels::relu(kernels::add_scalar(kernels::neg(v), top))), top));
  return v.to(DType::i64);
}

Var FactorisedPosition::forward(const Tensor& coords) const {
  ENGINE_CHECK(coords.defined() && coords.dim() >= 1 && coords.size(-1) == int64_t(axes.size()) &&
                   (coords.dtype() == DType::f32 || coords.dtype() == DType::f64),
               "FactorisedPosition: coordinates must be floating [..., ", axes.size(), "], got ",
               coords.defined() ? coords.describe() : std::string("an undefined tensor"));
  Var sum;
  for (size_t a = 0; a < axes.size(); ++a) {
    Tensor ids = bucket_ids(coords.select(-1, int64_t(a)), axes[a].buckets);
    const engine::Device dev = tables[a].device();
    if (!(ids.device() == dev)) ids = ids.to(dev);
    Var e = autograd::embedding(tables[a], ids);
    sum = sum.defined() ? autograd::add(sum, e) : e;
  }
  return norm->forward(sum);
}

// ---- the stem --------------------------------------------------------------------------------

namespace {
std::vector<PositionAxis> position_axes(const StemConfig& c) {
  std::vector<std::string> names;
  std::vector<int64_t> defaults;
  switch (c.modality) {
    case Modality::vision:
      names = {"temporal", "vertical", "horizontal"};
      defaults = {8, 14, 14};
      break;
    case Modality::audio:
      names = {"time", "frequency"};
      defaults = {32, 8};
      break;
    case Modality::text:
      names = {"position"};
      defaults = {c.max_len};
      break;
  }
  const std::vector<int64_t>& b = c.buckets.empty() ? defaults : c.buckets;
  ENGINE_CHECK(b.size() == names.size(), "ModalityStem(", modality_name(c.modality),
               "): ", names.size(), " positional axes, but ", b.size(),
               " bucket counts were given");
  std::vector<PositionAxis> axes;
  for (size_t i = 0; i < names.size(); ++i) axes.push_back({names[i], b[i]});
  return axes;
}
}  // namespace

ModalityStem::ModalityStem(const StemConfig& c) : Module("ModalityStem"), cfg(c) {
  ENGINE_CHECK(cfg.dim > 0, "ModalityStem(", modality_name(cfg.modality),
               "): dim must be positive, got ", cfg.dim);
  switch (cfg.modality) {
    case Modality::vision:
      embed = child("embed",
                    std::make_shared<VisionEmbed>(cfg.dim, cfg.channels, cfg.patch, cfg.tubelet));
      break;
    case Modality::audio:
      embed = child("embed", std::make_shared<AudioEmbed>(cfg.dim, cfg.patch));
      break;
    case Modality::text:
      embed = child("embed", std::make_shared<TextEmbed>(cfg.dim, cfg.max_len, cfg.vocab));
      break;
  }
  pos =
      child("pos", std::make_shared<FactorisedPosition>(cfg.dim, position_axes(cfg), cfg.norm_eps));
  pre_proj = child("pre_proj", std::make_shared<Linear>(cfg.dim, cfg.dim, true));
}

int64_t ModalityStem::tokens_kept(const Shape& input_shape, double drop_rate) const {
  return kernels::keep_count(embed->grid(input_shape).size(0), drop_rate);
}

StemOutput ModalityStem::forward(const Var& input, Context& ctx, double drop_rate) const {
  ENGINE_CHECK(input.defined(), "ModalityStem(", modality_name(cfg.modality),
               "): input is undefined");
  const Tensor grid = embed->grid(input.shape());  // [L, k], shared by the examples
  const int64_t L = grid.size(0), k = grid.size(1);
  const int64_t keep = kernels::keep_count(L, drop_rate);  // validates the rate in every mode
  Var x = embed->tokens(input);
  const int64_t B = x.size(0);
  // Positions on the grid once, broadcast over the batch (the gradient sums over examples).
  x = autograd::add(x, pos->forward(grid));
  StemOutput out;
  out.coords = grid.unsqueeze(0).expand({B, L, k}).contiguous();
  out.mask = embed->mask(input);
  if (ctx.training && drop_rate > 0) {
    const Tensor idx =
        kernels::drop_token_indices(B, L, keep, ctx.rng_seed(), ctx.next_stream(), x.device());
    x = autograd::drop_token(x, idx);
    out.coords = kernels::drop_token_gather(
        out.coords, idx.device().is_cpu() ? idx : idx.to(engine::Device::cpu()));
    if (out.mask.defined()) out.mask = kernels::drop_token_gather(out.mask, idx);
  }
  // The per-token Linear after dropping: the same result on fewer rows.
  out.tokens = pre_proj->forward(x);
  return out;
}

}  // namespace models
