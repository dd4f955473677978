#pragma once
// The op, its CPU reference (kernels/sinkhorn_ref.cpp, libtorch ops) and its CUDA kernel
// (kernels/sinkhorn.cu); kernels/sinkhorn.cpp chooses between them and holds the CUDA path's autograd.
// The tests compare the kernel with the reference on random inputs.
#include <torch/types.h>

#include "kernels/topk_gate.h"

namespace moelab::kernels {

// Sinkhorn balancing without gradient: q = exp(logits/tau - rowmax) in fp32, then `iters`
// rounds of scaling rows to sum 1 and columns to sum T/E.
torch::Tensor sinkhorn(const torch::Tensor& logits, int64_t iters, double temperature);

namespace reference {
torch::Tensor sinkhorn(const torch::Tensor& logits, int64_t iters, double temperature);
}  // namespace reference

#ifdef MOELAB_CUDA
// The CUDA entry points and their raw launchers (MOELAB_CUDA builds).
namespace cuda {
torch::Tensor sinkhorn(const torch::Tensor& logits, int64_t iters, double temperature);
}  // namespace cuda
#endif

}  // namespace moelab::kernels
