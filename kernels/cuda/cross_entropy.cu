// Fused softmax cross-entropy on the GPU (kernels/cross_entropy.h), forward and backward, hard
// and soft targets, and the loss reduction.
//
// Design (H100): memory-bound. A row of C logits is read once by one warp (C <= 1024, 8 rows per
// 256-thread block) or one block (C > 1024, up to ~32K classes, the loop strides over the row).
// Each lane keeps an online state in registers (running max m, sum of exp(x - m), and the
// smoothing / soft-target term sum w*(m - x) that is rescaled when m grows, so no term cancels);
// states merge by warp shuffles and, for block rows, through 8 slots of shared memory. Loads are
// 16 bytes (float4 / 8 bf16) after a per-row scalar head that reaches 16-byte alignment, with a
// scalar tail, so any C and row stride work. Bytes per logit: forward 1 read (4 B f32, 2 B bf16),
// backward 1 read + 1 write; __expf (MUFU) gives 16/clk/SM, far above the ~0.8-1.7 G logits/ms
// that 3.35 TB/s delivers, so both kernels should run at ~80-90% of bandwidth for N*C >> the
// 132-SM fill (small C wastes lanes but those losses are negligible in a training step).
// Registers: the state is 4 floats + 8 loaded values; no shared memory but 128 B per block.
//
// Targets are validated by the kernels themselves: a bad row sets a device flag (atomicMax of
// N - row, so the first bad row wins) and is written as NaN / zeros; the host reads the 8-byte
// status back once per call (a synchronisation point; the forward needs it anyway for num_valid)
// and then throws the CPU op's message.
//
// Precision: fp32 statistics. With bf16 logits the losses and lse are returned in f32 (not the
// logits' dtype as on the CPU): a bf16 lse would put |lse| * 2^-8 of error into every softmax
// probability of the backward. The backward accepts lse in f32, bf16 or f64.
#include "kernels/cross_entropy.h"

#include <cstdint>
#include <vector>

#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"

// `#pragma unroll` for nvcc, its GCC spelling for the sim build (which would warn otherwise).
#ifndef UNROLL
#if defined(__CUDACC__)
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif
#endif

namespace kernels::cuda {
namespace {

constexpr int kThreads = 256;        // 8 warps per block
constexpr int kWarpRowMaxC = 1024;   // up to this many classes a warp owns a row
constexpr unsigned kFull = 0xffffffffu;

// Runtime dtype codes for the per-row scalars (targets, g, lse), read once per row.
enum ScalarKind : int { kF32 = 0, kF64 = 1, kBF16 = 2, kI32 = 3, kI64 = 4 };

int scalar_kind(DType t) {
  switch (t) {
    case DType::f32: return kF32;
    case DType::f64: return kF64;
    case DType::bf16: return kBF16;
    case DType::i32: return kI32;
    case DType::i64: return kI64;
  }
  return kF32;
}

__device__ __forceinline__ float bf16_bits_to_float(unsigned short b) {
  return __uint_as_float(unsigned(b) << 16);
}

__device__ __forceinline__ double load_scalar(const void* p, int64_t i, int kind) {
  switch (kind) {
    case kF32: return static_cast<const float*>(p)[i];
    case kF64: return static_cast<const double*>(p)[i];
    case kBF16: return bf16_bits_to_float(static_cast<const unsigned short*>(p)[i]);
    case kI32: return static_cast<const int32_t*>(p)[i];
    default: return double(static_cast<const int64_t*>(p)[i]);
  }
}
__device__ __forceinline__ int64_t load_index(const void* p, int64_t i, int kind) {
  return kind == kI32 ? int64_t(static_cast<const int32_t*>(p)[i]) : static_cast<const int64_t*>(p)[i];
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// 16 bytes of T as K floats.
template <class T>
struct Pack;
template <>
struct Pack<float> {
  static constexpr int K = 4;
  __device__ __forceinline__ static void load(const float* p, float* v) {
    const float4 a = *reinterpret_cast<const float4*>(p);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
  }
  __device__ __forceinline__ static void store(float* p, const float* v) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  }
};
template <>
struct Pack<__nv_bfloat16> {
  static constexpr int K = 8;
  __device__ __forceinline__ static void load(const __nv_bfloat16* p, float* v) {
    const uint4 a = *reinterpret_cast<const uint4*>(p);
    const unsigned w[4] = {a.x, a.y, a.z, a.w};
    UNROLL
    for (int i = 0; i < 4; ++i) {  // little endian: the lower half is the lower address
      v[2 * i] = __uint_as_float(w[i] << 16);
      v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
  __device__ __forceinline__ static void store(__nv_bfloat16* p, const float* v) {
    unsigned w[4];
    UNROLL
    for (int i = 0; i < 4; ++i)
      w[i] = unsigned(__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * i]))) |
             (unsigned(__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * i + 1]))) << 16);
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  }
};

template <int k>
struct Int {
  static constexpr int value = k;
};

// Calls f(c, values, Int<k>) over the classes of one row that lane li of L lanes owns: a scalar
// head up to the first 16-byte boundary of xr, 16-byte packs, a scalar tail. vec = false keeps
// every access scalar (used when a second array walked alongside is not aligned like xr).
template <class T, class F>
__device__ __forceinline__ void for_each_in_row(const T* xr, int C, int li, int L, bool vec, F&& f) {
  constexpr int K = Pack<T>::K;
  int head = C;
  if (vec) {
    const int mis = int(reinterpret_cast<uintptr_t>(xr) & 15);
    head = mis ? min(C, (16 - mis) / int(sizeof(T))) : 0;
  }
  for (int c = li; c < head; c += L) {
    const float v = to_float(xr[c]);
    f(c, &v, Int<1>{});
  }
  const int nvec = (C - head) / K;
  for (int i = li; i < nvec; i += L) {
    float v[K];
    Pack<T>::load(xr + head + i * K, v);
    f(head + i * K, v, Int<K>{});
  }
  for (int c = head + nvec * K + li; c < C; c += L) {
    const float v = to_float(xr[c]);
    f(c, &v, Int<1>{});
  }
}

// Online log-sum-exp with a weighted distance term:
//   m = max x,  s = sum exp(x - m),  w = sum of weights,  d = sum w_c * (m - x_c) >= 0.
// When m grows by delta, d grows by w * delta: every term stays non-negative (no cancellation,
// accurate for logits of 1e4). -inf logits count as exp(-inf) = 0 once a finite one is seen; NaN
// propagates into s and d.
struct RowState {
  float m, s, w, d;
};
__device__ __forceinline__ RowState empty_state() { return {-CUDART_INF_F, 0.f, 0.f, 0.f}; }

__device__ __forceinline__ void push(RowState& st, float x, float w) {
  if (x > st.m) {
    st.s = st.s * __expf(st.m - x) + 1.f;
    if (st.w != 0.f) st.d += st.w * (x - st.m);
    st.m = x;
  } else {
    st.s += x == st.m ? 1.f : __expf(x - st.m);
    if (x != st.m) st.d += w * (st.m - x);
  }
  st.w += w;
}

__device__ __forceinline__ RowState merge(const RowState& a, const RowState& b) {
  RowState r;
  r.m = fmaxf(a.m, b.m);
  const float ea = a.m == r.m ? 1.f : __expf(a.m - r.m);
  const float eb = b.m == r.m ? 1.f : __expf(b.m - r.m);
  r.s = a.s * ea + b.s * eb;
  r.d = a.d + b.d;
  if (a.w != 0.f && a.m != r.m) r.d += a.w * (r.m - a.m);
  if (b.w != 0.f && b.m != r.m) r.d += b.w * (r.m - b.m);
  r.w = a.w + b.w;
  return r;
}

// Two floats through one 64-bit shuffle (two SHFL on the device, one exchange in the sim).
__device__ __forceinline__ float2 shfl_xor_pair(float a, float b, int o) {
  unsigned long long u =
      (static_cast<unsigned long long>(__float_as_uint(a)) << 32) | __float_as_uint(b);
  u = __shfl_xor_sync(kFull, u, o);
  return make_float2(__uint_as_float(unsigned(u >> 32)), __uint_as_float(unsigned(u)));
}

// Butterfly over the warp. with_d = false skips the distance term (hard targets without
// smoothing).
__device__ __forceinline__ RowState warp_merge(RowState s, bool with_d) {
  UNROLL
  for (int o = 16; o > 0; o >>= 1) {
    const float2 ms = shfl_xor_pair(s.m, s.s, o);
    float2 wd = make_float2(0.f, 0.f);
    if (with_d) wd = shfl_xor_pair(s.w, s.d, o);
    s = merge(s, RowState{ms.x, ms.y, wd.x, wd.y});
  }
  return s;
}

__device__ __forceinline__ float warp_sum(float v) {
  UNROLL
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Which row a thread works on: G warps per row, 8 / G rows per block.
template <int G>
struct RowMap {
  int row, li;  // row index, lane index within the row's G*32 lanes
  static constexpr int L = G * 32;
  __device__ __forceinline__ RowMap() {
    const int warp = int(threadIdx.x) / 32;
    row = int(blockIdx.x) * (8 / G) + warp / G;
    li = (warp % G) * 32 + int(threadIdx.x) % 32;
  }
};

// The state of the whole row in every thread of the row. G == 1: shuffles only; G == 8: each warp
// leaves its state in shared memory and every thread merges the 8 in the same order.
template <int G>
__device__ __forceinline__ RowState row_merge(RowState st, bool with_d) {
  st = warp_merge(st, with_d);
  if constexpr (G > 1) {
    static_assert(G == 8, "block rows use the whole block");
    SHARED(RowState, part, [8]);
    const int warp = int(threadIdx.x) / 32;
    if (threadIdx.x % 32 == 0) part[warp] = st;
    __syncthreads();
    st = part[0];
    for (int w = 1; w < 8; ++w) st = merge(st, part[w]);
  }
  return st;
}

template <int G>
__device__ __forceinline__ float row_sum(float v) {
  v = warp_sum(v);
  if constexpr (G > 1) {
    SHARED(float, part, [8]);
    const int warp = int(threadIdx.x) / 32;
    if (threadIdx.x % 32 == 0) part[warp] = v;
    __syncthreads();
    v = part[0];
    for (int w = 1; w < 8; ++w) v += part[w];
  }
  return v;
}

struct CeArgs {
  const void* x;  // [N, C] logits, rows at x_rs elements apart, classes contiguous
  int64_t x_rs;
  int N, C;
  const void* targets;  // hard: [N] i32/i64 at stride t_stride
  int64_t t_stride;
  int t_kind;
  int64_t ignore_index;
  float on, off;  // (1 - eps) and eps / C
  const void* q;  // soft: [N, C] target probabilities, rows at q_rs
  int64_t q_rs;
  const void* g;  // backward: [N] upstream gradient at g_stride, times scale
  int64_t g_stride;
  int g_kind;
  float scale;
  const void* lse;  // backward: [N] saved logsumexp at lse_stride
  int64_t lse_stride;
  int lse_kind;
  bool vec;  // backward: dx rows are aligned like x rows, 16-byte packs may be used for both
  float* losses;  // forward outputs (f32)
  float* lse_out;
  void* dx;  // backward output [N, C] contiguous, logits' dtype
  int* status;  // [0] rows not ignored, [1] max(N - bad row)
};

// Hard targets: checks row's target; returns it, or -1 for ignored / invalid rows (flagged).
__device__ __forceinline__ int64_t row_target(const CeArgs& a, int row, bool leader) {
  const int64_t t = load_index(a.targets, int64_t(row) * a.t_stride, a.t_kind);
  if (t == a.ignore_index) return -1;
  if (t < 0 || t >= a.C) {
    if (leader) atomicMax(&a.status[1], a.N - row);
    return -2;
  }
  return t;
}

template <class T, class Q, int G, bool kSoft>
__global__ void __launch_bounds__(kThreads) ce_forward(CeArgs a) {
  const RowMap<G> rm;
  // Rows past N exist only for G == 1 (no block barrier there): the whole warp skips.
  if (G > 1 || rm.row < a.N) {
    const T* xr = static_cast<const T*>(a.x) + int64_t(rm.row) * a.x_rs;
    RowState st = empty_state();
    if constexpr (kSoft) {
      const Q* qr = static_cast<const Q*>(a.q) + int64_t(rm.row) * a.q_rs;
      for_each_in_row(xr, a.C, rm.li, RowMap<G>::L, true, [&](int c, const float* v, auto kk) {
        UNROLL
        for (int j = 0; j < decltype(kk)::value; ++j) push(st, v[j], to_float(qr[c + j]));
      });
    } else {
      for_each_in_row(xr, a.C, rm.li, RowMap<G>::L, true, [&](int, const float* v, auto kk) {
        UNROLL
        for (int j = 0; j < decltype(kk)::value; ++j) push(st, v[j], 1.f);
      });
    }
    st = row_merge<G>(st, kSoft || a.off != 0.f);
    if (rm.li == 0) {
      const float log_s = logf(st.s);
      a.lse_out[rm.row] = st.m + log_s;
      float loss;
      if constexpr (kSoft) {
        loss = st.w * log_s + st.d;
      } else {
        const int64_t t = row_target(a, rm.row, true);
        if (t >= 0) {
          atomicAdd(&a.status[0], 1);
          loss = log_s + a.on * (st.m - to_float(xr[t]));
          if (a.off != 0.f) loss += a.off * st.d;
        } else {
          loss = t == -1 ? 0.f : CUDART_NAN_F;
        }
      }
      a.losses[rm.row] = loss;
    }
  }
}

template <class T, class Q, int G, bool kSoft>
__global__ void __launch_bounds__(kThreads) ce_backward(CeArgs a) {
  const RowMap<G> rm;
  if (G > 1 || rm.row < a.N) {
    const T* xr = static_cast<const T*>(a.x) + int64_t(rm.row) * a.x_rs;
    T* dr = static_cast<T*>(a.dx) + int64_t(rm.row) * a.C;
    const float gs = float(load_scalar(a.g, int64_t(rm.row) * a.g_stride, a.g_kind)) * a.scale;
    const float l = float(load_scalar(a.lse, int64_t(rm.row) * a.lse_stride, a.lse_kind));
    constexpr int L = RowMap<G>::L;
    if constexpr (kSoft) {
      // dx = g * (softmax * sum(q) - q): sum(q) first (a second pass over q, as on the CPU).
      const Q* qr = static_cast<const Q*>(a.q) + int64_t(rm.row) * a.q_rs;
      float qs = 0.f;
      for (int c = rm.li; c < a.C; c += L) qs += to_float(qr[c]);
      qs = row_sum<G>(qs);
      for_each_in_row(xr, a.C, rm.li, L, a.vec, [&](int c, const float* v, auto kk) {
        constexpr int k = decltype(kk)::value;
        float o[k];
        UNROLL
        for (int j = 0; j < k; ++j) o[j] = gs * (__expf(v[j] - l) * qs - to_float(qr[c + j]));
        if constexpr (k == 1) dr[c] = from_float<T>(o[0]);
        else Pack<T>::store(dr + c, o);
      });
    } else {
      const int64_t t = row_target(a, rm.row, rm.li == 0);
      // Ignored and invalid rows get a zero gradient (invalid ones also raise the flag).
      const float ga = t >= 0 ? gs : 0.f, b = ga * a.off, bt = ga * a.on;
      for_each_in_row(xr, a.C, rm.li, L, a.vec, [&](int c, const float* v, auto kk) {
        constexpr int k = decltype(kk)::value;
        float o[k];
        UNROLL
        for (int j = 0; j < k; ++j)
          o[j] = t >= 0 ? ga * __expf(v[j] - l) - b - (c + j == t ? bt : 0.f) : 0.f;
        if constexpr (k == 1) dr[c] = from_float<T>(o[0]);
        else Pack<T>::store(dr + c, o);
      });
    }
  }
}

// scale * sum of the losses in f64 by one block, in a fixed order (deterministic).
__global__ void __launch_bounds__(kThreads) ce_loss_sum(const void* x, int64_t n, int64_t stride, int kind,
                                                        double scale, void* out, int out_kind) {
  SHARED(double, part, [kThreads / 32]);
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) s += load_scalar(x, i * stride, kind);
  UNROLL
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(kFull, s, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int w = 0; w < kThreads / 32; ++w) t += part[w];
    t *= scale;
    if (out_kind == kF64) *static_cast<double*>(out) = t;
    else if (out_kind == kF32) *static_cast<float*>(out) = float(t);
    else *static_cast<__nv_bfloat16*>(out) = __double2bfloat16(t);
  }
}

// --- host side ---------------------------------------------------------------------------------

cudaStream_t cu_stream() { return static_cast<cudaStream_t>(stream()); }

void check_on_device(const Tensor& t, const char* op, const char* arg) {
  engine::check_defined(t, op, arg);
  ENGINE_CHECK(t.device() == device(), op, ": '", arg, "' ", t.describe(),
               " is not on the CUDA device ", device());
}

void check_logits(const Tensor& x, const char* op) {
  check_on_device(x, op, "logits");
  engine::check_dim(x, 2, op, "logits");
  ENGINE_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::bf16, op, ": logits ", x.describe(),
               " must be f32 or bf16 on the CUDA backend");
  ENGINE_CHECK(x.size(1) <= 1 || x.stride(1) == 1, op, ": logits ", x.describe(),
               " must have contiguous rows (class stride 1) on the CUDA backend");
  ENGINE_CHECK(x.size(0) < (int64_t(1) << 31) && x.size(1) < (int64_t(1) << 31), op, ": logits ",
               x.describe(), " has more than 2^31 rows or classes");
}

void check_smoothing(double eps, const char* op) {
  ENGINE_CHECK(eps >= 0.0 && eps <= 1.0, op, ": label_smoothing ", eps, " is outside [0, 1]");
}

void check_targets(const Tensor& t, int64_t N, const char* op) {
  check_on_device(t, op, "targets");
  ENGINE_CHECK(t.dtype() == DType::i64 || t.dtype() == DType::i32, op,
               ": indices must be i64 or i32, got ", engine::dtype_name(t.dtype()));
  ENGINE_CHECK(t.dim() == 1 && t.size(0) == N, op, ": targets ", t.describe(),
               " must have shape [", N, "] (one class index per row of logits)");
}

void check_row_vector(const Tensor& v, int64_t N, const char* op, const char* arg) {
  check_on_device(v, op, arg);
  ENGINE_CHECK(v.dim() == 1 && v.size(0) == N, op, ": ", arg, " ", v.describe(),
               " must have shape [", N, "]");
  ENGINE_CHECK(v.dtype() == DType::f32 || v.dtype() == DType::bf16 || v.dtype() == DType::f64, op,
               ": ", arg, " ", v.describe(), " must be f32, bf16 or f64");
}

void check_probs(const Tensor& q, const Tensor& x, const char* op) {
  check_on_device(q, op, "target_probs");
  ENGINE_CHECK(q.shape() == x.shape(), op, ": target_probs ", q.describe(),
               " must have the shape of logits ", x.describe());
  ENGINE_CHECK(q.dtype() == x.dtype() || q.dtype() == DType::f32, op, ": target_probs ",
               q.describe(), " must be f32 or have the logits' dtype (", engine::dtype_name(x.dtype()), ")");
  ENGINE_CHECK(q.size(1) <= 1 || q.stride(1) == 1, op, ": target_probs ", q.describe(),
               " must have contiguous rows on the CUDA backend");
}

int64_t row_stride(const Tensor& t) { return t.size(0) > 1 ? t.stride(0) : t.size(1); }

CeArgs base_args(const Tensor& x) {
  CeArgs a{};
  a.x = x.raw_data();
  a.x_rs = row_stride(x);
  a.N = int(x.size(0));
  a.C = int(x.size(1));
  return a;
}

void set_targets(CeArgs& a, const Tensor& t, double eps, int64_t ignore_index) {
  a.targets = t.raw_data();
  a.t_stride = t.stride(0);
  a.t_kind = scalar_kind(t.dtype());
  a.ignore_index = ignore_index;
  a.on = float(1.0 - eps);
  a.off = float(eps / double(a.C));
}

// Launches kernel K<T, Q, G, kSoft> for the logits' dtype, q's dtype and the row width.
#define CE_KERNEL_FAMILY(NAME)                                                   \
  template <class T, class Q, int G, bool S>                                     \
  struct NAME##_k {                                                              \
    static void run(const CeArgs& a, dim3 grid) {                                \
      LAUNCH((NAME<T, Q, G, S>), grid, kThreads, 0, cu_stream())(a);             \
      CHECK_LAUNCH(#NAME);                                                       \
    }                                                                            \
  };
CE_KERNEL_FAMILY(ce_forward)
CE_KERNEL_FAMILY(ce_backward)
#undef CE_KERNEL_FAMILY

template <template <class, class, int, bool> class K, bool kSoft>
void launch_rows(const CeArgs& a, DType xt, DType qt) {
  const bool warp_rows = a.C <= kWarpRowMaxC;
  const dim3 grid(unsigned(warp_rows ? (a.N + 7) / 8 : a.N));
  auto go = [&]<class T, class Q>() {
    if (warp_rows) K<T, Q, 1, kSoft>::run(a, grid);
    else K<T, Q, 8, kSoft>::run(a, grid);
  };
  if (xt == DType::f32) {
    go.template operator()<float, float>();
  } else if constexpr (kSoft) {  // bf16 logits with f32 or bf16 target probabilities
    if (qt == DType::f32) go.template operator()<__nv_bfloat16, float>();
    else go.template operator()<__nv_bfloat16, __nv_bfloat16>();
  } else {
    go.template operator()<__nv_bfloat16, __nv_bfloat16>();
  }
}

// The status the kernels left: throws the CPU op's error for the first bad row.
int64_t read_status(const Tensor& status, const Tensor& targets, int64_t N, int64_t C,
                    int64_t ignore_index, const char* op) {
  const std::vector<int32_t> st = status.to_vector<int32_t>();
  if (st[1] > 0) {
    const int64_t row = N - st[1];
    const int64_t v = int64_t(targets.select(0, row).item());
    ENGINE_FAIL(op, ": target ", v, " at row ", row, " is out of range [0, ", C,
                ") and is not ignore_index (", ignore_index, ")");
  }
  return st[0];
}

CrossEntropyOut forward(const Tensor& logits, const Tensor& targets, const Tensor& probs,
                        double eps, int64_t ignore_index, const char* op) {
  const bool soft = probs.defined();
  const int64_t N = logits.size(0), C = logits.size(1);
  ENGINE_CHECK(C > 0 || N == 0, op, ": logits ", logits.describe(), " have no classes");
  const engine::Device dev = device();
  CrossEntropyOut out{Tensor::empty({N}, DType::f32, dev), Tensor::empty({N}, DType::f32, dev),
                      soft ? N : 0};
  if (N == 0) return out;
  CeArgs a = base_args(logits);
  a.losses = out.losses.data<float>();
  a.lse_out = out.lse.data<float>();
  if (soft) {
    a.q = probs.raw_data();
    a.q_rs = row_stride(probs);
    launch_rows<ce_forward_k, true>(a, logits.dtype(), probs.dtype());
    return out;
  }
  Tensor status = Tensor::zeros({2}, DType::i32, dev);
  a.status = status.data<int32_t>();
  set_targets(a, targets, eps, ignore_index);
  launch_rows<ce_forward_k, false>(a, logits.dtype(), logits.dtype());
  out.num_valid = read_status(status, targets, N, C, ignore_index, op);
  return out;
}

Tensor backward(const Tensor& g, const Tensor& logits, const Tensor& targets, const Tensor& probs,
                const Tensor& lse, double eps, int64_t ignore_index, double scale, const char* op) {
  const bool soft = probs.defined();
  const int64_t N = logits.size(0), C = logits.size(1);
  check_row_vector(g, N, op, "grad");
  check_row_vector(lse, N, op, "lse");
  const engine::Device dev = device();
  Tensor dx = Tensor::empty({N, C}, logits.dtype(), dev);
  if (dx.numel() == 0) return dx;
  CeArgs a = base_args(logits);
  a.g = g.raw_data();
  a.g_stride = g.stride(0);
  a.g_kind = scalar_kind(g.dtype());
  a.scale = float(scale);
  a.lse = lse.raw_data();
  a.lse_stride = lse.stride(0);
  a.lse_kind = scalar_kind(lse.dtype());
  a.dx = dx.raw_data();
  // 16-byte packs for x and dx together only if their rows sit at the same offset mod 16.
  const size_t es = logits.element_size();
  a.vec = (reinterpret_cast<uintptr_t>(logits.raw_data()) % 16 ==
           reinterpret_cast<uintptr_t>(dx.raw_data()) % 16) &&
          (a.x_rs * int64_t(es)) % 16 == (C * int64_t(es)) % 16;
  if (soft) {
    a.q = probs.raw_data();
    a.q_rs = row_stride(probs);
    launch_rows<ce_backward_k, true>(a, logits.dtype(), probs.dtype());
    return dx;
  }
  Tensor status = Tensor::zeros({2}, DType::i32, dev);
  a.status = status.data<int32_t>();
  set_targets(a, targets, eps, ignore_index);
  launch_rows<ce_backward_k, false>(a, logits.dtype(), logits.dtype());
  read_status(status, targets, N, C, ignore_index, op);
  return dx;
}

}  // namespace

CrossEntropyOut softmax_cross_entropy(const Tensor& logits, const Tensor& targets,
                                      double label_smoothing, int64_t ignore_index) {
  const char* op = "softmax_cross_entropy";
  check_logits(logits, op);
  check_smoothing(label_smoothing, op);
  check_targets(targets, logits.size(0), op);
  return forward(logits, targets, Tensor(), label_smoothing, ignore_index, op);
}

Tensor softmax_cross_entropy_backward(const Tensor& g, const Tensor& logits,
                                      const Tensor& targets, const Tensor& lse,
                                      double label_smoothing, int64_t ignore_index, double scale) {
  const char* op = "softmax_cross_entropy_backward";
  check_logits(logits, op);
  check_smoothing(label_smoothing, op);
  check_targets(targets, logits.size(0), op);
  return backward(g, logits, targets, Tensor(), lse, label_smoothing, ignore_index, scale, op);
}

CrossEntropyOut softmax_cross_entropy_soft(const Tensor& logits, const Tensor& target_probs) {
  const char* op = "softmax_cross_entropy_soft";
  check_logits(logits, op);
  check_probs(target_probs, logits, op);
  return forward(logits, Tensor(), target_probs, 0.0, 0, op);
}

Tensor softmax_cross_entropy_soft_backward(const Tensor& g, const Tensor& logits,
                                           const Tensor& target_probs, const Tensor& lse,
                                           double scale) {
  const char* op = "softmax_cross_entropy_soft_backward";
  check_logits(logits, op);
  check_probs(target_probs, logits, op);
  return backward(g, logits, Tensor(), target_probs, lse, 0.0, 0, scale, op);
}

Tensor loss_sum(const Tensor& losses, double scale) {
  const char* op = "loss_sum";
  check_on_device(losses, op, "losses");
  ENGINE_CHECK(losses.dtype() == DType::f32 || losses.dtype() == DType::f64 ||
                   losses.dtype() == DType::bf16,
               op, ": losses ", losses.describe(), " must be f32, f64 or bf16");
  ENGINE_CHECK(losses.dim() <= 1 || losses.is_contiguous(), op, ": losses ", losses.describe(),
               " must be 1-D or contiguous on the CUDA backend");
  Tensor out = Tensor::empty({}, losses.dtype(), device());
  const int64_t n = losses.numel();
  LAUNCH(ce_loss_sum, 1, kThreads, 0, cu_stream())(losses.raw_data(), n,
                                                   losses.dim() == 1 ? losses.stride(0) : 1,
                                                   scalar_kind(losses.dtype()), scale,
                                                   out.raw_data(), scalar_kind(losses.dtype()));
  CHECK_LAUNCH("ce_loss_sum");
  return out;
}

}  // namespace kernels::cuda
