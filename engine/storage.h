// Reference-counted memory behind one or more tensors. CPU memory comes from CpuAllocator;
// other devices register their allocation and copy functions (kernels/cuda, kernels/sim), so the
// engine itself never depends on CUDA.
#pragma once
#include <cstddef>
#include <memory>

#include "engine/device.h"

namespace engine {

// Functions a non-CPU backend provides. Copies are synchronous from the caller's point of view.
struct DeviceHooks {
  void* (*allocate)(size_t bytes, int index) = nullptr;
  void (*deallocate)(void* p, size_t bytes, int index) = nullptr;
  void (*copy_to_host)(void* dst, const void* src, size_t bytes, int index) = nullptr;
  void (*copy_from_host)(void* dst, const void* src, size_t bytes, int index) = nullptr;
  void (*copy_on_device)(void* dst, const void* src, size_t bytes, int index) = nullptr;
  void (*memset_zero)(void* dst, size_t bytes, int index) = nullptr;
};

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
