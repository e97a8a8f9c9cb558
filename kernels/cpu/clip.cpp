#include "kernels/clip.h"

#include <cmath>

#include "engine/strided.h"

namespace kernels::cpu {
namespace {

// Chunks are the unit of both parallelism and summation order. Fixed size, so the result does
// not depend on the number of threads (bit-identical runs and resumes).
constexpr int64_t kChunk = int64_t(1) << 16;
constexpr int64_t kParallelMin = int64_t(1) << 17;

template <class T>
double sum_squares(const T* x, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(float(x[i]));
    s += d * d;
  }
  return s;
}
template <>
double sum_squares<double>(const double* x, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += x[i] * x[i];
  return s;
}

struct Chunk {
  const void* data;  // first element of the chunk
  int64_t n;
  DType dtype;
};

}  // namespace

double grad_norm(const std::vector<Tensor>& tensors) {
  std::vector<Tensor> dense;  // contiguous copies of the few non-contiguous inputs
  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (size_t k = 0; k < tensors.size(); ++k) {
    const Tensor& t = tensors[k];
    if (!t.defined()) continue;
    engine::check_cpu(t, "grad_norm");
    ENGINE_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64 || t.dtype() == DType::bf16,
                 "grad_norm: tensor ", k, " is ", t.describe(), ", expected f32, f64 or bf16");
    const Tensor& c = t.is_contiguous() ? t : dense.emplace_back(t.contiguous());
    const auto* base = static_cast<const char*>(c.raw_data());
    for (int64_t b = 0; b < c.numel(); b += kChunk)
      chunks.push_back({base + b * int64_t(c.element_size()), std::min(kChunk, c.numel() - b),
                        c.dtype()});
    total += c.numel();
  }
  std::vector<double> partial(chunks.size());
  const int64_t nchunks = int64_t(chunks.size());
#pragma omp parallel for schedule(static) if (total >= kParallelMin)
  for (int64_t i = 0; i < nchunks; ++i) {
    const Chunk& c = chunks[i];
    switch (c.dtype) {
      case DType::f32: partial[i] = sum_squares(static_cast<const float*>(c.data), c.n); break;
      case DType::f64: partial[i] = sum_squares(static_cast<const double*>(c.data), c.n); break;
      default: partial[i] = sum_squares(static_cast<const bf16*>(c.data), c.n); break;
    }
  }
  double s = 0;
  for (double p : partial) s += p;  // in chunk order: deterministic
  return std::sqrt(s);
}

void scale_(const Tensor& t, double s) {
  engine::check_defined(t, "scale_", "tensor");
  engine::check_cpu(t, "scale_");
  engine::visit_float(t.dtype(), "scale_", [&](auto z) {
    using T = decltype(z);
    T* d = t.data<T>();
    const T a = T(s);
    if (t.is_contiguous()) {
      const int64_t n = t.numel();
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
      for (int64_t i = 0; i < n; ++i) d[i] *= a;
      return;
    }
    engine::for_each_row<1>(t.shape(), {t.strides()}, [&](const int64_t* off, int64_t n, const int64_t* in) {
      T* p = d + off[0];
      for (int64_t i = 0; i < n; ++i) p[i * in[0]] *= a;
    });
  });
}

}  // namespace kernels::cpu
