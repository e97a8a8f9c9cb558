#!/usr/bin/env bash
# Builds a test binary from the engine core plus the given source files only, into
# /tmp/dev-NAME, so work on one op family does not depend on others' unfinished files.
#   scripts/dev_build.sh NAME kernels/cpu/softmax.cpp ... tests/test_softmax.cpp
#   /tmp/dev-NAME/run_tests            (doctest options apply: -tc='softmax*')
# OPT=-O0 / SAN=1 change the flags. Objects are reused while the source and its headers are
# unchanged.
set -euo pipefail
name=$1; shift
out=/tmp/dev-$name
mkdir -p "$out"
opt=${OPT:--O2}
san=""
[ "${SAN:-0}" = 1 ] && san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -g"
# Objects are shared by every dev build of this checkout with the same flags (written to a
# temporary name and renamed, so concurrent builds never see a half-written object).
core=(engine/error.cpp engine/omp_env.cpp engine/safetensors.cpp engine/allocator.cpp engine/storage.cpp engine/tensor.cpp
      kernels/backend.cpp kernels/cpu/accumulate.cpp autograd/var.cpp autograd/gradcheck.cpp
      tests/main.cpp)
# Any .cu file given pulls in the sim runtime and the CUDA backend's device code, and routes
# non-CPU tensors to kernels::cuda (ENGINE_HAS_CUDA; list every .cu the ops you call need).
has_cu=0
for src in "$@"; do
  case $src in *.cu) core+=(kernels/sim/runtime.cpp kernels/sim/scheduler.cpp kernels/sim/warp.cpp
                            kernels/cuda/device.cu kernels/cuda/copy.cu); has_cu=1; break ;; esac
done
objdir=/tmp/dev-obj/$(echo "$PWD $opt $san $has_cu" | md5sum | cut -c1-12)
objs=()
for src in "${core[@]}" "$@"; do
  obj="$objdir/${src%.*}.${src##*.}.o"
  mkdir -p "$(dirname "$obj")"
  stale=0
  if [ ! -f "$obj" ] || [ ! -f "$obj.d" ]; then stale=1
  else  # rebuild when the source or any header it includes (from -MMD's list) is newer
    for dep in $(sed -e 's/^[^:]*://' -e 's/\\$//' "$obj.d"); do
      [ "$dep" -nt "$obj" ] && { stale=1; break; }
    done
  fi
  if [ $stale = 1 ]; then
    lang=()
    [ "${src##*.}" = cu ] && lang=(-DENGINE_SIM -x c++)
    [ $has_cu = 1 ] && lang+=(-DENGINE_HAS_CUDA)
    g++ -std=c++20 $opt -march=native -fno-math-errno -fno-trapping-math -fopenmp -Wall -Wextra -Wno-unused-parameter -I. $san "${lang[@]}" -MMD -MF "$obj.d.$$" -c "$src" -o "$obj.$$"
    mv "$obj.d.$$" "$obj.d"; mv "$obj.$$" "$obj"
  fi
  objs+=("$obj")
done
g++ "${objs[@]}" -fopenmp -lopenblas -lz -lpthread $san -o "$out/run_tests"
echo "built $out/run_tests"
