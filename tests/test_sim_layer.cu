// The CUDA emulation layer (kernels/sim): barriers, shared memory, warp functions, atomics, bf16,
// launch checks, the host runtime, and the sim's bug detectors (thread orders that expose missing
// barriers, deadlock reports, guard bytes). These tests verify the emulation of CUDA itself; the
// kernels are in tests/sim_layer_kernels.cuh, which nvcc also compiles as valid device code.
// Built only in the sim build: g++ -x c++ -DENGINE_SIM.
#include <doctest/doctest.h>

#include <csignal>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engine/dtype.h"
#include "engine/philox.h"
#include "tests/sim_layer_kernels.cuh"

namespace {

using namespace sim_test;

// Device buffer owned by a test.
template <class T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count) : n(count) { REQUIRE(cudaMalloc(&p, n * sizeof(T)) == cudaSuccess); }
  explicit DevBuf(const std::vector<T>& v) : DevBuf(v.size()) { upload(v); }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void upload(const std::vector<T>& v) {
    REQUIRE(v.size() == n);
    REQUIRE(cudaMemcpy(p, v.data(), n * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  std::vector<T> download() const {
    std::vector<T> v(n);
    REQUIRE(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return v;
  }
};

#define REQUIRE_LAUNCH_OK()                       \
  do {                                            \
    cudaError_t launch_err_ = cudaGetLastError(); \
    INFO("sim: " << sim::last_error_detail());    \
    REQUIRE(launch_err_ == cudaSuccess);          \
  } while (0)

// Sets the number of OS threads for one test.
struct ScopedThreads {
  int old;
  explicit ScopedThreads(int n) : old(sim::num_threads()) { sim::set_num_threads(n); }
  ~ScopedThreads() { sim::set_num_threads(old); }
};

// Small integers as floats: every sum below is exact in float, whatever the order of additions.
std::vector<float> small_ints(size_t n, uint64_t stream) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = float(int(engine::philox_u32(7, stream, i) % 17) - 8);
  return v;
}

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

constexpr sim::ThreadOrder kOrders[] = {sim::ThreadOrder::forward, sim::ThreadOrder::reverse,
                                        sim::ThreadOrder::shuffled};
const char* order_name(sim::ThreadOrder o) {
  return o == sim::ThreadOrder::forward ? "forward" : o == sim::ThreadOrder::reverse ? "reverse" : "shuffled";
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Barriers and shared memory

TEST_CASE("sim: shared-memory tree reduction with __syncthreads, blockDim 256, 100 and 1") {
  const int n = 3001;
  const std::vector<float> x = small_ints(n, 1);
  DevBuf<float> dx(x);
  for (int block : {256, 100, 1}) {
    const int grid = (n + block - 1) / block;
    std::vector<float> expect(size_t(grid), 0.0f);
    for (int i = 0; i < n; ++i) expect[size_t(i / block)] += x[size_t(i)];
    for (sim::ThreadOrder order : kOrders) {
      sim::ScopedThreadOrder scoped(order, 11);
      CAPTURE(block);
      CAPTURE(order_name(order));
      DevBuf<float> out_s{size_t(grid)}, out_d{size_t(grid)};
      LAUNCH(block_sum_static, grid, block, 0, 0)(dx.p, out_s.p, n);
      REQUIRE_LAUNCH_OK();
      LAUNCH(block_sum_dynamic, grid, block, block * sizeof(float), 0)(dx.p, out_d.p, n);
      REQUIRE_LAUNCH_OK();
      CHECK(out_s.download() == expect);
      CHECK(out_d.download() == expect);
    }
  }
}

TEST_CASE("sim: shared memory is private to each block while blocks run on several OS threads") {
  ScopedThreads threads(4);
  const int grid = 600, block = 64;
  DevBuf<int> out{size_t(grid * block)};
  LAUNCH(shared_isolation, grid, block, 0, 0)(out.p);
  REQUIRE_LAUNCH_OK();
  const std::vector<int> got = out.download();
  int bad = 0;
  for (int b = 0; b < grid; ++b)
    for (int t = 0; t < block; ++t) bad += got[size_t(b * block + t)] != b * 1000 + block - 1 - (t + 1) % block + 1;
  CHECK(bad == 0);
}

namespace {
// Sim-only instrumentation: which OS threads ran blocks. The first block to run waits (bounded)
// until a block has run on another OS thread, so the test does not depend on how fast the pool
// wakes up, nor on the block order.
std::atomic<unsigned long long> g_first_thread{0};
std::atomic<int> g_other_thread_seen{0};
__global__ void record_os_threads(unsigned long long* ids) {
  const unsigned long long id = std::hash<std::thread::id>{}(std::this_thread::get_id()) | 1;
  if (threadIdx.x == 0) {
    ids[blockIdx.x] = id;
    unsigned long long first = 0;
    if (g_first_thread.compare_exchange_strong(first, id)) {
      for (int i = 0; i < 5000 && !g_other_thread_seen.load(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    } else if (first != id) {
      g_other_thread_seen = 1;
    }
  }
  __syncthreads();
}
}  // namespace

TEST_CASE("sim: blocks are spread over the OS threads of the pool") {
  ScopedThreads threads(4);
  CHECK(sim::num_threads() == 4);
  g_first_thread = 0;
  g_other_thread_seen = 0;
  const int grid = 64;
  DevBuf<unsigned long long> ids(grid);
  LAUNCH(record_os_threads, grid, 32, 0, 0)(ids.p);
  REQUIRE_LAUNCH_OK();
  const std::vector<unsigned long long> got = ids.download();
  const std::set<unsigned long long> distinct(got.begin(), got.end());
  CHECK(distinct.size() >= 2);
  CHECK(distinct.size() <= 4);
}

TEST_CASE("sim: dynamic shared memory, and the 48 KiB opt-in like the device") {
  const int block = 37, grid = 5, n = block * grid;
  const std::vector<float> x = small_ints(size_t(n), 2);
  DevBuf<float> dx(x), out{size_t(n)};
  LAUNCH(dynamic_two_arrays, grid, block, 2 * block * sizeof(float), 0)(dx.p, out.p);
  REQUIRE_LAUNCH_OK();
  const std::vector<float> got = out.download();
  for (int b = 0; b < grid; ++b)
    for (int t = 0; t < block; ++t)
      CHECK(got[size_t(b * block + t)] ==
            x[size_t(b * block + (t + 1) % block)] + 2 * x[size_t(b * block + block - 1 - t)]);

  // 64 KiB needs cudaFuncSetAttribute, as on the device; the launch fails without it.
  const int count = 16384;
  const size_t bytes = count * sizeof(float);
  DevBuf<float> big(count);
  REQUIRE(cudaMemset(big.p, 0, bytes) == cudaSuccess);
  LAUNCH(big_dynamic_smem, 1, 256, bytes, 0)(big.p, count);
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  CHECK(std::string(sim::last_error_detail()).find("cudaFuncSetAttribute") != std::string::npos);
  CHECK(big.download() == std::vector<float>(count, 0.0f));  // the kernel did not run
  CHECK(cudaFuncSetAttribute(big_dynamic_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024) ==
        cudaErrorInvalidValue);
  REQUIRE(cudaFuncSetAttribute(big_dynamic_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)) ==
          cudaSuccess);
  cudaGetLastError();
  LAUNCH(big_dynamic_smem, 1, 256, bytes, 0)(big.p, count);
  REQUIRE_LAUNCH_OK();
  const std::vector<float> b = big.download();
  for (int i = 0; i < count; ++i) REQUIRE(b[size_t(i)] == float(count - 1 - i));
}

TEST_CASE("sim: static and dynamic shared memory read as 0xFF bytes until written, in every block") {
  ScopedThreads threads(1);  // every block on one OS thread: leftovers of block b would show in b + 1
  const int grid = 4, block = 64;
  DevBuf<unsigned> out{size_t(grid * 2 * block)};
  LAUNCH(read_unwritten_shared, grid, block, block * sizeof(unsigned), 0)(out.p);
  REQUIRE_LAUNCH_OK();
  const std::vector<unsigned> got = out.download();
  for (int b = 0; b < grid; ++b) {
    for (int t = 0; t < block; ++t) {
      const bool written = t % 2 == b % 2;
      CHECK(got[size_t(b * 2 * block + t)] == (written ? unsigned(t) : 0xFFFFFFFFu));
      CHECK(got[size_t(b * 2 * block + block + t)] == (written ? unsigned(t) + 100 : 0xFFFFFFFFu));
    }
  }
  // Never-written device memory reads as 0xFF bytes too: NaN as floats.
  DevBuf<float> fresh(3);
  for (float f : fresh.download()) CHECK(bits_of(f) == 0xFFFFFFFFu);
}

TEST_CASE("sim: a missing __syncthreads gives the right answer in forward order only") {
  const int block = 128, grid = 3, n = block * grid;
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[size_t(i)] = float(i % 97) + 0.5f;
  std::vector<float> expect(n);
  for (int i = 0; i < n; ++i) expect[size_t(i)] = i % block > 0 ? x[size_t(i - 1)] : 0.0f;
  DevBuf<float> dx(x), out{size_t(n)};
  for (int dynamic : {0, 1}) {
    for (sim::ThreadOrder order : kOrders) {
      for (int barrier : {0, 1}) {
        sim::ScopedThreadOrder scoped(order, 3);
        CAPTURE(dynamic);
        CAPTURE(order_name(order));
        CAPTURE(barrier);
        REQUIRE(cudaMemset(out.p, 0, n * sizeof(float)) == cudaSuccess);
        if (dynamic)
          LAUNCH(neighbour_dynamic, grid, block, block * sizeof(float), 0)(dx.p, out.p, barrier);
        else
          LAUNCH(neighbour_static, grid, block, 0, 0)(dx.p, out.p, barrier);
        REQUIRE_LAUNCH_OK();
        const bool right = out.download() == expect;
        // With the barrier every order is right; without it only forward order happens to be.
        CHECK(right == (barrier || order == sim::ThreadOrder::forward));
      }
    }
  }
}

TEST_CASE("sim: __syncthreads_count, __syncthreads_and and __syncthreads_or") {
  const int block = 70, grid = 4, n = block * grid;
  std::vector<int> pred(n);
  for (int i = 0; i < n; ++i) pred[size_t(i)] = (i / block == 0) ? 1 : (i / block == 1) ? 0 : int(i % 3 == 0) * (i + 1);
  DevBuf<int> dp(pred), out{size_t(3 * n)};
  LAUNCH(barrier_votes, grid, block, 0, 0)(dp.p, out.p);
  REQUIRE_LAUNCH_OK();
  const std::vector<int> got = out.download();
  for (int b = 0; b < grid; ++b) {
    int count = 0;
    for (int t = 0; t < block; ++t) count += pred[size_t(b * block + t)] != 0;
    for (int t = 0; t < block; ++t) {
      const size_t i = size_t(3 * (b * block + t));
      CHECK(got[i] == count);
      CHECK(got[i + 1] == int(count == block));
      CHECK(got[i + 2] == int(count > 0));
    }
  }
}

TEST_CASE("sim: 3-D grids and blocks give the same indices as CUDA") {
  const dim3 grid(3, 2, 2), block(5, 3, 2);
  const int nb = 12, nt = 30;
  DevBuf<int> out{size_t(nb * nt * 6)};
  LAUNCH(write_indices, grid, block, 0, 0)(out.p);
  REQUIRE_LAUNCH_OK();
  const std::vector<int> got = out.download();
  int bad = 0;
  for (int bz = 0; bz < 2; ++bz)
    for (int by = 0; by < 2; ++by)
      for (int bx = 0; bx < 3; ++bx)
        for (int tz = 0; tz < 2; ++tz)
          for (int ty = 0; ty < 3; ++ty)
            for (int tx = 0; tx < 5; ++tx) {
              const int b = bx + 3 * (by + 2 * bz), t = tx + 5 * (ty + 3 * tz);
              const int* r = &got[size_t((b * nt + t) * 6)];
              bad += r[0] != bx || r[1] != by || r[2] != bz || r[3] != tx || r[4] != ty || r[5] != tz;
            }
  CHECK(bad == 0);
}

// ------------------------------------------------------------------------------------------------
// Warp functions

namespace {

// The source lane of a shuffle as the CUDA programming guide states it (-1: the own value), for a
// lane inside a warp of 32; the caller decides whether that lane takes part.
int guide_source(int op, int lane, int param, int width) {
  const int group = lane / width, in_group = lane % width;
  switch (op) {
    case kShflIdx: return group * width + (param % width);
    case kShflUp: return in_group >= param ? lane - param : -1;
    case kShflDown: return in_group + param < width ? lane + param : -1;
    case kShflXor: {
      const int src = lane ^ param;
      return src / width > group ? -1 : src;  // later groups are out of reach
    }
  }
  return -1;
}

template <class T>
T value_for(int t) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __float2bfloat16(float(t % 50) + 0.5f);
  else
    return T(t * 3 + 1) + T(std::is_floating_point_v<T> ? 0.25 : 0);
}

template <class T>
void check_shuffles(int threads, unsigned mask, const std::vector<int>& widths, const std::vector<int>& params) {
  std::vector<T> in(threads);
  for (int t = 0; t < threads; ++t) in[size_t(t)] = value_for<T>(t);
  DevBuf<T> din(in), dout{size_t(threads)};
  T poison;
  std::memset(static_cast<void*>(&poison), 0xFF, sizeof(T));
  for (int op : {kShflIdx, kShflUp, kShflDown, kShflXor}) {
    for (int width : widths) {
      for (int param : params) {
        if (op == kShflXor && param >= 32) continue;
        CAPTURE(op);
        CAPTURE(width);
        CAPTURE(param);
        REQUIRE(launch_shfl<T>(din.p, dout.p, threads, op, param, width, mask) == cudaSuccess);
        const std::vector<T> got = dout.download();
        int bad = 0;
        for (int t = 0; t < threads; ++t) {
          const int lane = t % 32, base = t - lane;
          T expect = in[size_t(t)];
          if ((mask >> lane) & 1u) {
            const int src = guide_source(op, lane, param, width);
            if (src >= 0 && src != lane) {
              const bool takes_part = base + src < threads && ((mask >> src) & 1u);
              expect = takes_part ? in[size_t(base + src)] : poison;  // undefined on the device
            }
          }
          bad += std::memcmp(&got[size_t(t)], &expect, sizeof(T)) != 0;
        }
        CHECK(bad == 0);
      }
    }
  }
}

}  // namespace

TEST_CASE("sim: shuffles follow the CUDA semantics for every width, type and partial warps") {
  const std::vector<int> widths = {32, 16, 8, 4, 1};
  const std::vector<int> params = {0, 1, 3, 6, 17, 31};
  for (int threads : {64, 40}) {
    CAPTURE(threads);
    check_shuffles<float>(threads, 0xffffffffu, widths, params);
    check_shuffles<double>(threads, 0xffffffffu, widths, params);
    check_shuffles<int>(threads, 0xffffffffu, widths, params);
    check_shuffles<unsigned>(threads, 0xffffffffu, {32, 8}, params);
    check_shuffles<long long>(threads, 0xffffffffu, {32, 8}, params);
    check_shuffles<__nv_bfloat16>(threads, 0xffffffffu, {32, 2}, params);
  }
  // Sub-warp masks: lanes outside the mask exit; reading them is undefined (all-ones here).
  for (unsigned mask : {0x0000ffffu, 0x55555555u, 0xf0f0f0f1u}) {
    CAPTURE(mask);
    check_shuffles<float>(64, mask, {32, 16}, {1, 2, 5});
  }
}

TEST_CASE("sim: __ballot_sync, __any_sync, __all_sync and __activemask") {
  for (int threads : {64, 40}) {
    for (unsigned mask : {0xffffffffu, 0x0000ffffu, 0x55555555u}) {
      for (int pattern = 0; pattern < 3; ++pattern) {
        CAPTURE(threads);
        CAPTURE(mask);
        CAPTURE(pattern);
        std::vector<int> pred(threads);
        for (int t = 0; t < threads; ++t)
          pred[size_t(t)] = pattern == 0   ? 1
                            : pattern == 1 ? 0
                                           : int(engine::philox_u32(5, 1, uint64_t(t)) % 3 == 0) * 7;
        DevBuf<int> dp(pred);
        DevBuf<unsigned> out{size_t(4 * threads)};
        REQUIRE(cudaMemset(out.p, 0, 4 * threads * sizeof(unsigned)) == cudaSuccess);
        LAUNCH(vote_kernel, 1, threads, 0, 0)(dp.p, out.p, mask);
        REQUIRE_LAUNCH_OK();
        const std::vector<unsigned> got = out.download();
        for (int t = 0; t < threads; ++t) {
          const int lane = t % 32, base = t - lane;
          if (!((mask >> lane) & 1u)) continue;
          unsigned exists = 0, ballot = 0;
          for (int l = 0; l < 32; ++l) {
            if (base + l >= threads || !((mask >> l) & 1u)) continue;
            exists |= 1u << l;
            if (pred[size_t(base + l)]) ballot |= 1u << l;
          }
          CHECK(got[size_t(4 * t + 0)] == ballot);
          CHECK(got[size_t(4 * t + 1)] == unsigned(ballot != 0));
          CHECK(got[size_t(4 * t + 2)] == unsigned(ballot == exists));
          CHECK(got[size_t(4 * t + 3)] == exists);
        }
      }
    }
  }
  // Divergent code: each branch's __activemask names the lanes of that branch.
  const int threads = 40;
  DevBuf<unsigned> out(threads);
  LAUNCH(activemask_divergent, 1, threads, 0, 0)(out.p);
  REQUIRE_LAUNCH_OK();
  const std::vector<unsigned> got = out.download();
  for (int t = 0; t < threads; ++t) {
    const int lane = t % 32, base = t - lane;
    unsigned same = 0;
    for (int l = 0; l < 32 && base + l < threads; ++l)
      if ((l % 3 == 0) == (lane % 3 == 0)) same |= 1u << l;
    CHECK(got[size_t(t)] == (lane % 3 == 0 ? same : same | 0x80000000u));
  }
}

TEST_CASE("sim: __reduce_*_sync over a partial warp") {
  const int threads = 40;
  std::vector<int> in(threads);
  for (int t = 0; t < threads; ++t) in[size_t(t)] = int(engine::philox_u32(9, 2, uint64_t(t)) % 1000) - 500;
  DevBuf<int> din(in), out{size_t(4 * threads)};
  LAUNCH(warp_reduce_kernel, 1, threads, 0, 0)(din.p, out.p);
  REQUIRE_LAUNCH_OK();
  const std::vector<int> got = out.download();
  for (int w = 0; w < 2; ++w) {
    int sum = 0, mn = 1 << 30, mx = -(1 << 30);
    unsigned orv = 0;
    for (int t = w * 32; t < std::min(threads, w * 32 + 32); ++t) {
      sum += in[size_t(t)];
      mn = std::min(mn, in[size_t(t)]);
      mx = std::max(mx, in[size_t(t)]);
      orv |= unsigned(in[size_t(t)]);
    }
    for (int t = w * 32; t < std::min(threads, w * 32 + 32); ++t) {
      CHECK(got[size_t(4 * t + 0)] == sum);
      CHECK(got[size_t(4 * t + 1)] == mn);
      CHECK(got[size_t(4 * t + 2)] == mx);
      CHECK(unsigned(got[size_t(4 * t + 3)]) == orv);
    }
  }
}

TEST_CASE("sim: block reduction with shuffles in a diverged `if (warp == 0)`") {
  const int n = 2999;
  const std::vector<float> x = small_ints(n, 3);
  DevBuf<float> dx(x);
  for (int block : {40, 100, 256, 1024}) {
    for (sim::ThreadOrder order : kOrders) {
      sim::ScopedThreadOrder scoped(order, 5);
      CAPTURE(block);
      CAPTURE(order_name(order));
      const int grid = (n + block - 1) / block;
      std::vector<float> expect(size_t(grid), 0.0f);
      for (int i = 0; i < n; ++i) expect[size_t(i / block)] += x[size_t(i)];
      DevBuf<float> out{size_t(grid)};
      LAUNCH(block_reduce_warp0, grid, block, 0, 0)(dx.p, out.p, n);
      REQUIRE_LAUNCH_OK();
      CHECK(out.download() == expect);
    }
  }
}

TEST_CASE("sim: a full-mask shuffle in a partial warp reads undefined values (NaN)") {
  const int threads = 40;
  const std::vector<float> x = small_ints(threads, 4);
  DevBuf<float> dx(x), out(threads);
  LAUNCH(warp_sum_full_mask, 1, threads, 0, 0)(dx.p, out.p);
  REQUIRE_LAUNCH_OK();
  const std::vector<float> got = out.download();
  float warp0 = 0;
  for (int t = 0; t < 32; ++t) warp0 += x[size_t(t)];
  for (int t = 0; t < 32; ++t) CHECK(got[size_t(t)] == warp0);
  for (int t = 32; t < threads; ++t) CHECK(std::isnan(got[size_t(t)]));  // lanes 8-31 of warp 1 do not exist
}

// ------------------------------------------------------------------------------------------------
// Atomics and bf16

TEST_CASE("sim: atomics are exact under many blocks on several OS threads") {
  ScopedThreads threads(4);
  const int n = 64 * 256 - 7;
  std::vector<int> vals(n);
  for (int i = 0; i < n; ++i) vals[size_t(i)] = int(engine::philox_u32(3, 3, uint64_t(i)) % 201) - 100;
  DevBuf<int> dv(vals);
  DevBuf<int> isum(1), isub(1), imax(1), imin(1), cas(1), slot(1), exch{size_t(n)};
  DevBuf<float> fsum(1);
  DevBuf<double> dsum(1);
  DevBuf<unsigned long long> usum(1);
  DevBuf<unsigned> umax(1), umin(1);
  DevBuf<__nv_bfloat16> bsum(1);
  isum.upload({0});
  isub.upload({0});
  imax.upload({-1000000});
  imin.upload({1000000});
  cas.upload({0});
  slot.upload({-1});
  fsum.upload({0.0f});
  dsum.upload({0.0});
  usum.upload({0});
  umax.upload({0});
  umin.upload({0xffffffffu});
  bsum.upload({__float2bfloat16(0.0f)});
  AtomicTargets a{isum.p, isub.p, fsum.p, dsum.p, usum.p, imax.p, imin.p,
                  umax.p, umin.p, cas.p,  slot.p, exch.p, bsum.p};
  LAUNCH(atomics_kernel, (n + 255) / 256, 256, 0, 0)(dv.p, n, a);
  REQUIRE_LAUNCH_OK();

  long long s = 0;
  int mx = -1000000, mn = 1000000;
  for (int v : vals) {
    s += v;
    mx = std::max(mx, v);
    mn = std::min(mn, v);
  }
  CHECK(isum.download()[0] == s);
  CHECK(isub.download()[0] == -s);
  CHECK(fsum.download()[0] == float(s));
  CHECK(dsum.download()[0] == 0.5 * double(s));
  CHECK(usum.download()[0] == static_cast<unsigned long long>(s + 1000LL * n));
  CHECK(imax.download()[0] == mx);
  CHECK(imin.download()[0] == mn);
  CHECK(umax.download()[0] == unsigned(mx + 1000));
  CHECK(umin.download()[0] == unsigned(mn + 1000));
  CHECK(cas.download()[0] == n);
  CHECK(float(bsum.download()[0]) == 200.0f);
  // atomicExch: the old values plus the final one are -1 and every thread id, each exactly once.
  std::vector<int> seen = exch.download();
  seen.push_back(slot.download()[0]);
  std::sort(seen.begin(), seen.end());
  std::vector<int> expect(size_t(n) + 1);
  for (int i = 0; i <= n; ++i) expect[size_t(i)] = i - 1;
  CHECK(seen == expect);
}

TEST_CASE("sim: bf16 conversion is bit-exact with engine::bf16 (ties, NaN, Inf, denormals)") {
  std::vector<uint32_t> patterns;
  // For every bf16 value: exactly halfway to the next one (ties), just below, just above, exact.
  for (uint32_t hi = 0; hi < 65536; hi += 3) {
    for (uint32_t lo : {0x0000u, 0x8000u, 0x7fffu, 0x8001u}) patterns.push_back(hi << 16 | lo);
  }
  for (uint32_t u : {0x7f800000u, 0xff800000u, 0x7f800001u, 0x7fc00000u, 0xffc00001u, 0x7fffffffu, 0xff812345u,
                     0x00000001u, 0x80000001u, 0x007fffffu, 0x00008000u, 0x00018000u, 0x7f7fffffu, 0xff7fffffu,
                     0x7f7f8000u, 0x00000000u, 0x80000000u})
    patterns.push_back(u);
  int bad = 0;
  for (uint32_t u : patterns) {
    float f;
    std::memcpy(&f, &u, 4);
    const uint16_t expect = engine::bf16::from_float(f);
    bad += __bfloat16_as_ushort(__float2bfloat16(f)) != expect;
    bad += __bfloat16_as_ushort(__float2bfloat16_rn(f)) != expect;
    bad += __bfloat16_as_ushort(__nv_bfloat16(f)) != expect;
    bad += bits_of(__bfloat162float(__ushort_as_bfloat16(expect))) != bits_of(engine::bf16::to_float(expect));
  }
  CHECK(patterns.size() > 80000);
  CHECK(bad == 0);

  // The same through a kernel.
  const int n = 4099;
  std::vector<float> in(n);
  for (int i = 0; i < n; ++i) {
    const uint32_t u = patterns[size_t(i) * 23 % patterns.size()];
    std::memcpy(&in[size_t(i)], &u, 4);
  }
  DevBuf<float> din(in), back{size_t(n)};
  DevBuf<unsigned short> bits{size_t(n)};
  LAUNCH(bf16_convert, (n + 127) / 128, 128, 0, 0)(din.p, bits.p, back.p, n);
  REQUIRE_LAUNCH_OK();
  const std::vector<unsigned short> b = bits.download();
  const std::vector<float> r = back.download();
  bad = 0;
  for (int i = 0; i < n; ++i) {
    bad += b[size_t(i)] != engine::bf16::from_float(in[size_t(i)]);
    bad += bits_of(r[size_t(i)]) != bits_of(engine::bf16::to_float(b[size_t(i)]));
  }
  CHECK(bad == 0);

  // double -> bf16 rounds once: going through float first would round these the wrong way.
  const double one = 1.0, u8 = std::ldexp(1.0, -8), u30 = std::ldexp(1.0, -30);
  CHECK(float(__double2bfloat16(one + u8 + u30)) == float(one + 2 * u8));      // just above a tie: up
  CHECK(float(__double2bfloat16(one + 3 * u8 - u30)) == float(one + 2 * u8));  // just below a tie: down
  CHECK(float(__double2bfloat16(-(one + u8 + u30))) == -float(one + 2 * u8));
  CHECK(float(__double2bfloat16(one + u8)) == 1.0f);  // a tie: to even
  CHECK(std::isinf(float(__double2bfloat16(1e300))));
  CHECK(float(__double2bfloat16(1e-300)) == 0.0f);

  // Arithmetic: one rounding of the exact float result.
  const __nv_bfloat16 x = __float2bfloat16(1.5f), y = __float2bfloat16(-0.3f);
  CHECK(__bfloat16_as_ushort(x + y) == engine::bf16::from_float(float(x) + float(y)));
  CHECK(__bfloat16_as_ushort(x * y) == engine::bf16::from_float(float(x) * float(y)));
  CHECK(__bfloat16_as_ushort(x - y) == engine::bf16::from_float(float(x) - float(y)));
  CHECK(__bfloat16_as_ushort(-x) == (__bfloat16_as_ushort(x) ^ 0x8000u));
  CHECK(float(__hmax(x, y)) == 1.5f);
  CHECK(sizeof(__nv_bfloat16) == 2);
  CHECK(sizeof(__nv_bfloat162) == 4);
  const float2 p = __bfloat1622float2(__floats2bfloat162_rn(0.1f, 3.0f));
  CHECK(p.x == engine::bf16::to_float(engine::bf16::from_float(0.1f)));
  CHECK(p.y == 3.0f);
}

TEST_CASE("sim: vector types have the device's sizes and alignments") {
  CHECK(alignof(float4) == 16);
  CHECK(alignof(int4) == 16);
  CHECK(alignof(uint4) == 16);
  CHECK(alignof(double2) == 16);
  CHECK(alignof(float2) == 8);
  CHECK(alignof(int2) == 8);
  const float4 v = make_float4(1, 2, 3, 4);
  CHECK(v.w == 4.0f);
  CHECK(make_int2(3, -1).y == -1);
  CHECK(make_double2(0.5, 2.5).y == 2.5);
  CHECK(__saturatef(-1.0f) == 0.0f);
  CHECK(__saturatef(2.0f) == 1.0f);
  CHECK(__saturatef(NAN) == 0.0f);
  CHECK(__float_as_int(1.0f) == 0x3f800000);
  CHECK(__int_as_float(0x7f800000) == CUDART_INF_F);
  CHECK(rsqrtf(4.0f) == 0.5f);
  CHECK(min(3, 5u) == 3u);
  CHECK(max(-1.5f, 2.0f) == 2.0f);
  CHECK(__popc(0xf0f0u) == 8);
  CHECK(__ffs(8) == 4);
  CHECK(__clz(1) == 31);
}

// ------------------------------------------------------------------------------------------------
// Launch checks and errors

TEST_CASE("sim: invalid launch configurations are rejected like CUDA's") {
  DevBuf<float> x(4), y(4);
  REQUIRE(cudaMemset(y.p, 0, 4 * sizeof(float)) == cudaSuccess);
  cudaGetLastError();
  struct Case {
    dim3 grid, block;
    size_t smem;
    cudaError_t expect;
  };
  const Case cases[] = {
      {dim3(1), dim3(1025), 0, cudaErrorInvalidConfiguration},
      {dim3(1), dim3(32, 32, 2), 0, cudaErrorInvalidConfiguration},
      {dim3(1), dim3(1, 1, 65), 0, cudaErrorInvalidConfiguration},
      {dim3(0), dim3(32), 0, cudaErrorInvalidConfiguration},
      {dim3(1), dim3(0), 0, cudaErrorInvalidConfiguration},
      {dim3(1, 65536), dim3(32), 0, cudaErrorInvalidConfiguration},
      {dim3(1), dim3(32), 48 * 1024 + 1, cudaErrorInvalidValue},
  };
  for (const Case& c : cases) {
    CAPTURE(c.block.x);
    CAPTURE(c.grid.x);
    LAUNCH(scale2, c.grid, c.block, c.smem, 0)(x.p, y.p, 4);
    CHECK(cudaPeekAtLastError() == c.expect);
    CHECK(cudaGetLastError() == c.expect);
    CHECK(cudaGetLastError() == cudaSuccess);  // reading the error clears it
    CHECK(std::string(sim::last_error_detail()).find("scale2") != std::string::npos);
  }
  CHECK(y.download() == std::vector<float>(4, 0.0f));              // nothing ran
  LAUNCH(scale2, dim3(1), dim3(1024), 48 * 1024, 0)(x.p, y.p, 4);  // the limits themselves are fine
  CHECK(cudaGetLastError() == cudaSuccess);

  cudaStream_t s;
  REQUIRE(cudaStreamCreate(&s) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(s) == cudaSuccess);
  LAUNCH(scale2, 1, 32, 0, s)(x.p, y.p, 4);
  CHECK(cudaGetLastError() == cudaErrorInvalidResourceHandle);
}

namespace {
// Sim-only: a C++ exception thrown by kernel code.
__global__ void throws_in_kernel(float* out) {
  if (blockIdx.x == 2 && threadIdx.x == 7) throw std::runtime_error("boom from the kernel");
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}
}  // namespace

TEST_CASE("sim: an exception or __trap in a kernel is a launch error, not a crash") {
  ScopedThreads threads(2);
  DevBuf<float> out(8 * 64);
  LAUNCH(trap_in_block, 8, 64, 0, 0)(3, out.p);
  CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
  std::string detail = sim::last_error_detail();
  CHECK(detail.find("trap_in_block") != std::string::npos);
  CHECK(detail.find("block (3,0,0)") != std::string::npos);
  CHECK(detail.find("thread (5,0,0)") != std::string::npos);
  CHECK(detail.find("__trap") != std::string::npos);

  LAUNCH(throws_in_kernel, 8, 64, 0, 0)(out.p);
  CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
  detail = sim::last_error_detail();
  CHECK(detail.find("block (2,0,0) thread (7,0,0)") != std::string::npos);
  CHECK(detail.find("boom from the kernel") != std::string::npos);

  // CUDA_CHECK turns the error into an engine::Error with the sim's detail.
  LAUNCH(throws_in_kernel, 8, 64, 0, 0)(out.p);
  CHECK_THROWS_WITH_AS([] { CUDA_CHECK(cudaGetLastError()); }(), doctest::Contains("boom from the kernel"),
                       engine::Error);

  // The errors are not sticky: the next launch runs normally.
  const std::vector<float> x = small_ints(300, 6);
  DevBuf<float> dx(x), sums(3);
  LAUNCH(block_sum_static, 3, 100, 0, 0)(dx.p, sums.p, 300);
  REQUIRE_LAUNCH_OK();
  std::vector<float> expect(3, 0.0f);
  for (int i = 0; i < 300; ++i) expect[size_t(i / 100)] += x[size_t(i)];
  CHECK(sums.download() == expect);
}

TEST_CASE("sim: deadlocks and misused warp functions are reported with the block, not hung") {
  DevBuf<float> out(4 * 64);
  LAUNCH(divergent_barrier, 4, 64, 0, 0)(1, out.p);
  CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
  std::string detail = sim::last_error_detail();
  CHECK(detail.find("divergent_barrier") != std::string::npos);
  CHECK(detail.find("block (1,0,0)") != std::string::npos);
  CHECK(detail.find("deadlock") != std::string::npos);
  CHECK(detail.find("54 of 64 threads wait at __syncthreads but 10 have exited") != std::string::npos);

  LAUNCH(warp_deadlock, 1, 64, 0, 0)(out.p);
  CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
  detail = sim::last_error_detail();
  CHECK(detail.find("deadlock") != std::string::npos);
  CHECK(detail.find("__shfl_xor_sync(mask 0xffffffff)") != std::string::npos);
  CHECK(detail.find("lanes 16-31") != std::string::npos);
  CHECK(detail.find("waiting at __syncthreads") != std::string::npos);

  LAUNCH(warp_mismatch, 1, 32, 0, 0)(out.p);
  CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
  detail = sim::last_error_detail();
  CHECK(detail.find("__shfl_xor_sync") != std::string::npos);
  CHECK(detail.find("__shfl_down_sync") != std::string::npos);

  LAUNCH(shfl_without_own_lane, 1, 32, 0, 0)(out.p);
  CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
  CHECK(std::string(sim::last_error_detail()).find("not in its mask 0x00000001") != std::string::npos);

  // Every order reports the divergent barrier.
  for (sim::ThreadOrder order : kOrders) {
    sim::ScopedThreadOrder scoped(order, 9);
    LAUNCH(divergent_barrier, 4, 64, 0, 0)(2, out.p);
    CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
    CHECK(std::string(sim::last_error_detail()).find("block (2,0,0)") != std::string::npos);
  }
}

#if !defined(__SANITIZE_ADDRESS__)  // under AddressSanitizer these writes are reported by ASan itself
TEST_CASE("sim: writes past a device allocation or dynamic shared memory fail the launch") {
  DevBuf<float> out(10);
  LAUNCH(write_past_end, 1, 32, 0, 0)(out.p, 10);
  CHECK(cudaGetLastError() == cudaErrorIllegalAddress);
  CHECK(std::string(sim::last_error_detail()).find("device allocation of 40 bytes") != std::string::npos);
  LAUNCH(dynamic_smem_overflow, 2, 32, 32 * sizeof(float), 0)(out.p);
  CHECK(cudaGetLastError() == cudaErrorIllegalAddress);
  CHECK(std::string(sim::last_error_detail()).find("dynamic shared memory") != std::string::npos);
}
#endif

#if !defined(__SANITIZE_ADDRESS__)  // ASan reports the overflow itself
namespace {
// Sim-only: recursion far deeper than a fiber stack (about 2 MiB of frames).
__device__ NOINLINE float deep(int depth) {
  volatile float pad[256];
  pad[depth % 256] = float(depth);
  return depth == 0 ? pad[0] : pad[depth % 256] + deep(depth - 1);
}
__global__ void overflow_stack(float* out) {
  __syncthreads();  // from here on, every thread but the first runs on a fiber stack
  out[threadIdx.x] = deep(2000);
}
}  // namespace

TEST_CASE("sim: a fiber stack overflow faults on the guard page instead of corrupting memory") {
  DevBuf<float> out(64);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {  // the child overflows and should die of SIGSEGV
    std::signal(SIGSEGV, SIG_DFL);  // not doctest's crash reporter: the crash is the expected result
    sim::set_num_threads(1);
    LAUNCH(overflow_stack, 1, 64, 0, 0)(out.p);
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGSEGV);
}
#endif

// ------------------------------------------------------------------------------------------------
// Host runtime

TEST_CASE("sim: cudaMalloc, cudaMemcpy round trip, cudaMemset, bounds and double free") {
  const size_t base_count = sim::live_allocation_count();
  float* d = nullptr;
  REQUIRE(cudaMalloc(&d, 100 * sizeof(float)) == cudaSuccess);
  CHECK(reinterpret_cast<uintptr_t>(d) % 256 == 0);
  CHECK(sim::live_allocation_count() == base_count + 1);
  sim::Allocation info{};
  REQUIRE(sim::find_allocation(d + 50, &info));
  CHECK(info.base == d);
  CHECK(info.size == 400);
  CHECK_FALSE(sim::find_allocation(d + 100, nullptr));

  std::vector<float> h(100), back(100, -1.0f);
  for (int i = 0; i < 100; ++i) h[size_t(i)] = float(i) * 0.25f;
  CHECK(cudaMemcpy(d, h.data(), 400, cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK(cudaMemcpy(back.data(), d, 400, cudaMemcpyDeviceToHost) == cudaSuccess);
  CHECK(back == h);
  float* d2 = nullptr;
  REQUIRE(cudaMallocAsync(&d2, 400, 0) == cudaSuccess);
  CHECK(cudaMemcpy(d2, d, 400, cudaMemcpyDeviceToDevice) == cudaSuccess);
  std::fill(back.begin(), back.end(), 0.0f);
  CHECK(cudaMemcpy(back.data(), d2, 400, cudaMemcpyDefault) == cudaSuccess);
  CHECK(back == h);
  CHECK(cudaMemset(d2 + 10, 0, 5 * sizeof(float)) == cudaSuccess);
  CHECK(cudaMemcpy(back.data(), d2, 400, cudaMemcpyDeviceToHost) == cudaSuccess);
  for (int i = 0; i < 100; ++i) CHECK(back[size_t(i)] == (i >= 10 && i < 15 ? 0.0f : h[size_t(i)]));

  // Copies and memsets must stay inside one allocation.
  CHECK(cudaMemcpy(d + 1, h.data(), 400, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  CHECK(std::string(sim::last_error_detail()).find("holds 400 bytes") != std::string::npos);
  CHECK(cudaMemcpy(back.data(), h.data(), 400, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
  CHECK(cudaMemset(d2, 0, 401) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(d, h.data(), 4, cudaMemcpyKind(7)) == cudaErrorInvalidMemcpyDirection);
  CHECK(cudaGetLastError() == cudaErrorInvalidMemcpyDirection);  // failed API calls set the last error

  CHECK(cudaFree(d) == cudaSuccess);
  CHECK(cudaFree(d) == cudaErrorInvalidValue);  // double free
  CHECK(std::string(sim::last_error_detail()).find("double free") != std::string::npos);
  CHECK(cudaFreeAsync(d2, 0) == cudaSuccess);
  CHECK(cudaFree(h.data()) == cudaErrorInvalidValue);  // not a device pointer
  CHECK(cudaFree(nullptr) == cudaSuccess);
  CHECK(sim::live_allocation_count() == base_count);
  void* z = &back;
  CHECK(cudaMalloc(&z, 0) == cudaSuccess);
  CHECK(z == nullptr);
  cudaGetLastError();

  void* pinned = nullptr;
  REQUIRE(cudaMallocHost(&pinned, 1000) == cudaSuccess);
  CHECK(cudaFreeHost(pinned) == cudaSuccess);
  CHECK(cudaFreeHost(pinned) == cudaErrorInvalidValue);
  cudaGetLastError();
}

TEST_CASE("sim: __constant__ memory filled with cudaMemcpyToSymbol") {
  const float coef[2] = {3.0f, -1.0f};
  REQUIRE(cudaMemcpyToSymbol(c_affine, coef, sizeof coef) == cudaSuccess);
  CHECK(cudaMemcpyToSymbol(c_affine, coef, sizeof coef, 4) == cudaErrorInvalidValue);  // past its end
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  const std::vector<float> x = small_ints(33, 8);
  DevBuf<float> dx(x), y(33);
  LAUNCH(affine_from_constant, 2, 32, 0, 0)(dx.p, y.p, 33);
  REQUIRE_LAUNCH_OK();
  const std::vector<float> got = y.download();
  for (int i = 0; i < 33; ++i) CHECK(got[size_t(i)] == 3.0f * x[size_t(i)] - 1.0f);
}

TEST_CASE("sim: streams run work in order and events measure real time") {
  cudaStream_t s;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  cudaEvent_t start, stop, untimed;
  REQUIRE(cudaEventCreate(&start) == cudaSuccess);
  REQUIRE(cudaEventCreate(&stop) == cudaSuccess);
  REQUIRE(cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming) == cudaSuccess);

  const int n = 1000;
  std::vector<float> h(n);
  for (int i = 0; i < n; ++i) h[size_t(i)] = float(i);
  float *x = nullptr, *y = nullptr;
  REQUIRE(cudaMallocAsync(&x, n * sizeof(float), s) == cudaSuccess);
  REQUIRE(cudaMallocAsync(&y, n * sizeof(float), s) == cudaSuccess);
  CHECK(cudaEventRecord(start, s) == cudaSuccess);
  CHECK(cudaMemcpyAsync(x, h.data(), n * sizeof(float), cudaMemcpyHostToDevice, s) == cudaSuccess);
  CHECK(launch_scale2(x, y, n, s) == cudaSuccess);
  CHECK(launch_scale2(y, x, n, s) == cudaSuccess);  // in order: sees the first launch's output
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(cudaEventRecord(stop, s) == cudaSuccess);
  CHECK(cudaStreamWaitEvent(0, stop) == cudaSuccess);
  std::vector<float> back(n);
  CHECK(cudaMemcpyAsync(back.data(), x, n * sizeof(float), cudaMemcpyDeviceToHost, s) == cudaSuccess);
  CHECK(cudaStreamSynchronize(s) == cudaSuccess);
  CHECK(cudaEventSynchronize(stop) == cudaSuccess);
  for (int i = 0; i < n; ++i) CHECK(back[size_t(i)] == 4.0f * float(i));

  float ms = -1;
  CHECK(cudaEventElapsedTime(&ms, start, stop) == cudaSuccess);
  CHECK(ms >= 15.0f);  // the events bracket a 20 ms sleep
  CHECK(cudaEventElapsedTime(&ms, start, untimed) == cudaErrorInvalidResourceHandle);
  CHECK(cudaDeviceSynchronize() == cudaSuccess);

  CHECK(cudaFreeAsync(x, s) == cudaSuccess);
  CHECK(cudaFreeAsync(y, s) == cudaSuccess);
  CHECK(cudaEventDestroy(start) == cudaSuccess);
  CHECK(cudaEventDestroy(stop) == cudaSuccess);
  CHECK(cudaEventDestroy(untimed) == cudaSuccess);
  CHECK(cudaEventDestroy(untimed) == cudaErrorInvalidResourceHandle);
  CHECK(cudaStreamDestroy(s) == cudaSuccess);
  CHECK(cudaStreamDestroy(s) == cudaErrorInvalidResourceHandle);
  CHECK(cudaStreamSynchronize(s) == cudaErrorInvalidResourceHandle);
  CHECK(cudaMemcpyAsync(back.data(), back.data(), 4, cudaMemcpyHostToHost, s) == cudaErrorInvalidResourceHandle);
  cudaGetLastError();
}

TEST_CASE("sim: one sm_90 device with plausible properties") {
  int count = 0, dev = -1;
  CHECK(cudaGetDeviceCount(&count) == cudaSuccess);
  CHECK(count == 1);
  CHECK(cudaSetDevice(0) == cudaSuccess);
  CHECK(cudaSetDevice(1) == cudaErrorInvalidDevice);
  CHECK(cudaGetDevice(&dev) == cudaSuccess);
  CHECK(dev == 0);
  cudaDeviceProp p;
  REQUIRE(cudaGetDeviceProperties(&p, 0) == cudaSuccess);
  CHECK(p.major == 9);
  CHECK(p.minor == 0);
  CHECK(p.multiProcessorCount == 132);
  CHECK(p.warpSize == 32);
  CHECK(p.maxThreadsPerBlock == 1024);
  CHECK(p.sharedMemPerBlockOptin == 227 * 1024);
  int v = 0;
  CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0) == cudaSuccess);
  CHECK(v == 227 * 1024);
  CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0) == cudaSuccess);
  CHECK(v == 132);
  CHECK(std::string(cudaGetErrorString(cudaErrorInvalidConfiguration)) == "invalid configuration argument");
  CHECK(std::string(cudaGetErrorName(cudaErrorLaunchFailure)) == "cudaErrorLaunchFailure");
  cudaGetLastError();
}
