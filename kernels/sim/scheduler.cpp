// The sim's execution engine: a pool of OS threads runs blocks; inside a block every CUDA thread
// is a fiber (glibc ucontext) that runs until it reaches __syncthreads or a warp function (those
// are in warp.cpp), where it waits until the other participants have arrived.
//
// Scheduling within a block, on one OS thread:
// - Threads are started in the block's order (forward, reverse or shuffled). A thread is first run
//   as a plain call on the OS thread's own ("native") stack; only when it has to wait is a fiber
//   needed for the next thread. Kernels without barriers therefore cost one call per thread.
// - A thread that waits picks the next runnable thread itself (round-robin over the order, a new
//   round after each completed __syncthreads) and switches to it directly: one swapcontext.
// - When no thread can run and some have not finished, the block is deadlocked: the error names the
//   block and what its threads wait for. The block is then aborted: every waiting thread is resumed
//   and unwinds with an internal exception, so no fiber is abandoned mid-frame.
// - Exceptions thrown by kernel code are caught in the thread's entry function (they never cross a
//   context switch), recorded as the launch's error, and abort the block.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kernels/sim/block.h"
#include "kernels/sim/cuda_sim.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define SIM_ASAN 1
#else
#define SIM_ASAN 0
#endif

thread_local constinit uint3 threadIdx{0, 0, 0};
thread_local constinit uint3 blockIdx{0, 0, 0};
thread_local constinit dim3 blockDim{1, 1, 1};
thread_local constinit dim3 gridDim{1, 1, 1};

namespace sim {
namespace detail {

thread_local constinit unsigned long long block_serial = 0;
thread_local constinit Block* t_block = nullptr;

// ---------------------------------------------------------------------------------------------
// A launch as seen by the OS threads that run its blocks.

struct Job {
  const KernelLaunch* launch = nullptr;
  uint64_t nblocks = 0;
  ThreadOrder order = ThreadOrder::forward;
  uint64_t seed = 1;
  std::vector<uint32_t> block_perm;  // dispatch order when shuffled
  std::atomic<uint64_t> next{0};
  std::atomic<bool> cancel{false};
  std::mutex mu;
  bool failed = false;
  cudaError_t code = cudaSuccess;
  std::string message;

  void fail(cudaError_t c, std::string msg) {
    std::lock_guard<std::mutex> lk(mu);
    if (!failed) {
      failed = true;
      code = c;
      message = std::move(msg);
    }
    cancel = true;
  }
};

namespace {

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
  std::atomic<int> order{int(ThreadOrder::forward)};
  std::atomic<uint64_t> seed{1};
  std::atomic<int> threads{0};
  std::atomic<size_t> stack{0};
};

size_t default_stack_size() { return SIM_ASAN ? 512 * 1024 : 128 * 1024; }

Options& options() {
  static Options* o = [] {
    auto* opt = new Options;
    if (const char* e = std::getenv("ENGINE_SIM_ORDER")) {
      std::string v = e;
      if (v == "forward")
        opt->order = int(ThreadOrder::forward);
      else if (v == "reverse")
        opt->order = int(ThreadOrder::reverse);
      else if (v == "shuffled")
        opt->order = int(ThreadOrder::shuffled);
      else
        std::fprintf(stderr, "sim: ignoring ENGINE_SIM_ORDER=%s (valid: forward, reverse, shuffled)\n", e);
    }
    if (const char* e = std::getenv("ENGINE_SIM_SEED")) opt->seed = std::strtoull(e, nullptr, 10);
    if (const char* e = std::getenv("ENGINE_SIM_THREADS")) opt->threads = std::max(0, std::atoi(e));
    size_t stack = default_stack_size();
    if (const char* e = std::getenv("ENGINE_SIM_STACK_KB")) {
      long kb = std::atol(e);
      if (kb >= 16) stack = size_t(kb) * 1024;
    }
    opt->stack = stack;
    return opt;
  }();
  return *o;
}

int effective_threads() {
  int n = options().threads.load();
  if (n <= 0) n = int(std::max(1u, std::thread::hardware_concurrency()));
  return n;
}

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <class T>
void shuffle_in_place(std::vector<T>& v, uint64_t& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[splitmix64(rng) % i]);
}

// ---------------------------------------------------------------------------------------------
// Errors

std::string dim_str(uint3 v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "(%u,%u,%u)", v.x, v.y, v.z);
  return buf;
}

// "0-15, 17" for a lane mask.
std::string lanes_str(uint32_t m) {
  std::string s;
  for (int i = 0; i < 32;) {
    if (!(m >> i & 1)) {
      ++i;
      continue;
    }
    int j = i;
    while (j + 1 < 32 && (m >> (j + 1) & 1)) ++j;
    char buf[24];
    if (j > i)
      std::snprintf(buf, sizeof buf, "%s%d-%d", s.empty() ? "" : ", ", i, j);
    else
      std::snprintf(buf, sizeof buf, "%s%d", s.empty() ? "" : ", ", i);
    s.append(buf);
    i = j + 1;
  }
  return s.empty() ? "none" : s;
}

// ---------------------------------------------------------------------------------------------
// Per-block state

constexpr int kAllDone = -1;
constexpr int kDeadlock = -2;

uint3 thread_index(const Block& b, int t) {
  const dim3& d = b.launch->block;
  return uint3{unsigned(t) % d.x, (unsigned(t) / d.x) % d.y, unsigned(t) / (d.x * d.y)};
}

void record_error(Block& b, int t, cudaError_t code, const std::string& what) {
  std::string msg = "kernel '" + std::string(b.launch->name) + "' block " + dim_str(b.idx);
  if (t >= 0) msg += " thread " + dim_str(thread_index(b, t));
  msg += ": " + what;
  b.job->fail(code, std::move(msg));
  b.abort = true;
}

// ---------------------------------------------------------------------------------------------
// Fiber stacks and the per-OS-thread worker

struct Stack {
  char* map = nullptr;  // including the guard page
  size_t map_size = 0;
  char* lo = nullptr;  // usable range [lo, lo + size)
  size_t size = 0;
};

Stack map_stack(size_t size) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  size = (size + page - 1) / page * page;
  Stack s;
  s.map_size = size + page;
  void* p =
      mmap(nullptr, s.map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  mprotect(p, page, PROT_NONE);  // stacks grow down: an overflow hits this page and faults
  s.map = static_cast<char*>(p);
  s.lo = s.map + page;
  s.size = size;
  return s;
}

struct Worker {
  std::vector<Stack> stacks;
  std::vector<int> free_stacks;
  size_t stack_size = 0;
  std::vector<ucontext_t> ctx;  // one per CUDA thread slot of the block
  ucontext_t native_ctx;
  int pending_release = -1;  // stack of a finished fiber, freed once we are off it
  int native_start = -1;     // thread the native scheduler loop should start next
  Block block;
  unsigned char* smem = nullptr;
  size_t smem_size = 0;
#if SIM_ASAN
  const void* native_bottom = nullptr;
  size_t native_size = 0;
  bool leaving_native = false;
#endif

  ~Worker() {
    for (Stack& s : stacks) munmap(s.map, s.map_size);
  }

  void reset_stacks_if_resized() {
    size_t want = options().stack.load();
    if (want == stack_size) return;
    for (Stack& s : stacks) munmap(s.map, s.map_size);
    stacks.clear();
    free_stacks.clear();
    stack_size = want;
  }

  int take_stack() {
    if (!free_stacks.empty()) {
      int s = free_stacks.back();
      free_stacks.pop_back();
      return s;
    }
    stacks.push_back(map_stack(stack_size));
    return int(stacks.size()) - 1;
  }

  void release_pending() {
    if (pending_release >= 0) {
      free_stacks.push_back(pending_release);
      pending_release = -1;
    }
  }
};

thread_local constinit Worker* t_worker = nullptr;

Worker& worker() {
  if (!t_worker) {
    static thread_local std::unique_ptr<Worker> holder;
    holder = std::make_unique<Worker>();
    t_worker = holder.get();
  }
  return *t_worker;
}

// ---------------------------------------------------------------------------------------------
// Context switching

// Runs in whichever context resumes after a switch.
void after_switch(Worker& w) { w.release_pending(); }

// Saves the running context into `save` (nullptr: the running fiber has finished and is never
// resumed) and continues `to`, whose stack is [bottom, bottom + size).
void jump(Worker& w, ucontext_t* save, ucontext_t* to, const void* bottom, size_t size) {
#if SIM_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(save ? &fake_stack : nullptr, bottom, size);
  w.leaving_native = (save == &w.native_ctx);
#else
  (void)bottom;
  (void)size;
#endif
  if (save) {
    swapcontext(save, to);
  } else {
    setcontext(to);
    std::abort();  // setcontext does not return
  }
#if SIM_ASAN
  const void* from_bottom = nullptr;
  size_t from_size = 0;
  __sanitizer_finish_switch_fiber(fake_stack, &from_bottom, &from_size);
  if (w.leaving_native) {
    w.native_bottom = from_bottom;
    w.native_size = from_size;
    w.leaving_native = false;
  }
#endif
  after_switch(w);
}

void jump_to_native(Worker& w, ucontext_t* save) {
#if SIM_ASAN
  jump(w, save, &w.native_ctx, w.native_bottom, w.native_size);
#else
  jump(w, save, &w.native_ctx, nullptr, 0);
#endif
}

void fiber_entry();

// A fresh context that runs fiber_entry on `st`. Kept out of line: getcontext "returns twice" for
// the compiler, which would otherwise pessimise (and warn about) its callers.
__attribute__((noinline)) void init_fiber(ucontext_t& c, const Stack& st) {
  getcontext(&c);
  c.uc_stack.ss_sp = st.lo;
  c.uc_stack.ss_size = st.size;
  c.uc_link = nullptr;
  makecontext(&c, fiber_entry, 0);
#if SIM_ASAN
  // The stack may hold the shadow of frames that never returned (a finished fiber's last
  // switch): clear it once here. Then hide the stack from ASan's swapcontext interceptor, which
  // would otherwise clear the whole stack's shadow at every switch (slow, and it drops the
  // redzones of the waiting frames); makecontext has already used it.
  ASAN_UNPOISON_MEMORY_REGION(st.lo, st.size);
  c.uc_stack.ss_sp = nullptr;
  c.uc_stack.ss_size = 0;
#endif
}

// Starts or resumes CUDA thread n (not the native scheduler) from the running context.
void enter_thread(Worker& w, Block& b, int n, ucontext_t* save) {
  if (b.state[n] == NotStarted) {
    const int s = w.take_stack();
    b.stack_of[n] = s;
    init_fiber(w.ctx[size_t(n)], w.stacks[size_t(s)]);
  }
  set_current(b, n);
  if (n == b.native_owner) {
    jump_to_native(w, save);
  } else {
    const Stack& st = w.stacks[size_t(b.stack_of[n])];
    jump(w, save, &w.ctx[size_t(n)], st.lo, st.size);
  }
}

void new_round(Block& b) {
  b.pos = 0;
  if (b.shuffled) shuffle_in_place(b.order, b.rng);
}

// The next thread to start or resume, or kAllDone / kDeadlock. In an aborted block every
// unfinished thread is returned (to unwind) and threads never started are marked done.
int pick_next(Block& b) {
  for (;;) {
    while (b.pos < b.order.size()) {
      int t = b.order[b.pos++];
      uint8_t s = b.state[size_t(t)];
      if (s == Done) continue;
      if (b.abort) {
        if (s == NotStarted) {
          b.state[size_t(t)] = Done;
          --b.ready;
          ++b.done;
          continue;
        }
        return t;
      }
      if (s == NotStarted || s == Runnable) return t;
    }
    if (b.done == b.nthreads) return kAllDone;
    if (!b.abort && b.ready == 0) return kDeadlock;
    new_round(b);
  }
}

// ---------------------------------------------------------------------------------------------
// Deadlock reports

std::string where(const Block& b, int t) {
  switch (b.state[size_t(t)]) {
    case AtBarrier: return "waiting at __syncthreads";
    case AtWarp: {
      const Warp& w = b.warps[size_t(t / 32)];
      if (w.soft >> (t % 32) & 1) return "waiting in __activemask";
      return std::string("waiting in ") + op_name(w.op[t % 32]) + "(mask " + hex_mask(w.mask[t % 32]) + ")";
    }
    case Done: return "exited";
    default: return "runnable";
  }
}

void report_deadlock(Block& b) {
  int at_barrier = 0, at_warp = 0, exited = 0, first_exited = -1;
  for (int t = 0; t < b.nthreads; ++t) {
    uint8_t s = b.state[size_t(t)];
    if (s == AtBarrier) ++at_barrier;
    if (s == AtWarp) ++at_warp;
    if (s == Done) {
      ++exited;
      if (first_exited < 0) first_exited = t;
    }
  }
  std::ostringstream os;
  os << "deadlock: no thread of the block can proceed. ";
  if (at_warp == 0 && first_exited >= 0) {
    os << at_barrier << " of " << b.nthreads << " threads wait at __syncthreads but " << exited
       << " have exited (e.g. thread " << dim_str(thread_index(b, first_exited))
       << "): a __syncthreads in divergent code; every thread of the block must reach it";
  } else {
    for (size_t wi = 0; wi < b.warps.size(); ++wi) {
      const Warp& w = b.warps[wi];
      if (!w.arrived) continue;
      int l0 = std::countr_zero(w.arrived);
      uint32_t need = w.mask[l0] & live_lanes(b, int(wi));
      uint32_t missing = need & ~w.arrived;
      os << "warp " << wi << ": lanes " << lanes_str(w.arrived) << " wait in " << op_name(w.op[l0]) << "(mask "
         << hex_mask(w.mask[l0]) << ")";
      if (missing) {
        int m0 = std::countr_zero(missing);
        os << " for lanes " << lanes_str(missing) << " (lane " << m0 << " is " << where(b, int(wi) * 32 + m0) << ")";
      }
      os << "; ";
      break;
    }
    os << at_barrier << " threads wait at __syncthreads, " << at_warp << " in warp functions, " << exited
       << " have exited";
  }
  record_error(b, -1, cudaErrorLaunchFailure, os.str());
}

// ---------------------------------------------------------------------------------------------
// Waiting

// The running CUDA thread has set its state (waiting, or runnable again) and gives the OS thread
// to the next thread; returns when it is resumed.
void wait_here(Worker& w, Block& b) {
  const int self = b.current;
  const bool self_native = (self == b.native_owner);
  ucontext_t* save = self_native ? &w.native_ctx : &w.ctx[size_t(self)];
  for (;;) {
    int n = pick_next(b);
    if (n == kDeadlock) {
      report_deadlock(b);
      continue;
    }
    if (n == kAllDone) std::abort();  // impossible: this thread has not finished
    if (n == self) {
      set_current(b, self);
      return;
    }
    if (b.state[size_t(n)] == NotStarted && b.native_owner < 0) {
      // The native stack is free: let the scheduler loop there run n as a plain call.
      w.native_start = n;
      jump_to_native(w, save);
      return;
    }
    enter_thread(w, b, n, save);
    return;
  }
}

// The running fiber has finished: hand the OS thread on and never come back.
[[noreturn]] void leave_finished_fiber(Worker& w, Block& b) {
  for (;;) {
    int n = pick_next(b);
    if (n == kDeadlock) {
      report_deadlock(b);
      continue;
    }
    if (n == kAllDone || (b.state[size_t(n)] == NotStarted && b.native_owner < 0)) {
      if (n != kAllDone) w.native_start = n;
      jump_to_native(w, nullptr);
    } else {
      enter_thread(w, b, n, nullptr);
    }
    std::abort();
  }
}

// ---------------------------------------------------------------------------------------------
// Running threads

void run_thread_body(Block& b, int t) {
  bool failed = false;
  std::string what;
  try {
    b.launch->invoke(b.launch->pack);
  } catch (const Aborted&) {
  } catch (const std::exception& e) {
    failed = true;
    what = e.what();
  } catch (...) {
    failed = true;
    what = "unknown exception";
  }
  if (failed) record_error(b, t, cudaErrorLaunchFailure, "exception: " + what);
  b.state[size_t(t)] = Done;
  ++b.done;
  if (!b.abort) {
    try {
      on_thread_exit(b, t);
    } catch (const std::exception& e) {
      record_error(b, t, cudaErrorLaunchFailure, e.what());
    }
  }
}

void fiber_entry() {
  Worker& w = *t_worker;
#if SIM_ASAN
  const void* from_bottom = nullptr;
  size_t from_size = 0;
  __sanitizer_finish_switch_fiber(nullptr, &from_bottom, &from_size);
  if (w.leaving_native) {
    w.native_bottom = from_bottom;
    w.native_size = from_size;
    w.leaving_native = false;
  }
#endif
  after_switch(w);
  Block& b = *t_block;
  const int self = b.current;
  run_thread_body(b, self);
  w.pending_release = b.stack_of[size_t(self)];
  b.stack_of[size_t(self)] = -1;
  leave_finished_fiber(w, b);
}

void prepare_block(Worker& w, Job& job, uint64_t linear) {
  const KernelLaunch& L = *job.launch;
  Block& b = w.block;
  b.job = &job;
  b.launch = &L;
  b.idx = uint3{unsigned(linear % L.grid.x), unsigned((linear / L.grid.x) % L.grid.y),
                unsigned(linear / (uint64_t(L.grid.x) * L.grid.y))};
  b.nthreads = int(L.block.x * L.block.y * L.block.z);
  const size_t n = size_t(b.nthreads);
  b.state.assign(n, NotStarted);
  b.stack_of.assign(n, -1);
  const size_t nwarps = (n + 31) / 32;
  b.warps.resize(nwarps);
  for (size_t wi = 0; wi < nwarps; ++wi) {
    size_t lanes = std::min<size_t>(32, n - wi * 32);
    b.warps[wi].arrived = 0;
    b.warps[wi].soft = 0;
    b.warps[wi].exists = lanes == 32 ? ~0u : (1u << lanes) - 1;
  }
  b.order.resize(n);
  for (size_t i = 0; i < n; ++i) b.order[i] = job.order == ThreadOrder::reverse ? int(n - 1 - i) : int(i);
  b.shuffled = job.order == ThreadOrder::shuffled;
  b.rng = job.seed * 0x9e3779b97f4a7c15ull + linear;
  if (b.shuffled) shuffle_in_place(b.order, b.rng);
  b.pos = 0;
  b.ready = b.nthreads;
  b.done = 0;
  b.at_barrier = 0;
  b.bar_pred = 0;
  b.bar_result = 0;
  b.current = -1;
  b.native_owner = -1;
  b.abort = false;
  if (w.ctx.size() < n) w.ctx.resize(n);
  w.native_start = -1;

  blockIdx = b.idx;
  blockDim = L.block;
  gridDim = L.grid;
  ++block_serial;
  if (L.smem) std::memset(w.smem, 0xFF, L.smem);
}

constexpr size_t kSmemGuard = 64;
constexpr unsigned char kSmemGuardByte = 0xA7;

void run_block(Worker& w, Job& job, uint64_t linear) {
  prepare_block(w, job, linear);
  Block& b = w.block;
  t_block = &b;
  for (;;) {
    int n;
    if (w.native_start >= 0) {
      n = w.native_start;
      w.native_start = -1;
    } else {
      n = pick_next(b);
    }
    if (n == kAllDone) break;
    if (n == kDeadlock) {
      report_deadlock(b);
      continue;
    }
    if (b.state[size_t(n)] == NotStarted) {
      b.native_owner = n;
      set_current(b, n);
      run_thread_body(b, n);
      b.native_owner = -1;
    } else {
      enter_thread(w, b, n, &w.native_ctx);
    }
  }
  t_block = nullptr;
  b.current = -1;
  w.release_pending();
#if !SIM_ASAN
  const size_t smem = job.launch->smem;
  for (size_t i = 0; i < kSmemGuard; ++i) {
    if (w.smem[smem + i] != kSmemGuardByte) {
      record_error(b, -1, cudaErrorIllegalAddress,
                   "wrote past the end of its " + std::to_string(smem) + " bytes of dynamic shared memory");
      std::memset(w.smem + smem, kSmemGuardByte, kSmemGuard);
      break;
    }
  }
#endif
}

// The blocks of one launch that this OS thread takes.
void work(Job& job) {
  Worker& w = worker();
  w.reset_stacks_if_resized();
  // Dynamic shared memory: exactly sized under ASan (which then flags overruns), else followed by
  // guard bytes checked after each block.
  const size_t smem = job.launch->smem;
  const size_t alloc = SIM_ASAN ? std::max<size_t>(smem, 1) : smem + kSmemGuard;
  w.smem = static_cast<unsigned char*>(::operator new(alloc, std::align_val_t(128)));
  w.smem_size = smem;
  if (!SIM_ASAN) std::memset(w.smem + smem, kSmemGuardByte, kSmemGuard);
  for (;;) {
    if (job.cancel.load(std::memory_order_relaxed)) break;
    uint64_t i = job.next.fetch_add(1);
    if (i >= job.nblocks) break;
    uint64_t linear = i;
    if (job.order == ThreadOrder::reverse)
      linear = job.nblocks - 1 - i;
    else if (job.order == ThreadOrder::shuffled && !job.block_perm.empty())
      linear = job.block_perm[i];
    run_block(w, job, linear);
  }
  ::operator delete(w.smem, std::align_val_t(128));
  w.smem = nullptr;
  w.smem_size = 0;
  // Host code that calls __host__ __device__ functions sees a neutral index afterwards.
  threadIdx = blockIdx = uint3{0, 0, 0};
  blockDim = gridDim = dim3(1, 1, 1);
}

// ---------------------------------------------------------------------------------------------
// The pool of OS threads

class Pool {
 public:
  // Runs job on the calling thread plus up to `helpers` pool threads.
  void run(Job& job, int helpers) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      grow(helpers);
      job_ = &job;
      ++gen_;
      slots_ = helpers;
      active_ = helpers;
    }
    if (helpers > 0) cv_.notify_all();
    work(job);
    std::unique_lock<std::mutex> lk(mu_);
    active_ -= slots_;  // helpers that never woke up have nothing left to do
    slots_ = 0;
    done_.wait(lk, [&] { return active_ == 0; });
    job_ = nullptr;
  }

  void resize(int helpers) {
    std::vector<std::thread> old;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (int(threads_.size()) <= helpers) return;
      stop_ = true;
      old.swap(threads_);
    }
    cv_.notify_all();
    for (std::thread& t : old) t.join();
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = false;
  }

 private:
  void grow(int helpers) {
    // A new thread must see the coming generation as new: it starts from the current one.
    while (int(threads_.size()) < helpers) threads_.emplace_back([this, g = gen_] { loop(g); });
  }

  void loop(uint64_t seen) {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || (gen_ != seen && slots_ > 0); });
      if (stop_) return;
      seen = gen_;
      --slots_;
      Job* job = job_;
      lk.unlock();
      work(*job);
      lk.lock();
      if (--active_ == 0) done_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, done_;
  std::vector<std::thread> threads_;
  Job* job_ = nullptr;
  uint64_t gen_ = 0;
  int slots_ = 0;
  int active_ = 0;
  bool stop_ = false;
};

// Process-lifetime singletons (never destroyed, so launches from static destructors stay safe).
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}
std::mutex& launch_mutex() {
  static std::mutex* m = new std::mutex;
  return *m;
}

std::string config_error(const KernelLaunch& L) {
  const dim3 g = L.grid, bl = L.block;
  const uint64_t threads = uint64_t(bl.x) * bl.y * bl.z;
  std::ostringstream os;
  if (g.x == 0 || g.y == 0 || g.z == 0 || bl.x == 0 || bl.y == 0 || bl.z == 0)
    os << "grid " << dim_str(g) << " and block " << dim_str(bl) << " must have every dimension > 0";
  else if (threads > 1024)
    os << "block " << dim_str(bl) << " has " << threads << " threads, more than 1024";
  else if (bl.x > 1024 || bl.y > 1024 || bl.z > 64)
    os << "block " << dim_str(bl) << " exceeds the per-dimension limits (1024, 1024, 64)";
  else if (g.x > 2147483647u || g.y > 65535 || g.z > 65535)
    os << "grid " << dim_str(g) << " exceeds the limits (2^31-1, 65535, 65535)";
  return os.str();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points used by the device-side headers and warp.cpp

void set_current(Block& b, int t) {
  if (b.state[t] == NotStarted || b.state[t] == Runnable) --b.ready;
  b.state[t] = Running;
  b.current = t;
  threadIdx = thread_index(b, t);
}

Block& current_block(const char* fn) {
  Block* b = t_block;
  if (!b || b->current < 0) throw SimError(std::string(fn) + " called outside a kernel");
  return *b;
}

void wait_in_block(Block& b) {
  wait_here(*t_worker, b);
  if (b.abort) throw Aborted{};
}

void launch(const KernelLaunch& L) {
  const std::string name = std::string("kernel '") + L.name + "': ";
  if (t_block) {
    fail(cudaErrorNotSupported, (name + "launched from inside a kernel; the sim has no dynamic parallelism").c_str());
    return;
  }
  std::string bad = config_error(L);
  if (!bad.empty()) {
    fail(cudaErrorInvalidConfiguration, (name + bad).c_str());
    return;
  }
  const size_t limit = dynamic_smem_limit(L.fn);
  if (L.smem > limit) {
    std::string msg = name + std::to_string(L.smem) + " bytes of dynamic shared memory exceed the kernel's limit of " +
                      std::to_string(limit) + " bytes";
    if (limit < kMaxDynamicSmemOptin)
      msg +=
          " (raise it with cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), up to " +
          std::to_string(kMaxDynamicSmemOptin) + ")";
    fail(cudaErrorInvalidValue, msg.c_str());
    return;
  }
  if (!stream_is_valid(L.stream)) {
    fail(cudaErrorInvalidResourceHandle, (name + "launched on an invalid or destroyed stream").c_str());
    return;
  }

  std::lock_guard<std::mutex> lk(launch_mutex());
  Job job;
  job.launch = &L;
  job.nblocks = uint64_t(L.grid.x) * L.grid.y * L.grid.z;
  job.order = ThreadOrder(options().order.load());
  job.seed = options().seed.load();
  if (job.order == ThreadOrder::shuffled && job.nblocks <= (uint64_t(1) << 24)) {
    job.block_perm.resize(job.nblocks);
    for (uint64_t i = 0; i < job.nblocks; ++i) job.block_perm[i] = uint32_t(i);
    uint64_t rng = job.seed ^ 0x5bd1e995u;
    shuffle_in_place(job.block_perm, rng);
  }
  const int helpers = int(std::min<uint64_t>(uint64_t(effective_threads() - 1), job.nblocks - 1));
  pool().run(job, helpers);

  if (!job.failed) {
    char msg[512];
    if (!check_allocation_guards(msg, sizeof msg)) job.fail(cudaErrorIllegalAddress, name + msg);
  }
  if (job.failed) fail(job.code, job.message.c_str());
}

int block_barrier(BarrierKind kind, int pred) {
  Block& b = current_block("__syncthreads");
  Worker& w = *t_worker;
  const int self = b.current;
  b.state[size_t(self)] = AtBarrier;
  b.bar_pred += pred != 0;
  if (++b.at_barrier == b.nthreads) {
    for (int t = 0; t < b.nthreads; ++t) b.state[size_t(t)] = Runnable;
    b.ready += b.nthreads;
    b.bar_result = b.bar_pred;
    b.bar_pred = 0;
    b.at_barrier = 0;
    b.pos = b.order.size();  // after a barrier, threads resume in the block's order from the start
  } else {
    resolve_activemask(b, self / 32);
  }
  wait_here(w, b);
  if (b.abort) throw Aborted{};
  switch (kind) {
    case BarrierKind::count: return b.bar_result;
    case BarrierKind::all: return b.bar_result == b.nthreads;
    case BarrierKind::any: return b.bar_result > 0;
    default: return 0;
  }
}

void trap() { throw SimError("__trap() called"); }

unsigned char* dynamic_smem() {
  if (!t_block) throw SimError("dynamic shared memory used outside a kernel");
  return t_worker->smem;
}

}  // namespace detail

void set_thread_order(ThreadOrder order, uint64_t seed) {
  detail::options().order = int(order);
  detail::options().seed = seed;
}
ThreadOrder thread_order() { return ThreadOrder(detail::options().order.load()); }
uint64_t thread_order_seed() { return detail::options().seed.load(); }

void set_num_threads(int n) {
  std::lock_guard<std::mutex> lk(detail::launch_mutex());
  detail::options().threads = std::max(0, n);
  detail::pool().resize(detail::effective_threads() - 1);
}
int num_threads() { return detail::effective_threads(); }

void set_stack_size(size_t bytes) { detail::options().stack = std::max<size_t>(bytes, 16 * 1024); }
size_t stack_size() { return detail::options().stack.load(); }

}  // namespace sim
