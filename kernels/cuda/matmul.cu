// Dense matrix products on the GPU through cuBLAS (kernels/cuda/blas.h), with the semantics and
// signatures of the CPU ops in kernels/matmul.h: matmul (leading dims of a folded into M when b
// is 2-D, broadcast batches otherwise), matmul_out (alpha, beta, any output layout) and bmm.
//
// Layouts: an operand whose last dim is contiguous (row stride >= its width), or a transposed
// contiguous matrix (strides [1, ld]), goes to cuBLAS as is by choosing the transpose flag; a
// column-major output swaps the operands (Cᵀ = op(B)ᵀ·op(A)ᵀ). Batch dims that merge into one
// stride per operand become one strided-batched call (stride 0 broadcasts); other batch layouts
// loop over the outer dims. Only layouts that cuBLAS cannot describe are copied on the device.
// dtypes: f32 and bf16 (fp32 accumulation, bf16 rounded once, as the CPU op), f64.
// The one kernel here, scale_kernel (k = 0: out = beta · out), is a memory-bound single pass of
// 2 × element size bytes per element; it only runs for empty products.
#include "kernels/matmul.h"

#include "engine/strided.h"
#include "kernels/cuda/blas.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"

namespace kernels::cuda {
namespace {

// How a matrix of r×c with strides (s0, s1) can be handed to cuBLAS without a copy.
struct Layout {
  bool ok = false;
  bool row_major = true;  // element (i, j) at i·ld + j; otherwise at i + j·ld
  int64_t ld = 1;
};

Layout blas_layout(int64_t r, int64_t c, int64_t s0, int64_t s1) {
  // A size-1 dim never moves the pointer, so its stride is free; ld must still cover the row.
  if ((c == 1 || s1 == 1) && (r == 1 || s0 >= std::max<int64_t>(c, 1)))
    return {true, true, r == 1 ? std::max<int64_t>(c, 1) : s0};
  if ((r == 1 || s0 == 1) && (c == 1 || s1 >= std::max<int64_t>(r, 1)))
    return {true, false, c == 1 ? std::max<int64_t>(r, 1) : s1};
  return {};
}

Layout matrix_layout(const Tensor& t) {
  return blas_layout(t.size(-2), t.size(-1), t.stride(-2), t.stride(-1));
}

// t [..., R, C] seen as one [P·R, C] matrix, if its leading dims merge into one row stride.
bool fold_rows(const Tensor& t, Tensor& folded) {
  int64_t rows = 1, expect = -1, row_stride = std::max<int64_t>(t.size(-1), 1);
  bool first = true;
  for (int d = t.dim() - 2; d >= 0; --d) {
    if (t.size(d) == 1) continue;
    if (first) {
      row_stride = t.stride(d);
      first = false;
    } else if (t.stride(d) != expect) {
      return false;
    }
    expect = t.stride(d) * t.size(d);
    rows *= t.size(d);
  }
  folded = Tensor(t.storage(), {rows, t.size(-1)}, {row_stride, t.stride(-1)}, t.offset(), t.dtype());
  return true;
}

// Strides of t's batch dims right-aligned to `batch`; broadcast dims get stride 0.
Shape batch_strides(const Tensor& t, const Shape& batch) {
  Shape s;
  const int nb = t.dim() - 2, off = batch.size() - nb;
  for (int d = 0; d < batch.size(); ++d) {
    const int td = d - off;
    s.push_back(td < 0 || t.size(td) == 1 ? 0 : t.stride(td));
  }
  return s;
}

bool has_broadcast_dim(const Tensor& t) {
  for (int d = 0; d < t.dim(); ++d)
    if (t.size(d) > 1 && t.stride(d) == 0) return true;
  return false;
}

// p[i] = beta · p[i] over a contiguous buffer; beta = 0 writes zeros (NaN ignored, as BLAS).
template <class T>
__global__ void scale_kernel(T* p, int64_t n, double beta) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    if constexpr (sizeof(T) == 2) {  // bf16 bits: scaled in fp32, rounded once
      const float v = beta == 0.0 ? 0.0f : __bfloat162float(__ushort_as_bfloat16(p[i])) * float(beta);
      p[i] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
    } else {
      p[i] = beta == 0.0 ? T(0) : T(p[i] * T(beta));
    }
  }
}

void scale(Tensor& out, double beta) {
  Tensor c = contiguous(out);
  const int64_t n = c.numel();
  const unsigned blocks = unsigned(std::min<int64_t>((n + 255) / 256, 4096));
  cudaStream_t s = static_cast<cudaStream_t>(stream());
  switch (c.dtype()) {
    case DType::f32: LAUNCH((scale_kernel<float>), blocks, 256, 0, s)(c.data<float>(), n, beta); break;
    case DType::f64: LAUNCH((scale_kernel<double>), blocks, 256, 0, s)(c.data<double>(), n, beta); break;
    default:
      LAUNCH((scale_kernel<uint16_t>), blocks, 256, 0, s)(static_cast<uint16_t*>(c.raw_data()), n, beta);
  }
  CHECK_LAUNCH("scale_kernel");
  if (!c.shares_storage(out) || c.offset() != out.offset()) copy_strided(out, c);
}

// out = alpha · op(a)·op(b) + beta · out; shapes and dtypes already checked.
void run(Tensor& out_in, Tensor a, Tensor b, bool ta, bool tb, double alpha, double beta) {
  Tensor out = out_in;
  const int64_t k = ta ? a.size(-2) : a.size(-1);
  if (out.numel() == 0) return;
  if (k == 0) return scale(out, beta);

  // Leading dims of a folded into M: one GEMM instead of one per batch element.
  if (b.dim() == 2 && a.dim() > 2 && !ta) {
    Tensor fa, fo;
    if (fold_rows(a, fa) && fold_rows(out, fo) && matrix_layout(fa).ok && matrix_layout(fo).ok) {
      a = fa;
      out = fo;
    }
  }
  if (!matrix_layout(a).ok) a = contiguous(a);
  if (!matrix_layout(b).ok) b = contiguous(b);
  const Layout lo = matrix_layout(out);
  if (!lo.ok) {
    // Irregular output: compute into a contiguous temporary, then write back.
    Tensor tmp = Tensor::empty(out.shape(), out.dtype(), out.device());
    if (beta != 0) copy_strided(tmp, out);
    run(tmp, a, b, ta, tb, alpha, beta);
    copy_strided(out, tmp);
    return;
  }
  const Layout la = matrix_layout(a), lb = matrix_layout(b);
  const int64_t m = out.size(-2), n = out.size(-1);
  // A row-major call: an operand stored column-major is the row-major transpose, so its flag
  // flips. A column-major output is the row-major Cᵀ = op(B)ᵀ·op(A)ᵀ: operands swapped, and
  // flipped relative to the output's order.
  const bool fa = ta != (la.row_major != lo.row_major), fb = tb != (lb.row_major != lo.row_major);
  const size_t es = out.element_size();
  const char* A = static_cast<const char*>(a.raw_data());
  const char* B = static_cast<const char*>(b.raw_data());
  char* C = static_cast<char*>(out.raw_data());
  Shape batch;
  for (int d = 0; d + 2 < out.dim(); ++d) batch.push_back(out.size(d));
  engine::for_each_row<3>(
      batch, {batch_strides(a, batch), batch_strides(b, batch), batch_strides(out, batch)},
      [&](const int64_t* off, int64_t cnt, const int64_t* in) {
        const void* pa = A + off[0] * int64_t(es);
        const void* pb = B + off[1] * int64_t(es);
        void* pc = C + off[2] * int64_t(es);
        if (lo.row_major)
          blas::gemm_strided_batched(out.dtype(), fa, fb, m, n, k, alpha, pa, la.ld, in[0], pb,
                                     lb.ld, in[1], beta, pc, lo.ld, in[2], cnt);
        else
          blas::gemm_strided_batched(out.dtype(), fb, fa, n, m, k, alpha, pb, lb.ld, in[1], pa,
                                     la.ld, in[0], beta, pc, lo.ld, in[2], cnt);
      });
}

void check_on_device(const Tensor& t, const char* op, const char* name) {
  engine::check_defined(t, op, name);
  ENGINE_CHECK(t.device() == device(), op, ": ", name, " ", t.describe(), " is not on the device ",
               device(), " (the CUDA op takes device tensors only)");
}

// Checks the operands and returns the result's shape.
Shape result_shape(const char* op, const Tensor& a, const Tensor& b, bool ta, bool tb) {
  check_on_device(a, op, "a");
  check_on_device(b, op, "b");
  ENGINE_CHECK(a.dtype() == DType::f32 || a.dtype() == DType::bf16 || a.dtype() == DType::f64, op,
               ": expected dtype f32, bf16 or f64, got ", a.describe());
  engine::check_same_dtype(a, b, op);
  ENGINE_CHECK(a.dim() >= 2 && b.dim() >= 2, op, ": expected matrices (at least 2-D), got ",
               a.describe(), " and ", b.describe());
  const int64_t m = ta ? a.size(-1) : a.size(-2), ka = ta ? a.size(-2) : a.size(-1);
  const int64_t kb = tb ? b.size(-1) : b.size(-2), n = tb ? b.size(-2) : b.size(-1);
  ENGINE_CHECK(ka == kb, op, ": cannot multiply ", a.shape(), " and ", b.shape(),
               " (trans_a=", ta ? "true" : "false", ", trans_b=", tb ? "true" : "false",
               "): inner dimensions ", ka, " and ", kb, " differ");
  Shape ba, bb;
  for (int d = 0; d + 2 < a.dim(); ++d) ba.push_back(a.size(d));
  for (int d = 0; d + 2 < b.dim(); ++d) bb.push_back(b.size(d));
  Shape out = engine::broadcast_shapes(ba, bb, op);
  out.push_back(m);
  out.push_back(n);
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  Tensor out = Tensor::empty(result_shape("matmul", a, b, trans_a, trans_b), a.dtype(), a.device());
  run(out, a, b, trans_a, trans_b, 1.0, 0.0);
  return out;
}

void matmul_out(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                double alpha, double beta) {
  Shape s = result_shape("matmul_out", a, b, trans_a, trans_b);
  check_on_device(out, "matmul_out", "out");
  engine::check_same_dtype(out, a, "matmul_out");
  ENGINE_CHECK(out.shape() == s, "matmul_out: out is ", out.describe(), ", the product of ",
               a.describe(), " and ", b.describe(), " is ", s);
  ENGINE_CHECK(!has_broadcast_dim(out), "matmul_out: out ", out.describe(), " with strides ",
               out.strides(), " is a broadcast view; its elements cannot be written separately");
  run(out, a, b, trans_a, trans_b, alpha, beta);
}

Tensor bmm(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  engine::check_defined(a, "bmm", "a");
  engine::check_defined(b, "bmm", "b");
  ENGINE_CHECK(a.dim() == 3 && b.dim() == 3,
               "bmm: expected 3-D operands [B, M, K] and [B, K, N], got ", a.describe(), " and ",
               b.describe());
  ENGINE_CHECK(a.size(0) == b.size(0) || a.size(0) == 1 || b.size(0) == 1, "bmm: batch sizes of ",
               a.shape(), " and ", b.shape(), " differ (and neither is 1)");
  Tensor out = Tensor::empty(result_shape("bmm", a, b, trans_a, trans_b), a.dtype(), a.device());
  run(out, a, b, trans_a, trans_b, 1.0, 0.0);
  return out;
}

}  // namespace kernels::cuda
