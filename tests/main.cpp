// The doctest runner for every suite in tests/. Suites are test_<what>.cpp, one per op family or
// component; `./build/run_tests -tc='softmax*'` runs a subset.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
