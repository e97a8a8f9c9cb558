// The small multimodal set built from real parts (DESIGN.md §8), for IMP's objectives
// (image-text, video-text, audio-text, video-audio NCE; image / video / audio classification;
// zero-shot from text prompts) on one machine, offline.
//
// Parts, over the 10 Fashion-MNIST classes (multimodal_class_names(), lower-case):
//  - images: real Fashion-MNIST images (28x28x1 bytes, unchanged), per split a class-balanced
//    subset of the split's IDX file (train from train-*, test from t10k-*), with captions.
//  - videos: video v shows image v / 4 moving in direction v % 4 (left, right, up, down), so
//    every image appears in all four directions: `frames` frames of video_size^2 (black
//    background) where the image, box-downscaled to item_size^2, moves `step` pixels per frame,
//    step = (video_size - item_size) / (frames - 1) (integer division; "up" = towards row 0).
//    The start offset along the motion and the position across it are Philox draws of
//    (seed, split, v); the item is always wholly inside the frame. Captions name class and
//    direction ("a dress moving left", ...). Labels: class and direction.
//  - audio: the class name spoken by espeak-ng with `clip_variants` variants (a variant = one
//    speaker, i.e. a voice + voice-variant such as "en-gb-x-rp+f3", used by no other variant,
//    with its own speed in [170, 250] wpm and pitch in [25, 75]); variants 0..test_variants-1
//    are the test split, the rest the train split, so test speakers are never heard in training.
//    Each clip: espeak-ng's 22050 Hz WAV, resampled to 16 kHz (windowed sinc, train/audio.h),
//    silence trimmed (below 2% of the peak, 10 ms margin), then a log-mel spectrogram
//    [audio_frames, mels] (25 ms Hann window, 10 ms hop, 512-point FFT, HTK mels 0-8 kHz,
//    log(x + 1e-6)) padded with silence or cropped at the end. Batches are normalised by one
//    mean and std measured over all train spectrogram values (audio_mean() / audio_std()).
//  - video-audio-text triplets: triplet i = video i, a clip of the same class and split chosen by
//    a Philox draw of (seed, split, i), and video i's caption.
//
// Generated once and cached in cache_dir: multimodal.safetensors (selected image indices and
// labels, spectrograms, their labels and variants; metadata: config, normalisation, variants)
// and multimodal.json (the same config and facts, readable), both written atomically. The
// cache is reused when its recorded config equals the one asked for (only the fields that
// change its content: seed, images per class, audio settings, format version); otherwise it
// is regenerated. Images are read from the Fashion-MNIST files on every load (by the cached
// indices; their labels must match the cached ones, else the cache is regenerated). Videos,
// captions and batches are rendered on the fly and are pure functions of (seed, split, indices).
//
// Text is byte-level: ids 0..255 are the UTF-8 bytes, kTextPad = 256 pads to a fixed length
// (vocabulary kTextVocab = 257; no BOS/EOS). Captions are chosen from templates by a Philox
// draw per example, so an example's caption is fixed.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "trainer/image_data.h"

namespace train {

// ---- text ------------------------------------------------------------------------------------

inline constexpr int64_t kTextPad = 256;
inline constexpr int64_t kTextVocab = 257;

// i64 [texts.size(), max_len]: each text's bytes, then kTextPad. A text longer than max_len is an
// error (never truncated silently).
engine::Tensor encode_texts(const std::vector<std::string>& texts, int64_t max_len);
// The bytes of row `row` of an i64 [B, L] id tensor up to the first kTextPad.
std::string decode_text(const engine::Tensor& ids, int64_t row);

// ---- classes, directions, templates ----------------------------------------------------------

inline constexpr int kNumDirections = 4;
enum Direction : int { kLeft = 0, kRight = 1, kUp = 2, kDown = 3 };

// "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
// "ankle boot" (Fashion-MNIST label order).
const std::vector<std::string>& multimodal_class_names();
const std::vector<std::string>& direction_names();  // "left", "right", "up", "down"

enum class Modality { image, video, audio };

// Templates with "{c}" (class name), "{a}" (its article, "a" or "an") and "{d}" (direction).
const std::vector<std::string>& caption_templates(Modality m);       // video ones contain "{d}"
const std::vector<std::string>& class_prompt_templates(Modality m);  // zero-shot, no "{d}"
const std::vector<std::string>& direction_prompt_templates();        // only "{d}"
// Fills a template; direction -1 when it has no "{d}".
std::string fill_template(const std::string& tmpl, const std::string& class_name,
                          int direction = -1);
// The longest text any template above can produce (bytes), for choosing max_text_len.
int64_t longest_multimodal_text();

// ---- videos ----------------------------------------------------------------------------------

struct VideoMotion {
  int direction = 0;
  int64_t y0 = 0, x0 = 0;  // the item's top-left corner in frame 0
  int64_t dy = 0, dx = 0;  // its displacement per frame (pixels)
};

// Box-filter downscale of an [h, w, c] byte image to [size, size, c] floats in [0, 1]: output
// pixel (y, x) averages input rows [y h / size, (y + 1) h / size) and columns likewise (integer
// division; at least one row/column each).
std::vector<float> downscale_box(const uint8_t* image, int64_t h, int64_t w, int64_t c,
                                 int64_t size);
// Writes [frames, video_size, video_size, c] to `out`: frame t is black with `item`
// ([item_size, item_size, c]) pasted at (y0 + t dy, x0 + t dx), clipped to the frame; every
// value v then becomes (v - mean) / std.
void render_video(const std::vector<float>& item, int64_t item_size, int64_t c,
                  const VideoMotion& m, int64_t frames, int64_t video_size, float mean, float std,
                  float* out);

// ---- the dataset -----------------------------------------------------------------------------

struct MultimodalConfig {
  std::string cache_dir = "data/multimodal";
  std::string fashion_dir = kFashionMnistDir;
  uint64_t seed = 0;
  // Images per class of each split (-1: every image of the split). Cached.
  int64_t train_images_per_class = 1000;
  int64_t test_images_per_class = 200;
  // Audio (cached). audio = false skips espeak-ng (no clips, no triplets).
  bool audio = true;
  int64_t clip_variants = 32;  // espeak-ng variants per class (at most 104 speakers)
  int64_t test_variants = 8;   // of those, the test split's
  int64_t mels = 32;
  int64_t audio_frames = 64;         // 10 ms each
  std::string espeak = "espeak-ng";  // the program (PATH lookup unless it contains '/')
  int threads = 4;                   // parallel espeak-ng calls while generating
  // Rendering (not cached).
  int64_t frames = 4, video_size = 28, item_size = 14;
  int64_t max_text_len = 40;  // >= longest_multimodal_text()
  // Image and video values are (pixel / 255 - pixel_mean) / pixel_std: [0, 1] by default.
  float pixel_mean = 0.f, pixel_std = 1.f;
  bool verbose = true;  // progress lines on stderr
};

struct AudioVariant {
  std::string voice;  // espeak-ng -v argument
  int speed = 0;      // -s, words per minute
  int pitch = 0;      // -p, 0..99
  bool test = false;  // held out for the test split
};

struct TripletBatch {
  engine::Tensor videos;        // f32 [B, T, S, S, C]
  engine::Tensor spectrograms;  // f32 [B, audio_frames, mels], normalised
  engine::Tensor texts;         // i64 [B, max_text_len] (the videos' captions)
  engine::Tensor labels;        // i64 [B] class
  engine::Tensor directions;    // i64 [B]
};

// One split. Batch builders take example indices (each in range, else an error naming the
// builder, the split and the index) and return CPU tensors.
class MultimodalSplit {
 public:
  const std::string& name() const { return name_; }  // "train" or "test"
  int64_t num_images() const { return int64_t(labels_.size()); }
  int64_t num_videos() const { return num_images() * kNumDirections; }
  int64_t num_clips() const { return int64_t(clip_labels_.size()); }
  int64_t num_triplets() const { return num_clips() > 0 ? num_videos() : 0; }
  int64_t height() const { return height_; }
  int64_t width() const { return width_; }
  int64_t channels() const { return channels_; }

  // Images.
  const uint8_t* image(int64_t i) const;  // [H, W, C] bytes, the Fashion-MNIST pixels
  int64_t image_label(int64_t i) const;
  int64_t image_source(int64_t i) const;  // its index in the split's Fashion-MNIST file
  std::string image_caption(int64_t i) const;
  // Videos.
  int64_t video_image(int64_t v) const;  // v / 4
  int video_direction(int64_t v) const;  // v % 4
  int64_t video_label(int64_t v) const;
  VideoMotion video_motion(int64_t v) const;
  std::string video_caption(int64_t v) const;
  // Audio clips.
  const float* clip(int64_t k) const;  // raw log-mel [audio_frames, mels]
  int64_t clip_label(int64_t k) const;
  int64_t clip_variant(int64_t k) const;  // index into MultimodalData::variants()
  std::string clip_caption(int64_t k) const;
  // Triplets: video i, clip triplet_clip(i), video_caption(i).
  int64_t triplet_clip(int64_t i) const;

  engine::Tensor images(const std::vector<int64_t>& idx) const;        // f32 [B, H, W, C]
  engine::Tensor image_labels(const std::vector<int64_t>& idx) const;  // i64 [B]
  engine::Tensor image_texts(const std::vector<int64_t>& idx) const;   // i64 [B, L]
  engine::Tensor videos(const std::vector<int64_t>& idx) const;        // f32 [B, T, S, S, C]
  engine::Tensor video_labels(const std::vector<int64_t>& idx) const;
  engine::Tensor video_directions(const std::vector<int64_t>& idx) const;
  engine::Tensor video_texts(const std::vector<int64_t>& idx) const;
  engine::Tensor spectrograms(const std::vector<int64_t>& idx) const;  // f32 [B, F, M]
  engine::Tensor clip_labels(const std::vector<int64_t>& idx) const;
  engine::Tensor clip_texts(const std::vector<int64_t>& idx) const;
  TripletBatch triplets(const std::vector<int64_t>& idx) const;

 private:
  friend class MultimodalData;
  void check_index(const char* what, int64_t i, int64_t n) const;
  uint64_t stream(uint64_t purpose) const;
  uint32_t word(uint64_t purpose, uint64_t i) const;

  std::string name_;
  int split_id_ = 0;
  MultimodalConfig cfg_;
  float audio_mean_ = 0.f, audio_std_ = 1.f;
  int64_t height_ = 0, width_ = 0, channels_ = 0;
  std::vector<uint8_t> pixels_;
  std::vector<int64_t> labels_, sources_;
  std::vector<float> clips_;  // [num_clips, audio_frames, mels]
  std::vector<int64_t> clip_labels_, clip_variants_;
  std::vector<std::vector<int64_t>> clips_by_class_;
};

class MultimodalData {
 public:
  // Loads the cache, or generates it (when missing, unreadable or made with another config),
  // with progress lines on stderr. Errors: Fashion-MNIST missing (load_fashion_mnist's message),
  // espeak-ng missing (one line naming it and the install command), a bad config.
  explicit MultimodalData(const MultimodalConfig& cfg);

  const MultimodalConfig& config() const { return cfg_; }
  const MultimodalSplit& train() const { return train_; }
  const MultimodalSplit& test() const { return test_; }
  const MultimodalSplit& split(const std::string& name) const;  // "train" / "test"
  int64_t num_classes() const { return int64_t(multimodal_class_names().size()); }
  const std::vector<AudioVariant>& variants() const { return variants_; }
  float audio_mean() const { return audio_mean_; }
  float audio_std() const { return audio_std_; }
  bool generated() const { return generated_; }  // this constructor wrote the cache
  std::string cache_file() const;                // .../multimodal.safetensors
  std::string json_file() const;                 // .../multimodal.json

  // Zero-shot prompts, class-major: row c K + j is class c in template j of
  // class_prompt_templates(m) (K templates). i64 [classes K, max_text_len].
  engine::Tensor class_prompt_texts(Modality m) const;
  // Row d K + j: direction d in template j of direction_prompt_templates(). i64 [4 K, L].
  engine::Tensor direction_prompt_texts() const;

 private:
  struct SplitContent;  // what the cache holds for one split
  bool try_load(const ImageDataset (&fashion)[2], std::string& reason);
  void generate(const ImageDataset (&fashion)[2], const std::string& reason);
  void build(const ImageDataset (&fashion)[2], const SplitContent (&content)[2]);

  MultimodalConfig cfg_;
  MultimodalSplit train_, test_;
  std::vector<AudioVariant> variants_;
  float audio_mean_ = 0.f, audio_std_ = 1.f;
  bool generated_ = false;
};

}  // namespace train
