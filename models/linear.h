#pragma once
// A Linear module applied through kernels::linear (ATen's linear, or under CUDA bf16
// autocast one function with fp32 weight and bias gradients). libtorch's C++
// torch::nn::Linear adds the bias in place after a matmul when the input has more than two
// dimensions; under bf16 autocast that add is bf16 += fp32 in a slow mixed-type kernel
// (0.49 ms of a 3.4 ms dense step on an H100), where at::linear folds the bias into the GEMM.
#include <torch/nn/modules/linear.h>

#include "kernels/linear.h"

namespace moelab {

inline torch::Tensor apply_linear(const torch::nn::Linear& layer, const torch::Tensor& x) {
  return kernels::linear(x, layer->weight, layer->bias);
}

}  // namespace moelab
