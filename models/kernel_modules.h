#pragma once
// torch::nn modules applied through moelab's kernels. The modules only hold the parameters,
// so checkpoints keep libtorch's names; the arithmetic is kernels::linear and
// kernels::layer_norm.
//
// Linear: libtorch's C++ torch::nn::Linear adds the bias in place after a matmul when the
// input has more than two dimensions; under bf16 autocast that add is bf16 += fp32 in a slow
// mixed-type kernel, where at::linear folds the bias into the GEMM (and kernels::linear
// writes fp32 weight and bias gradients).
//
// LayerNorm: under CUDA autocast the output comes in the autocast dtype, as the GEMM after
// it wants, while the residual stream it reads stays fp32; elsewhere it keeps the input's
// dtype.
#include <ATen/autocast_mode.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "kernels/layer_norm.h"
#include "kernels/linear.h"
#include "models/adapters.h"

namespace moelab {

// With a LoRA update (fine-tuning), through the weight with the update merged in.
inline torch::Tensor apply_linear(const torch::nn::Linear& layer, const torch::Tensor& x,
                                  const std::shared_ptr<LowRankUpdate>& lora = nullptr) {
  return kernels::linear(x, lora ? lora->merged(layer->weight) : layer->weight, layer->bias);
}

inline torch::ScalarType normed_dtype(const torch::Tensor& x) {
#ifdef MOELAB_CUDA
  if (x.is_cuda() && at::autocast::is_autocast_enabled(at::kCUDA)) return at::autocast::get_autocast_dtype(at::kCUDA);
#endif
  return x.scalar_type();
}

inline torch::Tensor apply_layer_norm(const torch::nn::LayerNorm& layer, const torch::Tensor& x) {
  return kernels::layer_norm(x, layer->weight, layer->bias, layer->options.eps(), normed_dtype(x));
}

// The residual add before the LayerNorm fused with it: {residual + branch, layer(that)}.
inline kernels::ResidualNorm apply_add_layer_norm(const torch::nn::LayerNorm& layer, const torch::Tensor& residual,
                                                  const torch::Tensor& branch) {
  return kernels::add_layer_norm(residual, branch, layer->weight, layer->bias, layer->options.eps(), normed_dtype(residual));
}

}  // namespace moelab
