#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <set>
#include <utility>
#include <vector>

#include "engine/philox.h"

using namespace engine;

namespace {

void check_kat(U32x4 ctr, uint32_t k0, uint32_t k1, U32x4 expect) {
  const U32x4 got = Philox4x32::run(ctr, k0, k1);
  for (int w = 0; w < 4; ++w) CHECK(got.v[w] == expect.v[w]);
}

// Pearson chi-square statistic for observed counts vs. a uniform expectation.
double chi_square(const std::vector<int64_t>& counts, double expected) {
  double s = 0.0;
  for (int64_t c : counts) {
    const double d = static_cast<double>(c) - expected;
    s += d * d / expected;
  }
  return s;
}

}  // namespace

TEST_CASE("philox: Random123 known-answer vectors") {
  check_kat({{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}});
  check_kat({{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffu, 0xffffffffu,
            {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}});
  check_kat({{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u,
            {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}});
}

TEST_CASE("philox: counter/key layout and word addressing") {
  const uint64_t seed = 0x299f31d0a4093822ull;
  const uint64_t stream = 0x0370734413198a2eull;
  const uint64_t block = 0x85a308d3243f6a88ull;
  // With this layout philox_block reproduces the third KAT vector.
  const U32x4 b = philox_block(seed, stream, block);
  CHECK(b.v[0] == 0xd16cfe09u);
  CHECK(b.v[1] == 0x94fdccebu);
  CHECK(b.v[2] == 0x5001e420u);
  CHECK(b.v[3] == 0x24126ea1u);

  for (uint64_t i : {0ull, 1ull, 2ull, 3ull, 4ull, 7ull, 1001ull, 0x123456789ull, ~0ull}) {
    const U32x4 blk = philox_block(seed, stream, i / 4);
    CHECK(philox_u32(seed, stream, i) == blk.v[i % 4]);
  }
  // A block index above 2^32 must reach the high counter word.
  CHECK(philox_block(seed, stream, 1ull << 32).v[0] != philox_block(seed, stream, 0).v[0]);

  const PhiloxKey key{seed, stream};
  CHECK(key.u32(5) == philox_u32(seed, stream, 5));
  CHECK(key.uniform(6) == philox_uniform(seed, stream, 6));
  CHECK(key.normal(7) == philox_normal(seed, stream, 7));

  // Streams and seeds (both halves) give different words.
  int diff_stream = 0, diff_stream_hi = 0, diff_seed = 0, diff_seed_hi = 0;
  for (uint64_t i = 0; i < 64; ++i) {
    const uint32_t base = philox_u32(1, 2, i);
    diff_stream += base != philox_u32(1, 3, i);
    diff_stream_hi += base != philox_u32(1, 2 | (1ull << 40), i);
    diff_seed += base != philox_u32(2, 2, i);
    diff_seed_hi += base != philox_u32(1 | (1ull << 40), 2, i);
  }
  CHECK(diff_stream >= 60);
  CHECK(diff_stream_hi >= 60);
  CHECK(diff_seed >= 60);
  CHECK(diff_seed_hi >= 60);
}

TEST_CASE("philox: uniform01 range and moments") {
  CHECK(u32_to_uniform01(0) == 0.0f);
  CHECK(u32_to_uniform01(0xffffffffu) < 1.0f);
  CHECK(u32_to_uniform01(0xffffffffu) == 1.0f - 1.0f / 16777216.0f);

  const int64_t n = 1000000;
  double sum = 0.0, sum2 = 0.0;
  std::vector<int64_t> bins(16, 0);
  bool in_range = true;
  for (int64_t i = 0; i < n; ++i) {
    const float u = philox_uniform(42, 7, static_cast<uint64_t>(i));
    in_range = in_range && u >= 0.0f && u < 1.0f;
    sum += u;
    sum2 += static_cast<double>(u) * u;
    ++bins[static_cast<int>(u * 16.0f)];
  }
  CHECK(in_range);
  const double mean = sum / n;
  const double var = sum2 / n - mean * mean;
  CHECK(std::fabs(mean - 0.5) < 0.002);
  CHECK(std::fabs(var - 1.0 / 12.0) < 0.002);
  // df = 15: P(chi2 > 50) ~ 1e-5, generous for a fixed-seed check.
  CHECK(chi_square(bins, n / 16.0) < 50.0);
}

TEST_CASE("philox: normal moments and pairing") {
  const int64_t n = 1000000;
  double sum = 0.0, sum2 = 0.0, sum4 = 0.0, cross = 0.0;
  bool finite = true;
  for (int64_t p = 0; p < n / 2; ++p) {
    float z0, z1;
    philox_normal2(123, 9, static_cast<uint64_t>(p), z0, z1);
    // philox_normal(i) is z0 / z1 of pair i/2.
    if (p < 1000) {
      CHECK(philox_normal(123, 9, 2 * p) == z0);
      CHECK(philox_normal(123, 9, 2 * p + 1) == z1);
    }
    finite = finite && std::isfinite(z0) && std::isfinite(z1);
    sum += static_cast<double>(z0) + z1;
    sum2 += static_cast<double>(z0) * z0 + static_cast<double>(z1) * z1;
    sum4 += std::pow(static_cast<double>(z0), 4) + std::pow(static_cast<double>(z1), 4);
    cross += static_cast<double>(z0) * z1;
  }
  CHECK(finite);
  const double mean = sum / n;
  const double var = sum2 / n - mean * mean;
  CHECK(std::fabs(mean) < 0.005);
  CHECK(std::fabs(var - 1.0) < 0.01);
  CHECK(std::fabs(sum4 / n - 3.0) < 0.05);          // Gaussian kurtosis
  CHECK(std::fabs(cross / (n / 2)) < 0.01);         // z0, z1 uncorrelated

  // Pair p is built from words 2p and 2p+1 (radius, angle).
  float z0, z1;
  philox_normal2(5, 6, 3, z0, z1);
  const float u1 = static_cast<float>((philox_u32(5, 6, 6) >> 8) + 1u) / 16777216.0f;
  const float u2 = philox_uniform(5, 6, 7);
  const float r = std::sqrt(-2.0f * std::log(u1));
  CHECK(z0 == doctest::Approx(r * std::cos(6.28318530718f * u2)).epsilon(1e-5));
  CHECK(z1 == doctest::Approx(r * std::sin(6.28318530718f * u2)).epsilon(1e-5));
}

TEST_CASE("philox: permutation") {
  for (int64_t n : {1, 2, 7, 1000}) {
    std::vector<int64_t> p(static_cast<size_t>(n), -1);
    philox_permutation(11, 3, n, p.data());
    std::vector<int> seen(static_cast<size_t>(n), 0);
    for (int64_t v : p) {
      REQUIRE(v >= 0);
      REQUIRE(v < n);
      ++seen[static_cast<size_t>(v)];
    }
    for (int c : seen) CHECK(c == 1);
  }

  std::vector<int64_t> a(1000), b(1000), c(1000);
  philox_permutation(11, 3, 1000, a.data());
  philox_permutation(11, 3, 1000, b.data());
  philox_permutation(11, 4, 1000, c.data());
  CHECK(a == b);
  CHECK(a != c);

  philox_permutation(11, 3, 0, nullptr);  // no-op

  // Each position of n=5 takes each value with frequency 1/5, and all 120
  // permutations are equally likely.
  const int64_t trials = 120000;
  std::vector<std::vector<int64_t>> pos(5, std::vector<int64_t>(5, 0));
  std::vector<int64_t> perm_counts(3125, 0);  // base-5 code of the permutation
  for (int64_t s = 0; s < trials; ++s) {
    int64_t p[5];
    philox_permutation(2024, static_cast<uint64_t>(s), 5, p);
    int64_t code = 0;
    for (int i = 0; i < 5; ++i) {
      ++pos[i][static_cast<size_t>(p[i])];
      code = code * 5 + p[i];
    }
    ++perm_counts[static_cast<size_t>(code)];
  }
  for (int i = 0; i < 5; ++i) CHECK(chi_square(pos[i], trials / 5.0) < 30.0);  // df 4
  std::vector<int64_t> nonzero;
  for (int64_t cnt : perm_counts)
    if (cnt > 0) nonzero.push_back(cnt);
  CHECK(nonzero.size() == 120);
  CHECK(chi_square(nonzero, trials / 120.0) < 200.0);  // df 119, mean 119
}

TEST_CASE("philox: bounded draw word consumption") {
  // Small bound: exactly one word per attempt; first word accepted here means
  // the result is the high half of word * bound.
  uint64_t word = 0;
  const uint64_t r = philox_detail::bounded(3, 4, &word, 10);
  CHECK(r < 10);
  if (word == 1) CHECK(r == ((static_cast<uint64_t>(philox_u32(3, 4, 0)) * 10) >> 32));

  // Bound near 2^32: rejections are frequent (~1/4), words advance one per attempt.
  word = 0;
  const uint64_t big32 = 3ull << 30;
  int64_t draws = 0;
  for (; draws < 4000; ++draws) CHECK(philox_detail::bounded(3, 4, &word, big32) < big32);
  CHECK(word > 4000);
  CHECK(word < 4000 * 3 / 2);

  // Bound above 2^32 - 1: two words per attempt, low word first.
  word = 0;
  const uint64_t big64 = (1ull << 40) + 12345;
  const uint64_t v = philox_detail::bounded(3, 4, &word, big64);
  CHECK(v < big64);
  CHECK(word % 2 == 0);
  if (word == 2) {
    const uint64_t x = philox_u32(3, 4, 0) | (static_cast<uint64_t>(philox_u32(3, 4, 1)) << 32);
    CHECK(v == static_cast<uint64_t>((static_cast<philox_detail::u128>(x) * big64) >> 64));
  }
}

TEST_CASE("philox: choose_sorted") {
  for (auto [n, k] : std::vector<std::pair<int64_t, int64_t>>{
           {10, 3}, {1000, 17}, {1000, 999}, {50, 25}, {1, 1}}) {
    std::vector<int64_t> out(static_cast<size_t>(k), -1);
    philox_choose_sorted(77, 1, n, k, out.data());
    for (size_t i = 0; i < out.size(); ++i) {
      CHECK(out[i] >= 0);
      CHECK(out[i] < n);
      if (i > 0) CHECK(out[i - 1] < out[i]);
    }
  }

  // Matches the definition: the k smallest (key_j, j) pairs.
  {
    const int64_t n = 200, k = 13;
    std::set<std::pair<uint32_t, int64_t>> keyed;
    for (int64_t j = 0; j < n; ++j) keyed.insert({philox_u32(5, 8, static_cast<uint64_t>(j)), j});
    std::set<int64_t> expect;
    auto it = keyed.begin();
    for (int64_t i = 0; i < k; ++i, ++it) expect.insert(it->second);
    std::vector<int64_t> out(k);
    philox_choose_sorted(5, 8, n, k, out.data());
    CHECK(std::vector<int64_t>(expect.begin(), expect.end()) == out);
  }

  // Edge cases: k = 0 writes nothing; k = n is the identity.
  {
    int64_t sentinel = -7;
    philox_choose_sorted(1, 2, 10, 0, &sentinel);
    CHECK(sentinel == -7);
    std::vector<int64_t> all(10, -1);
    philox_choose_sorted(1, 2, 10, 10, all.data());
    for (int64_t j = 0; j < 10; ++j) CHECK(all[static_cast<size_t>(j)] == j);
  }

  // Deterministic per key, different across streams.
  {
    std::vector<int64_t> a(20), b(20), c(20);
    philox_choose_sorted(9, 1, 500, 20, a.data());
    philox_choose_sorted(9, 1, 500, 20, b.data());
    philox_choose_sorted(9, 2, 500, 20, c.data());
    CHECK(a == b);
    CHECK(a != c);
  }

  // Inclusion frequency of each index ~ k/n.
  {
    const int64_t n = 10, k = 3, trials = 20000;
    std::vector<int64_t> hits(n, 0);
    for (int64_t s = 0; s < trials; ++s) {
      int64_t out[3];
      philox_choose_sorted(31337, static_cast<uint64_t>(s), n, k, out);
      for (int64_t v : out) ++hits[static_cast<size_t>(v)];
    }
    for (int64_t j = 0; j < n; ++j) {
      const double f = static_cast<double>(hits[static_cast<size_t>(j)]) / trials;
      CHECK(std::fabs(f - 0.3) < 0.02);  // sd ~ 0.0032
    }
  }
}
