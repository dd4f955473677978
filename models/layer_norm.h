#pragma once
// A LayerNorm module applied through moelab's fused kernel (kernels/layer_norm.h). Under CUDA
// autocast the output comes in the autocast dtype, as the GEMM after it wants, while the
// residual stream it reads stays fp32; elsewhere it keeps the input's dtype. The module
// (torch::nn::LayerNorm) only holds the parameters, so checkpoints keep their names.
#include <ATen/autocast_mode.h>
#include <torch/nn/modules/normalization.h>

#include "kernels/layer_norm.h"

namespace moelab {

inline torch::Tensor apply_layer_norm(const torch::nn::LayerNorm& layer, const torch::Tensor& x) {
  torch::ScalarType out_dtype = x.scalar_type();
#ifdef MOELAB_CUDA
  if (x.is_cuda() && at::autocast::is_autocast_enabled(at::kCUDA)) out_dtype = at::autocast::get_autocast_dtype(at::kCUDA);
#endif
  return kernels::layer_norm(x, layer->weight, layer->bias, layer->options.eps(), out_dtype);
}

}  // namespace moelab
