#pragma once
// OpenBLAS chooses its GEMM kernels by CPU model when it is loaded. On a CPU model it does not
// know (virtual machines often report a generic "Intel Xeon Processor") it falls back to its
// SSE3 "Prescott" kernels even where the CPU has AVX2 or AVX-512, and every CPU matrix product
// runs several times slower (a trace of the quickstart model: 26 k tokens/s with Prescott,
// 62 k with SkylakeX kernels on the same two cores). OPENBLAS_CORETYPE overrides the choice,
// but only before the library loads.

namespace moelab {

// When the loaded OpenBLAS (if any) runs kernels older than the CPU's features allow, and the
// user set no OPENBLAS_CORETYPE: re-executes this program (same arguments, same process id)
// with OPENBLAS_CORETYPE naming the kernels the CPU supports (SkylakeX for AVX-512, Haswell for
// AVX2 + FMA). Returns when nothing is to be done or the re-execution fails.
void relaunch_with_cpu_blas_kernels();

}  // namespace moelab
