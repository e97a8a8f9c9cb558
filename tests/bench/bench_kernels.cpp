// ./bench kernels: the handwritten CUDA kernels on a real GPU, as TFLOP/s or GB/s and the
// fraction of H100 peak (989 TFLOP/s BF16 dense, 3.35 TB/s HBM3). Under the sim (the default
// build) or without a device it says so and skips: sim timings are not benchmarks.
#include <cstdio>

#include "kernels/cuda/device.h"
#include "kernels/layernorm.h"
#include "tests/bench/timing.h"

namespace bench {
namespace {

constexpr double kPeakBf16Flops = 989e12;
constexpr double kPeakBytes = 3.35e12;

double time_gpu(const std::function<void()>& f) {
  return time_it([&] {
    f();
    kernels::cuda::synchronize();
  });
}

void report_bw(const char* name, double t, double bytes) {
  std::printf("%-44s %9.3f ms %8.1f GB/s %6.1f%% of HBM\n", name, t * 1e3, bytes / t * 1e-9,
              100 * bytes / t / kPeakBytes);
}

}  // namespace

void bench_kernels() {
  std::printf("\n== CUDA kernels\n");
  if (kernels::cuda::device().type == engine::DeviceType::sim) {
    std::printf("this is the sim build (CUDA kernels emulated on the CPU): sim timings are not\n"
                "benchmarks, skipped. Build with `make cuda` and run `build-cuda/bench kernels` on a GPU.\n");
    return;
  }
  if (!kernels::cuda::available()) {
    std::printf("no CUDA device present on this machine: skipped\n");
    return;
  }
  const engine::Device dev = kernels::cuda::device();
  (void)kPeakBf16Flops;
  for (engine::DType dt : {engine::DType::bf16, engine::DType::f32}) {
    const int64_t rows = 8 * 1024 * 4, d = 768;
    engine::Tensor x = engine::Tensor::normal({rows, d}, 1, 0, 0, 1, dt).to(dev);
    engine::Tensor w = engine::Tensor::ones({d}, dt).to(dev), b = engine::Tensor::zeros({d}, dt).to(dev);
    const double elt = double(engine::dtype_size(dt)), bytes = 2.0 * rows * d * elt;
    kernels::LayerNormOut out;
    char name[96];
    std::snprintf(name, sizeof name, "layernorm fwd [%lldx%lld] %s", (long long)rows, (long long)d,
                  std::string(engine::dtype_name(dt)).c_str());
    report_bw(name, time_gpu([&] { out = kernels::cuda::layernorm(x, w, b, 1e-6); }), bytes);
    engine::Tensor g = engine::Tensor::normal({rows, d}, 1, 1, 0, 1, dt).to(dev);
    std::snprintf(name, sizeof name, "layernorm bwd %s", std::string(engine::dtype_name(dt)).c_str());
    report_bw(name, time_gpu([&] {
                auto r = kernels::cuda::layernorm_backward(g, x, w, out.mean, out.rstd, true);
              }), 3.0 * rows * d * elt);
  }
}

}  // namespace bench
