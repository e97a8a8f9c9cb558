// Fused optimizer steps and gradient-norm clipping on the GPU (kernels/adamw.h, kernels/clip.h).
//
// adamw_step / sgd_momentum_step: one pass over the flat buffers. Each thread updates 4 floats
// (2 doubles) per iteration with 16-byte loads and stores of p, g, m, v (and the decay mask),
// grid-stride over the buffer; a scalar head brings the pointers to a 16-byte boundary (they
// must share their offset mod 16, which views of buffers allocated together do) and a scalar tail
// finishes. Otherwise (strided views, different offsets) a scalar strided path runs. The update
// is computed in the buffers' dtype with the CPU op's coefficients and order of operations (the
// same sqrt and division, IEEE on the device), so CPU and GPU agree to an ulp or two (nvcc
// contracts a*b+c into FMAs).
//   Bytes per element (f32, AdamW with mask): read p, g, m, v, mask (20 B), write p, m, v (12 B):
//   32 B for ~12 FLOPs, so it is purely bandwidth-bound: at ~90% of 3.35 TB/s a 100M-parameter
//   model updates in ~1.1 ms. Block 256 threads, grid = min(blocks needed, 132 SMs x 8); no shared
//   memory; registers well under 64 (no spills).
//
// grad_norm: deterministic two-stage reduction. The host cuts every tensor into fixed chunks of
// 65536 elements (independent of the launch size, as on the CPU); stage 1 gives each chunk one
// 256-thread block that accumulates x^2 in double per thread (16-byte loads for contiguous f32 /
// bf16 chunks) and reduces in a fixed tree (warp shuffles, then 8 partials in shared memory);
// stage 2 sums the chunk partials in one block in the same fixed way. The chunk table is uploaded
// with one copy; the double result comes back with one 8-byte copy (a synchronisation: the caller
// needs the number on the host). Bit-identical from run to run; NaN/Inf propagate. Reads each
// gradient once: ~90% of bandwidth for large buffers (FP64 FMA throughput is ~20x what the
// bandwidth needs).
//
// scale_: t *= s in place, vectorised like the optimizers (contiguous) or strided.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "engine/strided.h"
#include "kernels/adamw.h"
#include "kernels/clip.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"

#ifndef UNROLL
#if defined(__CUDACC__)
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif
#endif

namespace kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kMaxBlocks = 132 * 8;  // H100: 132 SMs, 8 resident 256-thread blocks each
constexpr int64_t kChunk = int64_t(1) << 16;

// Elements of T per 16-byte vector.
template <class T>
constexpr int kVec = 16 / int(sizeof(T));

template <class T>
struct alignas(16) Vec {
  T v[kVec<T>];
};

// Element range of one launch, split into a scalar head, 16-byte vectors and a scalar tail (for the
// vector path), or all scalar with per-operand strides.
struct Span {
  int64_t n, head, nvec;  // vector path: head + nvec * K + tail = n
  int64_t st[5];          // element strides (scalar path): p, g, m|buf, v, mask
};

__device__ __forceinline__ int64_t global_thread() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t global_threads() { return int64_t(gridDim.x) * blockDim.x; }

// --- AdamW ---------------------------------------------------------------------------------------

template <class T>
struct AdamArgs {
  T* p;
  const T* g;
  T* m;
  T* v;
  const T* mask;
  T lr_wd, b1, one_minus_b1, b2, one_minus_b2, step_size, inv_sqrt_bc2, eps, grad_scale;
};

// The CPU op's sequence of operations for one element.
template <class T, bool kMask>
__device__ __forceinline__ void adam_elem(const AdamArgs<T>& a, T& p, T g, T& m, T& v, T k) {
  const T gi = a.grad_scale * g;
  m = a.b1 * m + a.one_minus_b1 * gi;
  v = a.b2 * v + a.one_minus_b2 * gi * gi;
  if constexpr (kMask) p -= a.lr_wd * k * p;
  else p -= a.lr_wd * p;
  p = p - a.step_size * m / (sqrt(v) * a.inv_sqrt_bc2 + a.eps);
}

template <class T, bool kMask>
__device__ __forceinline__ void adam_scalar(const AdamArgs<T>& a, int64_t i, const int64_t* st) {
  T p = a.p[i * st[0]], m = a.m[i * st[2]], v = a.v[i * st[3]];
  adam_elem<T, kMask>(a, p, a.g[i * st[1]], m, v, kMask ? a.mask[i * st[4]] : T(1));
  a.p[i * st[0]] = p;
  a.m[i * st[2]] = m;
  a.v[i * st[3]] = v;
}

template <class T, bool kMask, bool kVector>
__global__ void __launch_bounds__(kThreads) adamw_kernel(AdamArgs<T> a, Span s) {
  const int64_t t0 = global_thread(), nt = global_threads();
  if constexpr (kVector) {
    constexpr int K = kVec<T>;
    const int64_t unit[5] = {1, 1, 1, 1, 1};
    for (int64_t i = t0; i < s.nvec; i += nt) {
      const int64_t e = s.head + i * K;
      Vec<T> p = *reinterpret_cast<const Vec<T>*>(a.p + e);
      const Vec<T> g = *reinterpret_cast<const Vec<T>*>(a.g + e);
      Vec<T> m = *reinterpret_cast<const Vec<T>*>(a.m + e);
      Vec<T> v = *reinterpret_cast<const Vec<T>*>(a.v + e);
      Vec<T> k;
      if constexpr (kMask) k = *reinterpret_cast<const Vec<T>*>(a.mask + e);
      UNROLL
      for (int j = 0; j < K; ++j) adam_elem<T, kMask>(a, p.v[j], g.v[j], m.v[j], v.v[j], kMask ? k.v[j] : T(1));
      *reinterpret_cast<Vec<T>*>(a.p + e) = p;
      *reinterpret_cast<Vec<T>*>(a.m + e) = m;
      *reinterpret_cast<Vec<T>*>(a.v + e) = v;
    }
    const int64_t tail0 = s.head + s.nvec * K;
    if (t0 < s.head) adam_scalar<T, kMask>(a, t0, unit);
    if (t0 < s.n - tail0) adam_scalar<T, kMask>(a, tail0 + t0, unit);
  } else {
    for (int64_t i = t0; i < s.n; i += nt) adam_scalar<T, kMask>(a, i, s.st);
  }
}

// --- SGD -----------------------------------------------------------------------------------------

template <class T>
struct SgdArgs {
  T* p;
  const T* g;
  T* b;  // momentum buffer, null when momentum == 0
  const T* mask;
  T lr, momentum, wd, grad_scale, g_in_update, buf_in_update;
};

template <class T, bool kMask, bool kBuf>
__device__ __forceinline__ void sgd_elem(const SgdArgs<T>& a, T& p, T g, T& b, T k) {
  T gi = a.grad_scale * g;
  if constexpr (kMask) gi += a.wd * k * p;
  else gi += a.wd * p;
  T d = gi;
  if constexpr (kBuf) {
    b = a.momentum * b + gi;
    d = a.g_in_update * gi + a.buf_in_update * b;  // nesterov: g + momentum * buf; plain: buf
  }
  p = p - a.lr * d;
}

template <class T, bool kMask, bool kBuf>
__device__ __forceinline__ void sgd_scalar(const SgdArgs<T>& a, int64_t i, const int64_t* st) {
  T p = a.p[i * st[0]], b = kBuf ? a.b[i * st[2]] : T(0);
  sgd_elem<T, kMask, kBuf>(a, p, a.g[i * st[1]], b, kMask ? a.mask[i * st[4]] : T(1));
  a.p[i * st[0]] = p;
  if constexpr (kBuf) a.b[i * st[2]] = b;
}

template <class T, bool kMask, bool kBuf, bool kVector>
__global__ void __launch_bounds__(kThreads) sgd_kernel(SgdArgs<T> a, Span s) {
  const int64_t t0 = global_thread(), nt = global_threads();
  if constexpr (kVector) {
    constexpr int K = kVec<T>;
    const int64_t unit[5] = {1, 1, 1, 1, 1};
    for (int64_t i = t0; i < s.nvec; i += nt) {
      const int64_t e = s.head + i * K;
      Vec<T> p = *reinterpret_cast<const Vec<T>*>(a.p + e);
      const Vec<T> g = *reinterpret_cast<const Vec<T>*>(a.g + e);
      Vec<T> b, k;
      if constexpr (kBuf) b = *reinterpret_cast<const Vec<T>*>(a.b + e);
      if constexpr (kMask) k = *reinterpret_cast<const Vec<T>*>(a.mask + e);
      UNROLL
      for (int j = 0; j < K; ++j)
        sgd_elem<T, kMask, kBuf>(a, p.v[j], g.v[j], b.v[j], kMask ? k.v[j] : T(1));
      *reinterpret_cast<Vec<T>*>(a.p + e) = p;
      if constexpr (kBuf) *reinterpret_cast<Vec<T>*>(a.b + e) = b;
    }
    const int64_t tail0 = s.head + s.nvec * K;
    if (t0 < s.head) sgd_scalar<T, kMask, kBuf>(a, t0, unit);
    if (t0 < s.n - tail0) sgd_scalar<T, kMask, kBuf>(a, tail0 + t0, unit);
  } else {
    for (int64_t i = t0; i < s.n; i += nt) sgd_scalar<T, kMask, kBuf>(a, i, s.st);
  }
}

// --- grad_norm and scale_ ------------------------------------------------------------------------

enum Kind : int { kF32 = 0, kF64 = 1, kBF16 = 2 };

struct Layout {
  int nd;
  int64_t shape[engine::kMaxDims];
  int64_t stride[engine::kMaxDims];
};

Layout layout_of(const Tensor& t) {
  Layout l{};
  engine::StridedLayout<1> m = engine::merge_dims<1>(t.shape(), {t.strides()});
  l.nd = m.shape.size();
  for (int d = 0; d < l.nd; ++d) {
    l.shape[d] = m.shape[d];
    l.stride[d] = m.strides[0][d];
  }
  return l;
}

__device__ __forceinline__ int64_t offset_of(const Layout& l, int64_t p) {
  if (l.nd == 1) return p * l.stride[0];
  int64_t off = 0;
  for (int d = l.nd - 1; d >= 0; --d) {
    off += (p % l.shape[d]) * l.stride[d];
    p /= l.shape[d];
  }
  return off;
}

struct NormTensor {
  const void* base;  // first element
  int kind;
  bool contiguous;
  Layout layout;
};
struct NormChunk {
  int64_t tensor, start, len;  // elements [start, start + len) in row-major order
};

__device__ __forceinline__ double load_as_double(const void* p, int64_t i, int kind) {
  switch (kind) {
    case kF32: return static_cast<const float*>(p)[i];
    case kF64: return static_cast<const double*>(p)[i];
    default: return __uint_as_float(unsigned(static_cast<const unsigned short*>(p)[i]) << 16);
  }
}

// Sum over the block in a fixed order; the result is valid in thread 0.
__device__ __forceinline__ double block_sum(double s) {
  SHARED(double, part, [kThreads / 32]);
  UNROLL
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(kFull, s, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
  __syncthreads();
  double t = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) t += part[w];
  return t;
}

__global__ void __launch_bounds__(kThreads) norm_chunks(const NormTensor* tensors, const NormChunk* chunks,
                                                        double* partial) {
  const NormChunk c = chunks[blockIdx.x];
  const NormTensor& t = tensors[c.tensor];
  double s = 0;
  const int tid = int(threadIdx.x);
  if (t.contiguous && t.kind != kF64) {
    // 16-byte loads from the first aligned element of the chunk on.
    const int es = t.kind == kF32 ? 4 : 2;
    const char* base = static_cast<const char*>(t.base) + c.start * es;
    const int mis = int(reinterpret_cast<uintptr_t>(base) & 15);
    const int64_t head = min(c.len, int64_t(mis ? (16 - mis) / es : 0));
    const int per = 16 / es;
    const int64_t nvec = (c.len - head) / per;
    const uint4* vp = reinterpret_cast<const uint4*>(base + head * es);
    for (int64_t i = tid; i < nvec; i += kThreads) {
      const uint4 u = vp[i];
      const unsigned w[4] = {u.x, u.y, u.z, u.w};
      UNROLL
      for (int j = 0; j < 4; ++j) {
        if (t.kind == kF32) {
          const double x = __uint_as_float(w[j]);
          s += x * x;
        } else {
          const double lo = __uint_as_float(w[j] << 16), hi = __uint_as_float(w[j] & 0xffff0000u);
          s += lo * lo + hi * hi;
        }
      }
    }
    const int64_t tail0 = head + nvec * per;
    if (tid < head) {
      const double x = load_as_double(base, tid, t.kind);
      s += x * x;
    }
    if (tid < c.len - tail0) {
      const double x = load_as_double(base, tail0 + tid, t.kind);
      s += x * x;
    }
  } else {
    for (int64_t i = tid; i < c.len; i += kThreads) {
      const double x = load_as_double(t.base, offset_of(t.layout, c.start + i), t.kind);
      s += x * x;
    }
  }
  s = block_sum(s);
  if (tid == 0) partial[blockIdx.x] = s;
}

__global__ void __launch_bounds__(kThreads) norm_total(const double* partial, int64_t n, double* out) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) s += partial[i];
  s = block_sum(s);
  if (threadIdx.x == 0) *out = s;
}

template <class T, bool kVector>
__global__ void __launch_bounds__(kThreads) scale_kernel(T* x, Layout l, Span s, T a) {
  const int64_t t0 = global_thread(), nt = global_threads();
  if constexpr (kVector) {
    constexpr int K = kVec<T>;
    for (int64_t i = t0; i < s.nvec; i += nt) {
      Vec<T>* p = reinterpret_cast<Vec<T>*>(x + s.head + i * K);
      Vec<T> v = *p;
      UNROLL
      for (int j = 0; j < K; ++j) v.v[j] *= a;
      *p = v;
    }
    const int64_t tail0 = s.head + s.nvec * K;
    if (t0 < s.head) x[t0] *= a;
    if (t0 < s.n - tail0) x[tail0 + t0] *= a;
  } else {
    for (int64_t i = t0; i < s.n; i += nt) x[offset_of(l, i)] *= a;
  }
}

// --- host side -----------------------------------------------------------------------------------

cudaStream_t cu_stream() { return static_cast<cudaStream_t>(stream()); }

void check_on_device(const Tensor& t, const char* op, const char* arg) {
  engine::check_defined(t, op, arg);
  ENGINE_CHECK(t.device() == device(), op, ": '", arg, "' ", t.describe(),
               " is not on the CUDA device ", device());
}

// The checks both optimizers share (as the CPU op): a 1-D device buffer matching `params`.
void check_buffer(const Tensor& t, const Tensor& params, const char* op, const char* name) {
  check_on_device(t, op, name);
  ENGINE_CHECK(t.dim() == 1, op, ": '", name, "' must be a 1-D buffer, got ", t.describe());
  ENGINE_CHECK(t.shape() == params.shape(), op, ": '", name, "' ", t.describe(),
               " does not match 'params' ", params.describe());
  ENGINE_CHECK(t.dtype() == params.dtype(), op, ": '", name, "' ", t.describe(),
               " has a different dtype from 'params' ", params.describe());
}

// The decay mask must already have the params' dtype here (no conversion on the device).
void check_mask(const Tensor& mask, const Tensor& params, const char* op) {
  if (!mask.defined()) return;
  check_on_device(mask, op, "decay_mask");
  ENGINE_CHECK(mask.dim() == 1 && mask.shape() == params.shape(), op, ": 'decay_mask' ",
               mask.describe(), " does not match 'params' ", params.describe());
  ENGINE_CHECK(mask.dtype() == params.dtype(), op, ": 'decay_mask' ", mask.describe(),
               " must have the params' dtype (", engine::dtype_name(params.dtype()),
               ") on the CUDA backend");
}

struct Extent {
  uintptr_t lo = 0, hi = 0;
};
Extent extent(const Tensor& t) {
  if (!t.defined() || t.numel() == 0) return {};
  auto base = reinterpret_cast<uintptr_t>(t.raw_data());
  int64_t span = (t.numel() - 1) * t.stride(0) * int64_t(t.element_size());
  uintptr_t lo = span < 0 ? base + span : base;
  uintptr_t hi = (span < 0 ? base : base + span) + t.element_size();
  return {lo, hi};
}
struct Operand {
  const Tensor* t;
  const char* name;
  bool written;
};
// A written buffer must not overlap another operand (each element is read and written once).
void check_no_overlap(const char* op, std::initializer_list<Operand> ops) {
  for (auto a = ops.begin(); a != ops.end(); ++a)
    for (auto b = a + 1; b != ops.end(); ++b) {
      if (!a->written && !b->written) continue;
      Extent x = extent(*a->t), y = extent(*b->t);
      ENGINE_CHECK(x.lo == x.hi || y.lo == y.hi || x.hi <= y.lo || y.hi <= x.lo, op, ": '",
                   a->name, "' and '", b->name, "' overlap in memory; each buffer must be distinct");
    }
}

// The vector path needs unit strides and one common offset mod 16 (then one head serves all).
Span make_span(std::initializer_list<const Tensor*> ts, int64_t n, size_t es, bool& vector) {
  Span s{};
  s.n = n;
  int64_t i = 0;
  for (const Tensor* t : ts) s.st[i++] = t->defined() ? (n > 1 ? t->stride(0) : 1) : 0;
  const Tensor* first = *ts.begin();
  const uintptr_t mis = reinterpret_cast<uintptr_t>(first->raw_data()) % 16;
  vector = true;
  for (const Tensor* t : ts)
    if (t->defined())
      vector = vector && (n <= 1 || t->stride(0) == 1) &&
               reinterpret_cast<uintptr_t>(t->raw_data()) % 16 == mis;
  if (vector) {
    const int64_t k = 16 / int64_t(es);
    s.head = std::min<int64_t>(n, mis ? int64_t((16 - mis) / es) : 0);
    s.nvec = (n - s.head) / k;
  }
  return s;
}

unsigned blocks_for(int64_t work) {
  return unsigned(std::clamp<int64_t>((work + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

template <class F>
void visit_opt_dtype(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    default: ENGINE_FAIL(op, ": expected dtype f32 or f64, got ", engine::dtype_name(dt));
  }
}

}  // namespace

void adamw_step(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                const Tensor& decay_mask, const AdamWParams& hp) {
  const char* op = "adamw_step";
  check_on_device(params, op, "params");
  ENGINE_CHECK(params.dim() == 1, op, ": 'params' must be a 1-D buffer, got ", params.describe());
  check_buffer(grads, params, op, "grads");
  check_buffer(m, params, op, "m");
  check_buffer(v, params, op, "v");
  ENGINE_CHECK(hp.lr >= 0 && std::isfinite(hp.lr), op, ": lr must be finite and >= 0, got ", hp.lr);
  ENGINE_CHECK(hp.beta1 >= 0 && hp.beta1 < 1, op, ": beta1 must be in [0, 1), got ", hp.beta1);
  ENGINE_CHECK(hp.beta2 >= 0 && hp.beta2 < 1, op, ": beta2 must be in [0, 1), got ", hp.beta2);
  ENGINE_CHECK(hp.eps >= 0 && std::isfinite(hp.eps), op, ": eps must be finite and >= 0, got ", hp.eps);
  ENGINE_CHECK(hp.weight_decay >= 0 && std::isfinite(hp.weight_decay), op,
               ": weight_decay must be finite and >= 0, got ", hp.weight_decay);
  ENGINE_CHECK(hp.step >= 1, op, ": step must be >= 1 (1-based, for the bias correction), got ",
               hp.step);
  check_mask(decay_mask, params, op);
  check_no_overlap(op, {{&params, "params", true},
                        {&grads, "grads", false},
                        {&m, "m", true},
                        {&v, "v", true},
                        {&decay_mask, "decay_mask", false}});
  const int64_t n = params.numel();
  if (n == 0) return;
  const double bc1 = 1.0 - std::pow(hp.beta1, double(hp.step));
  const double bc2 = 1.0 - std::pow(hp.beta2, double(hp.step));
  visit_opt_dtype(params.dtype(), op, [&](auto z) {
    using T = decltype(z);
    AdamArgs<T> a{params.data<T>(), grads.data<T>(), m.data<T>(), v.data<T>(),
                  decay_mask.defined() ? decay_mask.data<T>() : nullptr,
                  T(hp.lr * hp.weight_decay), T(hp.beta1), T(1.0 - hp.beta1), T(hp.beta2),
                  T(1.0 - hp.beta2), T(hp.lr / bc1), T(1.0 / std::sqrt(bc2)), T(hp.eps),
                  T(hp.grad_scale)};
    bool vec;
    const Span s = make_span({&params, &grads, &m, &v, &decay_mask}, n, sizeof(T), vec);
    const unsigned blocks = blocks_for(vec ? std::max(s.nvec, s.head + 16) : n);
    auto go = [&]<bool kMask, bool kVector>() {
      LAUNCH((adamw_kernel<T, kMask, kVector>), blocks, kThreads, 0, cu_stream())(a, s);
      CHECK_LAUNCH("adamw_kernel");
    };
    if (a.mask) {
      if (vec) go.template operator()<true, true>();
      else go.template operator()<true, false>();
    } else {
      if (vec) go.template operator()<false, true>();
      else go.template operator()<false, false>();
    }
  });
}

void sgd_momentum_step(const Tensor& params, const Tensor& grads, const Tensor& buf,
                       const Tensor& decay_mask, double lr, double momentum, double weight_decay,
                       bool nesterov, double grad_scale) {
  const char* op = "sgd_momentum_step";
  check_on_device(params, op, "params");
  ENGINE_CHECK(params.dim() == 1, op, ": 'params' must be a 1-D buffer, got ", params.describe());
  check_buffer(grads, params, op, "grads");
  ENGINE_CHECK(buf.defined() || momentum == 0, op,
               ": 'buf' is undefined but momentum is ", momentum, " (a buffer is needed)");
  if (buf.defined()) check_buffer(buf, params, op, "buf");
  ENGINE_CHECK(lr >= 0 && std::isfinite(lr), op, ": lr must be finite and >= 0, got ", lr);
  ENGINE_CHECK(momentum >= 0 && std::isfinite(momentum), op,
               ": momentum must be finite and >= 0, got ", momentum);
  ENGINE_CHECK(weight_decay >= 0 && std::isfinite(weight_decay), op,
               ": weight_decay must be finite and >= 0, got ", weight_decay);
  ENGINE_CHECK(!nesterov || momentum > 0, op, ": nesterov momentum requires momentum > 0");
  check_mask(decay_mask, params, op);
  check_no_overlap(op, {{&params, "params", true},
                        {&grads, "grads", false},
                        {&buf, "buf", momentum != 0},
                        {&decay_mask, "decay_mask", false}});
  const int64_t n = params.numel();
  if (n == 0) return;
  // With momentum 0 the buffer plays no role and is left untouched.
  const Tensor b = momentum != 0 ? buf : Tensor();
  visit_opt_dtype(params.dtype(), op, [&](auto z) {
    using T = decltype(z);
    SgdArgs<T> a{params.data<T>(), grads.data<T>(), b.defined() ? b.data<T>() : nullptr,
                 decay_mask.defined() ? decay_mask.data<T>() : nullptr,
                 T(lr), T(momentum), T(weight_decay), T(grad_scale), T(nesterov ? 1 : 0),
                 T(nesterov ? momentum : 1)};
    bool vec;
    const Span s = make_span({&params, &grads, &b, &b, &decay_mask}, n, sizeof(T), vec);
    const unsigned blocks = blocks_for(vec ? std::max(s.nvec, s.head + 16) : n);
    auto go = [&]<bool kMask, bool kBuf>() {
      if (vec) LAUNCH((sgd_kernel<T, kMask, kBuf, true>), blocks, kThreads, 0, cu_stream())(a, s);
      else LAUNCH((sgd_kernel<T, kMask, kBuf, false>), blocks, kThreads, 0, cu_stream())(a, s);
      CHECK_LAUNCH("sgd_kernel");
    };
    if (a.mask && a.b) go.template operator()<true, true>();
    else if (a.mask) go.template operator()<true, false>();
    else if (a.b) go.template operator()<false, true>();
    else go.template operator()<false, false>();
  });
}

double grad_norm(const std::vector<Tensor>& tensors) {
  std::vector<NormTensor> ts;
  std::vector<NormChunk> chunks;
  for (size_t k = 0; k < tensors.size(); ++k) {
    const Tensor& t = tensors[k];
    if (!t.defined()) continue;
    check_on_device(t, "grad_norm", "tensor");
    ENGINE_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64 || t.dtype() == DType::bf16,
                 "grad_norm: tensor ", k, " is ", t.describe(), ", expected f32, f64 or bf16");
    if (t.numel() == 0) continue;
    NormTensor d{};
    d.base = t.raw_data();
    d.kind = t.dtype() == DType::f32 ? kF32 : t.dtype() == DType::f64 ? kF64 : kBF16;
    d.contiguous = t.is_contiguous();
    d.layout = layout_of(t);
    for (int64_t b = 0; b < t.numel(); b += kChunk)
      chunks.push_back({int64_t(ts.size()), b, std::min(kChunk, t.numel() - b)});
    ts.push_back(d);
  }
  if (chunks.empty()) return 0.0;
  // One upload of both tables (tensors first, 16-byte aligned), then the two stages.
  const size_t tb = ts.size() * sizeof(NormTensor), cb = chunks.size() * sizeof(NormChunk);
  const size_t t_bytes = (tb + 15) / 16 * 16;
  const engine::Device dev = device();
  Tensor table = Tensor::empty({int64_t((t_bytes + cb + 7) / 8)}, DType::i64, dev);
  char* tp = static_cast<char*>(table.raw_data());
  CUDA_CHECK(cudaMemcpyAsync(tp, ts.data(), tb, cudaMemcpyHostToDevice, cu_stream()));
  CUDA_CHECK(cudaMemcpyAsync(tp + t_bytes, chunks.data(), cb, cudaMemcpyHostToDevice, cu_stream()));
  Tensor partial = Tensor::empty({int64_t(chunks.size())}, DType::f64, dev);
  Tensor total = Tensor::empty({1}, DType::f64, dev);
  LAUNCH(norm_chunks, unsigned(chunks.size()), kThreads, 0, cu_stream())(
      reinterpret_cast<const NormTensor*>(tp), reinterpret_cast<const NormChunk*>(tp + t_bytes),
      partial.data<double>());
  CHECK_LAUNCH("norm_chunks");
  LAUNCH(norm_total, 1, kThreads, 0, cu_stream())(partial.data<double>(), int64_t(chunks.size()),
                                                 total.data<double>());
  CHECK_LAUNCH("norm_total");
  // The host vectors stay alive until here; to_vector synchronises the stream.
  return std::sqrt(total.to_vector<double>()[0]);
}

void scale_(const Tensor& t, double s) {
  const char* op = "scale_";
  check_on_device(t, op, "tensor");
  for (int d = 0; d < t.dim(); ++d)
    ENGINE_CHECK(t.size(d) <= 1 || t.stride(d) != 0, op, ": ", t.describe(),
                 " has overlapping elements (stride 0 in dim ", d, ")");
  const int64_t n = t.numel();
  if (n == 0) return;
  visit_opt_dtype(t.dtype(), op, [&](auto z) {
    using T = decltype(z);
    const Layout l = layout_of(t);
    const bool contiguous = l.nd == 1 && l.stride[0] == 1;
    Span sp{};
    sp.n = n;
    if (contiguous) {
      const uintptr_t mis = reinterpret_cast<uintptr_t>(t.raw_data()) % 16;
      sp.head = std::min<int64_t>(n, mis ? int64_t((16 - mis) / sizeof(T)) : 0);
      sp.nvec = (n - sp.head) / kVec<T>;
    }
    const unsigned blocks = blocks_for(contiguous ? std::max(sp.nvec, sp.head + 16) : n);
    if (contiguous)
      LAUNCH((scale_kernel<T, true>), blocks, kThreads, 0, cu_stream())(t.data<T>(), l, sp, T(s));
    else
      LAUNCH((scale_kernel<T, false>), blocks, kThreads, 0, cu_stream())(t.data<T>(), l, sp, T(s));
    CHECK_LAUNCH("scale_kernel");
  });
}

}  // namespace kernels::cuda
