// The CUDA backend's host side under the sim: device tensors, copies, the caching allocator, and
// launch errors that name the kernel. (This tests our backend code and the sim runtime, not
// NVIDIA's libraries.)
#include <doctest/doctest.h>

#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Tensor;

namespace {
[[maybe_unused]] __global__ void write_past_end(float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[i] = 1.0f;  // deliberate off-by-one: writes out[n]
}
__global__ void write_in_bounds(float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = float(i);
}
}  // namespace

TEST_CASE("cuda device: tensors round trip between cpu and the sim device") {
  engine::Device dev = kernels::cuda::device();
  CHECK(dev.type == engine::DeviceType::sim);
  CHECK(kernels::cuda::available());
  Tensor x = testing::randn({37, 13}, 1);
  Tensor d = x.to(dev);
  CHECK(d.device() == dev);
  CHECK(d.to(engine::Device::cpu()).to_vector<float>() == x.to_vector<float>());
  // Non-contiguous sources are made contiguous on the way.
  Tensor t = x.transpose(0, 1);
  CHECK(t.to(dev).to_vector<float>() == t.contiguous().to_vector<float>());
  Tensor z = Tensor::zeros({5, 7}, DType::f64, dev);
  for (double v : z.to_vector<double>()) CHECK(v == 0.0);
  Tensor f = Tensor::full({3}, 2.5, DType::bf16, dev);
  CHECK(f.to_vector<float>() == std::vector<float>{2.5f, 2.5f, 2.5f});
}

TEST_CASE("cuda device: the caching allocator reuses freed blocks") {
  engine::Device dev = kernels::cuda::device();
  { Tensor a = Tensor::empty({1000}, DType::f32, dev); }
  auto before = kernels::cuda::allocator_stats();
  for (int i = 0; i < 20; ++i) Tensor a = Tensor::empty({1000}, DType::f32, dev);
  auto after = kernels::cuda::allocator_stats();
  CHECK(after.device_allocs == before.device_allocs);
  CHECK(after.bytes_in_use == before.bytes_in_use);
}

TEST_CASE("cuda device: launch errors name the kernel; guard bytes catch an out-of-bounds write") {
  engine::Device dev = kernels::cuda::device();
  Tensor ok = Tensor::empty({100}, DType::f32, dev);
  LAUNCH(write_in_bounds, 1, 128, 0, 0)(ok.data<float>(), 100);
  CHECK_NOTHROW(CHECK_LAUNCH("write_in_bounds"));
  CHECK(ok.to_vector<float>()[99] == 99.0f);

#if !defined(__SANITIZE_ADDRESS__)  // under ASan the guards are poisoned: ASan reports the write itself
  std::string msg = "<no error>";
  {
    Tensor bad = Tensor::empty({100}, DType::f32, dev);
    LAUNCH(write_past_end, 1, 128, 0, 0)(bad.data<float>(), 100);
    try {
      CHECK_LAUNCH("write_past_end");
    } catch (const engine::Error& e) {
      msg = e.what();
    }
  }
  INFO(msg);
  CHECK(msg.find("write_past_end") != std::string::npos);
  CHECK(msg.find("test_cuda_device.cu") != std::string::npos);
#endif
  // An invalid launch configuration is reported too.
  LAUNCH(write_in_bounds, 1, 2048, 0, 0)(ok.data<float>(), 100);
  CHECK_THROWS_CONTAINING(CHECK_LAUNCH("write_in_bounds"), "write_in_bounds");
}
