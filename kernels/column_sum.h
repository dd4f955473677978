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

#ifdef MOELAB_CUDA
namespace cuda {
// out (fp32 [N]) = the column sums of x ([M, N], bf16 or fp32, N % 8 == 0).
void launch_column_sum(const torch::Tensor& x, torch::Tensor& out);
// out (fp32 [W]) = the column sums of partials (fp32 [G, W]), G small: one kernel.
void launch_sum_partial_rows(const torch::Tensor& partials, torch::Tensor& out);
}  // namespace cuda
#endif

}  // namespace moelab::kernels
