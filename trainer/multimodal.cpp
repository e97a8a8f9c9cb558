#include "trainer/multimodal.h"

#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "engine/error.h"
#include "engine/philox.h"
#include "engine/safetensors.h"
#include "trainer/audio.h"

extern char** environ;

namespace train {
namespace fs = std::filesystem;
using engine::Tensor;
using Json = nlohmann::ordered_json;

namespace {

constexpr int kFormat = 1;

// Audio generation constants (recorded in the cache config, so changing them regenerates).
constexpr int kSampleRate = 16000;
constexpr int kSpeedMin = 170, kSpeedMax = 250;
constexpr int kPitchMin = 25, kPitchMax = 75;
constexpr double kTrimThreshold = 0.02;
constexpr int kTrimMargin = kSampleRate / 100;  // 10 ms
// Speakers: every base voice with every voice variant (8 x 13 = 104), all shipped with
// espeak-ng's own data (no mbrola voices).
const char* const kBaseVoices[] = {"en-us",  "en-gb",          "en-gb-x-rp",     "en-gb-scotland",
                                   "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc"};
const char* const kVoiceVariants[] = {"",    "+m1", "+m2", "+m3", "+m4", "+m5", "+m6",
                                      "+m7", "+f1", "+f2", "+f3", "+f4", "+f5"};
constexpr int64_t kNumSpeakers = std::size(kBaseVoices) * std::size(kVoiceVariants);

// Philox streams: 0x4D4D << 48 | purpose << 8 | split (split 0 train, 1 test, 0xFF both).
enum Purpose : uint64_t {
  kSelectImages = 1,
  kSpeakers = 2,
  kSpeedPitch = 3,
  kMotion = 4,
  kImageCaption = 5,
  kVideoCaption = 6,
  kClipCaption = 7,
  kTripletClip = 8,
};
uint64_t make_stream(uint64_t purpose, uint64_t split) {
  return uint64_t(0x4D4D) << 48 | purpose << 8 | split;
}
// An integer in [0, r) from one word.
int64_t below(uint32_t w, int64_t r) { return int64_t((uint64_t(w) * uint64_t(r)) >> 32); }

LogMelConfig logmel_config(const MultimodalConfig& c) {
  LogMelConfig m;
  m.sample_rate = kSampleRate;
  m.window = 400;
  m.hop = 160;
  m.n_fft = 512;
  m.mels = int(c.mels);
  m.fmin = 0;
  m.fmax = kSampleRate / 2.0;
  m.frames = c.audio_frames;
  m.eps = 1e-6;
  return m;
}

// The fields that determine the cache's content.
Json config_json(const MultimodalConfig& c) {
  Json j;
  j["format"] = kFormat;
  j["seed"] = c.seed;
  j["train_images_per_class"] = c.train_images_per_class;
  j["test_images_per_class"] = c.test_images_per_class;
  j["audio"] = c.audio;
  if (c.audio) {
    const LogMelConfig m = logmel_config(c);
    j["clip_variants"] = c.clip_variants;
    j["test_variants"] = c.test_variants;
    j["sample_rate"] = m.sample_rate;
    j["window"] = m.window;
    j["hop"] = m.hop;
    j["n_fft"] = m.n_fft;
    j["mels"] = m.mels;
    j["fmin"] = m.fmin;
    j["fmax"] = m.fmax;
    j["audio_frames"] = m.frames;
    j["log_eps"] = m.eps;
    j["trim_threshold"] = kTrimThreshold;
    j["trim_margin"] = kTrimMargin;
    j["speed_range"] = {kSpeedMin, kSpeedMax};
    j["pitch_range"] = {kPitchMin, kPitchMax};
    j["voices"] = std::vector<std::string>(std::begin(kBaseVoices), std::end(kBaseVoices));
    j["voice_variants"] =
        std::vector<std::string>(std::begin(kVoiceVariants), std::end(kVoiceVariants));
  }
  return j;
}

void validate(const MultimodalConfig& c) {
  const char* op = "MultimodalConfig";
  ENGINE_CHECK(!c.cache_dir.empty(), op, ": cache_dir is empty");
  ENGINE_CHECK(c.train_images_per_class == -1 || c.train_images_per_class >= 1, op,
               ": train_images_per_class must be >= 1 or -1 (all), got ", c.train_images_per_class);
  ENGINE_CHECK(c.test_images_per_class == -1 || c.test_images_per_class >= 1, op,
               ": test_images_per_class must be >= 1 or -1 (all), got ", c.test_images_per_class);
  if (c.audio) {
    ENGINE_CHECK(c.test_variants >= 1 && c.clip_variants > c.test_variants, op,
                 ": need 1 <= test_variants < clip_variants (both splits need clips), got ",
                 c.test_variants, " of ", c.clip_variants);
    ENGINE_CHECK(c.clip_variants <= kNumSpeakers, op, ": clip_variants ", c.clip_variants,
                 " exceeds the ", kNumSpeakers, " distinct espeak-ng speakers");
    ENGINE_CHECK(c.mels >= 1 && c.mels <= 128, op, ": mels must be in [1, 128], got ", c.mels);
    ENGINE_CHECK(c.audio_frames >= 1, op, ": audio_frames must be >= 1, got ", c.audio_frames);
    ENGINE_CHECK(c.threads >= 1, op, ": threads must be >= 1, got ", c.threads);
    ENGINE_CHECK(!c.espeak.empty(), op, ": espeak program is empty");
  }
  ENGINE_CHECK(c.frames >= 1, op, ": frames must be >= 1, got ", c.frames);
  ENGINE_CHECK(c.item_size >= 1 && c.item_size <= c.video_size, op,
               ": need 1 <= item_size <= ", "video_size, got item_size ", c.item_size,
               ", video_size ", c.video_size);
  ENGINE_CHECK(c.video_size - c.item_size >= c.frames - 1, op, ": video_size - item_size (",
               c.video_size - c.item_size, ") must be >= frames - 1 (", c.frames - 1,
               ") so that the item moves at least 1 pixel per frame");
  ENGINE_CHECK(c.max_text_len >= longest_multimodal_text(), op, ": max_text_len ", c.max_text_len,
               " is shorter than the longest caption or prompt (", longest_multimodal_text(),
               " bytes)");
  ENGINE_CHECK(c.pixel_std > 0, op, ": pixel_std must be > 0, got ", c.pixel_std);
}

std::vector<AudioVariant> make_variants(const MultimodalConfig& c) {
  std::vector<int64_t> perm(static_cast<size_t>(kNumSpeakers));
  engine::philox_permutation(c.seed, make_stream(kSpeakers, 0xFF), kNumSpeakers, perm.data());
  std::vector<AudioVariant> v(size_t(c.clip_variants));
  const uint64_t s = make_stream(kSpeedPitch, 0xFF);
  for (int64_t k = 0; k < c.clip_variants; ++k) {
    const int64_t sp = perm[size_t(k)];
    AudioVariant& a = v[size_t(k)];
    a.voice = std::string(kBaseVoices[sp / int64_t(std::size(kVoiceVariants))]) +
              kVoiceVariants[sp % int64_t(std::size(kVoiceVariants))];
    a.speed =
        kSpeedMin + int(below(engine::philox_u32(c.seed, s, 2 * k), kSpeedMax - kSpeedMin + 1));
    a.pitch =
        kPitchMin + int(below(engine::philox_u32(c.seed, s, 2 * k + 1), kPitchMax - kPitchMin + 1));
    a.test = k < c.test_variants;
  }
  return v;
}

Json variants_json(const std::vector<AudioVariant>& v) {
  Json j = Json::array();
  for (const AudioVariant& a : v)
    j.push_back({{"voice", a.voice},
                 {"speed", a.speed},
                 {"pitch", a.pitch},
                 {"split", a.test ? "test" : "train"}});
  return j;
}

std::vector<AudioVariant> variants_from_json(const Json& j) {
  std::vector<AudioVariant> v;
  for (const Json& e : j) {
    AudioVariant a;
    a.voice = e.at("voice").get<std::string>();
    a.speed = e.at("speed").get<int>();
    a.pitch = e.at("pitch").get<int>();
    a.test = e.at("split").get<std::string>() == "test";
    v.push_back(a);
  }
  return v;
}

// A class-balanced subset of `ds`, ascending: the first per_class images of each class in a
// Philox permutation of the file (all of them for -1).
std::vector<int64_t> select_images(const ImageDataset& ds, int64_t per_class, uint64_t seed,
                                   int split) {
  std::vector<int64_t> out;
  if (per_class == -1) {
    for (int64_t i = 0; i < ds.n; ++i) out.push_back(i);
    return out;
  }
  std::vector<int64_t> perm(size_t(ds.n));
  engine::philox_permutation(seed, make_stream(kSelectImages, uint64_t(split)), ds.n, perm.data());
  std::vector<int64_t> count(10, 0);
  for (int64_t p : perm) {
    const int64_t l = ds.labels[size_t(p)];
    if (count[size_t(l)] < per_class) {
      ++count[size_t(l)];
      out.push_back(p);
    }
  }
  for (int c = 0; c < 10; ++c)
    ENGINE_CHECK(count[size_t(c)] == per_class, "MultimodalData: ", ds.name, " has only ",
                 count[size_t(c)], " images of class \"", multimodal_class_names()[size_t(c)],
                 "\", asked for ", per_class, " per class");
  std::sort(out.begin(), out.end());
  return out;
}

// "" when not found; `prog` itself when it names a path.
std::string find_program(const std::string& prog) {
  if (prog.find('/') != std::string::npos) return access(prog.c_str(), X_OK) == 0 ? prog : "";
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find(':', start);
    if (end == std::string::npos) end = p.size();
    std::string dir = p.substr(start, end - start);
    if (dir.empty()) dir = ".";
    const std::string cand = dir + "/" + prog;
    if (access(cand.c_str(), X_OK) == 0) return cand;
    start = end + 1;
  }
  return "";
}

std::string read_text(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (s.size() > max_bytes) s.resize(max_bytes);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  for (char& ch : s)
    if (ch == '\n') ch = ' ';
  return s;
}

// Runs `program -v voice -s speed -p pitch -w wav text` (no shell), stderr to err_path.
void run_espeak(const std::string& program, const AudioVariant& v, const std::string& text,
                const std::string& wav, const std::string& err_path) {
  std::vector<std::string> args = {
      program, "-v", v.voice, "-s", std::to_string(v.speed), "-p", std::to_string(v.pitch),
      "-w",    wav,  text};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, program.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  std::string cmd;
  for (size_t i = 0; i + 1 < args.size(); ++i) cmd += args[i] + " ";
  cmd += "\"" + text + "\"";
  ENGINE_CHECK(rc == 0, "MultimodalData: cannot start ", cmd, ": ", std::strerror(rc));
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    ENGINE_CHECK(errno == EINTR, "MultimodalData: waitpid for ", cmd, ": ", std::strerror(errno));
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
  const std::string err = read_text(err_path, 400);
  ENGINE_FAIL("MultimodalData: ", cmd, " failed (",
              WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                                : "killed by signal " + std::to_string(WTERMSIG(status)),
              ")", err.empty() ? "" : ": " + err);
}

// A fresh temporary directory, removed with its contents by the destructor.
struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "multimodal-XXXXXX").string();
    ENGINE_CHECK(mkdtemp(tmpl.data()) != nullptr, "MultimodalData: cannot create a temporary ",
                 "directory: ", std::strerror(errno));
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void write_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream out(tmp, std::ios::binary);
    ENGINE_CHECK(out.good(), "MultimodalData: cannot create ", tmp, ": ", std::strerror(errno));
    out << text;
    out.flush();
    ENGINE_CHECK(out.good(), "MultimodalData: cannot write ", tmp, ": ", std::strerror(errno));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  ENGINE_CHECK(!ec, "MultimodalData: cannot rename ", tmp, " to ", path, ": ", ec.message());
}

}  // namespace

// ---- text ------------------------------------------------------------------------------------

Tensor encode_texts(const std::vector<std::string>& texts, int64_t max_len) {
  ENGINE_CHECK(max_len >= 1, "encode_texts: max_len must be >= 1, got ", max_len);
  Tensor ids = Tensor::full({int64_t(texts.size()), max_len}, double(kTextPad), engine::DType::i64);
  int64_t* p = ids.data<int64_t>();
  for (size_t b = 0; b < texts.size(); ++b) {
    const std::string& t = texts[b];
    ENGINE_CHECK(int64_t(t.size()) <= max_len, "encode_texts: text ", b, " (\"", t, "\") has ",
                 t.size(), " bytes, more than max_len ", max_len);
    for (size_t i = 0; i < t.size(); ++i) p[int64_t(b) * max_len + int64_t(i)] = uint8_t(t[i]);
  }
  return ids;
}

std::string decode_text(const Tensor& ids, int64_t row) {
  ENGINE_CHECK(ids.dim() == 2 && ids.dtype() == engine::DType::i64, "decode_text: expected i64 ",
               "[B, L] ids, got ", ids.describe());
  ENGINE_CHECK(row >= 0 && row < ids.size(0), "decode_text: row ", row, " out of range [0, ",
               ids.size(0), ")");
  const std::vector<int64_t> v = ids.select(0, row).to_vector<int64_t>();
  std::string s;
  for (int64_t id : v) {
    if (id == kTextPad) break;
    ENGINE_CHECK(id >= 0 && id < 256, "decode_text: id ", id, " is not a byte or kTextPad");
    s.push_back(char(uint8_t(id)));
  }
  return s;
}

// ---- classes, directions, templates ----------------------------------------------------------

const std::vector<std::string>& multimodal_class_names() {
  static const std::vector<std::string> names = {"t-shirt", "trouser",   "pullover", "dress",
                                                 "coat",    "sandal",    "shirt",    "sneaker",
                                                 "bag",     "ankle boot"};
  return names;
}

const std::vector<std::string>& direction_names() {
  static const std::vector<std::string> names = {"left", "right", "up", "down"};
  return names;
}

const std::vector<std::string>& caption_templates(Modality m) {
  static const std::vector<std::string> image = {
      "a photo of {a} {c}",       "{a} {c}",
      "a picture of {a} {c}",     "an image of {a} {c}",
      "a photo of the {c}",       "a grayscale photo of {a} {c}",
      "a small photo of {a} {c}", "a photo of my {c}"};
  static const std::vector<std::string> video = {
      "{a} {c} moving {d}", "a video of {a} {c} moving {d}", "{a} {c} that moves {d}",
      "{a} {c} sliding {d}", "a clip of {a} {c} going {d}"};
  static const std::vector<std::string> audio = {"{c}", "the word {c}", "someone saying {c}",
                                                 "a voice saying {c}", "the spoken word {c}"};
  switch (m) {
    case Modality::image:
      return image;
    case Modality::video:
      return video;
    case Modality::audio:
      return audio;
  }
  ENGINE_FAIL("caption_templates: bad modality");
}

const std::vector<std::string>& class_prompt_templates(Modality m) {
  static const std::vector<std::string> video = {"a video of {a} {c}", "{a} {c} moving",
                                                 "a clip of {a} {c}", "{a} {c}"};
  if (m == Modality::video) return video;
  return caption_templates(m);  // image and audio captions name no direction
}

const std::vector<std::string>& direction_prompt_templates() {
  static const std::vector<std::string> t = {"moving {d}", "something moving {d}",
                                             "an object moving {d}",
                                             "a video of something moving {d}"};
  return t;
}

std::string fill_template(const std::string& tmpl, const std::string& class_name, int direction) {
  const char first =
      class_name.empty() ? 'x' : char(std::tolower(static_cast<unsigned char>(class_name[0])));
  const std::string art = std::string("aeiou").find(first) != std::string::npos ? "an" : "a";
  std::string out;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl[i] == '{' && i + 2 < tmpl.size() && tmpl[i + 2] == '}') {
      const char key = tmpl[i + 1];
      if (key == 'c')
        out += class_name;
      else if (key == 'a')
        out += art;
      else if (key == 'd') {
        ENGINE_CHECK(direction >= 0 && direction < kNumDirections, "fill_template: \"", tmpl,
                     "\" needs a direction in [0, 4), got ", direction);
        out += direction_names()[size_t(direction)];
      } else {
        ENGINE_FAIL("fill_template: unknown placeholder {", key, "} in \"", tmpl, "\"");
      }
      i += 2;
    } else {
      out.push_back(tmpl[i]);
    }
  }
  return out;
}

int64_t longest_multimodal_text() {
  int64_t longest = 0;
  auto take = [&](const std::vector<std::string>& ts) {
    for (const std::string& t : ts)
      for (const std::string& c : multimodal_class_names())
        for (int d = 0; d < kNumDirections; ++d)
          longest = std::max<int64_t>(longest, int64_t(fill_template(t, c, d).size()));
  };
  for (Modality m : {Modality::image, Modality::video, Modality::audio}) {
    take(caption_templates(m));
    take(class_prompt_templates(m));
  }
  take(direction_prompt_templates());
  return longest;
}

// ---- videos ----------------------------------------------------------------------------------

std::vector<float> downscale_box(const uint8_t* image, int64_t h, int64_t w, int64_t c,
                                 int64_t size) {
  ENGINE_CHECK(h >= 1 && w >= 1 && c >= 1 && size >= 1, "downscale_box: bad sizes ", h, "x", w, "x",
               c, " -> ", size);
  std::vector<float> out(size_t(size * size * c));
  for (int64_t y = 0; y < size; ++y) {
    const int64_t y0 = y * h / size, y1 = std::max(y0 + 1, (y + 1) * h / size);
    for (int64_t x = 0; x < size; ++x) {
      const int64_t x0 = x * w / size, x1 = std::max(x0 + 1, (x + 1) * w / size);
      for (int64_t ch = 0; ch < c; ++ch) {
        int64_t sum = 0;
        for (int64_t yy = y0; yy < y1; ++yy)
          for (int64_t xx = x0; xx < x1; ++xx) sum += image[(yy * w + xx) * c + ch];
        out[size_t((y * size + x) * c + ch)] = float(double(sum) / (255.0 * (y1 - y0) * (x1 - x0)));
      }
    }
  }
  return out;
}

void render_video(const std::vector<float>& item, int64_t item_size, int64_t c,
                  const VideoMotion& m, int64_t frames, int64_t video_size, float mean, float std,
                  float* out) {
  ENGINE_CHECK(int64_t(item.size()) == item_size * item_size * c, "render_video: item has ",
               item.size(), " values, expected ", item_size, "x", item_size, "x", c);
  const float bg = (0.f - mean) / std;
  const int64_t frame_len = video_size * video_size * c;
  for (int64_t t = 0; t < frames; ++t) {
    float* f = out + t * frame_len;
    std::fill(f, f + frame_len, bg);
    const int64_t oy = m.y0 + t * m.dy, ox = m.x0 + t * m.dx;
    for (int64_t y = 0; y < item_size; ++y) {
      const int64_t fy = oy + y;
      if (fy < 0 || fy >= video_size) continue;
      for (int64_t x = 0; x < item_size; ++x) {
        const int64_t fx = ox + x;
        if (fx < 0 || fx >= video_size) continue;
        for (int64_t ch = 0; ch < c; ++ch)
          f[(fy * video_size + fx) * c + ch] =
              (item[size_t((y * item_size + x) * c + ch)] - mean) / std;
      }
    }
  }
}

// ---- MultimodalSplit ---------------------------------------------------------------------------

uint64_t MultimodalSplit::stream(uint64_t purpose) const {
  return make_stream(purpose, uint64_t(split_id_));
}
uint32_t MultimodalSplit::word(uint64_t purpose, uint64_t i) const {
  return engine::philox_u32(cfg_.seed, stream(purpose), i);
}

void MultimodalSplit::check_index(const char* what, int64_t i, int64_t n) const {
  ENGINE_CHECK(i >= 0 && i < n, "MultimodalSplit::", what, ": index ", i, " out of range [0, ", n,
               ") of the ", name_, " split");
}

const uint8_t* MultimodalSplit::image(int64_t i) const {
  check_index("image", i, num_images());
  return pixels_.data() + i * height_ * width_ * channels_;
}
int64_t MultimodalSplit::image_label(int64_t i) const {
  check_index("image_label", i, num_images());
  return labels_[size_t(i)];
}
int64_t MultimodalSplit::image_source(int64_t i) const {
  check_index("image_source", i, num_images());
  return sources_[size_t(i)];
}
std::string MultimodalSplit::image_caption(int64_t i) const {
  const auto& t = caption_templates(Modality::image);
  const std::string& tmpl = t[size_t(below(word(kImageCaption, uint64_t(i)), int64_t(t.size())))];
  return fill_template(tmpl, multimodal_class_names()[size_t(image_label(i))]);
}

int64_t MultimodalSplit::video_image(int64_t v) const {
  check_index("video_image", v, num_videos());
  return v / kNumDirections;
}
int MultimodalSplit::video_direction(int64_t v) const {
  check_index("video_direction", v, num_videos());
  return int(v % kNumDirections);
}
int64_t MultimodalSplit::video_label(int64_t v) const { return labels_[size_t(video_image(v))]; }

VideoMotion MultimodalSplit::video_motion(int64_t v) const {
  check_index("video_motion", v, num_videos());
  const int64_t range = cfg_.video_size - cfg_.item_size;
  const int64_t step = cfg_.frames > 1 ? range / (cfg_.frames - 1) : 0;
  const int64_t slack = range - (cfg_.frames - 1) * step;
  const int64_t a = below(word(kMotion, 2 * uint64_t(v)), slack + 1);      // along the motion
  const int64_t b = below(word(kMotion, 2 * uint64_t(v) + 1), range + 1);  // across it
  VideoMotion m;
  m.direction = video_direction(v);
  switch (m.direction) {
    case kRight:
      m = {kRight, b, a, 0, step};
      break;
    case kLeft:
      m = {kLeft, b, range - a, 0, -step};
      break;
    case kDown:
      m = {kDown, a, b, step, 0};
      break;
    case kUp:
      m = {kUp, range - a, b, -step, 0};
      break;
  }
  return m;
}

std::string MultimodalSplit::video_caption(int64_t v) const {
  check_index("video_caption", v, num_videos());
  const auto& t = caption_templates(Modality::video);
  const std::string& tmpl = t[size_t(below(word(kVideoCaption, uint64_t(v)), int64_t(t.size())))];
  return fill_template(tmpl, multimodal_class_names()[size_t(video_label(v))], video_direction(v));
}

const float* MultimodalSplit::clip(int64_t k) const {
  check_index("clip", k, num_clips());
  return clips_.data() + k * cfg_.audio_frames * cfg_.mels;
}
int64_t MultimodalSplit::clip_label(int64_t k) const {
  check_index("clip_label", k, num_clips());
  return clip_labels_[size_t(k)];
}
int64_t MultimodalSplit::clip_variant(int64_t k) const {
  check_index("clip_variant", k, num_clips());
  return clip_variants_[size_t(k)];
}
std::string MultimodalSplit::clip_caption(int64_t k) const {
  const auto& t = caption_templates(Modality::audio);
  const std::string& tmpl = t[size_t(below(word(kClipCaption, uint64_t(k)), int64_t(t.size())))];
  return fill_template(tmpl, multimodal_class_names()[size_t(clip_label(k))]);
}

int64_t MultimodalSplit::triplet_clip(int64_t i) const {
  ENGINE_CHECK(num_clips() > 0, "MultimodalSplit::triplet_clip: the ", name_,
               " split has no audio clips (config.audio is false)");
  check_index("triplet_clip", i, num_triplets());
  const auto& same = clips_by_class_[size_t(video_label(i))];
  ENGINE_CHECK(!same.empty(), "MultimodalSplit::triplet_clip: no clip of class ", video_label(i));
  return same[size_t(below(word(kTripletClip, uint64_t(i)), int64_t(same.size())))];
}

Tensor MultimodalSplit::images(const std::vector<int64_t>& idx) const {
  const int64_t B = int64_t(idx.size()), len = height_ * width_ * channels_;
  Tensor out = Tensor::empty({B, height_, width_, channels_});
  float* o = out.data<float>();
  const float scale = 1.f / (255.f * cfg_.pixel_std), shift = cfg_.pixel_mean / cfg_.pixel_std;
  for (int64_t b = 0; b < B; ++b) {
    const uint8_t* p = image(idx[size_t(b)]);
    for (int64_t j = 0; j < len; ++j) o[b * len + j] = float(p[j]) * scale - shift;
  }
  return out;
}

namespace {
template <class F>
Tensor i64_batch(const std::vector<int64_t>& idx, F&& f) {
  std::vector<int64_t> v(idx.size());
  for (size_t b = 0; b < idx.size(); ++b) v[b] = f(idx[b]);
  return Tensor::from_vector(v, {int64_t(idx.size())});
}
template <class F>
Tensor text_batch(const std::vector<int64_t>& idx, int64_t max_len, F&& f) {
  std::vector<std::string> texts(idx.size());
  for (size_t b = 0; b < idx.size(); ++b) texts[b] = f(idx[b]);
  return encode_texts(texts, max_len);
}
}  // namespace

Tensor MultimodalSplit::image_labels(const std::vector<int64_t>& idx) const {
  return i64_batch(idx, [&](int64_t i) { return image_label(i); });
}
Tensor MultimodalSplit::image_texts(const std::vector<int64_t>& idx) const {
  return text_batch(idx, cfg_.max_text_len, [&](int64_t i) { return image_caption(i); });
}

Tensor MultimodalSplit::videos(const std::vector<int64_t>& idx) const {
  const int64_t B = int64_t(idx.size()), T = cfg_.frames, S = cfg_.video_size;
  Tensor out = Tensor::empty({B, T, S, S, channels_});
  float* o = out.data<float>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t v = idx[size_t(b)];
    const VideoMotion m = video_motion(v);
    const std::vector<float> item =
        downscale_box(image(video_image(v)), height_, width_, channels_, cfg_.item_size);
    render_video(item, cfg_.item_size, channels_, m, T, S, cfg_.pixel_mean, cfg_.pixel_std,
                 o + b * T * S * S * channels_);
  }
  return out;
}
Tensor MultimodalSplit::video_labels(const std::vector<int64_t>& idx) const {
  return i64_batch(idx, [&](int64_t v) { return video_label(v); });
}
Tensor MultimodalSplit::video_directions(const std::vector<int64_t>& idx) const {
  return i64_batch(idx, [&](int64_t v) { return int64_t(video_direction(v)); });
}
Tensor MultimodalSplit::video_texts(const std::vector<int64_t>& idx) const {
  return text_batch(idx, cfg_.max_text_len, [&](int64_t v) { return video_caption(v); });
}

Tensor MultimodalSplit::spectrograms(const std::vector<int64_t>& idx) const {
  const int64_t B = int64_t(idx.size()), F = cfg_.audio_frames, M = cfg_.mels;
  Tensor out = Tensor::empty({B, F, M});
  float* o = out.data<float>();
  for (int64_t b = 0; b < B; ++b) {
    const float* s = clip(idx[size_t(b)]);
    for (int64_t j = 0; j < F * M; ++j) o[b * F * M + j] = (s[j] - audio_mean_) / audio_std_;
  }
  return out;
}
Tensor MultimodalSplit::clip_labels(const std::vector<int64_t>& idx) const {
  return i64_batch(idx, [&](int64_t k) { return clip_label(k); });
}
Tensor MultimodalSplit::clip_texts(const std::vector<int64_t>& idx) const {
  return text_batch(idx, cfg_.max_text_len, [&](int64_t k) { return clip_caption(k); });
}

TripletBatch MultimodalSplit::triplets(const std::vector<int64_t>& idx) const {
  std::vector<int64_t> clips(idx.size());
  for (size_t b = 0; b < idx.size(); ++b) clips[b] = triplet_clip(idx[b]);
  TripletBatch t;
  t.videos = videos(idx);
  t.spectrograms = spectrograms(clips);
  t.texts = video_texts(idx);
  t.labels = video_labels(idx);
  t.directions = video_directions(idx);
  return t;
}

// ---- MultimodalData ----------------------------------------------------------------------------

struct MultimodalData::SplitContent {
  std::vector<int64_t> sources, labels;  // Fashion-MNIST indices and their labels
  std::vector<float> clips;              // [clips, audio_frames, mels], raw log-mel
  std::vector<int64_t> clip_labels, clip_variants;
};

std::string MultimodalData::cache_file() const {
  return (fs::path(cfg_.cache_dir) / "multimodal.safetensors").string();
}
std::string MultimodalData::json_file() const {
  return (fs::path(cfg_.cache_dir) / "multimodal.json").string();
}

const MultimodalSplit& MultimodalData::split(const std::string& name) const {
  if (name == "train") return train_;
  if (name == "test") return test_;
  ENGINE_FAIL("MultimodalData::split: expected \"train\" or \"test\", got \"", name, "\"");
}

Tensor MultimodalData::class_prompt_texts(Modality m) const {
  std::vector<std::string> texts;
  for (const std::string& c : multimodal_class_names())
    for (const std::string& t : class_prompt_templates(m)) texts.push_back(fill_template(t, c));
  return encode_texts(texts, cfg_.max_text_len);
}

Tensor MultimodalData::direction_prompt_texts() const {
  std::vector<std::string> texts;
  for (int d = 0; d < kNumDirections; ++d)
    for (const std::string& t : direction_prompt_templates())
      texts.push_back(fill_template(t, "", d));
  return encode_texts(texts, cfg_.max_text_len);
}

MultimodalData::MultimodalData(const MultimodalConfig& cfg) : cfg_(cfg) {
  validate(cfg_);
  const ImageDataset fashion[2] = {load_fashion_mnist(cfg_.fashion_dir, "train"),
                                   load_fashion_mnist(cfg_.fashion_dir, "test")};
  std::string reason;
  if (try_load(fashion, reason)) {
    if (cfg_.verbose)
      std::fprintf(stderr, "multimodal: loaded %s (%lld + %lld images, %lld + %lld clips)\n",
                   cache_file().c_str(), (long long)train_.num_images(),
                   (long long)test_.num_images(), (long long)train_.num_clips(),
                   (long long)test_.num_clips());
    return;
  }
  generate(fashion, reason);
  generated_ = true;
}

void MultimodalData::build(const ImageDataset (&fashion)[2], const SplitContent (&content)[2]) {
  for (int s = 0; s < 2; ++s) {
    MultimodalSplit& sp = s == 0 ? train_ : test_;
    const ImageDataset& ds = fashion[s];
    const SplitContent& c = content[s];
    sp = MultimodalSplit();
    sp.name_ = s == 0 ? "train" : "test";
    sp.split_id_ = s;
    sp.cfg_ = cfg_;
    sp.audio_mean_ = audio_mean_;
    sp.audio_std_ = audio_std_;
    sp.height_ = ds.height;
    sp.width_ = ds.width;
    sp.channels_ = ds.channels;
    const int64_t len = ds.image_size();
    sp.pixels_.resize(c.sources.size() * size_t(len));
    for (size_t i = 0; i < c.sources.size(); ++i)
      std::memcpy(sp.pixels_.data() + i * size_t(len), ds.image(c.sources[i]), size_t(len));
    sp.sources_ = c.sources;
    sp.labels_ = c.labels;
    sp.clips_ = c.clips;
    sp.clip_labels_ = c.clip_labels;
    sp.clip_variants_ = c.clip_variants;
    sp.clips_by_class_.assign(multimodal_class_names().size(), {});
    for (size_t k = 0; k < c.clip_labels.size(); ++k)
      sp.clips_by_class_[size_t(c.clip_labels[k])].push_back(int64_t(k));
  }
}

bool MultimodalData::try_load(const ImageDataset (&fashion)[2], std::string& reason) {
  const std::string want = config_json(cfg_).dump();
  std::error_code ec;
  if (!fs::is_regular_file(json_file(), ec) || !fs::is_regular_file(cache_file(), ec)) {
    reason = "no cache yet";
    return false;
  }
  Json j;
  try {
    std::ifstream in(json_file());
    j = Json::parse(in);
  } catch (const std::exception& e) {
    reason = json_file() + " is unreadable: " + e.what();
    return false;
  }
  if (!j.is_object() || !j.contains("config") || j["config"].dump() != want) {
    reason = "the cached config differs from the one asked for";
    return false;
  }
  try {
    const engine::SafetensorsFile st = engine::load_safetensors(cache_file());
    ENGINE_CHECK(st.metadata.count("config") && st.metadata.at("config") == want, "the config in ",
                 cache_file(), " differs from ", json_file());
    const Json norm = Json::parse(st.metadata.at("audio_norm"));
    audio_mean_ = norm.at("mean").get<float>();
    audio_std_ = norm.at("std").get<float>();
    variants_ = variants_from_json(Json::parse(st.metadata.at("variants")));
    ENGINE_CHECK(int64_t(variants_.size()) == (cfg_.audio ? cfg_.clip_variants : 0),
                 variants_.size(), " variants recorded");
    SplitContent content[2];
    for (int s = 0; s < 2; ++s) {
      const std::string p = s == 0 ? "train." : "test.";
      SplitContent& c = content[s];
      const ImageDataset& ds = fashion[s];
      c.sources = st.at(p + "image_index").to_vector<int64_t>();
      c.labels = st.at(p + "image_label").to_vector<int64_t>();
      ENGINE_CHECK(c.sources.size() == c.labels.size(), p, "image_index and image_label differ");
      const int64_t per_class = s == 0 ? cfg_.train_images_per_class : cfg_.test_images_per_class;
      ENGINE_CHECK(int64_t(c.sources.size()) == (per_class == -1 ? ds.n : 10 * per_class),
                   c.sources.size(), " ", p, "images recorded");
      for (size_t i = 0; i < c.sources.size(); ++i)
        ENGINE_CHECK(c.sources[i] >= 0 && c.sources[i] < ds.n &&
                         ds.labels[size_t(c.sources[i])] == c.labels[i],
                     "image ", c.sources[i], " of ", ds.name, " is out of range or has another ",
                     "label than recorded (did the Fashion-MNIST files change?)");
      if (cfg_.audio) {
        const int64_t per = s == 0 ? cfg_.clip_variants - cfg_.test_variants : cfg_.test_variants;
        const Tensor& a = st.at(p + "audio");
        ENGINE_CHECK(a.shape() == engine::Shape({10 * per, cfg_.audio_frames, cfg_.mels}), p,
                     "audio has shape ", a.shape());
        c.clips = a.to_vector<float>();
        c.clip_labels = st.at(p + "audio_label").to_vector<int64_t>();
        c.clip_variants = st.at(p + "audio_variant").to_vector<int64_t>();
        ENGINE_CHECK(int64_t(c.clip_labels.size()) == 10 * per &&
                         c.clip_variants.size() == c.clip_labels.size(),
                     p, "audio labels/variants have the wrong length");
        for (size_t k = 0; k < c.clip_labels.size(); ++k)
          ENGINE_CHECK(c.clip_labels[k] >= 0 && c.clip_labels[k] < 10 && c.clip_variants[k] >= 0 &&
                           c.clip_variants[k] < int64_t(variants_.size()) &&
                           variants_[size_t(c.clip_variants[k])].test == (s == 1),
                       p, "clip ", k, " has a bad label or variant");
      }
    }
    build(fashion, content);
  } catch (const std::exception& e) {
    reason = std::string("the cache is unusable: ") + e.what();
    return false;
  }
  return true;
}

void MultimodalData::generate(const ImageDataset (&fashion)[2], const std::string& reason) {
  const auto t0 = std::chrono::steady_clock::now();
  if (cfg_.verbose)
    std::fprintf(stderr, "multimodal: generating %s (%s)\n", cfg_.cache_dir.c_str(),
                 reason.c_str());
  SplitContent content[2];
  for (int s = 0; s < 2; ++s) {
    const int64_t per_class = s == 0 ? cfg_.train_images_per_class : cfg_.test_images_per_class;
    content[s].sources = select_images(fashion[s], per_class, cfg_.seed, s);
    for (int64_t i : content[s].sources) content[s].labels.push_back(fashion[s].labels[size_t(i)]);
  }
  variants_.clear();
  audio_mean_ = 0.f;
  audio_std_ = 1.f;
  const int64_t F = cfg_.audio_frames, M = cfg_.mels;
  if (cfg_.audio) {
    const std::string prog = find_program(cfg_.espeak);
    ENGINE_CHECK(!prog.empty(), "MultimodalData: the audio part needs espeak-ng, but \"",
                 cfg_.espeak, "\" was not found; install it with: sudo apt-get install espeak-ng ",
                 "(or run scripts/setup.sh), or set audio = false");
    variants_ = make_variants(cfg_);
    struct Job {
      int split;
      int64_t cls, variant, slot;
    };
    std::vector<Job> jobs;
    for (int s = 0; s < 2; ++s) {
      for (int64_t c = 0; c < 10; ++c)
        for (int64_t v = 0; v < cfg_.clip_variants; ++v) {
          if (variants_[size_t(v)].test != (s == 1)) continue;
          jobs.push_back({s, c, v, int64_t(content[s].clip_labels.size())});
          content[s].clip_labels.push_back(c);
          content[s].clip_variants.push_back(v);
        }
      content[s].clips.resize(content[s].clip_labels.size() * size_t(F * M));
    }
    const int64_t njobs = int64_t(jobs.size());
    const int nthreads = int(std::min<int64_t>(cfg_.threads, njobs));
    if (cfg_.verbose)
      std::fprintf(stderr,
                   "multimodal: %lld espeak-ng clips (10 classes x %lld speakers) on %d "
                   "threads\n",
                   (long long)njobs, (long long)cfg_.clip_variants, nthreads);
    TempDir tmp;
    const LogMel mel(logmel_config(cfg_));
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mu;
    std::exception_ptr error;
    auto worker = [&] {
      for (;;) {
        const int64_t j = next++;
        if (j >= njobs) return;
        {
          std::lock_guard<std::mutex> lock(mu);
          if (error) return;
        }
        try {
          const Job& job = jobs[size_t(j)];
          const AudioVariant& var = variants_[size_t(job.variant)];
          const std::string& text = multimodal_class_names()[size_t(job.cls)];
          const std::string wav = tmp.path + "/clip" + std::to_string(j) + ".wav";
          const std::string err = tmp.path + "/clip" + std::to_string(j) + ".err";
          run_espeak(prog, var, text, wav, err);
          const Wav w = read_wav(wav);
          std::vector<float> x = resample(w.samples, w.sample_rate, kSampleRate);
          x = trim_silence(x, float(kTrimThreshold), kTrimMargin);
          ENGINE_CHECK(!x.empty(), "MultimodalData: espeak-ng -v ", var.voice, " produced ",
                       "silence for \"", text, "\"");
          const std::vector<float> spec = mel.compute(x);
          std::memcpy(content[job.split].clips.data() + job.slot * F * M, spec.data(),
                      spec.size() * sizeof(float));
          std::error_code ec;
          fs::remove(wav, ec);
          fs::remove(err, ec);
        } catch (...) {
          std::lock_guard<std::mutex> lock(mu);
          if (!error) error = std::current_exception();
          return;
        }
        const int64_t d = ++done;
        if (cfg_.verbose && d < njobs && d % std::max<int64_t>(1, njobs / 4) == 0) {
          std::lock_guard<std::mutex> lock(mu);
          std::fprintf(stderr, "multimodal: %lld/%lld clips\n", (long long)d, (long long)njobs);
        }
      }
    };
    std::vector<std::thread> pool;
    for (int t = 0; t < nthreads; ++t) pool.emplace_back(worker);
    for (std::thread& t : pool) t.join();
    if (error) std::rethrow_exception(error);
    // One mean and std over every train spectrogram value (two passes, in double).
    const std::vector<float>& tr = content[0].clips;
    double sum = 0;
    for (float v : tr) sum += v;
    const double mean = sum / double(tr.size());
    double sq = 0;
    for (float v : tr) sq += (v - mean) * (v - mean);
    audio_mean_ = float(mean);
    audio_std_ = float(std::max(std::sqrt(sq / double(tr.size())), 1e-6));
  }

  // Save: the tensors and metadata, then the JSON (both atomic).
  std::error_code ec;
  fs::create_directories(cfg_.cache_dir, ec);
  ENGINE_CHECK(!ec, "MultimodalData: cannot create ", cfg_.cache_dir, ": ", ec.message());
  std::vector<std::pair<std::string, Tensor>> tensors;
  Json counts;
  for (int s = 0; s < 2; ++s) {
    const std::string p = s == 0 ? "train." : "test.";
    const SplitContent& c = content[s];
    const int64_t n = int64_t(c.sources.size());
    tensors.emplace_back(p + "image_index", Tensor::from_vector(c.sources, {n}));
    tensors.emplace_back(p + "image_label", Tensor::from_vector(c.labels, {n}));
    const int64_t k = int64_t(c.clip_labels.size());
    if (cfg_.audio) {
      tensors.emplace_back(p + "audio", Tensor::from_vector(c.clips, {k, F, M}));
      tensors.emplace_back(p + "audio_label", Tensor::from_vector(c.clip_labels, {k}));
      tensors.emplace_back(p + "audio_variant", Tensor::from_vector(c.clip_variants, {k}));
    }
    counts[s == 0 ? "train" : "test"] = {{"images", n}, {"clips", k}};
  }
  const Json config = config_json(cfg_);
  const Json norm = {{"mean", audio_mean_}, {"std", audio_std_}};
  const Json vars = variants_json(variants_);
  engine::save_safetensors(
      cache_file(), tensors,
      {{"config", config.dump()}, {"audio_norm", norm.dump()}, {"variants", vars.dump()}});
  Json j;
  j["format"] = kFormat;
  j["config"] = config;
  j["counts"] = counts;
  j["audio_norm"] = norm;
  j["spectrogram"] =
      "espeak-ng WAV (22050 Hz) resampled to 16 kHz, silence trimmed, log(mel power + 1e-6): "
      "25 ms periodic Hann window, 10 ms hop, 512-point FFT, HTK mel filters 0-8 kHz; "
      "[audio_frames, mels] padded with silence or cropped at the end; batches subtract mean "
      "and divide by std of audio_norm";
  j["images"] = "indices into the Fashion-MNIST IDX files of each split (train-*, t10k-*)";
  j["variants"] = vars;
  write_atomic(json_file(), j.dump(2) + "\n");

  build(fashion, content);
  if (cfg_.verbose) {
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "multimodal: wrote %s (%lld + %lld images, %lld + %lld clips) in %.1f s\n",
                 cache_file().c_str(), (long long)train_.num_images(),
                 (long long)test_.num_images(), (long long)train_.num_clips(),
                 (long long)test_.num_clips(), secs);
  }
}

}  // namespace train
