// The multimodal set (train/multimodal.h) and its audio front end (train/audio.h): FFT, WAV
// parsing, resampling, mel filterbank and log-mel against plain references written here; video
// rendering against the item placed by hand; captions, labels, splits, the cache and espeak-ng.
// Datasets are built from tiny Fashion-MNIST IDX files the tests write, so nothing depends on
// the installed data; the espeak-ng test needs espeak-ng (installed by scripts/setup.sh).
#include <unistd.h>

#include <cmath>
#include <complex>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <numbers>
#include <set>

#include "engine/philox.h"
#include "tests/helpers.h"
#include "trainer/audio.h"
#include "trainer/multimodal.h"

using namespace train;
namespace fs = std::filesystem;
using engine::Tensor;

namespace {

constexpr double kPi = std::numbers::pi;

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("test_multimodal_" + std::to_string(getpid()) + "_" + tag);
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const engine::Error& e) {
    return e.what();
  }
  return "<no exception>";
}

#define CHECK_ERROR_HAS(msg, text)             \
  do {                                         \
    const std::string _m = (msg);              \
    INFO("message: " << _m);                   \
    CHECK(_m.find(text) != std::string::npos); \
  } while (0)

// ---- tiny Fashion-MNIST files ----------------------------------------------------------------

void put_be32(std::string& s, uint32_t v) {
  for (int i = 3; i >= 0; --i) s.push_back(char((v >> (8 * i)) & 0xff));
}

struct TinyFashion {
  // [split][i] pixels (28x28) and labels, as written.
  std::vector<std::vector<uint8_t>> pixels[2];
  std::vector<int64_t> labels[2];
};

// Writes {train,t10k}-{images-idx3,labels-idx1}-ubyte (uncompressed) with per_class[s] images
// of each class in a shuffled label order; pixels are Philox bytes in [1, 255] (never the
// background value 0, so a pasted item is visible everywhere).
TinyFashion write_tiny_fashion(const std::string& dir, int train_per_class, int test_per_class) {
  TinyFashion tf;
  fs::create_directories(dir);
  const int per[2] = {train_per_class, test_per_class};
  for (int s = 0; s < 2; ++s) {
    const int n = 10 * per[s];
    std::vector<int64_t> order(static_cast<size_t>(n));
    engine::philox_permutation(77, 10 + s, n, order.data());
    std::string img, lab;
    put_be32(img, 2051);
    put_be32(img, uint32_t(n));
    put_be32(img, 28);
    put_be32(img, 28);
    put_be32(lab, 2049);
    put_be32(lab, uint32_t(n));
    for (int i = 0; i < n; ++i) {
      const int64_t label = order[size_t(i)] % 10;
      std::vector<uint8_t> px(784);
      for (int j = 0; j < 784; ++j)
        px[size_t(j)] = uint8_t(1 + engine::philox_u32(78, 20 + s, uint64_t(i) * 784 + j) % 255);
      img.append(reinterpret_cast<const char*>(px.data()), px.size());
      lab.push_back(char(label));
      tf.pixels[s].push_back(px);
      tf.labels[s].push_back(label);
    }
    const std::string prefix = s == 0 ? "/train" : "/t10k";
    std::ofstream(dir + prefix + "-images-idx3-ubyte", std::ios::binary) << img;
    std::ofstream(dir + prefix + "-labels-idx1-ubyte", std::ios::binary) << lab;
  }
  return tf;
}

MultimodalConfig tiny_config(const TempDir& tmp) {
  MultimodalConfig c;
  c.cache_dir = tmp / "cache";
  c.fashion_dir = tmp / "fashion";
  c.train_images_per_class = 3;
  c.test_images_per_class = 2;
  c.audio = false;
  c.verbose = false;
  c.seed = 5;
  return c;
}

bool espeak_available() { return std::system("command -v espeak-ng >/dev/null 2>&1") == 0; }

// ---- audio references ------------------------------------------------------------------------

std::vector<std::complex<double>> naive_dft(const std::vector<std::complex<double>>& x) {
  const size_t n = x.size();
  std::vector<std::complex<double>> X(n);
  for (size_t k = 0; k < n; ++k) {
    std::complex<double> acc = 0;
    for (size_t j = 0; j < n; ++j)
      acc += x[j] * std::polar(1.0, -2 * kPi * double((k * j) % n) / double(n));
    X[k] = acc;
  }
  return X;
}

double ref_hz_to_mel(double f) { return 2595.0 * std::log10(1.0 + f / 700.0); }
double ref_mel_to_hz(double m) { return 700.0 * (std::pow(10.0, m / 2595.0) - 1.0); }

// HTK triangle of filter m at frequency f, edges equally spaced in mel over [fmin, fmax].
double ref_triangle(const LogMelConfig& c, int m, double f) {
  const double lo = ref_hz_to_mel(c.fmin), hi = ref_hz_to_mel(c.fmax);
  auto edge = [&](int e) { return ref_mel_to_hz(lo + (hi - lo) * e / (c.mels + 1)); };
  const double l = edge(m), ce = edge(m + 1), r = edge(m + 2);
  if (f <= l || f >= r) return 0;
  return f <= ce ? (f - l) / (ce - l) : (r - f) / (r - ce);
}

// log-mel by the definition: naive DFT of each Hann-windowed, zero-padded frame.
std::vector<double> ref_log_mel(const std::vector<float>& x, const LogMelConfig& c,
                                int64_t frames) {
  std::vector<double> out;
  const int bins = c.n_fft / 2 + 1;
  for (int64_t t = 0; t < frames; ++t) {
    std::vector<std::complex<double>> buf(size_t(c.n_fft), 0.0);
    for (int j = 0; j < c.window; ++j) {
      const int64_t s = t * c.hop + j;
      const double v = s < int64_t(x.size()) ? x[size_t(s)] : 0.0;
      buf[size_t(j)] = v * (0.5 - 0.5 * std::cos(2 * kPi * j / c.window));
    }
    const auto X = naive_dft(buf);
    for (int m = 0; m < c.mels; ++m) {
      double e = 0;
      for (int k = 0; k < bins; ++k)
        e += ref_triangle(c, m, double(k) * c.sample_rate / c.n_fft) * std::norm(X[size_t(k)]);
      out.push_back(std::log(e + c.eps));
    }
  }
  return out;
}

std::vector<float> sine(double freq, int rate, int64_t n, double amp = 0.5) {
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    x[size_t(i)] = float(amp * std::sin(2 * kPi * freq * double(i) / rate));
  return x;
}

// ---- WAV bytes -------------------------------------------------------------------------------

void put_le16(std::string& s, uint16_t v) {
  s.push_back(char(v & 0xff));
  s.push_back(char(v >> 8));
}
void put_le32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(char((v >> (8 * i)) & 0xff));
}

// A WAV file by hand: RIFF header, fmt chunk, an odd-sized LIST chunk (padded), data chunk.
std::string wav_bytes(uint16_t tag, uint16_t channels, uint32_t rate, uint16_t bits,
                      const std::string& data, bool with_list = true, int64_t data_len = -1) {
  std::string body = "WAVE";
  body += "fmt ";
  put_le32(body, 16);
  put_le16(body, tag);
  put_le16(body, channels);
  put_le32(body, rate);
  put_le32(body, rate * channels * bits / 8);
  put_le16(body, uint16_t(channels * bits / 8));
  put_le16(body, bits);
  if (with_list) {
    body += "LIST";
    put_le32(body, 5);
    body += "abcde";
    body.push_back('\0');  // pad byte
  }
  body += "data";
  put_le32(body, uint32_t(data_len >= 0 ? data_len : int64_t(data.size())));
  body += data;
  std::string s = "RIFF";
  put_le32(s, uint32_t(body.size()));
  return s + body;
}

Wav parse(const std::string& bytes, const std::string& name = "test.wav") {
  return parse_wav(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), name);
}

}  // namespace

// ---- FFT ---------------------------------------------------------------------------------------

TEST_CASE("multimodal/fft: matches a naive DFT, and the inverse restores the input") {
  for (int n : {1, 2, 4, 8, 32, 512}) {
    std::vector<std::complex<double>> x(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i)
      x[size_t(i)] = {engine::philox_normal(1, uint64_t(n), 2 * i),
                      engine::philox_normal(1, uint64_t(n), 2 * i + 1)};
    const auto ref = naive_dft(x);
    auto y = x;
    fft(y);
    double worst = 0;
    for (int i = 0; i < n; ++i) worst = std::max(worst, std::abs(y[size_t(i)] - ref[size_t(i)]));
    INFO("n = " << n);
    CHECK(worst < 1e-10 * n + 1e-12);
    fft(y, true);
    worst = 0;
    for (int i = 0; i < n; ++i) worst = std::max(worst, std::abs(y[size_t(i)] - x[size_t(i)]));
    CHECK(worst < 1e-12 * n + 1e-13);
  }
}

TEST_CASE("multimodal/fft: rejects sizes that are not powers of two") {
  for (size_t n : {0, 3, 12, 100}) {
    std::vector<std::complex<double>> x(n);
    CHECK_THROWS_CONTAINING(fft(x), "is not a power of two");
  }
}

// ---- WAV ---------------------------------------------------------------------------------------

TEST_CASE("multimodal/wav: parses 16-bit PCM written by the test, skipping other chunks") {
  const std::vector<int16_t> pcm = {0, 1000, -32768, 32767, -5, 12345, -20000};
  std::string data;
  for (int16_t v : pcm) put_le16(data, uint16_t(v));
  const Wav w = parse(wav_bytes(1, 1, 22050, 16, data));
  CHECK(w.sample_rate == 22050);
  CHECK(w.channels == 1);
  CHECK(w.bits == 16);
  REQUIRE(w.samples.size() == pcm.size());
  for (size_t i = 0; i < pcm.size(); ++i) CHECK(w.samples[i] == float(pcm[i] / 32768.0));

  // Stereo frames are averaged; 32-bit float read as is.
  std::string st;
  for (int16_t v : {int16_t(1000), int16_t(3000), int16_t(-200), int16_t(200)})
    put_le16(st, uint16_t(v));
  const Wav s = parse(wav_bytes(1, 2, 8000, 16, st, false));
  REQUIRE(s.samples.size() == 2);
  CHECK(s.samples[0] == doctest::Approx(2000 / 32768.0));
  CHECK(s.samples[1] == doctest::Approx(0.0));
  std::string fl;
  for (float v : {0.25f, -0.75f}) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    put_le32(fl, u);
  }
  const Wav f = parse(wav_bytes(3, 1, 16000, 32, fl));
  REQUIRE(f.samples.size() == 2);
  CHECK(f.samples[0] == 0.25f);
  CHECK(f.samples[1] == -0.75f);

  // A file on disk through read_wav, and write_wav16's output read back.
  TempDir tmp("wav");
  std::ofstream(tmp / "a.wav", std::ios::binary) << wav_bytes(1, 1, 22050, 16, data);
  CHECK(read_wav(tmp / "a.wav").samples == w.samples);
  const std::vector<float> x = sine(440, 16000, 300, 0.9);
  write_wav16(tmp / "b.wav", x, 16000);
  const Wav b = read_wav(tmp / "b.wav");
  CHECK(b.sample_rate == 16000);
  REQUIRE(b.samples.size() == x.size());
  for (size_t i = 0; i < x.size(); ++i) CHECK(std::abs(b.samples[i] - x[i]) <= 0.5 / 32768 + 1e-9);
}

TEST_CASE("multimodal/wav: rejects truncated and unsupported files with clear messages") {
  std::string data;
  for (int i = 0; i < 50; ++i) put_le16(data, uint16_t(i * 100));
  CHECK_THROWS_CONTAINING(parse("RIFF1234"), "not a RIFF/WAVE file");
  std::string rifx = wav_bytes(1, 1, 8000, 16, data);
  rifx[3] = 'X';
  CHECK_THROWS_CONTAINING(parse(rifx), "not a RIFF/WAVE file");
  // The data chunk declares more bytes than the file holds.
  const std::string full = wav_bytes(1, 1, 8000, 16, data);
  CHECK_THROWS_CONTAINING(parse(full.substr(0, full.size() - 10)), "truncated: chunk \"data\"");
  CHECK_THROWS_CONTAINING(parse(full.substr(0, 30)), "truncated");
  // An odd number of bytes for 16-bit samples.
  CHECK_THROWS_CONTAINING(parse(wav_bytes(1, 1, 8000, 16, data.substr(0, 7))),
                          "not a whole number of 2-byte frames");
  CHECK_THROWS_CONTAINING(parse(wav_bytes(2, 1, 8000, 16, data)),
                          "unsupported sample format (format tag 2");
  CHECK_THROWS_CONTAINING(parse(wav_bytes(1, 1, 8000, 8, data)), "unsupported sample format");
  CHECK_THROWS_CONTAINING(parse(wav_bytes(1, 1, 8000, 24, data.substr(0, 99))),
                          "unsupported sample format");
  std::string no_data = wav_bytes(1, 1, 8000, 16, "", false);
  no_data.resize(no_data.size() - 8);  // drop the data chunk header
  CHECK_THROWS_CONTAINING(parse(no_data), "no \"data\" chunk");
  CHECK_THROWS_CONTAINING(parse(no_data, "named.wav"), "wav: named.wav: ");
  CHECK_THROWS_CONTAINING(read_wav("/nonexistent/x.wav"), "wav: cannot open /nonexistent/x.wav");
  // A streamed data size (0xFFFFFFFF) runs to the end of the file.
  const Wav s = parse(wav_bytes(1, 1, 8000, 16, data, true, 0xFFFFFFFFll));
  CHECK(s.samples.size() == 50);
}

// ---- resampling, mel, log-mel
// --------------------------------------------------------------------

TEST_CASE("multimodal/audio: resampling keeps a tone and removes one above the new Nyquist") {
  const std::vector<float> x = sine(1000, 22050, 22050);
  const std::vector<float> y = resample(x, 22050, 16000);
  REQUIRE(y.size() == 16000);
  const std::vector<float> want = sine(1000, 16000, 16000);
  double worst = 0;
  for (size_t i = 200; i + 200 < y.size(); ++i)
    worst = std::max(worst, double(std::abs(y[i] - want[i])));
  CHECK(worst < 2e-3);
  // 10 kHz is above 8 kHz: it must (nearly) vanish, not alias to 6 kHz.
  const std::vector<float> hi = resample(sine(10000, 22050, 22050), 22050, 16000);
  double rms = 0;
  for (size_t i = 200; i + 200 < hi.size(); ++i) rms += hi[i] * hi[i];
  rms = std::sqrt(rms / double(hi.size() - 400));
  CHECK(rms < 0.01);
  // Upsampling a tone.
  const std::vector<float> up = resample(sine(440, 16000, 8000), 16000, 22050);
  REQUIRE(up.size() == 11025);
  const std::vector<float> up_want = sine(440, 22050, 11025);
  worst = 0;
  for (size_t i = 300; i + 300 < up.size(); ++i)
    worst = std::max(worst, double(std::abs(up[i] - up_want[i])));
  CHECK(worst < 2e-3);
  CHECK(resample(x, 22050, 22050) == x);
  // trim_silence keeps the loud part plus the margin.
  std::vector<float> z(1000, 0.f);
  for (int i = 300; i < 500; ++i) z[size_t(i)] = 0.5f;
  z[100] = 0.001f;  // below 2% of the peak
  const std::vector<float> t = trim_silence(z, 0.02f, 10);
  CHECK(t.size() == 220);
  CHECK(trim_silence(std::vector<float>(5, 0.f), 0.02f, 10).empty());
}

TEST_CASE("multimodal/audio: HTK mel scale and the triangular filterbank") {
  CHECK(hz_to_mel(700) == doctest::Approx(2595 * std::log10(2.0)));
  for (double f : {0.0, 100.0, 1000.0, 7999.0})
    CHECK(mel_to_hz(hz_to_mel(f)) == doctest::Approx(f));
  LogMelConfig c;
  const LogMel lm(c);
  const int bins = c.n_fft / 2 + 1;
  REQUIRE(lm.filterbank().size() == size_t(c.mels * bins));
  for (int m = 0; m < c.mels; ++m) {
    double nonzero = 0;
    for (int k = 0; k < bins; ++k) {
      const double want = ref_triangle(c, m, double(k) * c.sample_rate / c.n_fft);
      CHECK(lm.filterbank()[size_t(m * bins + k)] == doctest::Approx(want).epsilon(1e-6));
      nonzero += want > 0;
    }
    CHECK(nonzero >= 1);  // no empty filter at 32 mels, 512 points
    const double lo = ref_hz_to_mel(0), hi = ref_hz_to_mel(8000);
    CHECK(mel_center_hz(c, m) == doctest::Approx(ref_mel_to_hz(lo + (hi - lo) * (m + 1) / 33.0)));
  }
  LogMelConfig bad = c;
  bad.n_fft = 300;
  CHECK_THROWS_CONTAINING(LogMel{bad}, "log_mel: n_fft 300 must be a power of two");
  bad = c;
  bad.fmax = 9000;
  CHECK_THROWS_CONTAINING(LogMel{bad}, "fmax <= sample_rate / 2");
}

TEST_CASE("multimodal/audio: log-mel of a sine peaks at the mel bin centred on its frequency") {
  LogMelConfig c;
  c.frames = -1;
  const double lo = ref_hz_to_mel(0), hi = ref_hz_to_mel(8000);
  for (int m : {6, 12, 20, 30}) {
    const double f = ref_mel_to_hz(lo + (hi - lo) * (m + 1) / (c.mels + 1));
    const std::vector<float> x = sine(f, 16000, 8000);
    const std::vector<float> s = log_mel(x, c);
    const int64_t frames = 1 + (8000 - 400) / 160;
    REQUIRE(int64_t(s.size()) == frames * c.mels);
    for (int64_t t = 0; t < frames; ++t) {
      const float* row = s.data() + t * c.mels;
      const int arg = int(std::max_element(row, row + c.mels) - row);
      INFO("mel " << m << " (" << f << " Hz), frame " << t);
      CHECK(arg == m);
    }
  }
}

TEST_CASE("multimodal/audio: log-mel equals the definition, pads with silence and crops") {
  LogMelConfig c;
  c.mels = 13;  // odd sizes
  c.window = 300;
  c.hop = 110;
  c.n_fft = 512;
  c.frames = 9;
  std::vector<float> x(700);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(engine::philox_normal(3, 0, i) * 0.3);
  const std::vector<float> got = log_mel(x, c);
  const std::vector<double> ref = ref_log_mel(x, c, c.frames);
  REQUIRE(got.size() == ref.size());
  for (size_t i = 0; i < ref.size(); ++i) CHECK(got[i] == doctest::Approx(ref[i]).epsilon(1e-5));
  // Frames starting after the end are silence: log(eps) exactly.
  for (int64_t t = 0; t < c.frames; ++t)
    if (t * c.hop >= int64_t(x.size()))
      for (int m = 0; m < c.mels; ++m) CHECK(got[size_t(t * c.mels + m)] == float(std::log(1e-6)));
  // Cropping: the first frames of a longer output.
  c.frames = 3;
  const std::vector<float> crop = log_mel(x, c);
  CHECK(crop == std::vector<float>(got.begin(), got.begin() + 3 * c.mels));
}

// ---- text and templates ------------------------------------------------------------------------

TEST_CASE("multimodal/text: bytes padded with 256, decoded back, long texts rejected") {
  const Tensor ids = encode_texts({"ab", "", "\xc3\xa9t\xc3\xa9"}, 6);
  CHECK(ids.shape() == engine::Shape({3, 6}));
  CHECK(ids.dtype() == engine::DType::i64);
  const std::vector<int64_t> v = ids.to_vector<int64_t>();
  const std::vector<int64_t> want = {97,  98,  256, 256,  256,  256, 256,  256,  256,
                                     256, 256, 256, 0xc3, 0xa9, 116, 0xc3, 0xa9, 256};
  CHECK(v == want);
  CHECK(decode_text(ids, 0) == "ab");
  CHECK(decode_text(ids, 1) == "");
  CHECK(decode_text(ids, 2) == "\xc3\xa9t\xc3\xa9");
  CHECK_THROWS_CONTAINING(encode_texts({"ok", "too long"}, 5),
                          "encode_texts: text 1 (\"too long\") has 8 bytes, more than max_len 5");
  CHECK_THROWS_CONTAINING(decode_text(ids, 3), "decode_text: row 3 out of range");
}

TEST_CASE("multimodal/templates: class, article and direction filled in") {
  CHECK(fill_template("{a} {c} moving {d}", "ankle boot", kLeft) == "an ankle boot moving left");
  CHECK(fill_template("a photo of {a} {c}", "t-shirt") == "a photo of a t-shirt");
  CHECK(fill_template("{c}", "bag", kUp) == "bag");
  CHECK_THROWS_CONTAINING(fill_template("{a} {c} moving {d}", "bag"), "needs a direction");
  CHECK_THROWS_CONTAINING(fill_template("{x}", "bag"), "unknown placeholder {x}");
  CHECK(multimodal_class_names().size() == 10);
  CHECK(multimodal_class_names()[9] == "ankle boot");
  CHECK(direction_names() == std::vector<std::string>{"left", "right", "up", "down"});
  for (const std::string& t : caption_templates(Modality::video))
    CHECK(t.find("{d}") != std::string::npos);
  for (Modality m : {Modality::image, Modality::video, Modality::audio}) {
    CHECK(caption_templates(m).size() >= 4);
    for (const std::string& t : class_prompt_templates(m))
      CHECK(t.find("{d}") == std::string::npos);
  }
  // The longest text bounds every filled template (checked by brute force here).
  size_t longest = 0;
  for (const std::string& c : multimodal_class_names())
    for (int d = 0; d < 4; ++d)
      for (const std::string& t : caption_templates(Modality::video))
        longest = std::max(longest, fill_template(t, c, d).size());
  CHECK(longest_multimodal_text() >= int64_t(longest));
  CHECK(longest_multimodal_text() <= MultimodalConfig{}.max_text_len);
}

// ---- videos ------------------------------------------------------------------------------------

TEST_CASE("multimodal/video: box downscale averages the covered pixels") {
  std::vector<uint8_t> img(28 * 28);
  for (size_t i = 0; i < img.size(); ++i) img[i] = uint8_t(engine::philox_u32(9, 0, i));
  for (int64_t s : {14, 7, 28, 9}) {
    const std::vector<float> d = downscale_box(img.data(), 28, 28, 1, s);
    REQUIRE(d.size() == size_t(s * s));
    for (int64_t y = 0; y < s; ++y)
      for (int64_t x = 0; x < s; ++x) {
        // Rows [floor(y 28 / s), floor((y + 1) 28 / s)), columns likewise.
        double sum = 0;
        int count = 0;
        for (int64_t yy = 0; yy < 28; ++yy)
          for (int64_t xx = 0; xx < 28; ++xx)
            if (yy * s >= y * 28 - (y * 28) % s && yy < (y + 1) * 28 / s &&
                xx * s >= x * 28 - (x * 28) % s && xx < (x + 1) * 28 / s) {
              sum += img[size_t(yy * 28 + xx)];
              ++count;
            }
        REQUIRE(count > 0);
        CHECK(d[size_t(y * s + x)] == doctest::Approx(sum / count / 255.0).epsilon(1e-6));
      }
  }
}

TEST_CASE("multimodal/video: the item moves step pixels per frame in the video's direction") {
  TempDir tmp("video");
  write_tiny_fashion(tmp / "fashion", 3, 2);
  struct Shape3 {
    int64_t frames, size, item;
  };
  for (const Shape3 sh : {Shape3{4, 28, 14}, Shape3{3, 21, 10}, Shape3{5, 17, 7}}) {
    MultimodalConfig cfg = tiny_config(tmp);
    cfg.frames = sh.frames;
    cfg.video_size = sh.size;
    cfg.item_size = sh.item;
    const MultimodalData data(cfg);
    const MultimodalSplit& sp = data.train();
    REQUIRE(sp.num_videos() == 4 * sp.num_images());
    const int64_t range = sh.size - sh.item, step = range / (sh.frames - 1);
    std::set<std::pair<int64_t, int64_t>> starts;
    std::vector<int64_t> idx;
    for (int64_t v = 0; v < sp.num_videos(); ++v) idx.push_back(v);
    const Tensor vids = sp.videos(idx);
    REQUIRE(vids.shape() == engine::Shape({sp.num_videos(), sh.frames, sh.size, sh.size, 1}));
    const std::vector<float> all = vids.to_vector<float>();
    const int64_t T = sh.frames, S = sh.size, I = sh.item;
    for (int64_t v = 0; v < sp.num_videos(); ++v) {
      INFO("video " << v << " of shape " << T << "x" << S << " item " << I);
      const VideoMotion m = sp.video_motion(v);
      CHECK(m.direction == v % 4);
      const int64_t want_dy = m.direction == kDown ? step : m.direction == kUp ? -step : 0;
      const int64_t want_dx = m.direction == kRight ? step : m.direction == kLeft ? -step : 0;
      CHECK(m.dy == want_dy);
      CHECK(m.dx == want_dx);
      starts.insert({m.y0, m.x0});
      // The item, downscaled here, placed at the offsets of each frame on a black frame.
      const uint8_t* img = sp.image(v / 4);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t oy = m.y0 + t * m.dy, ox = m.x0 + t * m.dx;
        CHECK(oy >= 0);
        CHECK(ox >= 0);
        CHECK(oy + I <= S);  // wholly inside
        CHECK(ox + I <= S);
        int bad = 0;
        for (int64_t y = 0; y < S; ++y)
          for (int64_t x = 0; x < S; ++x) {
            double want = 0;
            if (y >= oy && y < oy + I && x >= ox && x < ox + I) {
              const int64_t iy = y - oy, ix = x - ox;
              double sum = 0;
              int count = 0;
              for (int64_t yy = iy * 28 / I; yy < std::max(iy * 28 / I + 1, (iy + 1) * 28 / I);
                   ++yy)
                for (int64_t xx = ix * 28 / I; xx < std::max(ix * 28 / I + 1, (ix + 1) * 28 / I);
                     ++xx) {
                  sum += img[yy * 28 + xx];
                  ++count;
                }
              want = sum / count / 255.0;
            }
            bad += std::abs(all[size_t(((v * T + t) * S + y) * S + x)] - want) > 1e-6;
          }
        CHECK(bad == 0);
      }
      CHECK(sp.video_label(v) == sp.image_label(v / 4));
      const std::string cap = sp.video_caption(v);
      CHECK(cap.find(multimodal_class_names()[size_t(sp.video_label(v))]) != std::string::npos);
      CHECK(cap.find(direction_names()[size_t(m.direction)]) != std::string::npos);
    }
    CHECK(starts.size() > 4);  // start offsets are drawn, not fixed
    const std::vector<int64_t> dirs = sp.video_directions(idx).to_vector<int64_t>();
    for (int64_t v = 0; v < sp.num_videos(); ++v) CHECK(dirs[size_t(v)] == v % 4);
  }
}

// ---- the dataset -------------------------------------------------------------------------------

TEST_CASE("multimodal/data: images, labels and captions match the Fashion-MNIST source") {
  TempDir tmp("images");
  const TinyFashion tf = write_tiny_fashion(tmp / "fashion", 5, 3);
  MultimodalConfig cfg = tiny_config(tmp);
  cfg.pixel_mean = 0.5f;
  cfg.pixel_std = 0.5f;
  const MultimodalData data(cfg);
  CHECK(data.generated());
  for (int s = 0; s < 2; ++s) {
    const MultimodalSplit& sp = s == 0 ? data.train() : data.test();
    const int64_t per = s == 0 ? 3 : 2;
    CHECK(sp.name() == (s == 0 ? "train" : "test"));
    REQUIRE(sp.num_images() == 10 * per);
    std::map<int64_t, int> per_class;
    std::set<int64_t> sources;
    std::vector<int64_t> idx;
    for (int64_t i = 0; i < sp.num_images(); ++i) {
      const int64_t src = sp.image_source(i);
      sources.insert(src);
      REQUIRE(src >= 0);
      REQUIRE(src < int64_t(tf.labels[s].size()));
      CHECK(sp.image_label(i) == tf.labels[s][size_t(src)]);
      CHECK(std::equal(tf.pixels[s][size_t(src)].begin(), tf.pixels[s][size_t(src)].end(),
                       sp.image(i)));
      ++per_class[sp.image_label(i)];
      const std::string cap = sp.image_caption(i);
      CHECK(cap.find(multimodal_class_names()[size_t(sp.image_label(i))]) != std::string::npos);
      idx.push_back(i);
    }
    CHECK(sources.size() == size_t(sp.num_images()));  // no image twice
    for (int c = 0; c < 10; ++c) CHECK(per_class[c] == per);
    // Batches: values (p / 255 - 0.5) / 0.5, labels, caption ids.
    const std::vector<int64_t> pick = {idx.back(), 0, 3, 3};
    const Tensor im = data.split(sp.name()).images(pick);
    CHECK(im.shape() == engine::Shape({4, 28, 28, 1}));
    const std::vector<float> iv = im.to_vector<float>();
    for (size_t b = 0; b < pick.size(); ++b)
      for (int j = 0; j < 784; ++j)
        CHECK(iv[b * 784 + size_t(j)] ==
              doctest::Approx((sp.image(pick[b])[j] / 255.0 - 0.5) / 0.5).epsilon(1e-6));
    const std::vector<int64_t> lv = sp.image_labels(pick).to_vector<int64_t>();
    const Tensor texts = sp.image_texts(pick);
    CHECK(texts.shape() == engine::Shape({4, cfg.max_text_len}));
    for (size_t b = 0; b < pick.size(); ++b) {
      CHECK(lv[b] == sp.image_label(pick[b]));
      CHECK(decode_text(texts, int64_t(b)) == sp.image_caption(pick[b]));
    }
  }
  // Several templates are in use.
  std::set<std::string> caps;
  for (int64_t i = 0; i < data.train().num_images(); ++i)
    caps.insert(data.train().image_caption(i));
  CHECK(caps.size() > 10);
  CHECK(data.train().num_clips() == 0);
  CHECK(data.train().num_triplets() == 0);
  CHECK_THROWS_CONTAINING(data.train().triplet_clip(0), "has no audio clips");
}

TEST_CASE("multimodal/data: zero-shot prompts are class-major and direction prompts too") {
  TempDir tmp("prompts");
  write_tiny_fashion(tmp / "fashion", 3, 2);
  const MultimodalData data(tiny_config(tmp));
  for (Modality m : {Modality::image, Modality::video, Modality::audio}) {
    const Tensor p = data.class_prompt_texts(m);
    const auto& t = class_prompt_templates(m);
    REQUIRE(p.shape() == engine::Shape({int64_t(10 * t.size()), data.config().max_text_len}));
    for (int c = 0; c < 10; ++c)
      for (size_t j = 0; j < t.size(); ++j)
        CHECK(decode_text(p, int64_t(c * t.size() + j)) ==
              fill_template(t[j], multimodal_class_names()[size_t(c)]));
  }
  const Tensor d = data.direction_prompt_texts();
  const auto& dt = direction_prompt_templates();
  REQUIRE(d.size(0) == int64_t(4 * dt.size()));
  for (int k = 0; k < 4; ++k)
    for (size_t j = 0; j < dt.size(); ++j) {
      const std::string s = decode_text(d, int64_t(k * dt.size() + j));
      CHECK(s.find(direction_names()[size_t(k)]) != std::string::npos);
    }
}

TEST_CASE("multimodal/data: batches are pure functions of their indices; the cache is reused") {
  TempDir tmp("pure");
  write_tiny_fashion(tmp / "fashion", 3, 2);
  const MultimodalConfig cfg = tiny_config(tmp);
  const MultimodalData a(cfg);
  const MultimodalData b(cfg);
  CHECK(a.generated());
  CHECK_FALSE(b.generated());
  const std::vector<int64_t> idx = {7, 0, 7, 31, 100};
  const std::vector<int64_t> rev(idx.rbegin(), idx.rend());
  for (int s = 0; s < 2; ++s) {
    const std::string name = s == 0 ? "train" : "test";
    const MultimodalSplit& x = a.split(name);
    const MultimodalSplit& y = b.split(name);
    std::vector<int64_t> vi;
    for (int64_t i : idx) vi.push_back(i % x.num_videos());
    CHECK(x.videos(vi).to_vector<float>() == y.videos(vi).to_vector<float>());
    CHECK(x.video_texts(vi).to_vector<int64_t>() == y.video_texts(vi).to_vector<int64_t>());
    std::vector<int64_t> ii;
    for (int64_t i : idx) ii.push_back(i % x.num_images());
    CHECK(x.images(ii).to_vector<float>() == y.images(ii).to_vector<float>());
    CHECK(x.image_texts(ii).to_vector<int64_t>() == y.image_texts(ii).to_vector<int64_t>());
    // A slot depends on its index only, not on the rest of the batch.
    std::vector<int64_t> vr(vi.rbegin(), vi.rend());
    const Tensor fwd = x.videos(vi), bwd = x.videos(vr);
    for (size_t k = 0; k < vi.size(); ++k)
      CHECK(fwd.select(0, int64_t(k)).to_vector<float>() ==
            bwd.select(0, int64_t(vi.size() - 1 - k)).to_vector<float>());
  }
  // The train split's draws differ from the test split's.
  int same = 0;
  for (int64_t v = 0; v < 20; ++v) {
    const VideoMotion m = a.train().video_motion(v), n = a.test().video_motion(v);
    same += m.y0 == n.y0 && m.x0 == n.x0;
  }
  CHECK(same < 20);
  CHECK_THROWS_CONTAINING(a.train().images({30}),
                          "index 30 out of range [0, 30) of the train split");
  CHECK_THROWS_CONTAINING(a.test().videos({-1}), "out of range");
  CHECK_THROWS_CONTAINING(a.test().video_labels({-1}), "MultimodalSplit::video_image: index -1");
  CHECK_THROWS_CONTAINING(a.train().spectrograms({0}),
                          "MultimodalSplit::clip: index 0 out of range [0, 0)");
  CHECK_THROWS_CONTAINING(a.split("val"), "expected \"train\" or \"test\"");
}

TEST_CASE("multimodal/data: a changed config or a broken cache regenerates; bad configs fail") {
  TempDir tmp("regen");
  write_tiny_fashion(tmp / "fashion", 4, 3);
  MultimodalConfig cfg = tiny_config(tmp);
  CHECK(MultimodalData(cfg).generated());
  CHECK_FALSE(MultimodalData(cfg).generated());
  // Rendering settings are not part of the cache.
  MultimodalConfig render = cfg;
  render.frames = 3;
  render.max_text_len = 64;
  CHECK_FALSE(MultimodalData(render).generated());
  MultimodalConfig more = cfg;
  more.train_images_per_class = 4;
  const MultimodalData m(more);
  CHECK(m.generated());
  CHECK(m.train().num_images() == 40);
  CHECK_FALSE(MultimodalData(more).generated());
  // A truncated tensor file with an unchanged JSON is detected and rebuilt.
  fs::resize_file(m.cache_file(), fs::file_size(m.cache_file()) / 2);
  CHECK(MultimodalData(more).generated());
  CHECK_FALSE(MultimodalData(more).generated());
  // The JSON records the config.
  std::ifstream in(m.json_file());
  const std::string json((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(json.find("\"train_images_per_class\": 4") != std::string::npos);

  MultimodalConfig bad = cfg;
  bad.item_size = 30;
  CHECK_THROWS_CONTAINING(MultimodalData{bad}, "need 1 <= item_size <= video_size");
  bad = cfg;
  bad.frames = 16;
  CHECK_THROWS_CONTAINING(MultimodalData{bad}, "so that the item moves at least 1 pixel");
  bad = cfg;
  bad.max_text_len = 20;
  CHECK_THROWS_CONTAINING(MultimodalData{bad}, "max_text_len 20 is shorter than the longest");
  bad = cfg;
  bad.train_images_per_class = 5;
  CHECK_THROWS_CONTAINING(MultimodalData{bad}, "has only 4 images of class");
  bad = cfg;
  bad.audio = true;
  bad.test_variants = 4;
  bad.clip_variants = 4;
  CHECK_THROWS_CONTAINING(MultimodalData{bad}, "need 1 <= test_variants < clip_variants");
  bad.clip_variants = 500;
  CHECK_THROWS_CONTAINING(MultimodalData{bad}, "exceeds the 104 distinct espeak-ng speakers");
  bad = cfg;
  bad.fashion_dir = tmp / "nowhere";
  CHECK_THROWS_CONTAINING(MultimodalData{bad}, "Fashion-MNIST is missing");
}

TEST_CASE("multimodal/data: a missing espeak-ng is one clear error") {
  TempDir tmp("noespeak");
  write_tiny_fashion(tmp / "fashion", 3, 2);
  MultimodalConfig cfg = tiny_config(tmp);
  cfg.audio = true;
  cfg.espeak = tmp / "no-such-espeak-ng";
  const std::string msg = error_of([&] { MultimodalData d(cfg); });
  CHECK_ERROR_HAS(msg, "the audio part needs espeak-ng");
  CHECK_ERROR_HAS(msg, "sudo apt-get install espeak-ng");
  CHECK(msg.find('\n') == std::string::npos);
  CHECK_FALSE(fs::exists(tmp / "cache/multimodal.json"));
}

TEST_CASE("multimodal/data: espeak-ng clips give spoken-class spectrograms, cached and reused") {
  if (!espeak_available()) {
    MESSAGE(
        "espeak-ng is not installed: skipping the synthesis test (scripts/setup.sh installs it)");
    return;
  }
  TempDir tmp("espeak");
  write_tiny_fashion(tmp / "fashion", 3, 2);
  MultimodalConfig cfg = tiny_config(tmp);
  cfg.audio = true;
  cfg.clip_variants = 3;
  cfg.test_variants = 1;
  cfg.threads = 4;
  const MultimodalData data(cfg);
  CHECK(data.generated());
  REQUIRE(data.variants().size() == 3);
  // Speakers are distinct, so test speakers are never heard in training.
  std::set<std::string> train_voices, test_voices;
  for (const AudioVariant& v : data.variants()) {
    (v.test ? test_voices : train_voices).insert(v.voice);
    CHECK(v.speed >= 170);
    CHECK(v.speed <= 250);
  }
  CHECK(train_voices.size() == 2);
  CHECK(test_voices.size() == 1);
  for (const std::string& v : test_voices) CHECK(train_voices.count(v) == 0);

  const MultimodalSplit& tr = data.train();
  const MultimodalSplit& te = data.test();
  REQUIRE(tr.num_clips() == 20);
  REQUIRE(te.num_clips() == 10);
  const float silence = float(std::log(1e-6));
  for (int s = 0; s < 2; ++s) {
    const MultimodalSplit& sp = s == 0 ? tr : te;
    std::map<int64_t, int> per_class;
    for (int64_t k = 0; k < sp.num_clips(); ++k) {
      INFO(sp.name() << " clip " << k);
      CHECK(data.variants()[size_t(sp.clip_variant(k))].test == (s == 1));
      ++per_class[sp.clip_label(k)];
      const float* c = sp.clip(k);
      // Speech at the start (silence was trimmed), energy well above silence somewhere.
      float first_max = silence, overall = silence;
      for (int m = 0; m < 32; ++m) first_max = std::max(first_max, c[m]);
      for (int j = 0; j < 64 * 32; ++j) overall = std::max(overall, c[j]);
      CHECK(first_max > silence + 5);
      CHECK(overall > silence + 15);
      CHECK(sp.clip_caption(k).find(multimodal_class_names()[size_t(sp.clip_label(k))]) !=
            std::string::npos);
    }
    for (int c = 0; c < 10; ++c) CHECK(per_class[c] == (s == 0 ? 2 : 1));
  }
  // Normalised train spectrograms have mean 0 and std 1.
  std::vector<int64_t> all;
  for (int64_t k = 0; k < tr.num_clips(); ++k) all.push_back(k);
  const Tensor spec = tr.spectrograms(all);
  CHECK(spec.shape() == engine::Shape({20, 64, 32}));
  const std::vector<float> sv = spec.to_vector<float>();
  double mean = 0, sq = 0;
  for (float v : sv) mean += v;
  mean /= double(sv.size());
  for (float v : sv) sq += (v - mean) * (v - mean);
  CHECK(std::abs(mean) < 1e-4);
  CHECK(std::sqrt(sq / double(sv.size())) == doctest::Approx(1.0).epsilon(1e-4));
  CHECK(sv[0] == doctest::Approx((tr.clip(0)[0] - data.audio_mean()) / data.audio_std()));
  // Different words differ: clips of two classes by the same speaker are not equal.
  CHECK(std::vector<float>(tr.clip(0), tr.clip(0) + 2048) !=
        std::vector<float>(tr.clip(2), tr.clip(2) + 2048));

  // Triplets: a clip of the video's class from the same split, the video's caption.
  std::vector<int64_t> idx = {0, 5, 17, 119};
  const TripletBatch t = te.triplets({0, 5, 17, 79});
  CHECK(t.videos.shape() == engine::Shape({4, 4, 28, 28, 1}));
  CHECK(t.spectrograms.shape() == engine::Shape({4, 64, 32}));
  const std::vector<int64_t> tl = t.labels.to_vector<int64_t>();
  const std::vector<int64_t> trip = {0, 5, 17, 79};
  for (size_t b = 0; b < trip.size(); ++b) {
    const int64_t k = te.triplet_clip(trip[b]);
    CHECK(te.clip_label(k) == te.video_label(trip[b]));
    CHECK(tl[b] == te.video_label(trip[b]));
    CHECK(decode_text(t.texts, int64_t(b)) == te.video_caption(trip[b]));
    CHECK(t.spectrograms.select(0, int64_t(b)).to_vector<float>() ==
          te.spectrograms({k}).select(0, 0).to_vector<float>());
  }
  CHECK(tr.triplets(idx).labels.to_vector<int64_t>() == tr.video_labels(idx).to_vector<int64_t>());

  // A second load reads the cache: nothing regenerated, identical spectrograms and norms.
  const MultimodalData again(cfg);
  CHECK_FALSE(again.generated());
  CHECK(again.audio_mean() == data.audio_mean());
  CHECK(again.audio_std() == data.audio_std());
  CHECK(again.train().spectrograms(all).to_vector<float>() == sv);
  REQUIRE(again.variants().size() == 3);
  CHECK(again.variants()[0].voice == data.variants()[0].voice);
}
