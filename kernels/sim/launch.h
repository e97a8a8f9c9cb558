// Kernel launches under the sim, and the sim's execution options.
//
//   LAUNCH(kernel, grid, block, smem_bytes, stream)(args...)
//
// validates the configuration like CUDA, then runs every block to completion before returning
// (streams are therefore trivially in order). Blocks are spread over a small pool of OS threads;
// inside a block every CUDA thread is a fiber that runs until it reaches a barrier or warp function.
// Errors (bad configuration, an exception or __trap in the kernel, a deadlock) are reported through
// cudaGetLastError(), with the details in sim::last_error_detail().
#pragma once
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

#include "kernels/sim/runtime.h"
#include "kernels/sim/vector_types.h"

namespace sim {

// The order in which a block's threads are started and resumed at each barrier, and in which
// blocks are handed to the OS threads. Correct kernels give the same result in every order;
// reverse/shuffled expose missing barriers. Default: forward, or ENGINE_SIM_ORDER=forward|reverse|
// shuffled (seed ENGINE_SIM_SEED).
enum class ThreadOrder { forward, reverse, shuffled };
void set_thread_order(ThreadOrder order, uint64_t seed = 1);
ThreadOrder thread_order();
uint64_t thread_order_seed();

// Sets the order for one scope and restores the previous one.
class ScopedThreadOrder {
 public:
  explicit ScopedThreadOrder(ThreadOrder order, uint64_t seed = 1)
      : old_(thread_order()), old_seed_(thread_order_seed()) {
    set_thread_order(order, seed);
  }
  ~ScopedThreadOrder() { set_thread_order(old_, old_seed_); }
  ScopedThreadOrder(const ScopedThreadOrder&) = delete;
  ScopedThreadOrder& operator=(const ScopedThreadOrder&) = delete;

 private:
  ThreadOrder old_;
  uint64_t old_seed_;
};

// OS threads that run blocks (the launching thread is one of them). 0 = hardware threads.
// Default: ENGINE_SIM_THREADS or the number of hardware threads.
void set_num_threads(int n);
int num_threads();

// Stack size of each CUDA thread's fiber (default 128 KiB, 512 KiB under AddressSanitizer, or
// ENGINE_SIM_STACK_KB). A guard page below each stack turns an overflow into a SIGSEGV.
void set_stack_size(size_t bytes);
size_t stack_size();

namespace detail {

struct KernelLaunch {
  const char* name;
  const void* fn;  // identifies the kernel for cudaFuncSetAttribute
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  void (*invoke)(const void* pack);  // calls the kernel with the packed arguments
  const void* pack;
};
void launch(const KernelLaunch& l);

template <class... P>
struct KernelPack {
  void (*fn)(P...);
  std::tuple<std::decay_t<P>...> args;
  // Each CUDA thread gets its own copies of the arguments, as on the device.
  static void invoke(const void* p) {
    const auto* k = static_cast<const KernelPack*>(p);
    std::apply(k->fn, k->args);
  }
};

template <class... P>
class Launcher {
 public:
  Launcher(const char* name, void (*fn)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream)
      : name_(name), fn_(fn), grid_(grid), block_(block), smem_(smem), stream_(stream) {}

  template <class... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "LAUNCH: wrong number of kernel arguments");
    static_assert(((!std::is_reference_v<P> && std::is_trivially_copyable_v<P>)&&...),
                  "kernel parameters must be trivially copyable values, not references");
    KernelPack<P...> pack{fn_, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    launch(KernelLaunch{name_, reinterpret_cast<const void*>(fn_), grid_, block_, smem_, stream_,
                        &KernelPack<P...>::invoke, &pack});
  }

 private:
  const char* name_;
  void (*fn_)(P...);
  dim3 grid_, block_;
  size_t smem_;
  cudaStream_t stream_;
};

template <class... P>
Launcher<P...> make_launcher(const char* name, void (*fn)(P...), dim3 grid, dim3 block, size_t smem,
                             cudaStream_t stream) {
  return Launcher<P...>(name, fn, grid, block, smem, stream);
}

}  // namespace detail
}  // namespace sim

#define LAUNCH(kernel, grid, block, smem_bytes, stream) \
  ::sim::detail::make_launcher(#kernel, kernel, grid, block, smem_bytes, stream)
