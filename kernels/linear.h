#pragma once
// A Linear layer, y = x W^T + b (b may be undefined). Under CUDA bf16 autocast, with a bias,
// it is one autograd function: the forward is what autocast runs (a bf16 GEMM with the bias
// in its epilogue), and the backward writes the weight gradient in fp32 straight from the
// GEMM and the bias gradient with column_sum, where libtorch's formula makes bf16 gradients
// (the bias's through a slow bf16 sum) that autocast then casts to the fp32 parameters, two
// extra kernels per layer. Everywhere else it is at::linear.
#include <torch/types.h>

namespace moelab::kernels {

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

// weight.to(bf16) as a GEMM operand (the experts' grouped GEMMs), its gradient brought back
// to the fp32 parameter by a vectorized kernel on CUDA (kernels/cast.cu) instead of
// libtorch's element-by-element conversion; elsewhere plain Tensor::to.
torch::Tensor bf16_operand(const torch::Tensor& weight);

#ifdef MOELAB_CUDA
namespace cuda {
// Contiguous bf16 (numel a multiple of 8, 16-byte aligned) -> a new fp32 tensor.
bool bf16_to_fp32_supported(const torch::Tensor& in);
torch::Tensor bf16_to_fp32(const torch::Tensor& in);
}  // namespace cuda
#endif

}  // namespace moelab::kernels
