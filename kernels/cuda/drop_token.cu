// CUDA drop-token (kernels/drop_token.h): per-example random subsets, gather, scatter.
//
// drop_token_indices: one block per example. Each thread draws the Philox keys of its tokens
//   (philox_u32(seed, stream + (b << 32), j), the engine's header, compiled for the device),
//   packs (key << 32 | j) into 64-bit words in dynamic shared memory (8·pow2(L) bytes, L <= 16384)
//   and the block bitonic-sorts them ascending; the first `keep` words are the chosen tokens,
//   exactly engine::philox_choose_sorted's smallest (key, index) pairs. They are re-keyed by
//   index and sorted again (pow2(keep) words) to come out in token order. Bit-identical to the
//   CPU. Cost: B blocks of ~log²(L)/2 barrier stages (L = 1024: 55 stages, ~2 µs); 10 Philox
//   rounds per token are nothing next to that.
// drop_token_gather / drop_token_scatter: row copies with the widest word (16 bytes when rows
//   and pointers allow; any dtype), W = min(32, pow2(words per row)) lanes per row, rows over
//   threadIdx.y and a grid-stride loop: one read and one write per kept element, ~85% of DRAM
//   bandwidth for rows of >= 256 bytes. The scatter zero-fills the output with cudaMemsetAsync
//   first (the dropped rows), then writes the kept rows.
// Indices are checked on the device (range, and strictly increasing rows for the scatter):
//   one 8-byte device-to-host copy per call, same messages as the CPU op.
#include <algorithm>
#include <cstdint>

#include "engine/philox.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "kernels/drop_token.h"

namespace kernels::cuda {
namespace {

cudaStream_t cu_stream() { return static_cast<cudaStream_t>(stream()); }

// Ascending bitonic sort of n (a power of two) keys in shared memory by the whole block; every
// thread calls it (barriers inside), after a barrier that publishes the keys.
__device__ void block_bitonic_sort(unsigned long long* s, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int p = threadIdx.x; p < n / 2; p += blockDim.x) {
        const int i = 2 * stride * (p / stride) + (p % stride), j = i + stride;
        const bool up = (i & size) == 0;
        const unsigned long long a = s[i], b = s[j];
        if ((a > b) == up) {
          s[i] = b;
          s[j] = a;
        }
      }
      __syncthreads();
    }
  }
}

// One block per example. 22-28 regs; dynamic shared memory 8·n2 bytes.
__global__ void __launch_bounds__(1024)
    drop_token_indices_kernel(int64_t L, int64_t keep, uint64_t seed, uint64_t stream, int n2,
                              int k2, int64_t* out) {
  DYNAMIC_SHARED(unsigned long long, keys);
  const int64_t b = blockIdx.x;
  const uint64_t sb = stream + (static_cast<uint64_t>(b) << 32);  // kernels::drop_token_stream
  for (int i = threadIdx.x; i < n2; i += blockDim.x)
    keys[i] =
        i < L ? (static_cast<unsigned long long>(engine::philox_u32(seed, sb, uint64_t(i))) << 32) |
                    static_cast<unsigned long long>(i)
              : ~0ull;
  __syncthreads();
  block_bitonic_sort(keys, n2);
  // The `keep` smallest pairs, re-keyed by token index (each slot read and written by one thread).
  for (int i = threadIdx.x; i < k2; i += blockDim.x)
    keys[i] = i < keep ? (keys[i] & 0xffffffffull) : ~0ull;
  __syncthreads();
  block_bitonic_sort(keys, k2);
  for (int i = threadIdx.x; i < keep; i += blockDim.x) out[b * keep + i] = int64_t(keys[i]);
}

// Smallest position r = b·keep + p with idx out of [0, L), or (increasing) idx <= its left
// neighbour in the row. 20-22 regs.
template <class I>
__global__ void find_bad_row_index_kernel(const I* idx, int64_t n, int64_t keep, int64_t L,
                                          bool increasing, unsigned long long* first_bad) {
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < n;
       r += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = int64_t(idx[r]);
    bool bad = v < 0 || v >= L;
    if (increasing && r % keep != 0) bad = bad || v <= int64_t(idx[r - 1]);
    if (bad) atomicMin(first_bad, static_cast<unsigned long long>(r));
  }
}

// Moves rows between [B, keep, ...] and [B, L, ...]: gather reads x[b, idx[b, p]] into out[b, p],
// scatter writes g[b, p] to out[b, idx[b, p]]. W lanes per row along x, rows along y. 18-26 regs.
template <class Word, class I, bool kGather>
__global__ void __launch_bounds__(256)
    move_rows_kernel(const Word* src, const I* idx, Word* dst, int64_t n, int64_t keep, int64_t L,
                     int64_t wpr) {
  for (int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; r < n;
       r += int64_t(gridDim.x) * blockDim.y) {
    const int64_t full = (r / keep) * L + int64_t(idx[r]);  // the row in [B, L]
    const Word* from = src + (kGather ? full : r) * wpr;
    Word* to = dst + (kGather ? r : full) * wpr;
    for (int64_t c = threadIdx.x; c < wpr; c += blockDim.x) to[c] = from[c];
  }
}

int next_pow2(int64_t n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

void check_on_device(const Tensor& t, const char* op, const char* arg) {
  engine::check_defined(t, op, arg);
  ENGINE_CHECK(t.device() == device(), op, ": '", arg, "' is on ", t.device(),
               "; the CUDA kernel needs it on ", device());
  ENGINE_CHECK(t.is_contiguous(), op, ": the CUDA kernel needs a contiguous '", arg, "', got ",
               t.describe(), " with strides ", t.strides());
}

// Validates idx [B, keep] against L (and row order for the scatter) with the CPU's messages.
void check_idx(const Tensor& idx, int64_t B, int64_t L, bool increasing, const char* op) {
  check_on_device(idx, op, "idx");
  ENGINE_CHECK(idx.dtype() == DType::i64 || idx.dtype() == DType::i32, op,
               ": idx must be i64 or i32, got ", idx.describe());
  ENGINE_CHECK(idx.dim() == 2 && idx.size(0) == B, op, ": idx ", idx.describe(),
               " must be [B, keep] with B = ", B);
  const int64_t n = idx.numel(), keep = idx.size(1);
  if (n == 0) return;
  Tensor flag = Tensor::empty({1}, DType::i64, device());
  CUDA_CHECK(cudaMemsetAsync(flag.raw_data(), 0xff, sizeof(int64_t), cu_stream()));
  auto* f = static_cast<unsigned long long*>(flag.raw_data());
  const int blocks = int(std::min<int64_t>((n + 255) / 256, 1024));
  if (idx.dtype() == DType::i64)
    LAUNCH(find_bad_row_index_kernel<int64_t>, blocks, 256, 0, cu_stream())
    (idx.data<int64_t>(), n, keep, L, increasing, f);
  else
    LAUNCH(find_bad_row_index_kernel<int32_t>, blocks, 256, 0, cu_stream())
    (idx.data<int32_t>(), n, keep, L, increasing, f);
  CHECK_LAUNCH("find_bad_row_index_kernel");
  const int64_t pos = flag.to(engine::Device::cpu()).data<int64_t>()[0];
  if (pos < 0) return;
  const Tensor host = idx.flatten()
                          .narrow(0, pos - (pos % keep ? 1 : 0), pos % keep ? 2 : 1)
                          .to(engine::Device::cpu())
                          .to(DType::i64);
  const int64_t* h = host.data<int64_t>();
  const int64_t v = pos % keep ? h[1] : h[0];
  ENGINE_CHECK(v >= 0 && v < L, op, ": index ", v, " at position ", pos, " is out of range [0, ", L,
               ")");
  ENGINE_FAIL(op, ": indices of example ", pos / keep, " are not strictly increasing at position ",
              pos % keep);
}

// Launches the row mover with the widest word dividing the row and both base pointers.
template <bool kGather>
void move_rows(const Tensor& src, const Tensor& idx, const Tensor& dst, int64_t n, int64_t keep,
               int64_t L, int64_t row_bytes) {
  int64_t wb = 16;
  while (wb > 1 && (row_bytes % wb || reinterpret_cast<uintptr_t>(src.raw_data()) % wb ||
                    reinterpret_cast<uintptr_t>(dst.raw_data()) % wb))
    wb >>= 1;
  const int64_t wpr = row_bytes / wb;
  const int W = std::min(32, next_pow2(wpr));
  const dim3 block(W, 256 / W);
  const int blocks = int(std::min<int64_t>((n + block.y - 1) / block.y, 65535));
  auto launch = [&](auto word) {
    using Wd = decltype(word);
    const Wd* s = static_cast<const Wd*>(src.raw_data());
    Wd* d = static_cast<Wd*>(dst.raw_data());
    if (idx.dtype() == DType::i64)
      LAUNCH((move_rows_kernel<Wd, int64_t, kGather>), blocks, block, 0, cu_stream())
      (s, idx.data<int64_t>(), d, n, keep, L, wpr);
    else
      LAUNCH((move_rows_kernel<Wd, int32_t, kGather>), blocks, block, 0, cu_stream())
      (s, idx.data<int32_t>(), d, n, keep, L, wpr);
  };
  switch (wb) {
    case 16:
      launch(uint4{});
      break;
    case 8:
      launch(uint2{});
      break;
    case 4:
      launch(uint32_t{});
      break;
    case 2:
      launch(uint16_t{});
      break;
    default:
      launch(uint8_t{});
      break;
  }
  CHECK_LAUNCH("move_rows_kernel");
}

}  // namespace

Tensor drop_token_indices(int64_t B, int64_t L, int64_t keep, uint64_t seed, uint64_t stream) {
  ENGINE_CHECK(B >= 0 && L >= 0 && keep >= 0 && keep <= L, "drop_token_indices: need B >= 0 and ",
               "0 <= keep <= L, got B = ", B, ", L = ", L, ", keep = ", keep);
  ENGINE_CHECK(L <= kDropTokenMaxL, "drop_token_indices: L = ", L,
               " tokens; the CUDA kernel sorts at most ", kDropTokenMaxL,
               " per example in shared memory");
  ENGINE_CHECK(B <= 2147483647, "drop_token_indices: B = ", B, " exceeds the grid");
  Tensor out = Tensor::empty({B, keep}, DType::i64, device());
  if (out.numel() == 0) return out;
  const int n2 = next_pow2(L), k2 = next_pow2(keep);
  const int threads = std::clamp(n2 / 2, 32, 1024);
  const int smem = n2 * int(sizeof(unsigned long long));
  if (smem > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(drop_token_indices_kernel,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  LAUNCH(drop_token_indices_kernel, int(B), threads, smem, cu_stream())
  (L, keep, seed, stream, n2, k2, out.data<int64_t>());
  CHECK_LAUNCH("drop_token_indices_kernel");
  return out;
}

Tensor drop_token_gather(const Tensor& x, const Tensor& idx) {
  const char* op = "drop_token_gather";
  check_on_device(x, op, "x");
  ENGINE_CHECK(x.dim() >= 2, op, ": x must be [B, L, ...], got ", x.describe());
  const int64_t B = x.size(0), L = x.size(1);
  check_idx(idx, B, L, false, op);
  const int64_t keep = idx.size(1);
  Shape s = x.shape();
  s[1] = keep;
  Tensor out = Tensor::empty(s, x.dtype(), device());
  if (out.numel() == 0) return out;
  const int64_t row_bytes = (x.numel() / (B * L)) * int64_t(x.element_size());
  move_rows<true>(x, idx, out, B * keep, keep, L, row_bytes);
  return out;
}

Tensor drop_token_scatter(const Tensor& g, const Tensor& idx, int64_t L) {
  const char* op = "drop_token_scatter";
  check_on_device(g, op, "g");
  ENGINE_CHECK(g.dim() >= 2, op, ": g must be [B, keep, ...], got ", g.describe());
  const int64_t B = g.size(0);
  check_idx(idx, B, L, true, op);
  const int64_t keep = idx.size(1);
  ENGINE_CHECK(g.size(1) == keep, op, ": g ", g.describe(), " does not match idx ", idx.describe());
  Shape s = g.shape();
  s[1] = L;
  Tensor out = Tensor::zeros(s, g.dtype(), device());
  if (g.numel() == 0) return out;
  const int64_t row_bytes = (g.numel() / (B * keep)) * int64_t(g.element_size());
  move_rows<false>(g, idx, out, B * keep, keep, L, row_bytes);
  return out;
}

}  // namespace kernels::cuda
