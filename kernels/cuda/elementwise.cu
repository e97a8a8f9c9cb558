// Elementwise ops on the GPU (same contract as kernels::cpu::add etc., see kernels/elementwise.h):
// binary ops with NumPy broadcasting, ops with a scalar, unary math, the backward formulas, and
// sum_to_shape. f32, f64 and bf16 (computed in f32, stored with the CPU's rounding: nearest even,
// a NaN kept quiet with its sign and payload). Inputs may be any strided views; outputs are new
// contiguous tensors.
//
// Numerics: the arithmetic formulas are the CPU's, with every product rounded on its own
// (__fmul_rn) where nvcc would otherwise fuse it into an FMA, so their results are the CPU's bit
// for bit. exp, tanh, sigmoid and the GELUs in f32 are ports of kernels::math (the same
// polynomials, flushing, NaN and infinity handling); on a GPU the compiler fuses their multiply-
// adds, which moves results by an ulp or two. log, pow and the f64 functions are the device
// libm's (a few ulp). Under the sim everything is the CPU's bit for bit.
//
// Design (H100): memory-bound, 1 FLOP/byte or less except the GELUs (30-50 FLOP per element,
// 4-6 FLOP/byte at f32: still under the ~20 FLOP/byte ridge). One thread per element in a
// grid-stride loop (256 threads, ≤ 132·16 blocks):
// - flat: every operand contiguous and of the output's shape: element i is offset i everywhere
//   (coalesced accesses of one element: ~85% of 3.35 TB/s expected at f32, less for bf16's
//   2-byte accesses; 16-byte vector accesses are a later step);
// - strided: broadcasting and views. The output is contiguous, so element i is output offset i;
//   the inputs' offsets come from unravelling i over the merged dims (32-bit divisions, dims of
//   size 1 dropped and dims contiguous in every operand merged, so a bias broadcast [N, C] + [C]
//   is two dims). A broadcast or transposed input is read uncoalesced or from cache; expect
//   ~50-80% of bandwidth.
// sum_to_shape: two deterministic stages. Stage 1 splits each output element's reduced range
// into P interleaved parts (P fixed by the sizes: enough threads to fill the GPU); thread (i, p)
// sums elements p, p + P, ... in f64. The thread index runs fastest over p when g's innermost
// dim is reduced (a warp reads 32 consecutive elements) and over i otherwise (a warp reads 32
// consecutive output columns). Stage 2 adds the P parts of each output element in order.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "engine/strided.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "kernels/elementwise.h"

namespace kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 132 * 16;

// --- storage and compute types ------------------------------------------------------------------

struct Bf16 {
  unsigned short bits;
};
template <class T> struct ComputeType { using type = T; };
template <> struct ComputeType<Bf16> { using type = float; };
template <class T> using compute_t = typename ComputeType<T>::type;

template <class T>
__device__ __forceinline__ compute_t<T> load(const T* p, int64_t i) {
  if constexpr (std::is_same_v<T, Bf16>) return __uint_as_float(unsigned(p[i].bits) << 16);
  else return p[i];
}
// The CPU's store (kernels/cpu/elementwise.cpp): bf16 rounds to nearest even and keeps a NaN's
// sign and payload, made quiet.
template <class T>
__device__ __forceinline__ void store(T* p, int64_t i, compute_t<T> v) {
  if constexpr (std::is_same_v<T, Bf16>) {
    const unsigned u = __float_as_uint(v);
    const unsigned b = (u & 0x7fffffffu) > 0x7f800000u ? ((u >> 16) | 0x40u)
                                                       : ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    p[i].bits = static_cast<unsigned short>(b);
  } else {
    p[i] = v;
  }
}

// A product that the compiler may not fuse into a following add (the CPU rounds it on its own).
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// --- kernels::math ported to the device (see kernels/elementwise.h for the derivations) -------

namespace dm {

__device__ __forceinline__ int32_t bits_of(float x) { return __float_as_int(x); }
__device__ __forceinline__ float float_of(int32_t b) { return __int_as_float(b); }
__device__ __forceinline__ int32_t ordered(int32_t b) { return b ^ ((b >> 31) & 0x7fffffff); }

// exp(x + lo): Cody-Waite reduction and Cephes' degree-6 polynomial, ~1.4 ulp on the CPU.
__device__ __forceinline__ float exp_f32(float x, float lo) {
  const int32_t khi = ordered(bits_of(88.72284f));
  const int32_t klo = ordered(bits_of(-87.33654f));
  const int32_t xb = bits_of(x);
  const int32_t k = ordered(xb);
  const int32_t big = -int32_t(k > khi), small = -int32_t(k < klo);
  const int32_t nan = -int32_t((xb & 0x7fffffff) > 0x7f800000);
  const int32_t kc = k < klo ? klo : (k > khi ? khi : k);
  const float xc = float_of(ordered(kc));
  const float shifter = 12582912.0f;
  const float t = (xc + lo) * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f + lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t ni = bits_of(t) - 0x4B400000;
  const int32_t n1 = ni >> 1, n2 = ni - n1;
  int32_t yb = bits_of(p * float_of((n1 + 127) << 23) * float_of((n2 + 127) << 23));
  yb = (yb & ~big) | (0x7f800000 & big);
  yb &= ~small;
  yb = (yb & ~nan) | ((xb | 0x400000) & nan);
  return float_of(yb);
}

// An odd polynomial below |x| = 0.625, else 1 - 2/(exp(2|x|) + 1) with x's sign.
__device__ __forceinline__ float tanh_f32(float x) {
  const int32_t xb = bits_of(x);
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float near0 = x * (1.0f + p * z);
  const float ax = float_of(xb & 0x7fffffff);
  const int32_t far = bits_of(1.0f - 2.0f / (exp_f32(2.0f * ax, 0.0f) + 1.0f)) | (xb & int32_t(0x80000000));
  const int32_t small = -int32_t((xb & 0x7fffffff) < bits_of(0.625f));
  return float_of((bits_of(near0) & small) | (far & ~small));
}

// erfc(a/sqrt2) for a >= 0: t exp(-z^2 + P(t)), P a degree-10 Chebyshev series (Clenshaw).
__device__ __forceinline__ float erfc_scaled_f32(float a) {
  const float c0 = -5.5117125031e-01f, c1 = 5.5025631824e-01f, c2 = 7.2678472327e-03f,
              c3 = -6.3663206650e-03f, c4 = -1.5938484563e-04f, c5 = 1.8099070171e-04f,
              c6 = -2.5158306730e-06f, c7 = -6.4200789860e-06f, c8 = 5.6819367320e-07f,
              c9 = 2.1429783883e-07f, c10 = -4.4640174647e-08f;
  const float z = a * 0.70710678118654752f;
  const float t = 1.0f / (1.0f + 0.5f * z);
  const float s = (2.0f * t - 7.0f / 6.0f) * (6.0f / 5.0f);
  const float s2 = 2.0f * s;
  float b2 = c10, b1 = s2 * b2 + c9, b0;
  b0 = s2 * b1 - b2 + c8, b2 = b1, b1 = b0;
  b0 = s2 * b1 - b2 + c7, b2 = b1, b1 = b0;
  b0 = s2 * b1 - b2 + c6, b2 = b1, b1 = b0;
  b0 = s2 * b1 - b2 + c5, b2 = b1, b1 = b0;
  b0 = s2 * b1 - b2 + c4, b2 = b1, b1 = b0;
  b0 = s2 * b1 - b2 + c3, b2 = b1, b1 = b0;
  b0 = s2 * b1 - b2 + c2, b2 = b1, b1 = b0;
  b0 = s2 * b1 - b2 + c1, b2 = b1, b1 = b0;
  const float p = s * b1 - b2 + c0;
  const float ah = float_of(bits_of(a) & int32_t(0xfffff000)), al = a - ah;
  return t * exp_f32(-0.5f * (ah * ah), p - 0.5f * (al * (ah + a)));
}

__device__ __forceinline__ float normal_cdf_f32(float x) {
  const float tail = 0.5f * erfc_scaled_f32(float_of(bits_of(x) & 0x7fffffff));
  const int32_t neg = bits_of(x) >> 31;
  return float_of((bits_of(tail) & neg) | (bits_of(1.0f - tail) & ~neg));
}

// libm by type, named explicitly (kernels::cuda::log etc. hide the global overloads here).
__device__ __forceinline__ float log(float x) { return logf(x); }
__device__ __forceinline__ double log(double x) { return ::log(x); }
__device__ __forceinline__ float sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt(double x) { return ::sqrt(x); }
__device__ __forceinline__ float pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double pow(double x, double y) { return ::pow(x, y); }
__device__ __forceinline__ float fabs(float x) { return fabsf(x); }
__device__ __forceinline__ double fabs(double x) { return ::fabs(x); }

// f32 takes the ports above, f64 the device libm (as the CPU takes glibc's).
template <class C>
__device__ __forceinline__ C exp(C x) {
  if constexpr (sizeof(C) == 4) return exp_f32(x, 0.0f);
  else return ::exp(x);
}
template <class C>
__device__ __forceinline__ C tanh(C x) {
  if constexpr (sizeof(C) == 4) return tanh_f32(x);
  else return ::tanh(x);
}
template <class C>
__device__ __forceinline__ C normal_cdf(C x) {
  if constexpr (sizeof(C) == 4) return normal_cdf_f32(x);
  else return C(0.5) * ::erfc(-x * C(0.70710678118654752440));
}

template <class C>
__device__ __forceinline__ C gelu_tanh(C x) {
  const C u = C(math::kSqrt2OverPi) * (x + C(math::kGeluCoef) * x * x * x);
  return x / (C(1) + exp<C>(C(-2) * u));
}
template <class C>
__device__ __forceinline__ C gelu_tanh_grad(C x) {
  const C x2 = x * x;
  const C u = C(math::kSqrt2OverPi) * (x + C(math::kGeluCoef) * x2 * x);
  const C du = C(math::kSqrt2OverPi) * (C(1) + C(3 * math::kGeluCoef) * x2);
  const C s = C(1) / (C(1) + exp<C>(C(-2) * u));
  return s + C(2) * x * s * (C(1) - s) * du;
}
template <class C>
__device__ __forceinline__ C gelu_erf(C x) {
  return x * normal_cdf<C>(x);
}
template <class C>
__device__ __forceinline__ C gelu_erf_grad(C x) {
  return normal_cdf<C>(x) + x * C(0.39894228040143267794) * exp<C>(C(-0.5) * x * x);
}

}  // namespace dm

// --- the formulas (as kernels/cpu/elementwise.cpp) ----------------------------------------------

struct Add { template <class C> __device__ C operator()(C a, C b) const { return a + b; } };
struct Sub { template <class C> __device__ C operator()(C a, C b) const { return a - b; } };
struct Mul { template <class C> __device__ C operator()(C a, C b) const { return a * b; } };
struct Div { template <class C> __device__ C operator()(C a, C b) const { return a / b; } };

struct Neg { template <class C> __device__ C operator()(C x) const { return -x; } };
struct Exp { template <class C> __device__ C operator()(C x) const { return dm::exp<C>(x); } };
struct Log { template <class C> __device__ C operator()(C x) const { return dm::log(x); } };
struct Tanh { template <class C> __device__ C operator()(C x) const { return dm::tanh<C>(x); } };
struct Sqrt { template <class C> __device__ C operator()(C x) const { return dm::sqrt(x); } };
struct Rsqrt { template <class C> __device__ C operator()(C x) const { return C(1) / dm::sqrt(x); } };
struct Relu { template <class C> __device__ C operator()(C x) const { return x < C(0) ? C(0) : x; } };
struct Sigmoid {
  template <class C> __device__ C operator()(C x) const { return C(1) / (C(1) + dm::exp<C>(-x)); }
};
struct GeluTanh { template <class C> __device__ C operator()(C x) const { return dm::gelu_tanh<C>(x); } };
struct GeluErf { template <class C> __device__ C operator()(C x) const { return dm::gelu_erf<C>(x); } };
struct Square { template <class C> __device__ C operator()(C x) const { return x * x; } };
struct Abs { template <class C> __device__ C operator()(C x) const { return dm::fabs(x); } };

struct AddScalar {
  double s;
  template <class C> __device__ C operator()(C x) const { return x + C(s); }
};
struct MulScalar {
  double s;
  template <class C> __device__ C operator()(C x) const { return x * C(s); }
};
struct PowScalar {
  double p;
  template <class C> __device__ C operator()(C x) const { return dm::pow(x, C(p)); }
};

struct ReluGrad {
  template <class C> __device__ C operator()(C g, C x) const { return x > C(0) ? g : C(0); }
};
struct GeluTanhGrad {
  template <class C> __device__ C operator()(C g, C x) const { return g * dm::gelu_tanh_grad<C>(x); }
};
struct GeluErfGrad {
  template <class C> __device__ C operator()(C g, C x) const { return g * dm::gelu_erf_grad<C>(x); }
};
struct SigmoidGrad {
  template <class C> __device__ C operator()(C g, C y) const { return g * y * (C(1) - y); }
};
struct TanhGrad {
  template <class C> __device__ C operator()(C g, C y) const { return g * (C(1) - mul_rn(y, y)); }
};

// --- launch machinery ---------------------------------------------------------------------------

// The inputs' strides over the merged dims, innermost first (the output is contiguous).
struct Layout {
  int nd = 0;
  uint32_t size[engine::kMaxDims] = {};
  int64_t a[engine::kMaxDims] = {};
  int64_t b[engine::kMaxDims] = {};
};

template <class T, class Op, int K>
__global__ void __launch_bounds__(kThreads) flat_kernel(T* out, const T* a, const T* b, int64_t n, Op op) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    if constexpr (K == 1) store(out, i, op(load(a, i)));
    else store(out, i, op(load(a, i), load(b, i)));
  }
}

template <class T, class Op, int K>
__global__ void __launch_bounds__(kThreads) strided_kernel(T* out, const T* a, const T* b, Layout l,
                                                           uint32_t n, Op op) {
  const uint32_t step = gridDim.x * blockDim.x;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
    uint32_t rest = i;
    int64_t oa = 0, ob = 0;
    for (int d = 0; d < l.nd; ++d) {
      const uint32_t q = rest / l.size[d];
      const int64_t r = int64_t(rest - q * l.size[d]);
      oa += r * l.a[d];
      if constexpr (K == 2) ob += r * l.b[d];
      rest = q;
    }
    if constexpr (K == 1) store(out, i, op(load(a, oa)));
    else store(out, i, op(load(a, oa), load(b, ob)));
  }
}

cudaStream_t cu_stream() { return static_cast<cudaStream_t>(stream()); }

unsigned grid_for(int64_t n) {
  return unsigned(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

void check_on_device(const Tensor& t, const char* op, const char* arg) {
  engine::check_defined(t, op, arg);
  ENGINE_CHECK(t.device() == device(), op, ": '", arg, "' ", t.describe(), " is not on ", device());
}

// Calls f(T{}) with T the kernel's storage type; the CPU op's error for other dtypes.
template <class F>
void visit_elementwise(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::bf16: return f(Bf16{});
    default: ENGINE_FAIL(op, ": expected dtype f32, f64 or bf16, got ", engine::dtype_name(t));
  }
}

// out (contiguous, of the broadcast shape) = op(a[, b]); a and b already expanded to out's shape.
template <class T, int K, class Op>
void run(Tensor& out, const Tensor& a_in, const Tensor& b_in, Op op) {
  const int64_t n = out.numel();
  if (n == 0) return;
  Tensor a = a_in, b = b_in;
  const bool flat = a.is_contiguous() && (K == 1 || b.is_contiguous());
  // Past 2^32 elements the strided kernel's 32-bit index would wrap: gather the inputs first.
  if (!flat && n > int64_t(UINT32_MAX)) {
    a = a.contiguous();
    if (K == 2) b = b.contiguous();
  }
  T* o = static_cast<T*>(out.raw_data());
  const T* pa = static_cast<const T*>(a.raw_data());
  const T* pb = K == 2 ? static_cast<const T*>(b.raw_data()) : nullptr;
  if (a.is_contiguous() && (K == 1 || b.is_contiguous())) {
    LAUNCH((flat_kernel<T, Op, K>), grid_for(n), kThreads, 0, cu_stream())(o, pa, pb, n, op);
    CHECK_LAUNCH("elementwise flat_kernel");
    return;
  }
  const engine::StridedLayout<3> m = engine::merge_dims<3>(
      out.shape(), {out.strides(), a.strides(), K == 2 ? b.strides() : a.strides()});
  Layout l;
  l.nd = m.shape.size();
  for (int d = 0; d < l.nd; ++d) {
    const int k = l.nd - 1 - d;
    l.size[d] = uint32_t(m.shape[k]);
    l.a[d] = m.strides[1][k];
    l.b[d] = m.strides[2][k];
  }
  LAUNCH((strided_kernel<T, Op, K>), grid_for(n), kThreads, 0, cu_stream())(o, pa, pb, l, uint32_t(n), op);
  CHECK_LAUNCH("elementwise strided_kernel");
}

template <class Op>
Tensor unary(const Tensor& x, const char* name, Op op) {
  check_on_device(x, name, "x");
  Tensor out;
  visit_elementwise(x.dtype(), name, [&](auto z) {
    out = Tensor::empty(x.shape(), x.dtype(), x.device());
    run<decltype(z), 1>(out, x, Tensor(), op);
  });
  return out;
}

template <class Op>
Tensor binary(const Tensor& a, const Tensor& b, const char* name, Op op) {
  check_on_device(a, name, "a");
  check_on_device(b, name, "b");
  engine::check_same_dtype(a, b, name);
  const Shape shape = engine::broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out;
  visit_elementwise(a.dtype(), name, [&](auto z) {
    out = Tensor::empty(shape, a.dtype(), a.device());
    run<decltype(z), 2>(out, a.expand(shape), b.expand(shape), op);
  });
  return out;
}

// --- sum_to_shape -------------------------------------------------------------------------------

// Dims of one kind (kept or reduced), innermost first.
struct Dims {
  int nd = 0;
  int64_t size[engine::kMaxDims] = {};
  int64_t stride[engine::kMaxDims] = {};
};

// Element offset of index i over dims d (the outermost dim takes the quotient: no division for
// a single dim).
__device__ __forceinline__ int64_t offset_of(const Dims& d, int64_t i) {
  int64_t off = 0;
  for (int k = 0; k + 1 < d.nd; ++k) {
    const int64_t q = i / d.size[k];
    off += (i - q * d.size[k]) * d.stride[k];
    i = q;
  }
  return d.nd > 0 ? off + i * d.stride[d.nd - 1] : off;
}

// Stage 1: task t is (output element i, part p); it sums reduced elements p, p + P, ... in f64.
// With P == 1 it writes the output itself, else part[p * nout + i].
template <class T>
__global__ void __launch_bounds__(kThreads)
    sum_parts_kernel(const T* g, Dims kept, Dims red, int64_t nout, int64_t nred, int64_t P,
                     bool p_fastest, T* out, double* part) {
  const int64_t tasks = nout * P;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < tasks; t += step) {
    const int64_t i = p_fastest ? t / P : t % nout;
    const int64_t p = p_fastest ? t - i * P : t / nout;
    const int64_t base = offset_of(kept, i);
    double acc = 0.0;
    for (int64_t j = p; j < nred; j += P) acc += double(load(g, base + offset_of(red, j)));
    if (P == 1) store(out, i, compute_t<T>(acc));
    else part[p * nout + i] = acc;
  }
}

// Stage 2: out[i] = Σ_p part[p * nout + i], p in order.
template <class T>
__global__ void __launch_bounds__(kThreads)
    sum_final_kernel(const double* part, int64_t nout, int64_t P, T* out) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < nout; i += step) {
    double acc = 0.0;
    for (int64_t p = 0; p < P; ++p) acc += part[p * nout + i];
    store(out, i, compute_t<T>(acc));
  }
}

constexpr int64_t kSumTasks = 1 << 16;  // stage-1 threads to aim for (fills an H100 twice over)
constexpr int64_t kMaxParts = 1024;

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary(a, b, "add", Add{}); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary(a, b, "sub", Sub{}); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(a, b, "mul", Mul{}); }
Tensor div(const Tensor& a, const Tensor& b) { return binary(a, b, "div", Div{}); }
Tensor add_scalar(const Tensor& x, double s) { return unary(x, "add_scalar", AddScalar{s}); }
Tensor mul_scalar(const Tensor& x, double s) { return unary(x, "mul_scalar", MulScalar{s}); }
Tensor pow_scalar(const Tensor& x, double p) {
  // The CPU op's shortcuts, so the common powers give its exact results.
  if (p == 1.0) return unary(x, "pow_scalar", MulScalar{1.0});
  if (p == 2.0) return unary(x, "pow_scalar", Square{});
  if (p == 0.5) return unary(x, "pow_scalar", Sqrt{});
  if (p == -0.5) return unary(x, "pow_scalar", Rsqrt{});
  return unary(x, "pow_scalar", PowScalar{p});
}
Tensor neg(const Tensor& x) { return unary(x, "neg", Neg{}); }
Tensor exp(const Tensor& x) { return unary(x, "exp", Exp{}); }
Tensor log(const Tensor& x) { return unary(x, "log", Log{}); }
Tensor tanh(const Tensor& x) { return unary(x, "tanh", Tanh{}); }
Tensor sqrt(const Tensor& x) { return unary(x, "sqrt", Sqrt{}); }
Tensor rsqrt(const Tensor& x) { return unary(x, "rsqrt", Rsqrt{}); }
Tensor relu(const Tensor& x) { return unary(x, "relu", Relu{}); }
Tensor sigmoid(const Tensor& x) { return unary(x, "sigmoid", Sigmoid{}); }
Tensor gelu_tanh(const Tensor& x) { return unary(x, "gelu_tanh", GeluTanh{}); }
Tensor gelu_erf(const Tensor& x) { return unary(x, "gelu_erf", GeluErf{}); }
Tensor square(const Tensor& x) { return unary(x, "square", Square{}); }
Tensor abs(const Tensor& x) { return unary(x, "abs", Abs{}); }

Tensor relu_backward(const Tensor& g, const Tensor& x) {
  return binary(g, x, "relu_backward", ReluGrad{});
}
Tensor gelu_tanh_backward(const Tensor& g, const Tensor& x) {
  return binary(g, x, "gelu_tanh_backward", GeluTanhGrad{});
}
Tensor gelu_erf_backward(const Tensor& g, const Tensor& x) {
  return binary(g, x, "gelu_erf_backward", GeluErfGrad{});
}
Tensor sigmoid_backward(const Tensor& g, const Tensor& y) {
  return binary(g, y, "sigmoid_backward", SigmoidGrad{});
}
Tensor tanh_backward(const Tensor& g, const Tensor& y) {
  return binary(g, y, "tanh_backward", TanhGrad{});
}

Tensor sum_to_shape(const Tensor& g, const Shape& shape) {
  check_on_device(g, "sum_to_shape", "g");
  ENGINE_CHECK(shape.size() <= g.dim() &&
                   engine::broadcast_shapes(shape, g.shape(), "sum_to_shape") == g.shape(),
               "sum_to_shape: cannot reduce ", g.describe(), " to shape ", shape,
               " (the shape must broadcast to the tensor's shape)");
  if (g.shape() == shape) return g;
  Tensor out;
  visit_elementwise(g.dtype(), "sum_to_shape", [&](auto z) {
    using T = decltype(z);
    out = Tensor::empty(shape, g.dtype(), g.device());
    const int64_t nout = out.numel();
    if (nout == 0) return;
    // g's dims split into kept and reduced ones (size-1 dims dropped, neighbours of one kind
    // merged where g's strides allow), innermost first.
    const int lead = g.dim() - shape.size();
    Dims kept, red;
    bool inner_reduced = false, seen_inner = false;
    int last_kind = -1;  // kind of the previously visited (inner) dim
    for (int d = g.dim() - 1; d >= 0; --d) {
      if (g.size(d) == 1) continue;
      const bool r = d < lead || shape[d - lead] == 1;
      if (!seen_inner) inner_reduced = r, seen_inner = true;
      Dims& D = r ? red : kept;
      if (last_kind == int(r) && g.stride(d) == D.stride[D.nd - 1] * D.size[D.nd - 1]) {
        D.size[D.nd - 1] *= g.size(d);
      } else {
        D.size[D.nd] = g.size(d);
        D.stride[D.nd] = g.stride(d);
        ++D.nd;
      }
      last_kind = int(r);
    }
    int64_t nred = 1;
    for (int k = 0; k < red.nd; ++k) nred *= red.size[k];
    T* o = static_cast<T*>(out.raw_data());
    if (nred == 0) {  // nothing to add: zeros, as the CPU's sum over an empty axis
      out.zero_();
      return;
    }
    // The partition depends on the sizes only: the same bits on every run and every GPU.
    int64_t P = std::max<int64_t>((kSumTasks + nout - 1) / nout, inner_reduced ? 32 : 1);
    P = std::min({P, nred, kMaxParts});
    Tensor part;
    if (P > 1) part = Tensor::empty({P, nout}, DType::f64, g.device());
    double* pp = P > 1 ? part.data<double>() : nullptr;
    LAUNCH((sum_parts_kernel<T>), grid_for(nout * P), kThreads, 0, cu_stream())(
        static_cast<const T*>(g.raw_data()), kept, red, nout, nred, P, inner_reduced, o, pp);
    CHECK_LAUNCH("sum_parts_kernel");
    if (P > 1) {
      LAUNCH((sum_final_kernel<T>), grid_for(nout), kThreads, 0, cu_stream())(pp, nout, P, o);
      CHECK_LAUNCH("sum_final_kernel");
    }
  });
  return out;
}

}  // namespace kernels::cuda
