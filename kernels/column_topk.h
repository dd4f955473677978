#pragma once
// The op, its CPU reference (kernels/column_topk_ref.cpp, libtorch ops) and its CUDA kernel
// (kernels/column_topk.cu); kernels/column_topk.cpp chooses between them and holds the CUDA path's autograd.
// The tests compare the kernel with the reference on random inputs.
#include <torch/types.h>

namespace moelab::kernels {

// Expert choice's selection: a bool [T, E] mask of the `take` largest entries of each column
// of scores [T, E] (equal values: the lower row first), 0 <= take <= T. No gradient. CUDA:
// a radix select per column (kernels/column_topk.cu).
torch::Tensor column_topk_mask(const torch::Tensor& scores, int64_t take);

namespace reference {
torch::Tensor column_topk_mask(const torch::Tensor& scores, int64_t take);
}  // namespace reference

#ifdef MOELAB_CUDA
// The CUDA entry points and their raw launchers (MOELAB_CUDA builds).
namespace cuda {
torch::Tensor column_topk_mask(const torch::Tensor& scores, int64_t take);
}  // namespace cuda
#endif

}  // namespace moelab::kernels
