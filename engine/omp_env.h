// OpenMP wait policy. Debian's OpenBLAS is the pthreads build, so a program alternates between
// libgomp's thread team (our kernels) and OpenBLAS's own threads (GEMMs). With libgomp's default
// spin-waiting, the idle team burns the cores the GEMM needs: measured 7x slower training steps
// on 2 cores (and up to 60x on small bmm). Passive waiting fixes it, but libgomp reads
// OMP_WAIT_POLICY once when it loads, before main() runs; so programs call this first thing in
// main(): when the variable is unset it sets OMP_WAIT_POLICY=PASSIVE and re-executes itself.
// A value the user set is respected.
#pragma once

namespace engine {
void ensure_passive_omp_wait(int argc, char** argv);
}  // namespace engine
