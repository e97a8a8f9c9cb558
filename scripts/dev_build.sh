#!/usr/bin/env bash
# Builds a test binary from the engine core plus the given source files only, into
# /tmp/dev-NAME, so work on one op family does not depend on others' unfinished files.
#   scripts/dev_build.sh NAME kernels/cpu/softmax.cpp ... tests/test_softmax.cpp
#   /tmp/dev-NAME/run_tests            (doctest options apply: -tc='softmax*')
# OPT=-O0 / SAN=1 change the flags. Objects are reused when the source is unchanged.
set -euo pipefail
name=$1; shift
out=/tmp/dev-$name
mkdir -p "$out"
opt=${OPT:--O2}
san=""
[ "${SAN:-0}" = 1 ] && san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -g"
core=(engine/error.cpp engine/allocator.cpp engine/storage.cpp engine/tensor.cpp
      kernels/backend.cpp kernels/cpu/accumulate.cpp autograd/var.cpp autograd/gradcheck.cpp
      tests/main.cpp)
# Any .cu file given pulls in the sim runtime and the CUDA backend's device code.
for src in "$@"; do
  case $src in *.cu) core+=(kernels/sim/runtime.cpp kernels/sim/scheduler.cpp kernels/sim/warp.cpp
                            kernels/cuda/device.cu); break ;; esac
done
objs=()
for src in "${core[@]}" "$@"; do
  obj="$out/obj/${src%.*}.${src##*.}.o"
  mkdir -p "$(dirname "$obj")"
  if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ -n "$(find engine kernels autograd tests \( -name '*.h' -o -name '*.cuh' \) -newer "$obj" 2>/dev/null | head -1)" ]; then
    lang=()
    [ "${src##*.}" = cu ] && lang=(-DENGINE_SIM -x c++)
    g++ -std=c++20 $opt -march=native -fno-math-errno -fno-trapping-math -fopenmp -Wall -Wextra -Wno-unused-parameter -I. $san "${lang[@]}" -c "$src" -o "$obj"
  fi
  objs+=("$obj")
done
g++ "${objs[@]}" -fopenmp -lopenblas -lz -lpthread $san -o "$out/run_tests"
echo "built $out/run_tests"
