// The doctest runner for every suite in tests/. Suites are test_<what>.cpp, one per op family or
// component; `./build/run_tests -tc='softmax*'` runs a subset.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "engine/omp_env.h"

int main(int argc, char** argv) {
  engine::ensure_passive_omp_wait(argc, argv);  // see engine/omp_env.h
  return doctest::Context(argc, argv).run();
}
