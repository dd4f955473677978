#pragma once
// Whether an op's CUDA kernel may serve a call: moelab was built with MOELAB_CUDA and the
// kernels are not switched off (the benchmarks switch them off to time the same work done
// by the references in plain libtorch ops).
namespace moelab::kernels {

bool cuda_kernels_built();
void set_cuda_kernels_enabled(bool enabled);
bool cuda_kernels_enabled();  // built and not switched off

}  // namespace moelab::kernels
