// Engine: tensors, views, dtype conversion, the allocator, error messages.
#include <cstring>

#include "engine/allocator.h"
#include "engine/tensor.h"
#include "tests/helpers.h"

using engine::bf16;
using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {

// [2, 3, 4] holding 0, 1, ..., 23 in row-major order: element (i, j, k) is 12 i + 4 j + k.
Tensor iota_234() {
  std::vector<float> v(24);
  for (int i = 0; i < 24; ++i) v[i] = float(i);
  return Tensor::from_vector(v, {2, 3, 4});
}

// bf16 rounding reference: pick the nearer of the two neighbouring bf16 values, ties to the
// even mantissa.
uint16_t bf16_reference(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint16_t lo = uint16_t(u >> 16), hi = uint16_t(lo + 1);
  uint32_t rem = u & 0xffff;
  if (rem < 0x8000) return lo;
  if (rem > 0x8000) return hi;
  return (lo & 1) ? hi : lo;
}

}  // namespace

// ---- creation

TEST_CASE("tensor: zeros have the shape and contiguous, aligned strides") {
  Tensor t = Tensor::zeros({2, 3, 5});
  CHECK(t.dim() == 3);
  CHECK(t.numel() == 30);
  CHECK(t.strides() == Shape{15, 5, 1});
  CHECK(t.is_contiguous());
  CHECK(t.size(-1) == 5);
  CHECK(reinterpret_cast<uintptr_t>(t.raw_data()) % 64 == 0);
}

TEST_CASE("tensor: a scalar is 0-d") {
  Tensor s = Tensor::scalar(2.5);
  CHECK(s.dim() == 0);
  CHECK(s.item() == 2.5);
}

TEST_CASE("tensor: arange counts from 0") {
  CHECK(Tensor::arange(7).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6});
}

TEST_CASE("tensor: an empty tensor has no elements, contiguous or not") {
  Tensor e = Tensor::empty({0, 4});
  CHECK(e.numel() == 0);
  CHECK(e.contiguous().numel() == 0);
}

// ---- views

TEST_CASE("tensor: transpose is a view; contiguous() copies it") {
  Tensor t = iota_234();
  Tensor tr = t.transpose(0, 2);  // [4, 3, 2]
  CHECK(tr.shares_storage(t));
  CHECK(!tr.is_contiguous());
  CHECK(tr.at({3, 1, 0}) == t.at({0, 1, 3}));
  Tensor trc = tr.contiguous();
  CHECK(trc.is_contiguous());
  CHECK(!trc.shares_storage(t));
  CHECK(trc.at({2, 2, 1}) == 1 * 12 + 2 * 4 + 2);
}

TEST_CASE("tensor: permute indexes correctly") {
  Tensor p = iota_234().permute({1, 2, 0});
  CHECK(p.shape() == Shape{3, 4, 2});
  CHECK(p.at({2, 1, 1}) == 12 + 8 + 1);
}

TEST_CASE("tensor: slice with a step and a negative start") {
  Tensor t = iota_234();
  Tensor sl = t.slice(2, 1, 4, 2);  // last dim indices 1, 3
  CHECK(sl.shape() == Shape{2, 3, 2});
  CHECK(sl.at({1, 2, 1}) == 12 + 8 + 3);
  CHECK(t.slice(1, -2, 3).shape() == Shape{2, 2, 4});
}

TEST_CASE("tensor: select drops the dim") {
  Tensor sel = iota_234().select(1, 2);
  CHECK(sel.shape() == Shape{2, 4});
  CHECK(sel.at({1, 3}) == 12 + 8 + 3);
}

TEST_CASE("tensor: narrow keeps the dim") {
  Tensor n = iota_234().narrow(0, 1, 1);
  CHECK(n.shape() == Shape{1, 3, 4});
  CHECK(n.at({0, 0, 0}) == 12);
}

TEST_CASE("tensor: writing through a view is visible in the base") {
  Tensor t = iota_234();
  Tensor view = t.select(0, 1).select(0, 1);
  view.fill_(-1);
  CHECK(t.at({1, 1, 2}) == -1);
  CHECK(t.at({1, 0, 2}) == 14);  // untouched neighbour
}

// ---- view and reshape

TEST_CASE("tensor: view of a contiguous tensor shares storage and follows strides") {
  Tensor t = randn({4, 6}, 1);
  Tensor v = t.view({2, 2, 3, 2});
  CHECK(v.shares_storage(t));
  CHECK(v.at({1, 1, 2, 1}) == t.at({3, 5}));
  CHECK(t.view({-1, 3}).shape() == Shape{8, 3});
  CHECK(t.view({1, 24, 1}).shape() == Shape{1, 24, 1});
}

TEST_CASE("tensor: a transposed tensor cannot be flattened by view; reshape copies") {
  Tensor t = randn({4, 6}, 1);
  Tensor tr = t.transpose(0, 1);  // [6, 4], not contiguous
  CHECK_THROWS_AS(tr.view({24}), engine::Error);
  Tensor r = tr.reshape({24});  // copies
  CHECK(!r.shares_storage(t));
  CHECK(r.at({5}) == tr.at({1, 1}));
}

TEST_CASE("tensor: splitting a dim of a transposed tensor is still a view") {
  Tensor t = randn({4, 6}, 1);
  Tensor split = t.transpose(0, 1).view({3, 2, 4});
  CHECK(split.shares_storage(t));
  CHECK(split.at({2, 1, 3}) == t.at({3, 5}));
}

TEST_CASE("tensor: a sliced tensor merges dims by view only where chunks stay contiguous") {
  Tensor big = randn({5, 4, 6}, 2);
  Tensor part = big.slice(0, 1, 4);
  CHECK(part.view({12, 6}).shares_storage(big));
  CHECK(part.view({12, 6}).at({4, 5}) == big.at({2, 0, 5}));
  CHECK_THROWS_AS(big.slice(2, 0, 3).view({-1}), engine::Error);
}

TEST_CASE("tensor: view to a different element count names the op") {
  CHECK_THROWS_CONTAINING(randn({4, 6}, 1).view({5, 5}), "view");
}

// ---- expand, unsqueeze, squeeze, broadcasting

TEST_CASE("tensor: expand broadcasts with stride 0") {
  Tensor row = Tensor::from_vector<float>({1, 2, 3}, {3});
  Tensor e = row.expand({4, 3});
  CHECK(e.stride(0) == 0);
  CHECK(e.at({3, 2}) == 3);
  CHECK_THROWS_AS(row.expand({4, 2}), engine::Error);
}

TEST_CASE("tensor: unsqueeze and squeeze") {
  Tensor u = Tensor::from_vector<float>({1, 2, 3}, {3}).unsqueeze(1);
  CHECK(u.shape() == Shape{3, 1});
  CHECK(u.expand({3, 5}).at({1, 4}) == 2);
  CHECK(u.squeeze(1).shape() == Shape{3});
}

TEST_CASE("tensor: copy_ broadcasts the source") {
  Tensor dst = Tensor::zeros({2, 3});
  dst.copy_(Tensor::from_vector<float>({1, 2, 3}, {3}));
  CHECK(dst.to_vector<float>() == std::vector<float>{1, 2, 3, 1, 2, 3});
}

TEST_CASE("tensor: broadcast_shapes and its error message") {
  CHECK(engine::broadcast_shapes({5, 1, 3}, {4, 1}, "t") == Shape{5, 4, 3});
  CHECK_THROWS_CONTAINING(engine::broadcast_shapes({5, 2}, {3}, "myop"),
                          "myop: shapes [5, 2] and [3] cannot be broadcast");
}

// ---- dtype conversions

TEST_CASE("tensor: f64 -> f32 -> f64 round trips the f32 values") {
  Tensor x = randn({7, 5}, 3, DType::f64);
  CHECK(x.to(DType::f32).to(DType::f64).to_vector<double>() ==
        x.to(DType::f32).to_vector<double>());
}

TEST_CASE("tensor: integer conversions round trip") {
  Tensor i = Tensor::from_vector<int64_t>({-3, 0, 5, 1 << 20}, {4});
  CHECK(i.to(DType::i32).to(DType::f64).to_vector<double>() ==
        std::vector<double>{-3, 0, 5, 1 << 20});
  CHECK(i.to(DType::f32).to(DType::i64).to_vector<int64_t>() == i.to_vector<int64_t>());
}

TEST_CASE("tensor: conversion of a non-contiguous source") {
  Tensor x = randn({7, 5}, 3, DType::f64);
  CHECK(testing::non_contiguous(x).to(DType::f32).to_vector<float>() ==
        x.to(DType::f32).to_vector<float>());
}

TEST_CASE("tensor: f32 -> bf16 -> f32 keeps within bf16 precision") {
  // 8 bits of mantissa.
  Tensor x = randn({7, 5}, 3, DType::f64);
  auto a = x.to(DType::f32).to_vector<float>();
  auto b = x.to(DType::bf16).to(DType::f32).to_vector<float>();
  for (size_t k = 0; k < a.size(); ++k) CHECK(std::abs(a[k] - b[k]) <= std::abs(a[k]) / 256.0f);
}

// ---- bf16 rounding: round to nearest, ties to even

TEST_CASE("tensor: bf16 rounding matches an independent formulation on many bit patterns") {
  uint64_t checked = 0;
  for (uint32_t top = 0; top < 0x7f80; top += 7) {  // finite positive and negative values
    for (uint32_t low : {0u, 1u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu, 0x1234u}) {
      for (uint32_t sign : {0u, 0x80000000u}) {
        uint32_t u = sign | (top << 16) | low;
        float f;
        std::memcpy(&f, &u, 4);
        REQUIRE(bf16::from_float(f) == bf16_reference(f));
        ++checked;
      }
    }
  }
  CHECK(checked > 10000);
}

TEST_CASE("tensor: bf16 rounding of exact values and ties") {
  CHECK(bf16::from_float(1.0f) == 0x3f80);
  CHECK(float(bf16(1.00390625f)) == 1.0f);       // exact tie -> even (down)
  CHECK(float(bf16(1.01171875f)) == 1.015625f);  // exact tie -> even (up)
}

TEST_CASE("tensor: bf16 of NaN, infinity and overflow") {
  CHECK(std::isnan(float(bf16(NAN))));
  CHECK(bf16::from_float(-NAN) == 0x7fff);  // canonical NaN, as the GPU
  CHECK(std::isinf(float(bf16(INFINITY))));
  CHECK(std::isinf(float(bf16(3.4e38f))));  // rounds past the largest bf16
}

// ---- errors

TEST_CASE("tensor: view ops out of range name the op") {
  Tensor t = Tensor::zeros({2, 3});
  CHECK_THROWS_CONTAINING(t.transpose(0, 2), "transpose: axis 2 out of range");
  CHECK_THROWS_CONTAINING(t.select(1, 3), "select: index 3 out of range");
  CHECK_THROWS_CONTAINING(t.narrow(1, 2, 2), "narrow: range [2, 4)");
}

TEST_CASE("tensor: data access errors name the dtype and the sizes") {
  Tensor t = Tensor::zeros({2, 3});
  CHECK_THROWS_CONTAINING(t.data<double>(), "data<f64>() on a tensor of dtype f32");
  CHECK_THROWS_CONTAINING(Tensor::from_vector<float>({1, 2}, {3}), "2 values for shape [3]");
  CHECK_THROWS_CONTAINING(t.item(), "has 6 elements");
}

TEST_CASE("tensor: device errors") {
  CHECK_THROWS_CONTAINING(Tensor::zeros({2, 3}).to(engine::Device::parse("cuda")),
                          "not available in this build");
  CHECK_THROWS_CONTAINING(engine::Device::parse("tpu"), "unknown device 'tpu'");
}

TEST_CASE("tensor: more than 8 dims is an error") {
  CHECK_THROWS_CONTAINING(Tensor::zeros({1, 2, 3, 4, 5, 6, 7, 8, 9}), "at most 8");
}

// ---- allocator

TEST_CASE("allocator: statistics track use and peak, and freed blocks are cached") {
  engine::CpuAllocator::release_cached();
  auto s0 = engine::CpuAllocator::stats();
  {
    Tensor a = Tensor::empty({1000, 100});
    auto s1 = engine::CpuAllocator::stats();
    CHECK(s1.bytes_in_use >= s0.bytes_in_use + 400000);
    CHECK(s1.peak_bytes >= s1.bytes_in_use);
  }
  auto s2 = engine::CpuAllocator::stats();
  CHECK(s2.bytes_in_use == s0.bytes_in_use);
  CHECK(s2.bytes_cached >= 400000);
}

TEST_CASE("allocator: a steady loop of same-sized allocations never reaches the system") {
  { Tensor warm = Tensor::empty({1000, 100}); }  // one block of the size class is cached
  auto before = engine::CpuAllocator::stats().system_allocs;
  for (int i = 0; i < 100; ++i) {
    Tensor a = Tensor::empty({1000, 100});
    Tensor b = Tensor::empty({999, 100});  // same size class
  }
  CHECK(engine::CpuAllocator::stats().system_allocs <= before + 1);
}

TEST_CASE("allocator: size classes") {
  CHECK(engine::CpuAllocator::size_class(100) == 128);
  CHECK(engine::CpuAllocator::size_class(5000) == 5120);
  CHECK(engine::CpuAllocator::size_class(1 << 20) == (1 << 20));
  // Four classes per power of two up to 1 MiB, sixteen above.
  CHECK(engine::CpuAllocator::size_class((1 << 19) + 1) == (1 << 19) + (1 << 17));
  CHECK(engine::CpuAllocator::size_class((1 << 20) + 1) == (1 << 20) + (1 << 16));
  CHECK(engine::CpuAllocator::size_class((5 << 20) + 1) == (5 << 20) + (1 << 18));
}

// ---- random tensors

TEST_CASE("tensor: random tensors are deterministic per (seed, stream)") {
  Tensor a = Tensor::normal({33, 7}, 5, 1);
  Tensor b = Tensor::normal({33, 7}, 5, 1);
  Tensor c = Tensor::normal({33, 7}, 5, 2);
  CHECK(a.to_vector<float>() == b.to_vector<float>());
  CHECK(a.to_vector<float>() != c.to_vector<float>());
}

TEST_CASE("tensor: uniform values lie in [lo, hi)") {
  auto u = Tensor::uniform({1000}, 1, 0, -2, 3).to_vector<float>();
  for (float x : u) CHECK((x >= -2 && x < 3));
}
