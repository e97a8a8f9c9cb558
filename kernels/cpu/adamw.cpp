#include "kernels/adamw.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace kernels::cpu {
namespace {

// Below this many elements one thread is faster than waking the team.
constexpr int64_t kParallelMin = int64_t(1) << 15;

// The checks both optimizers share: `t` is a CPU 1-D buffer matching `params`.
void check_buffer(const Tensor& t, const Tensor& params, const char* op, const char* name) {
  engine::check_defined(t, op, name);
  engine::check_cpu(t, op);
  ENGINE_CHECK(t.dim() == 1, op, ": '", name, "' must be a 1-D buffer, got ", t.describe());
  ENGINE_CHECK(t.shape() == params.shape(), op, ": '", name, "' ", t.describe(),
               " does not match 'params' ", params.describe());
  ENGINE_CHECK(t.dtype() == params.dtype(), op, ": '", name, "' ", t.describe(),
               " has a different dtype from 'params' ", params.describe());
}

// The mask in the params' dtype, or undefined. Any dtype is accepted; a mismatching one costs a
// conversion per step, so callers keep it in the params' dtype.
Tensor prepare_mask(const Tensor& mask, const Tensor& params, const char* op) {
  if (!mask.defined()) return mask;
  engine::check_cpu(mask, op);
  ENGINE_CHECK(mask.dim() == 1 && mask.shape() == params.shape(), op, ": 'decay_mask' ",
               mask.describe(), " does not match 'params' ", params.describe());
  return mask.dtype() == params.dtype() ? mask : mask.to(params.dtype());
}

// Bounding byte range [lo, hi) of a 1-D view (empty when it has no elements). Conservative:
// interleaved strided views of one buffer count as overlapping.
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

// A buffer that is written must not overlap any other operand: the fused loop reads and writes
// each element once, so aliasing would silently mix the roles.
struct Operand {
  const Tensor* t;
  const char* name;
  bool written;
};
void check_no_overlap(const char* op, std::initializer_list<Operand> ops) {
  for (auto a = ops.begin(); a != ops.end(); ++a)
    for (auto b = a + 1; b != ops.end(); ++b) {
      if (!a->written && !b->written) continue;
      Extent x = extent(*a->t), y = extent(*b->t);
      ENGINE_CHECK(x.lo == x.hi || y.lo == y.hi || x.hi <= y.lo || y.hi <= x.lo, op, ": '",
                   a->name, "' and '", b->name, "' overlap in memory; each buffer must be distinct");
    }
}

template <class T>
struct AdamCoeffs {
  T lr_wd, b1, one_minus_b1, b2, one_minus_b2, step_size, inv_sqrt_bc2, eps, grad_scale;
};

// One pass over memory, in blocks that stay in L1 between the three loops below: each element of
// p, g, m, v crosses the memory bus once each way. kContig makes all strides the constant 1 so the loops vectorise; otherwise the element
// strides st[] are used.
//
// The square roots get a loop of their own: unless the build passes -fno-math-errno, GCC keeps a
// branch to the errno-setting libm sqrt beside each one, and that branch stops the whole loop
// from vectorising (measured: 3x slower on large buffers, 7x in cache). Isolated, the sqrt loop
// uses the AVX instruction directly where available (no errno, v >= 0 anyway) and otherwise
// stays a plain loop, which -fno-math-errno vectorises.
constexpr int64_t kBlock = 512;

template <class T>
void sqrt_inplace(T* x, int64_t n) {
  int64_t j = 0;
#if defined(__AVX__)
  if constexpr (std::is_same_v<T, float>)
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(x + j, _mm256_sqrt_ps(_mm256_loadu_ps(x + j)));
  else
    for (; j + 4 <= n; j += 4) _mm256_storeu_pd(x + j, _mm256_sqrt_pd(_mm256_loadu_pd(x + j)));
#endif
  for (; j < n; ++j) x[j] = std::sqrt(x[j]);
}

template <class T, bool kMask, bool kContig>
void adamw_block(int64_t b0, int64_t len, T* p, const T* g, T* m, T* v, const T* mask,
                 const int64_t* st, const AdamCoeffs<T>& c) {
  const int64_t sp = kContig ? 1 : st[0], sg = kContig ? 1 : st[1], sm = kContig ? 1 : st[2],
                sv = kContig ? 1 : st[3], sk = kContig ? 1 : st[4];
  T denom[kBlock];
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    const int64_t i = b0 + j;
    const T gi = c.grad_scale * g[i * sg];
    const T mi = c.b1 * m[i * sm] + c.one_minus_b1 * gi;
    const T vi = c.b2 * v[i * sv] + c.one_minus_b2 * gi * gi;
    m[i * sm] = mi;
    v[i * sv] = vi;
    denom[j] = vi;
  }
  sqrt_inplace(denom, len);
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    const int64_t i = b0 + j;
    T pi = p[i * sp];
    if constexpr (kMask)
      pi -= c.lr_wd * mask[i * sk] * pi;
    else
      pi -= c.lr_wd * pi;
    p[i * sp] = pi - c.step_size * m[i * sm] / (denom[j] * c.inv_sqrt_bc2 + c.eps);
  }
}

template <class T, bool kMask, bool kContig>
void adamw_loop(int64_t n, T* p, const T* g, T* m, T* v, const T* mask, const int64_t* st,
                const AdamCoeffs<T>& c) {
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for if (n >= kParallelMin) schedule(static)
  for (int64_t b = 0; b < nblocks; ++b)
    adamw_block<T, kMask, kContig>(b * kBlock, std::min(kBlock, n - b * kBlock), p, g, m, v, mask,
                                   st, c);
}

template <class T>
struct SgdCoeffs {
  T lr, momentum, wd, grad_scale, g_in_update, buf_in_update;
};

template <class T, bool kMask, bool kBuf, bool kContig>
void sgd_loop(int64_t n, T* p, const T* g, T* b, const T* mask, const int64_t* st, SgdCoeffs<T> c) {
  const int64_t sp = kContig ? 1 : st[0], sg = kContig ? 1 : st[1], sb = kContig ? 1 : st[2],
                sk = kContig ? 1 : st[3];
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T pi = p[i * sp];
    T gi = c.grad_scale * g[i * sg];
    if constexpr (kMask)
      gi += c.wd * mask[i * sk] * pi;
    else
      gi += c.wd * pi;
    T d = gi;
    if constexpr (kBuf) {
      const T bi = c.momentum * b[i * sb] + gi;
      b[i * sb] = bi;
      // nesterov: g + momentum * buf; plain: buf. Written branch-free for vectorisation.
      d = c.g_in_update * gi + c.buf_in_update * bi;
    }
    p[i * sp] = pi - c.lr * d;
  }
}

bool all_unit_stride(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->defined() && t->numel() > 1 && t->stride(0) != 1) return false;
  return true;
}

int64_t stride_of(const Tensor& t) { return t.defined() ? t.stride(0) : 0; }

}  // namespace

void adamw_step(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                const Tensor& decay_mask, const AdamWParams& hp) {
  const char* op = "adamw_step";
  engine::check_defined(params, op, "params");
  engine::check_cpu(params, op);
  ENGINE_CHECK(params.dim() == 1, op, ": 'params' must be a 1-D buffer, got ", params.describe());
  check_buffer(grads, params, op, "grads");
  check_buffer(m, params, op, "m");
  check_buffer(v, params, op, "v");
  // The ranges torch.optim.AdamW accepts; NaN fails every one of them.
  ENGINE_CHECK(hp.lr >= 0 && std::isfinite(hp.lr), op, ": lr must be finite and >= 0, got ", hp.lr);
  ENGINE_CHECK(hp.beta1 >= 0 && hp.beta1 < 1, op, ": beta1 must be in [0, 1), got ", hp.beta1);
  ENGINE_CHECK(hp.beta2 >= 0 && hp.beta2 < 1, op, ": beta2 must be in [0, 1), got ", hp.beta2);
  ENGINE_CHECK(hp.eps >= 0 && std::isfinite(hp.eps), op, ": eps must be finite and >= 0, got ", hp.eps);
  ENGINE_CHECK(hp.weight_decay >= 0 && std::isfinite(hp.weight_decay), op,
               ": weight_decay must be finite and >= 0, got ", hp.weight_decay);
  ENGINE_CHECK(hp.step >= 1, op, ": step must be >= 1 (1-based, for the bias correction), got ",
               hp.step);
  Tensor mask = prepare_mask(decay_mask, params, op);
  check_no_overlap(op, {{&params, "params", true},
                        {&grads, "grads", false},
                        {&m, "m", true},
                        {&v, "v", true},
                        {&mask, "decay_mask", false}});

  const double bc1 = 1.0 - std::pow(hp.beta1, double(hp.step));
  const double bc2 = 1.0 - std::pow(hp.beta2, double(hp.step));
  const int64_t n = params.numel();
  const bool contig = all_unit_stride({&params, &grads, &m, &v, &mask});
  const int64_t st[5] = {params.stride(0), grads.stride(0), m.stride(0), v.stride(0), stride_of(mask)};
  engine::visit_float(params.dtype(), op, [&](auto z) {
    using T = decltype(z);
    AdamCoeffs<T> c{T(hp.lr * hp.weight_decay), T(hp.beta1),        T(1.0 - hp.beta1),
                    T(hp.beta2),                T(1.0 - hp.beta2),   T(hp.lr / bc1),
                    T(1.0 / std::sqrt(bc2)),    T(hp.eps),           T(hp.grad_scale)};
    T* p = params.data<T>();
    const T* g = grads.data<T>();
    T* mp = m.data<T>();
    T* vp = v.data<T>();
    const T* k = mask.defined() ? mask.data<T>() : nullptr;
    if (k && contig) adamw_loop<T, true, true>(n, p, g, mp, vp, k, st, c);
    else if (k) adamw_loop<T, true, false>(n, p, g, mp, vp, k, st, c);
    else if (contig) adamw_loop<T, false, true>(n, p, g, mp, vp, k, st, c);
    else adamw_loop<T, false, false>(n, p, g, mp, vp, k, st, c);
  });
}

void sgd_momentum_step(const Tensor& params, const Tensor& grads, const Tensor& buf,
                       const Tensor& decay_mask, double lr, double momentum, double weight_decay,
                       bool nesterov, double grad_scale) {
  const char* op = "sgd_momentum_step";
  engine::check_defined(params, op, "params");
  engine::check_cpu(params, op);
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
  Tensor mask = prepare_mask(decay_mask, params, op);
  check_no_overlap(op, {{&params, "params", true},
                        {&grads, "grads", false},
                        {&buf, "buf", momentum != 0},
                        {&mask, "decay_mask", false}});

  const int64_t n = params.numel();
  const bool contig = all_unit_stride({&params, &grads, &buf, &mask});
  const int64_t st[4] = {params.stride(0), grads.stride(0), stride_of(buf), stride_of(mask)};
  engine::visit_float(params.dtype(), op, [&](auto z) {
    using T = decltype(z);
    SgdCoeffs<T> c{T(lr), T(momentum), T(weight_decay), T(grad_scale), T(nesterov ? 1 : 0),
                   T(nesterov ? momentum : 1)};
    T* p = params.data<T>();
    const T* g = grads.data<T>();
    // With momentum 0 the buffer plays no role and is left untouched.
    T* b = buf.defined() && momentum != 0 ? buf.data<T>() : nullptr;
    const T* k = mask.defined() ? mask.data<T>() : nullptr;
    // 2 x 2 x 2 variants, each a branch-free loop.
    auto run = [&]<bool kMask, bool kBuf>() {
      if (contig) sgd_loop<T, kMask, kBuf, true>(n, p, g, b, k, st, c);
      else sgd_loop<T, kMask, kBuf, false>(n, p, g, b, k, st, c);
    };
    if (k && b) run.template operator()<true, true>();
    else if (k) run.template operator()<true, false>();
    else if (b) run.template operator()<false, true>();
    else run.template operator()<false, false>();
  });
}

}  // namespace kernels::cpu
