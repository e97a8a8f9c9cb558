// Where a tensor's memory lives. `sim` is device memory emulated in host memory by the CUDA
// emulation layer; the CPU kernels never touch it directly.
#pragma once
#include <ostream>
#include <string>

#include "engine/error.h"

namespace engine {

enum class DeviceType : uint8_t { cpu, cuda, sim };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static Device cpu() { return {DeviceType::cpu, 0}; }
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool operator==(const Device&) const = default;
  std::string str() const {
    switch (type) {
      case DeviceType::cpu: return "cpu";
      case DeviceType::cuda: return "cuda:" + std::to_string(index);
      case DeviceType::sim: return "sim:" + std::to_string(index);
    }
    return "?";
  }
  static Device parse(const std::string& s) {
    if (s == "cpu") return cpu();
    for (auto [name, t] : {std::pair{"cuda", DeviceType::cuda}, std::pair{"sim", DeviceType::sim}}) {
      std::string n = name;
      if (s == n) return {t, 0};
      if (s.rfind(n + ":", 0) == 0) return {t, std::stoi(s.substr(n.size() + 1))};
    }
    ENGINE_FAIL("unknown device '", s, "' (valid: cpu, cuda[:N], sim[:N])");
  }
};

inline std::ostream& operator<<(std::ostream& os, const Device& d) { return os << d.str(); }

}  // namespace engine
