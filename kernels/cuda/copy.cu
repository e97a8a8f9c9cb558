// Device-side strided copies with dtype conversion and strided fills: the copy_strided and
// fill_strided hooks of engine::DeviceHooks, behind Tensor::copy_, contiguous(), clone(),
// to(dtype) and fill_ for tensors on the device. Registered with the engine at program start
// (static initialiser below; kernels/cuda/device.cu registers the rest of the backend).
//
// Conversions are those of the CPU copy_ (engine/tensor.cpp): a same-dtype copy moves bits;
// bf16 is read as its f32 value and written from f32 with round-to-nearest-even, every NaN
// becoming the canonical 0x7fff (f64 and integers go through f32 first, as on the CPU); the rest
// are C++ conversions (to integers: truncation toward zero; a NaN or out-of-range float has no
// defined integer value in C++, and the device saturates).
//
// Design (H100): pure data movement, one read and one write per element. Dims of size 1 are
// dropped and dims contiguous in both operands merged on the host, so a contiguous pair is one
// flat loop and a transposed [M, N] is two dims. One thread per element in a grid-stride loop
// (256 threads, ≤ 132·16 blocks), the flat index unravelled innermost-first (32-bit division
// when the tensor has < 2^32 elements: a 64-bit one is a call). The output side is coalesced
// when it is the contiguous one (contiguous(), clone(), to()); a transposed side is not, and
// this first version does no shared-memory tiling for it: expect ~80% of 3.35 TB/s for flat
// copies and conversions, ~20-40% for transposes.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>

#include "engine/storage.h"
#include "engine/strided.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"

namespace kernels::cuda {
namespace {

#if defined(__CUDACC__)
constexpr engine::DeviceType kType = engine::DeviceType::cuda;
#else
constexpr engine::DeviceType kType = engine::DeviceType::sim;
#endif

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 132 * 16;

// Merged layout of one or two operands, innermost dim first (so the unravel loop divides the
// flat index from the fast end).
struct Layout {
  int nd = 0;
  int64_t size[engine::kMaxDims] = {};
  int64_t dst[engine::kMaxDims] = {};
  int64_t src[engine::kMaxDims] = {};
};

// bf16 stored as its bits; a type of its own so that conversions can tell it from integers.
struct Bf16 {
  unsigned short bits;
};

__device__ __forceinline__ float bf16_value(Bf16 b) { return __uint_as_float(unsigned(b.bits) << 16); }
// engine::bf16::from_float: round to nearest even, canonical NaN.
__device__ __forceinline__ Bf16 bf16_round(float f) {
  const unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return Bf16{0x7fff};
  return Bf16{static_cast<unsigned short>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

// D(s) as engine/tensor.cpp's convert_row_any: bf16 goes through float.
template <class D, class S>
__device__ __forceinline__ D convert(S s) {
  if constexpr (std::is_same_v<D, S>) {
    return s;
  } else if constexpr (std::is_same_v<D, Bf16>) {
    return bf16_round(static_cast<float>(s));
  } else if constexpr (std::is_same_v<S, Bf16>) {
    return static_cast<D>(bf16_value(s));
  } else {
    return static_cast<D>(s);
  }
}

// Element offsets (dst, src) of flat index i (row-major over the original shape).
template <class Idx>
__device__ __forceinline__ void unravel(const Layout& l, Idx i, int64_t& od, int64_t& os) {
  od = 0;
  os = 0;
  for (int d = 0; d < l.nd; ++d) {
    const Idx n = static_cast<Idx>(l.size[d]);
    const Idx q = i / n;
    const int64_t r = static_cast<int64_t>(i - q * n);
    od += r * l.dst[d];
    os += r * l.src[d];
    i = q;
  }
}

template <class D, class S, class Idx>
__global__ void __launch_bounds__(kThreads) copy_kernel(D* dst, const S* src, Layout l, Idx n) {
  const Idx step = static_cast<Idx>(gridDim.x) * blockDim.x;
  for (Idx i = static_cast<Idx>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    int64_t od, os;
    unravel(l, i, od, os);
    dst[od] = convert<D>(src[os]);
  }
}

template <class D, class Idx>
__global__ void __launch_bounds__(kThreads) fill_kernel(D* dst, D value, Layout l, Idx n) {
  const Idx step = static_cast<Idx>(gridDim.x) * blockDim.x;
  for (Idx i = static_cast<Idx>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    int64_t od, os;
    unravel(l, i, od, os);
    dst[od] = value;
  }
}

cudaStream_t cu_stream() { return static_cast<cudaStream_t>(stream()); }

unsigned grid_for(int64_t n) {
  return unsigned(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

int64_t numel(const engine::TensorView& v) {
  int64_t n = 1;
  for (int d = 0; d < v.dims; ++d) n *= v.shape[d];
  return n;
}

engine::Shape shape_of(const engine::TensorView& v) {
  return engine::Shape(std::span<const int64_t>(v.shape, size_t(v.dims)));
}
engine::Shape strides_of(const engine::TensorView& v) {
  return engine::Shape(std::span<const int64_t>(v.strides, size_t(v.dims)));
}

// Size-1 dims dropped, dims contiguous in both merged (engine::merge_dims), innermost first.
Layout make_layout(const engine::TensorView& dst, const engine::TensorView* src) {
  const engine::Shape ds = strides_of(dst), ss = src ? strides_of(*src) : ds;
  const engine::StridedLayout<2> m = engine::merge_dims<2>(shape_of(dst), {ds, ss});
  Layout l;
  l.nd = m.shape.size();
  for (int d = 0; d < l.nd; ++d) {
    const int k = l.nd - 1 - d;
    l.size[d] = m.shape[k];
    l.dst[d] = m.strides[0][k];
    l.src[d] = m.strides[1][k];
  }
  return l;
}

template <class T>
T* first(const engine::TensorView& v) {
  return static_cast<T*>(v.data) + v.offset;
}

template <class D, class S>
void launch_copy(const engine::TensorView& dst, const engine::TensorView& src, const Layout& l,
                 int64_t n) {
  D* d = first<D>(dst);
  const S* s = first<const S>(src);
  if (n <= int64_t(UINT32_MAX)) {
    LAUNCH((copy_kernel<D, S, uint32_t>), grid_for(n), kThreads, 0, cu_stream())(d, s, l, uint32_t(n));
  } else {
    LAUNCH((copy_kernel<D, S, uint64_t>), grid_for(n), kThreads, 0, cu_stream())(d, s, l, uint64_t(n));
  }
  CHECK_LAUNCH("copy_kernel");
}

// Calls f(T{}) with T the kernel's storage type of dtype t.
template <class F>
void visit_storage(engine::DType t, F&& f) {
  switch (t) {
    case engine::DType::f32: return f(float{});
    case engine::DType::f64: return f(double{});
    case engine::DType::bf16: return f(Bf16{});
    case engine::DType::i32: return f(int32_t{});
    case engine::DType::i64: return f(int64_t{});
  }
  ENGINE_FAIL("copy_strided: unknown dtype");
}

// A same-dtype copy moves bits: the element size is all that matters.
template <class F>
void visit_bits(size_t size, F&& f) {
  switch (size) {
    case 2: return f(uint16_t{});
    case 4: return f(uint32_t{});
    case 8: return f(uint64_t{});
  }
  ENGINE_FAIL("copy_strided: unexpected element size ", size);
}

void copy_strided_hook(const engine::TensorView& dst, const engine::TensorView& src, int) {
  ENGINE_CHECK(dst.dims == src.dims, "copy_strided: ", dst.dims, "-d destination and ", src.dims,
               "-d source");
  for (int d = 0; d < dst.dims; ++d)
    ENGINE_CHECK(dst.shape[d] == src.shape[d], "copy_strided: destination ", shape_of(dst),
                 " and source ", shape_of(src), " differ in shape");
  const int64_t n = numel(dst);
  if (n == 0) return;
  const Layout l = make_layout(dst, &src);
  if (dst.dtype == src.dtype) {
    const size_t es = engine::dtype_size(dst.dtype);
    if (l.nd == 1 && l.dst[0] == 1 && l.src[0] == 1) {  // one contiguous run on both sides
      CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst.data) + dst.offset * int64_t(es),
                                 static_cast<const char*>(src.data) + src.offset * int64_t(es),
                                 size_t(n) * es, cudaMemcpyDeviceToDevice, cu_stream()));
      return;
    }
    visit_bits(es, [&](auto b) {
      using B = decltype(b);
      launch_copy<B, B>(dst, src, l, n);
    });
    return;
  }
  visit_storage(dst.dtype, [&](auto dz) {
    visit_storage(src.dtype, [&](auto sz) { launch_copy<decltype(dz), decltype(sz)>(dst, src, l, n); });
  });
}

void fill_strided_hook(const engine::TensorView& dst, uint64_t bits, int) {
  const int64_t n = numel(dst);
  if (n == 0) return;
  const Layout l = make_layout(dst, nullptr);
  visit_bits(engine::dtype_size(dst.dtype), [&](auto b) {
    using B = decltype(b);
    B value;
    std::memcpy(&value, &bits, sizeof(B));  // the low bytes (little-endian host and device)
    B* d = first<B>(dst);
    if (n <= int64_t(UINT32_MAX)) {
      LAUNCH((fill_kernel<B, uint32_t>), grid_for(n), kThreads, 0, cu_stream())(d, value, l, uint32_t(n));
    } else {
      LAUNCH((fill_kernel<B, uint64_t>), grid_for(n), kThreads, 0, cu_stream())(d, value, l, uint64_t(n));
    }
    CHECK_LAUNCH("fill_kernel");
  });
}

// Adds the two hooks to the backend's registration (engine::register_device_hooks keeps the
// hooks kernels/cuda/device.cu sets, whichever initialiser runs first).
const bool registered = [] {
  engine::DeviceHooks h;
  h.copy_strided = copy_strided_hook;
  h.fill_strided = fill_strided_hook;
  engine::register_device_hooks(kType, h);
  return true;
}();

}  // namespace
}  // namespace kernels::cuda
