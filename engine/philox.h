// Philox 4x32-10 counter-based RNG (Salmon et al., "Parallel random numbers:
// as easy as 1, 2, 3", SC'11), header-only, usable from host C++ and CUDA.
//
// Counter-based means every random word is a pure function of
// (seed, stream, index): kernels can generate element i of a tensor
// independently and every backend (CPU reference, CUDA) produces the same
// bits. Integer outputs are bit-identical everywhere; the float transforms
// (uniform) are exact, while normals go through log/sqrt/sin/cos and may
// differ in the last ulp between host libm and CUDA's device math.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define PHILOX_HD __host__ __device__ __forceinline__
#else
#define PHILOX_HD inline
#endif

namespace engine {

struct U32x4 {
  uint32_t v[4];
};

struct Philox4x32 {
  static constexpr uint32_t kMul0 = 0xD2511F53u;
  static constexpr uint32_t kMul1 = 0xCD9E8D57u;
  static constexpr uint32_t kWeyl0 = 0x9E3779B9u;  // golden ratio
  static constexpr uint32_t kWeyl1 = 0xBB67AE85u;  // sqrt(3) - 1
  static constexpr int kRounds = 10;

  static PHILOX_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
    const uint64_t p = static_cast<uint64_t>(a) * b;
    hi = static_cast<uint32_t>(p >> 32);
    lo = static_cast<uint32_t>(p);
  }

  // One block: 10 S-P rounds; the key is bumped between rounds (9 bumps),
  // matching Random123's philox4x32_R(10, ...).
  static PHILOX_HD U32x4 run(U32x4 ctr, uint32_t key0, uint32_t key1) {
    for (int r = 0; r < kRounds; ++r) {
      if (r > 0) {
        key0 += kWeyl0;
        key1 += kWeyl1;
      }
      uint32_t hi0, lo0, hi1, lo1;
      mulhilo(kMul0, ctr.v[0], hi0, lo0);
      mulhilo(kMul1, ctr.v[2], hi1, lo1);
      U32x4 next;
      next.v[0] = hi1 ^ ctr.v[1] ^ key0;
      next.v[1] = lo1;
      next.v[2] = hi0 ^ ctr.v[3] ^ key1;
      next.v[3] = lo0;
      ctr = next;
    }
    return ctr;
  }
};

// key = (lo32(seed), hi32(seed)); counter = (lo32(block), hi32(block),
// lo32(stream), hi32(stream)). Each (seed, stream) thus owns 2^64 blocks.
PHILOX_HD U32x4 philox_block(uint64_t seed, uint64_t stream, uint64_t block) {
  U32x4 ctr;
  ctr.v[0] = static_cast<uint32_t>(block);
  ctr.v[1] = static_cast<uint32_t>(block >> 32);
  ctr.v[2] = static_cast<uint32_t>(stream);
  ctr.v[3] = static_cast<uint32_t>(stream >> 32);
  return Philox4x32::run(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Word i of the stream = word (i % 4) of block (i / 4).
PHILOX_HD uint32_t philox_u32(uint64_t seed, uint64_t stream, uint64_t i) {
  const U32x4 b = philox_block(seed, stream, i >> 2);
  return b.v[i & 3u];
}

// Top 24 bits scaled by 2^-24: every result is an exact float in [0, 1),
// max 1 - 2^-24, so it can never round up to 1.0.
PHILOX_HD float u32_to_uniform01(uint32_t x) {
  return static_cast<float>(x >> 8) * 5.9604644775390625e-08f;  // 2^-24
}

PHILOX_HD float philox_uniform(uint64_t seed, uint64_t stream, uint64_t i) {
  return u32_to_uniform01(philox_u32(seed, stream, i));
}

// Box-Muller on words 2i (radius) and 2i+1 (angle). Both words come from the
// same Philox block, so a pair costs one block evaluation. u1 is in (0, 1] so
// log(u1) is finite.
PHILOX_HD void philox_normal2(uint64_t seed, uint64_t stream, uint64_t i, float& z0, float& z1) {
  const U32x4 b = philox_block(seed, stream, i >> 1);
  const unsigned w = static_cast<unsigned>(i & 1u) * 2u;
  const uint32_t x0 = b.v[w];
  const uint32_t x1 = b.v[w + 1];
  const float u1 = static_cast<float>((x0 >> 8) + 1u) * 5.9604644775390625e-08f;
  const float u2 = u32_to_uniform01(x1);
  constexpr float kTwoPi = 6.28318530717958647692f;
#ifdef __CUDA_ARCH__
  const float r = sqrtf(-2.0f * logf(u1));
  float s, c;
  sincosf(kTwoPi * u2, &s, &c);
#else
  const float r = std::sqrt(-2.0f * std::log(u1));
  const float s = std::sin(kTwoPi * u2);
  const float c = std::cos(kTwoPi * u2);
#endif
  z0 = r * c;
  z1 = r * s;
}

// Element i's normal: z0 of pair i/2 when i is even, z1 when odd.
PHILOX_HD float philox_normal(uint64_t seed, uint64_t stream, uint64_t i) {
  float z0, z1;
  philox_normal2(seed, stream, i >> 1, z0, z1);
  return (i & 1u) ? z1 : z0;
}

// Names a random stream; words are addressed by a 64-bit index within it.
// Convenience wrapper over the free functions above.
struct PhiloxKey {
  uint64_t seed;
  uint64_t stream;

  PHILOX_HD uint32_t u32(uint64_t i) const { return philox_u32(seed, stream, i); }
  PHILOX_HD float uniform(uint64_t i) const { return philox_uniform(seed, stream, i); }
  PHILOX_HD float normal(uint64_t i) const { return philox_normal(seed, stream, i); }
};

// ---- Host-only helpers ----------------------------------------------------
// These are plain `inline` (no __device__), so nvcc compiles them for the host
// only. They are deliberately NOT hidden behind #ifndef __CUDA_ARCH__: nvcc's
// device pass still parses host functions in a .cu file, and a host function
// calling philox_permutation would then fail name lookup.

namespace philox_detail {

__extension__ typedef unsigned __int128 u128;  // GCC/Clang; __extension__ silences -Wpedantic

// Unbiased draw in [0, bound) using Lemire's multiply-shift with rejection
// ("Fast random integer generation in an interval", 2019). Consumes stream
// words sequentially starting at *word, advancing it past what was used:
//   bound <= 2^32 - 1: one word per attempt;
//   larger bounds: two words per attempt (low word first, then high) forming
//   a 64-bit value.
// Rejection happens with probability < bound / 2^32 (resp. 2^64) per attempt.
inline uint64_t bounded(uint64_t seed, uint64_t stream, uint64_t* word, uint64_t bound) {
  if (bound <= 0xFFFFFFFFull) {
    const uint32_t s = static_cast<uint32_t>(bound);
    uint64_t m = static_cast<uint64_t>(philox_u32(seed, stream, (*word)++)) * s;
    uint32_t low = static_cast<uint32_t>(m);
    if (low < s) {
      const uint32_t threshold = static_cast<uint32_t>(-s) % s;  // 2^32 mod s
      while (low < threshold) {
        m = static_cast<uint64_t>(philox_u32(seed, stream, (*word)++)) * s;
        low = static_cast<uint32_t>(m);
      }
    }
    return m >> 32;
  }
  auto draw64 = [&]() {
    const uint64_t lo = philox_u32(seed, stream, (*word)++);
    const uint64_t hi = philox_u32(seed, stream, (*word)++);
    return lo | (hi << 32);
  };
  u128 m = static_cast<u128>(draw64()) * bound;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < bound) {
    const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
    while (low < threshold) {
      m = static_cast<u128>(draw64()) * bound;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

struct KeyIdx {
  uint32_t key;
  int64_t idx;
};

// Strict order on (key, idx); idx breaks ties so the selection is unique.
inline bool key_less(const KeyIdx& a, const KeyIdx& b) {
  return a.key < b.key || (a.key == b.key && a.idx < b.idx);
}

// Max-heap sift-down on (key, idx).
inline void sift_down_max(KeyIdx* h, int64_t n, int64_t i) {
  for (;;) {
    int64_t c = 2 * i + 1;
    if (c >= n) return;
    if (c + 1 < n && key_less(h[c], h[c + 1])) ++c;
    if (!key_less(h[i], h[c])) return;
    const KeyIdx t = h[i];
    h[i] = h[c];
    h[c] = t;
    i = c;
  }
}

// In-place ascending heapsort on plain indices (avoids pulling in <algorithm>).
inline void heapsort_i64(int64_t* a, int64_t n) {
  auto sift = [a](int64_t i, int64_t len) {
    for (;;) {
      int64_t c = 2 * i + 1;
      if (c >= len) return;
      if (c + 1 < len && a[c] < a[c + 1]) ++c;
      if (a[i] >= a[c]) return;
      const int64_t t = a[i];
      a[i] = a[c];
      a[c] = t;
      i = c;
    }
  };
  for (int64_t i = n / 2 - 1; i >= 0; --i) sift(i, n);
  for (int64_t end = n - 1; end > 0; --end) {
    const int64_t t = a[0];
    a[0] = a[end];
    a[end] = t;
    sift(0, end);
  }
}

}  // namespace philox_detail

// Uniformly random permutation of 0..n-1 (Fisher-Yates, "swap down" form).
// Start from identity, then for i = n-1 down to 1 draw j uniform in [0, i]
// with philox_detail::bounded and swap out[i], out[j]. Words are consumed
// sequentially from word index 0 of (seed, stream): the step for i uses the
// next word (two words per attempt if i+1 > 2^32 - 1), plus more on the rare
// Lemire rejections. A device kernel reproduces this by running the same
// loop in a single thread with the same word counter.
inline void philox_permutation(uint64_t seed, uint64_t stream, int64_t n, int64_t* out) {
  if (n <= 0) return;
  for (int64_t i = 0; i < n; ++i) out[i] = i;
  uint64_t word = 0;
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(
        philox_detail::bounded(seed, stream, &word, static_cast<uint64_t>(i) + 1));
    const int64_t t = out[i];
    out[i] = out[j];
    out[j] = t;
  }
}

// k distinct indices from [0, n), ascending. Defined as: key_j =
// philox_u32(seed, stream, j) for every j in [0, n); select the k indices
// with the smallest (key_j, j) pairs; output them sorted by index. Every
// k-subset is equally likely (up to the negligible effect of key ties).
// Chosen over a sequential sampler because a GPU reproduces it exactly with
// a per-row sort / top-k over (key, index) pairs. k is clamped to [0, n].
inline void philox_choose_sorted(uint64_t seed, uint64_t stream, int64_t n, int64_t k,
                                 int64_t* out) {
  if (n <= 0 || k <= 0) return;
  if (k >= n) {
    for (int64_t j = 0; j < n; ++j) out[j] = j;
    return;
  }
  using philox_detail::KeyIdx;
  // Bounded max-heap of the k smallest pairs seen so far: O(n log k), O(k) memory.
  KeyIdx* heap = new KeyIdx[static_cast<uint64_t>(k)];
  for (int64_t j = 0; j < k; ++j) heap[j] = {philox_u32(seed, stream, static_cast<uint64_t>(j)), j};
  for (int64_t i = k / 2 - 1; i >= 0; --i) philox_detail::sift_down_max(heap, k, i);
  for (int64_t j = k; j < n; ++j) {
    const uint32_t key = philox_u32(seed, stream, static_cast<uint64_t>(j));
    // j exceeds every index in the heap, so (key, j) < top iff key < top.key.
    if (key < heap[0].key) {
      heap[0] = {key, j};
      philox_detail::sift_down_max(heap, k, 0);
    }
  }
  for (int64_t j = 0; j < k; ++j) out[j] = heap[j].idx;
  delete[] heap;
  philox_detail::heapsort_i64(out, k);
}

}  // namespace engine
