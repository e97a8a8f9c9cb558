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
  DeviceHooks& h = hook_table()[size_t(type)];
  auto set = [](auto& field, auto value) {
    if (value) field = value;
  };
  set(h.allocate, hooks.allocate);
  set(h.deallocate, hooks.deallocate);
  set(h.copy_to_host, hooks.copy_to_host);
  set(h.copy_from_host, hooks.copy_from_host);
  set(h.copy_on_device, hooks.copy_on_device);
  set(h.memset_zero, hooks.memset_zero);
  set(h.copy_strided, hooks.copy_strided);
  set(h.fill_strided, hooks.fill_strided);
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
