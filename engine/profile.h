// NVTX ranges, so Nsight Systems shows forward, backward, optimizer, layers and kernel families
// as named spans. Compiled in only where the header-only nvtx3 is available and ENGINE_NVTX is
// defined (the `make cuda` build); elsewhere PROFILE_RANGE costs nothing.
#pragma once

#if defined(ENGINE_NVTX) && __has_include(<nvtx3/nvToolsExt.h>)
#include <nvtx3/nvToolsExt.h>

namespace engine {
class ProfileRange {
 public:
  explicit ProfileRange(const char* name) { nvtxRangePushA(name); }
  ~ProfileRange() { nvtxRangePop(); }
  ProfileRange(const ProfileRange&) = delete;
  ProfileRange& operator=(const ProfileRange&) = delete;
};
}  // namespace engine

#define ENGINE_PROFILE_CAT2(a, b) a##b
#define ENGINE_PROFILE_CAT(a, b) ENGINE_PROFILE_CAT2(a, b)
#define PROFILE_RANGE(name) ::engine::ProfileRange ENGINE_PROFILE_CAT(profile_range_, __LINE__)(name)
#else
#define PROFILE_RANGE(name) ((void)0)
#endif
