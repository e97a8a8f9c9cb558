#include "engine/omp_env.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace engine {

void ensure_passive_omp_wait(int argc, char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  (void)argc;
  execv("/proc/self/exe", argv);
  // Exec failed (no /proc?): carry on with the default policy, slower but correct.
  std::fprintf(stderr, "note: could not re-execute with OMP_WAIT_POLICY=PASSIVE; set it yourself "
                       "for full speed\n");
}

}  // namespace engine
