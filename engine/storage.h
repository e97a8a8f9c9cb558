// Reference-counted memory behind one or more tensors. CPU memory comes from CpuAllocator;
// other devices register their allocation and copy functions (kernels/cuda, kernels/sim), so the
// engine itself never depends on CUDA.
#pragma once
#include <cstddef>
#include <memory>

#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/shape.h"

namespace engine {

// A strided view of device memory, as the backend's copy and fill hooks see a tensor (plain
// data: backends need not know Tensor). Element i of the row-major index space lives at
// data + (offset + sum_d idx[d] * strides[d]) * dtype_size(dtype).
struct TensorView {
  void* data = nullptr;  // the storage's base pointer
  DType dtype = DType::f32;
  int dims = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements
  int64_t offset = 0;              // in elements
};

// Functions a non-CPU backend provides. Copies are synchronous from the caller's point of view.
struct DeviceHooks {
  void* (*allocate)(size_t bytes, int index) = nullptr;
  void (*deallocate)(void* p, size_t bytes, int index) = nullptr;
  void (*copy_to_host)(void* dst, const void* src, size_t bytes, int index) = nullptr;
  void (*copy_from_host)(void* dst, const void* src, size_t bytes, int index) = nullptr;
  void (*copy_on_device)(void* dst, const void* src, size_t bytes, int index) = nullptr;
  void (*memset_zero)(void* dst, size_t bytes, int index) = nullptr;
  // Optional; Tensor::copy_ / fill_ say so when a backend lacks them.
  // dst = src element by element, both on the device, same shape, any strides (src may have
  // stride-0 broadcast dims; dst must not overlap src), converting the dtype as the CPU copy_
  // does (bf16 results round to nearest even, every NaN becoming the canonical 0x7fff).
  void (*copy_strided)(const TensorView& dst, const TensorView& src, int index) = nullptr;
  // Every element of dst set to `bits`: one element's bytes (the low dtype_size(dst.dtype)
  // bytes, little-endian), already converted to dst's dtype by the engine.
  void (*fill_strided)(const TensorView& dst, uint64_t bits, int index) = nullptr;
};

// Sets the hooks for `type`. Hooks left null keep what an earlier call set, so that a backend can
// register its pieces from several translation units in any static-initialisation order.
void register_device_hooks(DeviceType type, const DeviceHooks& hooks);
// Throws a clear error when no backend for `type` is built in or registered.
const DeviceHooks& device_hooks(DeviceType type);

class Storage {
 public:
  Storage(size_t nbytes, Device device);
  // Wraps memory the storage does not own (e.g. a memory-mapped file); never freed by it.
  Storage(void* external, size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  bool owned_ = true;
};

}  // namespace engine
