#pragma once
// MOELAB_GROUPED_MM is defined where at::_grouped_mm exists (a CUDA build on PyTorch 2.8+): a
// grouped GEMM over row groups given by device offsets, which the experts use on CUDA where
// kernels/grouped_gemm.cu does not apply.
#include <torch/version.h>

#if defined(MOELAB_CUDA) && (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8))
#define MOELAB_GROUPED_MM 1
#endif
