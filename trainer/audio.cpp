#include "trainer/audio.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numbers>
#include <numeric>

#include "engine/error.h"

namespace train {
namespace {

uint16_t le16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
uint32_t le32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
void put16(std::string& s, uint16_t v) {
  s.push_back(char(v & 0xff));
  s.push_back(char(v >> 8));
}
void put32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(char((v >> (8 * i)) & 0xff));
}

bool is_pow2(int64_t n) { return n >= 1 && (n & (n - 1)) == 0; }

}  // namespace

// ---- WAV ------------------------------------------------------------------------------------

Wav parse_wav(const uint8_t* data, size_t size, const std::string& name) {
  ENGINE_CHECK(
      size >= 12 && std::memcmp(data, "RIFF", 4) == 0 && std::memcmp(data + 8, "WAVE", 4) == 0,
      "wav: ", name, ": not a RIFF/WAVE file (",
      size < 12 ? "shorter than its 12-byte header" : "no RIFF....WAVE signature", ")");
  const uint8_t* fmt = nullptr;
  const uint8_t* pcm = nullptr;
  size_t fmt_size = 0, pcm_size = 0;
  size_t pos = 12;
  while (pos < size && !(fmt && pcm)) {
    ENGINE_CHECK(size - pos >= 8, "wav: ", name, ": truncated: ", size - pos,
                 " stray bytes where a chunk header (8 bytes) should start, at offset ", pos);
    const std::string id(reinterpret_cast<const char*>(data + pos), 4);
    const size_t len = le32(data + pos + 4);
    const size_t body = pos + 8;
    // espeak-ng and other streaming writers put 0xFFFFFFFF (unknown) in a data chunk's size:
    // then the data runs to the end of the file.
    const bool streamed = id == "data" && len == 0xFFFFFFFFu;
    ENGINE_CHECK(streamed || len <= size - body, "wav: ", name, ": truncated: chunk \"", id,
                 "\" at offset ", pos, " declares ", len, " bytes, the file holds ", size - body,
                 " after its header");
    const size_t have = streamed ? size - body : len;
    if (id == "fmt ") {
      fmt = data + body;
      fmt_size = have;
    } else if (id == "data") {
      pcm = data + body;
      pcm_size = have;
    }
    pos = body + have + (have & 1);  // chunks are padded to even sizes
  }
  ENGINE_CHECK(fmt != nullptr, "wav: ", name, ": no \"fmt \" chunk");
  ENGINE_CHECK(fmt_size >= 16, "wav: ", name, ": the \"fmt \" chunk has ", fmt_size,
               " bytes, expected at least 16");
  ENGINE_CHECK(pcm != nullptr, "wav: ", name, ": no \"data\" chunk");
  uint16_t tag = le16(fmt);
  const int channels = le16(fmt + 2);
  const uint32_t rate = le32(fmt + 4);
  const int bits = le16(fmt + 14);
  if (tag == 0xFFFE) {  // WAVE_FORMAT_EXTENSIBLE: the real tag starts the subformat GUID
    ENGINE_CHECK(fmt_size >= 40, "wav: ", name, ": WAVE_FORMAT_EXTENSIBLE with a ", fmt_size,
                 "-byte fmt chunk, expected 40");
    tag = le16(fmt + 24);
  }
  ENGINE_CHECK((tag == 1 && bits == 16) || (tag == 3 && bits == 32), "wav: ", name,
               ": unsupported sample format (format tag ", tag, ", ", bits,
               " bits); supported: 16-bit PCM (tag 1) and 32-bit float (tag 3)");
  ENGINE_CHECK(channels >= 1, "wav: ", name, ": ", channels, " channels");
  ENGINE_CHECK(rate >= 1 && rate <= 1000000, "wav: ", name, ": sample rate ", rate,
               " out of range [1, 1000000]");
  const size_t frame_bytes = size_t(channels) * size_t(bits / 8);
  ENGINE_CHECK(pcm_size % frame_bytes == 0, "wav: ", name, ": truncated: the data chunk holds ",
               pcm_size, " bytes, not a whole number of ", frame_bytes, "-byte frames");
  Wav w;
  w.sample_rate = int(rate);
  w.channels = channels;
  w.bits = bits;
  const size_t n = pcm_size / frame_bytes;
  w.samples.resize(n);
  for (size_t i = 0; i < n; ++i) {
    double acc = 0;
    for (int c = 0; c < channels; ++c) {
      const uint8_t* p = pcm + i * frame_bytes + size_t(c) * (bits / 8);
      if (tag == 1) {
        acc += int16_t(le16(p)) / 32768.0;
      } else {
        const uint32_t u = le32(p);
        float f;
        std::memcpy(&f, &u, 4);
        acc += f;
      }
    }
    w.samples[i] = float(acc / channels);
  }
  return w;
}

Wav read_wav(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ENGINE_CHECK(in.good(), "wav: cannot open ", path, ": ", std::strerror(errno));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  return parse_wav(bytes.data(), bytes.size(), path);
}

void write_wav16(const std::string& path, const std::vector<float>& samples, int sample_rate) {
  std::string s = "RIFF";
  const uint32_t data_bytes = uint32_t(samples.size() * 2);
  put32(s, 36 + data_bytes);
  s += "WAVEfmt ";
  put32(s, 16);
  put16(s, 1);  // PCM
  put16(s, 1);  // mono
  put32(s, uint32_t(sample_rate));
  put32(s, uint32_t(sample_rate) * 2);
  put16(s, 2);
  put16(s, 16);
  s += "data";
  put32(s, data_bytes);
  for (float v : samples) {
    // The inverse of the reader's 1/32768 scale, so a round trip errs by at most 0.5 / 32768.
    const double c = std::clamp(std::round(double(v) * 32768.0), -32768.0, 32767.0);
    put16(s, uint16_t(int16_t(c)));
  }
  std::ofstream out(path, std::ios::binary);
  ENGINE_CHECK(out.good(), "wav: cannot create ", path, ": ", std::strerror(errno));
  out.write(s.data(), std::streamsize(s.size()));
  ENGINE_CHECK(out.good(), "wav: cannot write ", path, ": ", std::strerror(errno));
}

// ---- resampling and trimming -------------------------------------------------------------------

std::vector<float> resample(const std::vector<float>& x, int from_rate, int to_rate) {
  ENGINE_CHECK(from_rate > 0 && to_rate > 0, "resample: rates must be positive, got ", from_rate,
               " -> ", to_rate);
  if (from_rate == to_rate) return x;
  constexpr double kZeros = 16, kRolloff = 0.95;
  // Kernel in units of input samples: fc sinc(fc u), fc = cutoff / input Nyquist, so its sum over
  // unit-spaced taps is ~1 (unity gain at DC); Hann window over |u| < half.
  const double fc = kRolloff * std::min(1.0, double(to_rate) / from_rate);
  const double half = kZeros / fc;
  const double pi = std::numbers::pi;
  auto kernel = [&](double u) {
    if (std::abs(u) >= half) return 0.0;
    const double a = pi * fc * u;
    const double sinc = std::abs(a) < 1e-12 ? 1.0 : std::sin(a) / a;
    return fc * sinc * (0.5 + 0.5 * std::cos(pi * u / half));
  };
  // Output n sits at input position t = n from / to = ip + p g / to (g = gcd): the fractional
  // part takes to / g values, so the taps are tabulated once per phase p. Taps k = ip - R + j,
  // j in [0, 2R + 2), cover |t - k| < half.
  const int64_t g = std::gcd(int64_t(from_rate), int64_t(to_rate));
  const int64_t phases = to_rate / g;
  const int64_t R = int64_t(std::ceil(half));
  const int64_t taps = 2 * R + 2;
  std::vector<double> table(size_t(phases * taps));
  for (int64_t p = 0; p < phases; ++p)
    for (int64_t j = 0; j < taps; ++j)
      table[size_t(p * taps + j)] = kernel(double(p * g) / to_rate + double(R - j));
  const int64_t n_in = int64_t(x.size());
  const int64_t n_out = n_in * to_rate / from_rate;
  std::vector<float> y(size_t(std::max<int64_t>(n_out, 0)));
  for (int64_t n = 0; n < n_out; ++n) {
    const int64_t pos = n * from_rate;  // t * to_rate
    const int64_t ip = pos / to_rate;
    const double* h = table.data() + (pos % to_rate) / g * taps;
    double acc = 0;
    const int64_t k0 = ip - R;
    const int64_t jlo = std::max<int64_t>(0, -k0), jhi = std::min<int64_t>(taps, n_in - k0);
    for (int64_t j = jlo; j < jhi; ++j) acc += x[size_t(k0 + j)] * h[j];
    y[size_t(n)] = float(acc);
  }
  return y;
}

std::vector<float> trim_silence(const std::vector<float>& x, float rel_threshold, int64_t margin) {
  float peak = 0;
  for (float v : x) peak = std::max(peak, std::abs(v));
  if (peak == 0) return {};
  const float th = rel_threshold * peak;
  int64_t first = 0, last = int64_t(x.size()) - 1;
  while (std::abs(x[size_t(first)]) < th) ++first;  // stops at the peak at the latest
  while (std::abs(x[size_t(last)]) < th) --last;
  first = std::max<int64_t>(0, first - margin);
  last = std::min<int64_t>(int64_t(x.size()) - 1, last + margin);
  return std::vector<float>(x.begin() + first, x.begin() + last + 1);
}

// ---- FFT ---------------------------------------------------------------------------------------

void fft(std::vector<std::complex<double>>& a, bool inverse) {
  const int64_t n = int64_t(a.size());
  ENGINE_CHECK(is_pow2(n), "fft: size ", n, " is not a power of two");
  for (int64_t i = 1, j = 0; i < n; ++i) {  // bit-reversal permutation
    int64_t bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) std::swap(a[size_t(i)], a[size_t(j)]);
  }
  const double sign = inverse ? 1.0 : -1.0;
  for (int64_t len = 2; len <= n; len <<= 1) {
    const int64_t h = len / 2;
    // Twiddles computed directly per index (not by repeated multiplication) to keep the error
    // at the level of one rounding.
    for (int64_t k = 0; k < h; ++k) {
      const double ang = sign * 2 * std::numbers::pi * double(k) / double(len);
      const std::complex<double> w(std::cos(ang), std::sin(ang));
      for (int64_t s = 0; s < n; s += len) {
        const std::complex<double> u = a[size_t(s + k)], v = a[size_t(s + k + h)] * w;
        a[size_t(s + k)] = u + v;
        a[size_t(s + k + h)] = u - v;
      }
    }
  }
  if (inverse)
    for (auto& v : a) v /= double(n);
}

// ---- log-mel -----------------------------------------------------------------------------------

double hz_to_mel(double hz) { return 2595.0 * std::log10(1.0 + hz / 700.0); }
double mel_to_hz(double mel) { return 700.0 * (std::pow(10.0, mel / 2595.0) - 1.0); }

namespace {
// Edge e of the mels + 2 filter edges, in Hz.
double mel_edge_hz(const LogMelConfig& cfg, int e) {
  const double lo = hz_to_mel(cfg.fmin), hi = hz_to_mel(cfg.fmax);
  return mel_to_hz(lo + (hi - lo) * e / (cfg.mels + 1));
}
}  // namespace

double mel_center_hz(const LogMelConfig& cfg, int m) { return mel_edge_hz(cfg, m + 1); }

LogMel::LogMel(const LogMelConfig& cfg) : cfg_(cfg) {
  ENGINE_CHECK(cfg.sample_rate > 0 && cfg.window > 0 && cfg.hop > 0 && cfg.mels > 0,
               "log_mel: sample_rate, window, hop and mels must be positive, got ", cfg.sample_rate,
               ", ", cfg.window, ", ", cfg.hop, ", ", cfg.mels);
  ENGINE_CHECK(is_pow2(cfg.n_fft) && cfg.n_fft >= cfg.window, "log_mel: n_fft ", cfg.n_fft,
               " must be a power of two >= the window (", cfg.window, ")");
  ENGINE_CHECK(cfg.fmin >= 0 && cfg.fmin < cfg.fmax && cfg.fmax <= cfg.sample_rate / 2.0,
               "log_mel: need 0 <= fmin < fmax <= sample_rate / 2, got fmin ", cfg.fmin, ", fmax ",
               cfg.fmax, " at ", cfg.sample_rate, " Hz");
  ENGINE_CHECK(cfg.frames == -1 || cfg.frames >= 1, "log_mel: frames must be >= 1 or -1, got ",
               cfg.frames);
  ENGINE_CHECK(cfg.eps > 0, "log_mel: eps must be > 0, got ", cfg.eps);
  window_.resize(size_t(cfg.window));
  for (int j = 0; j < cfg.window; ++j)
    window_[size_t(j)] = 0.5 - 0.5 * std::cos(2 * std::numbers::pi * j / cfg.window);
  const int bins = cfg.n_fft / 2 + 1;
  fbank_.assign(size_t(cfg.mels) * bins, 0.f);
  first_bin_.assign(size_t(cfg.mels), 0);
  last_bin_.assign(size_t(cfg.mels), 0);
  for (int m = 0; m < cfg.mels; ++m) {
    const double l = mel_edge_hz(cfg, m), c = mel_edge_hz(cfg, m + 1), r = mel_edge_hz(cfg, m + 2);
    int first = bins, last = 0;
    for (int k = 0; k < bins; ++k) {
      const double f = double(k) * cfg.sample_rate / cfg.n_fft;
      const double w = std::max(0.0, std::min((f - l) / (c - l), (r - f) / (r - c)));
      fbank_[size_t(m) * bins + k] = float(w);
      if (w > 0) {
        first = std::min(first, k);
        last = k + 1;
      }
    }
    first_bin_[size_t(m)] = std::min(first, last);
    last_bin_[size_t(m)] = last;
  }
}

int64_t LogMel::frames_for(int64_t num_samples) const {
  if (cfg_.frames > 0) return cfg_.frames;
  return num_samples <= cfg_.window ? 1 : 1 + (num_samples - cfg_.window) / cfg_.hop;
}

std::vector<float> LogMel::compute(const std::vector<float>& samples) const {
  const int64_t frames = frames_for(int64_t(samples.size()));
  const int bins = cfg_.n_fft / 2 + 1;
  std::vector<float> out(size_t(frames * cfg_.mels));
  std::vector<std::complex<double>> buf(size_t(cfg_.n_fft));
  std::vector<double> power(static_cast<size_t>(bins));
  for (int64_t t = 0; t < frames; ++t) {
    const int64_t start = t * cfg_.hop;
    for (int j = 0; j < cfg_.n_fft; ++j) {
      const int64_t s = start + j;
      const double v = j < cfg_.window && s < int64_t(samples.size()) ? samples[size_t(s)] : 0.0;
      buf[size_t(j)] = j < cfg_.window ? v * window_[size_t(j)] : 0.0;
    }
    fft(buf);
    for (int k = 0; k < bins; ++k) power[size_t(k)] = std::norm(buf[size_t(k)]);
    for (int m = 0; m < cfg_.mels; ++m) {
      double e = 0;
      const float* w = fbank_.data() + size_t(m) * bins;
      for (int k = first_bin_[size_t(m)]; k < last_bin_[size_t(m)]; ++k)
        e += w[k] * power[size_t(k)];
      out[size_t(t * cfg_.mels + m)] = float(std::log(e + cfg_.eps));
    }
  }
  return out;
}

}  // namespace train
