#include "kernels/backend.h"

namespace kernels {
void no_backend(const Device& device, const char* op) {
  ENGINE_FAIL(op, ": no kernel for device ", device, " in this build (CUDA backend not built)");
}
}  // namespace kernels
