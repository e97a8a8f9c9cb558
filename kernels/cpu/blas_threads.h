// OpenBLAS (Debian's pthreads build) must run single-threaded inside our own OpenMP regions:
// its threads would oversubscribe the cores. This guard sets that for a scope and restores the
// previous setting (also when an exception leaves the scope).
#pragma once
#include <cblas.h>

namespace kernels::cpu {

class BlasSingleThread {
 public:
  explicit BlasSingleThread(bool on = true) : on_(on) {
    if (on_) {
      prev_ = openblas_get_num_threads();
      openblas_set_num_threads(1);
    }
  }
  ~BlasSingleThread() {
    if (on_) openblas_set_num_threads(prev_);
  }
  BlasSingleThread(const BlasSingleThread&) = delete;
  BlasSingleThread& operator=(const BlasSingleThread&) = delete;

 private:
  bool on_;
  int prev_ = 1;
};

}  // namespace kernels::cpu
