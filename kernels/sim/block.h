// Internal to kernels/sim: the state of the block an OS thread is running, shared by the scheduler
// (scheduler.cpp, which runs threads and barriers) and the warp functions (warp.cpp).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/sim/cuda_sim.h"

namespace sim::detail {

// Thrown into a waiting thread to unwind it when its block is aborted. Not a std::exception, so
// nothing but the thread's entry function catches it.
struct Aborted {};

// A misuse of CUDA that the sim detects (reported as the launch's error).
struct SimError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Job;  // one launch (scheduler.cpp)

enum State : uint8_t { NotStarted, Running, Runnable, AtBarrier, AtWarp, Done };

struct Warp {
  uint32_t arrived = 0;  // lanes waiting in a warp function
  uint32_t soft = 0;     // lanes waiting in __activemask (their call site is in val[])
  uint32_t exists = 0;   // lanes that exist (a partial last warp has fewer)
  WarpOp op[32];
  uint8_t size[32];
  uint32_t mask[32];
  int param[32];
  int width[32];
  uint64_t val[32];
  uint64_t result[32];
};

// The block running on this OS thread.
struct Block {
  Job* job = nullptr;
  const KernelLaunch* launch = nullptr;
  uint3 idx{0, 0, 0};
  int nthreads = 0;
  std::vector<uint8_t> state;
  std::vector<int> stack_of;  // fiber stack index, -1 when none
  std::vector<Warp> warps;
  std::vector<int> order;
  size_t pos = 0;
  int ready = 0;  // NotStarted + Runnable
  int done = 0;
  int at_barrier = 0;
  int bar_pred = 0;
  int bar_result = 0;
  int current = -1;
  int native_owner = -1;  // the CUDA thread running on the native stack, -1 when none
  bool abort = false;
  bool shuffled = false;
  uint64_t rng = 0;
};

extern thread_local constinit Block* t_block;

// scheduler.cpp
Block& current_block(const char* fn);  // throws SimError outside a kernel
void set_current(Block& b, int t);     // makes waiting thread t of b the running one
// The running thread has set its state (waiting, or runnable again): run others until it is
// resumed. Throws Aborted if the block was aborted meanwhile.
void wait_in_block(Block& b);

// warp.cpp
const char* op_name(WarpOp op);
std::string hex_mask(uint32_t m);
uint32_t live_lanes(const Block& b, int wi);  // lanes of warp wi that exist and have not exited
void try_complete(Block& b, int wi, uint32_t mask);
void resolve_activemask(Block& b, int wi);
void on_thread_exit(Block& b, int t);

}  // namespace sim::detail
