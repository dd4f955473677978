#pragma once
// Whether an op's CUDA kernel may serve a call: moelab was built with MOELAB_CUDA and the
// kernels are not switched off (the benchmarks switch them off to time the same work done
// by the references in plain libtorch ops).
#include <c10/core/ScalarType.h>

namespace moelab::kernels {

bool cuda_kernels_built();
void set_cuda_kernels_enabled(bool enabled);
bool cuda_kernels_enabled();  // built and not switched off

// The dtypes the fused LayerNorm and column-sum kernels read and write.
inline bool kernel_storable(c10::ScalarType t) { return t == c10::ScalarType::Float || t == c10::ScalarType::BFloat16; }

}  // namespace moelab::kernels
