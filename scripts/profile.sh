#!/usr/bin/env bash
# Profiling command lines for the CUDA build (`make cuda`). NVTX ranges (engine/profile.h) name
# the kernel families, and later forward/backward/optimizer and layers, in the timeline.
#   scripts/profile.sh nsys  [command...]   timeline with Nsight Systems -> runs/profile/timeline.nsys-rep
#   scripts/profile.sh ncu   [command...]   per-kernel metrics with Nsight Compute -> runs/profile/kernels.ncu-rep
#   scripts/profile.sh cpu   [command...]   CPU profile with perf (CPU builds)  -> runs/profile/perf.data
# The command defaults to the kernel benchmark: build-cuda/bench kernels
set -euo pipefail
tool=${1:-nsys}; shift || true
cmd=("$@")
[ ${#cmd[@]} -gt 0 ] || cmd=(build-cuda/bench kernels)
mkdir -p runs/profile
case $tool in
  nsys)
    command -v nsys >/dev/null || { echo "profile: nsys (Nsight Systems) not on PATH" >&2; exit 1; }
    nsys profile --trace=cuda,nvtx,osrt,cublas --cuda-memory-usage=true --force-overwrite=true \
      -o runs/profile/timeline "${cmd[@]}"
    nsys stats --report cuda_gpu_kern_sum,nvtx_sum runs/profile/timeline.nsys-rep ;;
  ncu)
    command -v ncu >/dev/null || { echo "profile: ncu (Nsight Compute) not on PATH" >&2; exit 1; }
    # Full sections for 50 launches after a warm-up; add --kernel-name NAME to focus on one kernel.
    ncu --set full --launch-skip 20 --launch-count 50 --force-overwrite \
      -o runs/profile/kernels "${cmd[@]}" ;;
  cpu)
    command -v perf >/dev/null || { echo "profile: perf not installed (apt-get install linux-perf)" >&2; exit 1; }
    perf record -g -o runs/profile/perf.data "${cmd[@]}"
    perf report -i runs/profile/perf.data --stdio | head -60 ;;
  *) echo "usage: scripts/profile.sh nsys|ncu|cpu [command...]" >&2; exit 2 ;;
esac
