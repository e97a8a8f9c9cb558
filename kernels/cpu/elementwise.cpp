// CPU elementwise kernels. Each op is a small functor applied by one of two drivers (unary,
// binary). Contiguous same-shape operands run one flat loop that the compiler vectorises;
// anything else (broadcasting, strided views) runs row by row over the merged strided layout.
// Both are split over OpenMP threads above kParallelMin elements.
#include "kernels/elementwise.h"

#include <omp.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "engine/strided.h"
#include "kernels/reduce.h"

namespace kernels::cpu {
namespace {

constexpr int64_t kParallelMin = 1 << 16;  // below this, starting threads costs more than it saves
constexpr int64_t kRowPiece = 1 << 12;     // long rows are split so few rows still spread out

// bf16 is stored, never computed with: it loads as f32 and rounds back on store.
template <class T> struct ComputeType { using type = T; };
template <> struct ComputeType<bf16> { using type = float; };
template <class T> using compute_t = typename ComputeType<T>::type;

// Result -> storage type. For bf16 this is bf16::from_float (round to nearest even, NaN kept
// quiet) written without a branch, so that bf16 loops vectorise too.
template <class T>
inline T store(compute_t<T> v) {
  if constexpr (std::is_same_v<T, bf16>) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t nan = -uint32_t((u & 0x7fffffffu) > 0x7f800000u);
    bf16 b;
    b.bits = uint16_t((rounded & ~nan) | (((u >> 16) | 0x40u) & nan));
    return b;
  } else {
    return v;
  }
}

template <class F>
void visit_elementwise(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::bf16: return f(bf16{});
    default: ENGINE_FAIL(op, ": expected dtype f32, f64 or bf16, got ", engine::dtype_name(t));
  }
}

// True when some operand is laid out across the rows rather than along them (a transposed
// view): walking whole rows would then touch a new cache line (and page) per element.
template <int K>
bool rows_cross_memory(const engine::StridedLayout<K>& L) {
  const int nd = L.shape.size();
  if (nd < 2) return false;
  for (int k = 0; k < K; ++k) {
    const int64_t in = std::abs(L.strides[k][nd - 1]), across = std::abs(L.strides[k][nd - 2]);
    if (in > 1 && across != 0 && across < in) return true;
  }
  return false;
}

// The last two dims walked in kTileRows x kTileCols tiles, so that the cache lines a tile
// reads across rows are reused by the neighbouring rows before they are evicted.
template <int K, class F>
void tiled_rows(const engine::StridedLayout<K>& L, F&& f) {
  constexpr int64_t kTileRows = 128, kTileCols = 8;
  const int nd = L.shape.size();
  const int64_t n = L.shape[nd - 1], rows = L.shape[nd - 2];
  const int64_t planes = L.shape.numel() / (n * rows);
  const int64_t row_blocks = (rows + kTileRows - 1) / kTileRows;
  std::array<int64_t, K> inner, across;
  for (int k = 0; k < K; ++k) {
    inner[k] = L.strides[k][nd - 1];
    across[k] = L.strides[k][nd - 2];
  }
#pragma omp parallel for if (L.shape.numel() >= kParallelMin) schedule(static)
  for (int64_t t = 0; t < planes * row_blocks; ++t) {
    int64_t plane = t / row_blocks;
    const int64_t r0 = (t % row_blocks) * kTileRows, r1 = std::min(rows, r0 + kTileRows);
    std::array<int64_t, K> base{};
    for (int d = nd - 3; d >= 0; --d) {
      const int64_t i = plane % L.shape[d];
      plane /= L.shape[d];
      for (int k = 0; k < K; ++k) base[k] += i * L.strides[k][d];
    }
    for (int64_t c0 = 0; c0 < n; c0 += kTileCols) {
      const int64_t len = std::min(kTileCols, n - c0);
      for (int64_t r = r0; r < r1; ++r) {
        std::array<int64_t, K> off;
        for (int k = 0; k < K; ++k) off[k] = base[k] + r * across[k] + c0 * inner[k];
        f(off.data(), len, inner.data());
      }
    }
  }
}

// Like engine::for_each_row, but the rows (and pieces of long rows) are shared out among
// threads when the tensor is large, and transposed layouts are walked in tiles. f(off, n,
// inner) gets each operand's offset of the piece, its length and each operand's stride along it.
template <int K, class F>
void parallel_rows(const Shape& shape, const std::array<Shape, K>& strides, F&& f) {
  const int64_t total = shape.numel();
  if (total == 0) return;
  const engine::StridedLayout<K> L = engine::merge_dims<K>(shape, strides);
  if (rows_cross_memory(L)) {
    tiled_rows(L, f);
    return;
  }
  if (total < kParallelMin || omp_get_max_threads() == 1) {
    engine::for_each_row<K>(shape, strides, f);
    return;
  }
  const int nd = L.shape.size();
  const int64_t n = L.shape[nd - 1];
  const int64_t piece = std::min(n, kRowPiece);
  const int64_t pieces = (n + piece - 1) / piece;
  const int64_t tasks = (total / n) * pieces;
  std::array<int64_t, K> inner;
  for (int k = 0; k < K; ++k) inner[k] = L.strides[k][nd - 1];
#pragma omp parallel
  {
    const int nt = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t t0 = tasks * me / nt, t1 = tasks * (me + 1) / nt;
    if (t0 < t1) {
      // Position of task t0: its row's multi-index over the outer dims, then an odometer.
      int64_t row = t0 / pieces, p = t0 % pieces;
      std::array<int64_t, engine::kMaxDims> idx{};
      std::array<int64_t, K> off{};
      for (int d = nd - 2; d >= 0; --d) {
        idx[d] = row % L.shape[d];
        row /= L.shape[d];
        for (int k = 0; k < K; ++k) off[k] += idx[d] * L.strides[k][d];
      }
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t start = p * piece, len = std::min(piece, n - start);
        std::array<int64_t, K> po;
        for (int k = 0; k < K; ++k) po[k] = off[k] + start * inner[k];
        f(po.data(), len, inner.data());
        if (++p == pieces) {
          p = 0;
          for (int d = nd - 2; d >= 0; --d) {
            ++idx[d];
            for (int k = 0; k < K; ++k) off[k] += L.strides[k][d];
            if (idx[d] < L.shape[d]) break;
            for (int k = 0; k < K; ++k) off[k] -= L.strides[k][d] * L.shape[d];
            idx[d] = 0;
          }
        }
      }
    }
  }
}

template <class Op>
Tensor unary(const Tensor& x, const char* name, Op op) {
  engine::check_defined(x, name, "x");
  engine::check_cpu(x, name);
  Tensor out;
  visit_elementwise(x.dtype(), name, [&](auto z) {
    using T = decltype(z);
    using C = compute_t<T>;
    out = Tensor::empty(x.shape(), x.dtype());
    if (x.numel() == 0) return;
    T* o = out.data<T>();
    const T* a = x.data<T>();
    if (x.is_contiguous()) {
      const int64_t n = x.numel();
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
      for (int64_t i = 0; i < n; ++i) o[i] = store<T>(op(C(a[i])));
      return;
    }
    parallel_rows<2>(x.shape(), {out.strides(), x.strides()},
                     [&](const int64_t* off, int64_t n, const int64_t* in) {
                       T* po = o + off[0];
                       const T* pa = a + off[1];
                       const int64_t so = in[0], sa = in[1];
                       for (int64_t i = 0; i < n; ++i) po[i * so] = store<T>(op(C(pa[i * sa])));
                     });
  });
  return out;
}

template <class Op>
Tensor binary(const Tensor& a, const Tensor& b, const char* name, Op op) {
  engine::check_defined(a, name, "a");
  engine::check_defined(b, name, "b");
  engine::check_cpu(a, name);
  engine::check_cpu(b, name);
  engine::check_same_dtype(a, b, name);
  const Shape shape = engine::broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out;
  visit_elementwise(a.dtype(), name, [&](auto z) {
    using T = decltype(z);
    using C = compute_t<T>;
    out = Tensor::empty(shape, a.dtype());
    if (out.numel() == 0) return;
    T* o = out.data<T>();
    if (a.shape() == b.shape() && a.is_contiguous() && b.is_contiguous()) {
      const T* pa = a.data<T>();
      const T* pb = b.data<T>();
      const int64_t n = out.numel();
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
      for (int64_t i = 0; i < n; ++i) o[i] = store<T>(op(C(pa[i]), C(pb[i])));
      return;
    }
    const Tensor ae = a.expand(shape), be = b.expand(shape);
    const T* pa0 = ae.data<T>();
    const T* pb0 = be.data<T>();
    parallel_rows<3>(shape, {out.strides(), ae.strides(), be.strides()},
                     [&](const int64_t* off, int64_t n, const int64_t* in) {
                       T* po = o + off[0];
                       const T* pa = pa0 + off[1];
                       const T* pb = pb0 + off[2];
                       const int64_t so = in[0], sa = in[1], sb = in[2];
                       // The broadcasting shapes that matter (a bias row, a per-row scale) give
                       // unit or zero inner strides: give those their own vectorised loops.
                       if (so == 1 && sa == 1 && sb == 1) {
#pragma omp simd
                         for (int64_t i = 0; i < n; ++i) po[i] = store<T>(op(C(pa[i]), C(pb[i])));
                       } else if (so == 1 && sa == 1 && sb == 0) {
                         const C vb = C(pb[0]);
#pragma omp simd
                         for (int64_t i = 0; i < n; ++i) po[i] = store<T>(op(C(pa[i]), vb));
                       } else if (so == 1 && sa == 0 && sb == 1) {
                         const C va = C(pa[0]);
#pragma omp simd
                         for (int64_t i = 0; i < n; ++i) po[i] = store<T>(op(va, C(pb[i])));
                       } else {
                         for (int64_t i = 0; i < n; ++i)
                           po[i * so] = store<T>(op(C(pa[i * sa]), C(pb[i * sb])));
                       }
                     });
  });
  return out;
}

// --- the formulas -------------------------------------------------------------------------
struct Add { template <class C> C operator()(C a, C b) const { return a + b; } };
struct Sub { template <class C> C operator()(C a, C b) const { return a - b; } };
struct Mul { template <class C> C operator()(C a, C b) const { return a * b; } };
struct Div { template <class C> C operator()(C a, C b) const { return a / b; } };

struct Neg { template <class C> C operator()(C x) const { return -x; } };
struct Exp { template <class C> C operator()(C x) const { return math::exp<C>(x); } };
struct Log { template <class C> C operator()(C x) const { return std::log(x); } };
struct Tanh { template <class C> C operator()(C x) const { return math::tanh<C>(x); } };
struct Sqrt { template <class C> C operator()(C x) const { return std::sqrt(x); } };
struct Rsqrt { template <class C> C operator()(C x) const { return C(1) / std::sqrt(x); } };
// Written as a select of plain values so it vectorises; NaN < 0 is false, so NaN passes.
struct Relu { template <class C> C operator()(C x) const { return x < C(0) ? C(0) : x; } };
struct Sigmoid {
  template <class C> C operator()(C x) const { return C(1) / (C(1) + math::exp<C>(-x)); }
};
struct GeluTanh { template <class C> C operator()(C x) const { return math::gelu_tanh<C>(x); } };
struct GeluErf { template <class C> C operator()(C x) const { return math::gelu_erf<C>(x); } };
struct Square { template <class C> C operator()(C x) const { return x * x; } };
struct Abs { template <class C> C operator()(C x) const { return std::abs(x); } };

struct AddScalar {
  double s;
  template <class C> C operator()(C x) const { return x + C(s); }
};
struct MulScalar {
  double s;
  template <class C> C operator()(C x) const { return x * C(s); }
};
struct PowScalar {
  double p;
  template <class C> C operator()(C x) const { return std::pow(x, C(p)); }
};

// Backward formulas take (g, x) or (g, y).
struct ReluGrad {
  template <class C> C operator()(C g, C x) const { return x > C(0) ? g : C(0); }
};
struct GeluTanhGrad {
  template <class C> C operator()(C g, C x) const { return g * math::gelu_tanh_grad<C>(x); }
};
struct GeluErfGrad {
  template <class C> C operator()(C g, C x) const { return g * math::gelu_erf_grad<C>(x); }
};
struct SigmoidGrad {
  template <class C> C operator()(C g, C y) const { return g * y * (C(1) - y); }
};
struct TanhGrad {
  template <class C> C operator()(C g, C y) const { return g * (C(1) - y * y); }
};

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary(a, b, "add", Add{}); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary(a, b, "sub", Sub{}); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(a, b, "mul", Mul{}); }
Tensor div(const Tensor& a, const Tensor& b) { return binary(a, b, "div", Div{}); }
Tensor add_scalar(const Tensor& x, double s) { return unary(x, "add_scalar", AddScalar{s}); }
Tensor mul_scalar(const Tensor& x, double s) { return unary(x, "mul_scalar", MulScalar{s}); }
Tensor pow_scalar(const Tensor& x, double p) {
  // The common powers skip std::pow (slow, and not vectorised).
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
  engine::check_defined(g, "sum_to_shape", "g");
  engine::check_cpu(g, "sum_to_shape");
  ENGINE_CHECK(shape.size() <= g.dim() &&
                   engine::broadcast_shapes(shape, g.shape(), "sum_to_shape") == g.shape(),
               "sum_to_shape: cannot reduce ", g.describe(), " to shape ", shape,
               " (the shape must broadcast to the tensor's shape)");
  if (g.shape() == shape) return g;
  // Dims of g where the target is 1 (or missing) are summed. Neighbouring dims of the same kind
  // merge, so the usual cases ([N, C] -> [C], [B, T, C] -> [B, 1, C]) are one axis reduction of
  // a contiguous view, done by the fast reduce kernel.
  const int lead = g.dim() - shape.size();
  std::vector<int64_t> dims;
  std::vector<bool> reduced;
  for (int d = 0; d < g.dim(); ++d) {
    if (g.size(d) == 1) continue;
    const bool r = d < lead || shape[d - lead] == 1;
    if (!dims.empty() && reduced.back() == r) {
      dims.back() *= g.size(d);
    } else {
      dims.push_back(g.size(d));
      reduced.push_back(r);
    }
  }
  Tensor t = g.contiguous().view(Shape(dims));
  for (int i = int(dims.size()) - 1; i >= 0; --i)
    if (reduced[i]) t = cpu::sum(t, i, /*keepdim=*/true);
  return t.view(shape);
}

}  // namespace kernels::cpu
