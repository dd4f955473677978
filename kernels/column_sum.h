#pragma once
// Column sums of a 2-D matrix in fp32: out[c] = sum over rows r of x[r, c] (a Linear layer's
// bias gradient). CUDA tensors (bf16 or fp32, columns a multiple of 8) go to the two-stage
// kernel in kernels/column_sum.cu, everything else to the reference. No autograd: backward
// passes call it.
#include <torch/types.h>

namespace moelab::kernels {

torch::Tensor column_sum(const torch::Tensor& x);

namespace reference {
torch::Tensor column_sum(const torch::Tensor& x);
}  // namespace reference

}  // namespace moelab::kernels
