// Timing for ./bench: run a function until enough wall time has passed, report the median of
// several repetitions (robust to the other core being busy).
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <vector>

namespace bench {

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median seconds per call of f over `reps` repetitions, each at least min_s long.
inline double time_it(const std::function<void()>& f, int reps = 5, double min_s = 0.1) {
  f();  // warm-up: page faults, allocator caches, BLAS buffers
  int inner = 1;
  for (;;) {
    double t0 = now_s();
    for (int i = 0; i < inner; ++i) f();
    double t = now_s() - t0;
    if (t >= min_s / 4 || inner >= (1 << 20)) break;
    inner *= 2;
  }
  std::vector<double> ts;
  for (int r = 0; r < reps; ++r) {
    double t0 = now_s();
    int n = 0;
    do {
      for (int i = 0; i < inner; ++i) f();
      n += inner;
    } while (now_s() - t0 < min_s);
    ts.push_back((now_s() - t0) / n);
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

}  // namespace bench
