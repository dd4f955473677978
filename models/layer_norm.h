#pragma once
// A LayerNorm module applied through moelab's fused kernel (kernels/layer_norm.h). Under CUDA
// autocast the output comes in the autocast dtype, as the GEMM after it wants, while the
// residual stream it reads stays fp32; elsewhere it keeps the input's dtype. The module
// (torch::nn::LayerNorm) only holds the parameters, so checkpoints keep their names.
#include <ATen/autocast_mode.h>
#include <torch/nn/modules/normalization.h>

#include "kernels/layer_norm.h"

namespace moelab {

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
