// The CUDA emulation layer ("sim"): lets g++ compile the handwritten kernels in kernels/cuda/*.cu
// and run them on the CPU, faithfully enough that tests catch real kernel bugs. Include it through
// kernels/cuda/compat.h, never directly. See kernels/sim/README.md.
#pragma once
#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/sim/atomics.h"
#include "kernels/sim/bf16.h"
#include "kernels/sim/device_math.h"
#include "kernels/sim/launch.h"
#include "kernels/sim/runtime.h"
#include "kernels/sim/sync.h"
#include "kernels/sim/vector_types.h"

// Execution-space qualifiers are plain C++ here.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __constant__
#define __managed__
#define __align__(n) __attribute__((aligned(n)))

// Blocks that run on one OS thread run one after another, so a thread-local static is exactly one
// block's shared memory. Prefer SHARED() (compat.h): the sim refills it with 0xFF bytes at each
// block start, so kernels that read shared memory they never wrote fail their tests; a plain
// __shared__ variable keeps whatever the previous block on that OS thread left in it.
#define __shared__ static thread_local

// Set by the scheduler before it resumes a CUDA thread.
extern thread_local constinit uint3 threadIdx;
extern thread_local constinit uint3 blockIdx;
extern thread_local constinit dim3 blockDim;
extern thread_local constinit dim3 gridDim;
inline constexpr int warpSize = 32;
