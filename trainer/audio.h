// Audio front end of the multimodal set (DESIGN.md §8): WAV reading, band-limited resampling,
// a radix-2 FFT and HTK log-mel spectrograms. Plain CPU code on std::vector; no dependencies.
//
// The spectrogram (LogMelConfig defaults, used by train/multimodal.h):
//   16 kHz mono in [-1, 1]; frame t covers samples [t hop, t hop + window) with window 400
//   (25 ms) and hop 160 (10 ms), no centre padding, zeros beyond the end of the signal (so a
//   short clip is padded with silence and a long one is cropped at the end); periodic Hann
//   window w[j] = 0.5 - 0.5 cos(2 pi j / window); zero-padded to n_fft = 512; power |X_k|^2;
//   mels triangular HTK filters (mel = 2595 log10(1 + hz / 700)) with edges equally spaced in
//   mel between fmin = 0 and fmax = 8000 Hz, weights on the bin frequencies k sr / n_fft, no area
//   normalisation (librosa's htk=True, norm=None); output log(mel power + 1e-6), [frames, mels].
#pragma once
#include <complex>
#include <cstdint>
#include <string>
#include <vector>

namespace train {

struct Wav {
  int sample_rate = 0;
  int channels = 0;            // in the file; `samples` is their average (mono)
  int bits = 0;                // 16 (PCM) or 32 (IEEE float)
  std::vector<float> samples;  // mono, PCM scaled by 1/32768 into [-1, 1)
};

// Parses RIFF/WAVE: PCM 16-bit (format tag 1) or IEEE float 32-bit (tag 3), also behind
// WAVE_FORMAT_EXTENSIBLE (0xFFFE) with those subformats; any number of channels (averaged).
// Chunks other than "fmt " and "data" are skipped (with their pad byte). Errors start with
// "wav: <name>: " and say what is wrong: not RIFF/WAVE, a chunk running past the end of the
// file (truncated), no fmt or data chunk, an unsupported format/bit depth, a data size that is
// not a whole number of frames.
Wav parse_wav(const uint8_t* data, size_t size, const std::string& name);
Wav read_wav(const std::string& path);
// Writes mono 16-bit PCM: round(x 32768) clipped to [-32768, 32767] (tests and debugging).
void write_wav16(const std::string& path, const std::vector<float>& samples, int sample_rate);

// Band-limited resampling by a Hann-windowed sinc: cutoff 0.95 x the lower of the two Nyquist
// frequencies, 16 zero crossings of the kernel on each side, zeros outside the signal. Output
// length floor(n to / from). from == to returns the input unchanged.
std::vector<float> resample(const std::vector<float>& x, int from_rate, int to_rate);

// Drops leading and trailing samples quieter than rel_threshold x the peak |x|, keeping
// `margin` samples on each side of the loud part. An all-zero input returns empty.
std::vector<float> trim_silence(const std::vector<float>& x, float rel_threshold, int64_t margin);

// In-place iterative radix-2 FFT, n = a.size() a power of two (1 included):
// forward X_k = sum_n x_n exp(-2 pi i k n / N); inverse uses exp(+...) and divides by N.
void fft(std::vector<std::complex<double>>& a, bool inverse = false);

double hz_to_mel(double hz);   // HTK: 2595 log10(1 + hz / 700)
double mel_to_hz(double mel);  // its inverse

struct LogMelConfig {
  int sample_rate = 16000;
  int window = 400;  // 25 ms at 16 kHz
  int hop = 160;     // 10 ms
  int n_fft = 512;   // power of two >= window
  int mels = 32;
  double fmin = 0, fmax = 8000;  // 0 <= fmin < fmax <= sample_rate / 2
  int64_t frames = 64;           // fixed output length; -1: 1 + (n - window) / hop (at least 1)
  double eps = 1e-6;             // log(power + eps)
};

// Centre frequency in Hz of mel filter m (0-based): mel_to_hz of edge m + 1 of the mels + 2
// equally spaced mel edges.
double mel_center_hz(const LogMelConfig& cfg, int m);

// Precomputed window and filterbank; compute() is const and thread-safe.
class LogMel {
 public:
  explicit LogMel(const LogMelConfig& cfg);  // validates cfg (errors start with "log_mel: ")
  const LogMelConfig& config() const { return cfg_; }
  // Triangular filters, [mels, n_fft / 2 + 1] row-major.
  const std::vector<float>& filterbank() const { return fbank_; }
  int64_t frames_for(int64_t num_samples) const;
  // [frames, mels] row-major.
  std::vector<float> compute(const std::vector<float>& samples) const;

 private:
  LogMelConfig cfg_;
  std::vector<double> window_;
  std::vector<float> fbank_;
  std::vector<int> first_bin_, last_bin_;  // non-zero range of each filter, [first, last)
};

inline std::vector<float> log_mel(const std::vector<float>& samples, const LogMelConfig& cfg) {
  return LogMel(cfg).compute(samples);
}

}  // namespace train
