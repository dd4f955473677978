#pragma once
// A Linear layer applied through ATen's linear. libtorch's C++ torch::nn::Linear adds the
// bias in place after a matmul when the input has more than two dimensions; under bf16
// autocast that add is bf16 += fp32 in a slow mixed-type kernel (0.49 ms of a 3.4 ms dense
// step on an H100). at::linear folds the bias into the GEMM, and autocast casts it along.
#include <torch/nn/modules/linear.h>

namespace moelab {

inline torch::Tensor apply_linear(const torch::nn::Linear& layer, const torch::Tensor& x) {
  return at::linear(x, layer->weight, layer->bias);
}

}  // namespace moelab
