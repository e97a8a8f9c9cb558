// Kernels that exercise the CUDA emulation layer (kernels/sim). They are ordinary CUDA: the sim
// test suite (tests/test_sim_layer.cu) runs them on the CPU, and nvcc compiles this header on its
// own as a check that they are valid device code:
//   nvcc -std=c++20 -arch=sm_90 -I. -x cu -c tests/sim_layer_kernels.cuh -o /dev/null
// Some of them are deliberately wrong (a missing barrier, a barrier in divergent code, reads of
// lanes that do not exist): the tests check that the sim exposes those bugs.
#ifndef ENGINE_TESTS_SIM_LAYER_KERNELS_CUH
#define ENGINE_TESTS_SIM_LAYER_KERNELS_CUH
#include "kernels/cuda/compat.h"

namespace sim_test {

__device__ __forceinline__ int linear_tid() {
  return int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}

__device__ __forceinline__ int next_pow2(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Per-block sum of x by a shared-memory tree (any blockDim.x <= 1024).
__global__ void block_sum_static(const float* x, float* out, int n) {
  SHARED(float, buf, [1024]);
  const int t = threadIdx.x, g = blockIdx.x * blockDim.x + t;
  buf[t] = g < n ? x[g] : 0.0f;
  __syncthreads();
  for (int s = next_pow2(blockDim.x) / 2; s > 0; s >>= 1) {
    if (t < s && t + s < int(blockDim.x)) buf[t] += buf[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = buf[0];
}

// The same with dynamic shared memory (blockDim.x floats).
__global__ void block_sum_dynamic(const float* x, float* out, int n) {
  DYNAMIC_SHARED(float, buf);
  const int t = threadIdx.x, g = blockIdx.x * blockDim.x + t;
  buf[t] = g < n ? x[g] : 0.0f;
  __syncthreads();
  for (int s = next_pow2(blockDim.x) / 2; s > 0; s >>= 1) {
    if (t < s && t + s < int(blockDim.x)) buf[t] += buf[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = buf[0];
}

// Each block fills its shared memory with values of its own, reads them back through other
// threads twice; blocks running at the same time on other OS threads must not interfere.
__global__ void shared_isolation(int* out) {
  SHARED(int, buf, [256]);
  const int t = threadIdx.x, T = blockDim.x;
  buf[t] = int(blockIdx.x) * 1000 + t;
  __syncthreads();
  const int v = buf[T - 1 - t];
  __syncthreads();
  buf[t] = v + 1;
  __syncthreads();
  out[blockIdx.x * T + t] = buf[(t + 1) % T];
}

// Two arrays carved out of dynamic shared memory (2 * blockDim.x floats).
__global__ void dynamic_two_arrays(const float* x, float* out) {
  DYNAMIC_SHARED(float, a);
  const int T = blockDim.x, t = threadIdx.x, g = blockIdx.x * T + t;
  float* b = a + T;
  a[t] = x[g];
  b[t] = 2.0f * x[g];
  __syncthreads();
  out[g] = a[(t + 1) % T] + b[T - 1 - t];
}

// Block b writes only the slots with t % 2 == b % 2 of a static and a dynamic shared array, then
// every slot is read back: the others must read as the 0xFF fill, in every block.
__global__ void read_unwritten_shared(unsigned* out) {
  SHARED(unsigned, s, [64]);
  DYNAMIC_SHARED(unsigned, d);
  const int t = threadIdx.x, T = blockDim.x;
  if (t % 2 == int(blockIdx.x % 2)) {
    s[t] = unsigned(t);
    d[t] = unsigned(t) + 100;
  }
  __syncthreads();
  out[blockIdx.x * 2 * T + t] = s[t];
  out[blockIdx.x * 2 * T + T + t] = d[t];
}

// Fills `count` floats of dynamic shared memory and reads them back reversed.
__global__ void big_dynamic_smem(float* out, int count) {
  DYNAMIC_SHARED(float, s);
  for (int i = threadIdx.x; i < count; i += blockDim.x) s[i] = float(i);
  __syncthreads();
  for (int i = threadIdx.x; i < count; i += blockDim.x) out[i] = s[count - 1 - i];
}

// Thread t reads the slot its lower neighbour wrote. Correct only with the barrier.
__global__ void neighbour_static(const float* x, float* out, int use_barrier) {
  SHARED(float, s, [1024]);
  const int t = threadIdx.x, g = blockIdx.x * blockDim.x + t;
  s[t] = x[g];
  if (use_barrier) __syncthreads();
  out[g] = t > 0 ? s[t - 1] : 0.0f;
}
__global__ void neighbour_dynamic(const float* x, float* out, int use_barrier) {
  DYNAMIC_SHARED(float, s);
  const int t = threadIdx.x, g = blockIdx.x * blockDim.x + t;
  s[t] = x[g];
  if (use_barrier) __syncthreads();
  out[g] = t > 0 ? s[t - 1] : 0.0f;
}

enum ShflOp { kShflIdx = 0, kShflUp = 1, kShflDown = 2, kShflXor = 3 };

// One shuffle per thread; lanes outside `mask` exit without taking part.
template <class T>
__global__ void shfl_kernel(const T* in, T* out, int op, int param, int width, unsigned mask) {
  const int t = linear_tid(), lane = t % 32;
  if (!((mask >> lane) & 1u)) {
    out[t] = in[t];
    return;
  }
  const T v = in[t];
  T r = v;
  switch (op) {
    case kShflIdx: r = __shfl_sync(mask, v, param, width); break;
    case kShflUp: r = __shfl_up_sync(mask, v, unsigned(param), width); break;
    case kShflDown: r = __shfl_down_sync(mask, v, unsigned(param), width); break;
    case kShflXor: r = __shfl_xor_sync(mask, v, param, width); break;
  }
  out[t] = r;
}

template <class T>
inline cudaError_t launch_shfl(const T* in, T* out, int threads, int op, int param, int width, unsigned mask) {
  LAUNCH((shfl_kernel<T>), 1, threads, 0, 0)(in, out, op, param, width, mask);
  return cudaGetLastError();
}

// Votes: out[4t..4t+3] = ballot, any, all, activemask; lanes outside `mask` exit first.
__global__ void vote_kernel(const int* pred, unsigned* out, unsigned mask) {
  const int t = linear_tid(), lane = t % 32;
  if (!((mask >> lane) & 1u)) return;
  const int p = pred[t];
  out[4 * t + 0] = __ballot_sync(mask, p);
  out[4 * t + 1] = unsigned(__any_sync(mask, p));
  out[4 * t + 2] = unsigned(__all_sync(mask, p));
  out[4 * t + 3] = __activemask();
}

// __activemask in divergent code: lanes with lane % 3 == 0 take one branch, the others another.
__global__ void activemask_divergent(unsigned* out) {
  const int t = linear_tid();
  if (t % 32 % 3 == 0) {
    out[t] = __activemask();
  } else {
    out[t] = __activemask() | 0x80000000u;
  }
}

// sm_80 warp reductions over the whole (possibly partial) warp: out[4t..4t+3] = add, min, max, or.
__global__ void warp_reduce_kernel(const int* in, int* out) {
  const int t = linear_tid();
  const unsigned m = __ballot_sync(0xffffffffu, 1);
  out[4 * t + 0] = __reduce_add_sync(m, in[t]);
  out[4 * t + 1] = __reduce_min_sync(m, in[t]);
  out[4 * t + 2] = __reduce_max_sync(m, in[t]);
  out[4 * t + 3] = int(__reduce_or_sync(m, unsigned(in[t])));
}

// Block sum: warp sums with a mask of the lanes that exist, then warp 0 alone (a diverged
// `if (warp == 0)`) adds the per-warp partial sums.
__global__ void block_reduce_warp0(const float* x, float* out, int n) {
  SHARED(float, partial, [32]);
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  const int nwarps = (int(blockDim.x) + 31) / 32, g = blockIdx.x * blockDim.x + t;
  float v = g < n ? x[g] : 0.0f;
  const unsigned m = __ballot_sync(0xffffffffu, 1);
  for (int off = 16; off > 0; off >>= 1) {
    const float o = __shfl_down_sync(m, v, unsigned(off));
    if (lane + off < 32 && ((m >> (lane + off)) & 1u)) v += o;
  }
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? partial[lane] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0) out[blockIdx.x] = v;
  }
}

// A bug: a full-mask butterfly sum in a partial warp reads lanes that do not exist.
__global__ void warp_sum_full_mask(const float* x, float* out) {
  const int t = threadIdx.x;
  float v = x[t];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  out[t] = v;
}

// __syncthreads_count / _and / _or.
__global__ void barrier_votes(const int* pred, int* out) {
  const int t = threadIdx.x, g = blockIdx.x * blockDim.x + t;
  const int p = pred[g];
  const int c = __syncthreads_count(p);
  const int a = __syncthreads_and(p);
  const int o = __syncthreads_or(p);
  out[3 * g + 0] = c;
  out[3 * g + 1] = a;
  out[3 * g + 2] = o;
}

// Every thread writes its coordinates; checks the 3-D index mapping.
__global__ void write_indices(int* out) {
  const int b = int(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z));
  const int nt = int(blockDim.x * blockDim.y * blockDim.z);
  const int i = (b * nt + linear_tid()) * 6;
  out[i + 0] = int(blockIdx.x);
  out[i + 1] = int(blockIdx.y);
  out[i + 2] = int(blockIdx.z);
  out[i + 3] = int(threadIdx.x);
  out[i + 4] = int(threadIdx.y);
  out[i + 5] = int(threadIdx.z);
}

struct AtomicTargets {
  int* isum;
  int* isub;
  float* fsum;
  double* dsum;
  unsigned long long* usum;
  int* imax;
  int* imin;
  unsigned* umax;
  unsigned* umin;
  int* cas_counter;
  int* exch_slot;
  int* exch_out;
  __nv_bfloat16* bsum;
};

__global__ void atomics_kernel(const int* vals, int n, AtomicTargets a) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= n) return;
  const int v = vals[g];
  atomicAdd(a.isum, v);
  atomicSub(a.isub, v);
  atomicAdd(a.fsum, float(v));
  atomicAdd(a.dsum, 0.5 * v);
  atomicAdd(a.usum, static_cast<unsigned long long>(v + 1000));
  atomicMax(a.imax, v);
  atomicMin(a.imin, v);
  atomicMax(a.umax, unsigned(v + 1000));
  atomicMin(a.umin, unsigned(v + 1000));
  int old = *a.cas_counter, assumed;
  do {
    assumed = old;
    old = atomicCAS(a.cas_counter, assumed, assumed + 1);
  } while (old != assumed);
  a.exch_out[g] = atomicExch(a.exch_slot, g);
  if (g < 200) atomicAdd(a.bsum, __float2bfloat16(1.0f));
}

// bf16 conversions as kernels use them.
__global__ void bf16_convert(const float* in, unsigned short* bits, float* back, int n) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= n) return;
  const __nv_bfloat16 h = __float2bfloat16(in[g]);
  bits[g] = __bfloat16_as_ushort(h);
  back[g] = __bfloat162float(__ushort_as_bfloat16(bits[g]));
}

// Thread 5 of block `bad_block` traps while the others wait at a barrier.
__global__ void trap_in_block(int bad_block, float* out) {
  if (int(blockIdx.x) == bad_block && threadIdx.x == 5) __trap();
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}

// A bug: in block `bad_block` ten threads return before a __syncthreads.
__global__ void divergent_barrier(int bad_block, float* out) {
  if (int(blockIdx.x) == bad_block && threadIdx.x < 10) return;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}

// A bug: half a warp waits in a full-mask shuffle while the other half waits at __syncthreads.
__global__ void warp_deadlock(float* out) {
  float v = float(threadIdx.x);
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  __syncthreads();
  out[threadIdx.x] = v;
}

// A bug: the lanes named in one mask call different shuffles.
__global__ void warp_mismatch(float* out) {
  float v = float(threadIdx.x);
  if (threadIdx.x < 16)
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  else
    v = __shfl_down_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// A bug: lane 1 calls a shuffle whose mask does not include itself.
__global__ void shfl_without_own_lane(float* out) {
  float v = float(threadIdx.x);
  if (threadIdx.x == 1) v = __shfl_sync(0x1u, v, 0);
  out[threadIdx.x] = v;
}

// Bugs: writes one element past the end of a global buffer / of dynamic shared memory.
__global__ void write_past_end(float* out, int n) {
  if (blockIdx.x == 0 && threadIdx.x == 0) out[n] = 1.0f;
}
__global__ void dynamic_smem_overflow(float* out) {
  DYNAMIC_SHARED(float, s);
  s[threadIdx.x + 1] = 1.0f;  // the last thread writes past blockDim.x floats
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

// Doubles every element: a trivially correct kernel for runtime and stream tests.
__global__ void scale2(const float* x, float* y, int n) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g < n) y[g] = 2.0f * x[g];
}

// Reads two coefficients from constant memory (filled with cudaMemcpyToSymbol).
__constant__ float c_affine[2];
__global__ void affine_from_constant(const float* x, float* y, int n) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g < n) y[g] = c_affine[0] * x[g] + c_affine[1];
}

inline cudaError_t launch_scale2(const float* x, float* y, int n, cudaStream_t stream) {
  LAUNCH(scale2, (n + 127) / 128, 128, 0, stream)(x, y, n);
  return cudaGetLastError();
}

}  // namespace sim_test

#if defined(__CUDACC__)
// The nvcc check compiles the template kernels for every type the tests shuffle.
template cudaError_t sim_test::launch_shfl<float>(const float*, float*, int, int, int, int, unsigned);
template cudaError_t sim_test::launch_shfl<double>(const double*, double*, int, int, int, int, unsigned);
template cudaError_t sim_test::launch_shfl<int>(const int*, int*, int, int, int, int, unsigned);
template cudaError_t sim_test::launch_shfl<unsigned>(const unsigned*, unsigned*, int, int, int, int, unsigned);
template cudaError_t sim_test::launch_shfl<long long>(const long long*, long long*, int, int, int, int, unsigned);
template cudaError_t sim_test::launch_shfl<__nv_bfloat16>(const __nv_bfloat16*, __nv_bfloat16*, int, int, int, int,
                                                          unsigned);
#endif
#endif  // ENGINE_TESTS_SIM_LAYER_KERNELS_CUH
