#include "engine/storage.h"

#include <array>

#include "engine/allocator.h"

namespace engine {
namespace {
std::array<DeviceHooks, 3>& hook_table() {
  static std::array<DeviceHooks, 3> t{};
  return t;
}
}  // namespace

void register_device_hooks(DeviceType type, const DeviceHooks& hooks) {
  hook_table()[size_t(type)] = hooks;
}

const DeviceHooks& device_hooks(DeviceType type) {
  const DeviceHooks& h = hook_table()[size_t(type)];
  ENGINE_CHECK(h.allocate != nullptr, "device ", Device{type, 0}.str(),
               " is not available in this build (build with `make cuda` for GPUs, or use the sim "
               "test build); use --device cpu");
  return h;
}

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  if (device.is_cpu())
    data_ = CpuAllocator::allocate(nbytes);
  else
    data_ = device_hooks(device.type).allocate(nbytes, device.index);
}

Storage::Storage(void* external, size_t nbytes, Device device)
    : data_(external), nbytes_(nbytes), device_(device), owned_(false) {}

Storage::~Storage() {
  if (!owned_) return;
  if (device_.is_cpu())
    CpuAllocator::deallocate(data_, nbytes_);
  else
    device_hooks(device_.type).deallocate(data_, nbytes_, device_.index);
}

}  // namespace engine
