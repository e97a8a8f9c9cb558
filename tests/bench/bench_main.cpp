// ./bench: performance figures for this machine. Timings live here, never in the tests.
//   ./bench          everything available
//   ./bench gemm     OpenBLAS sgemm vs our matmul op
//   ./bench memory   GB/s of the memory-bound kernels vs the machine's copy bandwidth
//   ./bench kernels  the CUDA kernels on a GPU (`make cuda`, then build-cuda/bench kernels)
// Threads: OMP_NUM_THREADS / OPENBLAS_NUM_THREADS (default: all cores).
#include <cblas.h>
#include <omp.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "engine/omp_env.h"
#include "engine/tensor.h"
#include "kernels/adamw.h"
#include "kernels/elementwise.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "kernels/softmax.h"
#include "tests/bench/timing.h"

using engine::DType;
using engine::Tensor;

namespace bench {
void bench_kernels();  // tests/bench/bench_kernels.cpp
void bench_moe();      // tests/bench/bench_moe.cpp
void bench_presets();  // tests/bench/bench_presets.cpp
}

namespace {

void bench_gemm() {
  std::printf("\n== GEMM (f32), %d threads: bare OpenBLAS sgemm vs kernels::matmul\n",
              openblas_get_num_threads());
  std::printf("%-28s %12s %12s %8s\n", "shape (M x K . K x N)", "sgemm GF/s", "matmul GF/s", "ratio");
  struct S { int m, k, n; const char* note; };
  for (S s : {S{1024, 1024, 1024, "square"}, S{8192, 192, 768, "ViT-T MLP up"},
              S{8192, 768, 192, "ViT-T MLP down"}, S{8192, 384, 1536, "ViT-S MLP up"},
              S{8192, 192, 576, "ViT-T qkv"}}) {
    Tensor a = Tensor::normal({s.m, s.k}, 1, 0);
    Tensor b = Tensor::normal({s.k, s.n}, 1, 1);
    Tensor c = Tensor::empty({s.m, s.n});
    double flops = 2.0 * s.m * s.n * s.k;
    double t_blas = bench::time_it([&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s.m, s.n, s.k, 1.0f, a.data<float>(),
                  s.k, b.data<float>(), s.n, 0.0f, c.data<float>(), s.n);
    });
    double t_op = bench::time_it([&] { Tensor r = kernels::matmul(a, b); });
    char name[64];
    std::snprintf(name, sizeof name, "%dx%d.%dx%d (%s)", s.m, s.k, s.k, s.n, s.note);
    std::printf("%-28s %12.1f %12.1f %7.1f%%\n", name, flops / t_blas * 1e-9, flops / t_op * 1e-9,
                100.0 * t_blas / t_op);
  }
}

void bench_memory() {
  const int64_t n = 16 * 1024 * 1024;  // 16M elements
  const int64_t d = 768, rows = n / d;
  std::printf("\n== memory-bound kernels on 16M f32 elements, %d threads (GB/s = bytes moved / time)\n",
              omp_get_max_threads());
  std::printf("%-34s %10s %10s\n", "kernel", "ms", "GB/s");
  auto report = [](const char* name, double t, double bytes) {
    std::printf("%-34s %10.2f %10.1f\n", name, t * 1e3, bytes / t * 1e-9);
  };
  Tensor x = Tensor::normal({rows, d}, 2, 0);
  Tensor y = Tensor::empty({rows, d});
  const double B = double(n) * 4;
  report("memcpy (machine copy bandwidth)",
         bench::time_it([&] { std::memcpy(y.raw_data(), x.raw_data(), B); }), 2 * B);
  report("copy_ (strided engine copy, contig)", bench::time_it([&] { y.copy_(x); }), 2 * B);
  Tensor w = Tensor::ones({d}), bias = Tensor::zeros({d});
  kernels::LayerNormOut ln;
  report("layernorm fwd [21845x768]", bench::time_it([&] { ln = kernels::layernorm(x, w, bias, 1e-6); }), 2 * B);
  Tensor g = Tensor::normal({rows, d}, 2, 1);
  report("layernorm bwd", bench::time_it([&] {
           auto r = kernels::layernorm_backward(g, x, w, ln.mean, ln.rstd, true);
         }), 3 * B);
  report("gelu_tanh fwd", bench::time_it([&] { Tensor r = kernels::gelu_tanh(x); }), 2 * B);
  report("gelu_tanh bwd", bench::time_it([&] { Tensor r = kernels::gelu_tanh_backward(g, x); }), 3 * B);
  report("softmax fwd (last axis, rows of 768)", bench::time_it([&] { Tensor r = kernels::softmax(x, -1); }), 2 * B);
  Tensor sm = kernels::softmax(x, -1);
  report("softmax bwd", bench::time_it([&] { Tensor r = kernels::softmax_backward(g, sm, -1); }), 3 * B);
  report("add (same shape)", bench::time_it([&] { Tensor r = kernels::add(x, g); }), 3 * B);
  Tensor p = Tensor::normal({n}, 3, 0), gr = Tensor::normal({n}, 3, 1);
  Tensor m = Tensor::zeros({n}), v = Tensor::zeros({n});
  kernels::AdamWParams hp;
  report("adamw step (p, g, m, v)", bench::time_it([&] {
           kernels::adamw_step(p, gr, m, v, Tensor(), hp);
           hp.step++;
         }), 7 * B);  // reads p, g, m, v; writes p, m, v
}

}  // namespace

int main(int argc, char** argv) {
  engine::ensure_passive_omp_wait(argc, argv);  // see engine/omp_env.h
  std::string what = argc > 1 ? argv[1] : "all";
  if (what == "--help" || what == "-h") {
    std::printf("usage: ./bench [all|gemm|memory|moe|presets|kernels]\n");
    return 0;
  }
  std::printf("moe-engine bench: %d OpenMP threads, %d OpenBLAS threads\n", omp_get_max_threads(),
              openblas_get_num_threads());
  bool all = what == "all";
  if (all || what == "gemm") bench_gemm();
  if (all || what == "memory") bench_memory();
  if (all || what == "moe") bench::bench_moe();
  if (what == "presets") bench::bench_presets();  // minutes and ~20 GB: only when asked
  if (all || what == "kernels") bench::bench_kernels();
  if (!all && what != "gemm" && what != "memory" && what != "moe" && what != "presets" &&
      what != "kernels") {
    std::fprintf(stderr, "bench: unknown section '%s' (valid: all, gemm, memory, moe, presets, kernels)\n",
                 what.c_str());
    return 2;
  }
  return 0;
}
