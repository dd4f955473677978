#pragma once
// LayerNorm over the last dimension, returning its output in `out_dtype` (statistics in
// fp32). The transformer's residual stream is fp32 while its GEMMs run in bf16 under
// autocast: normalising straight into bf16 saves a cast each way. CUDA tensors (fp32 or
// bf16, last dimension a multiple of 8 and at most 1024) go to the fused kernel in
// kernels/layer_norm.cu, everything else to the reference in kernels/layer_norm_ref.cpp.
// Differentiable in x, gamma and beta.
#include <torch/types.h>

namespace moelab::kernels {

torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& gamma, const torch::Tensor& beta, double eps,
                         torch::ScalarType out_dtype);

namespace reference {
torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& gamma, const torch::Tensor& beta, double eps,
                         torch::ScalarType out_dtype);
}  // namespace reference

}  // namespace moelab::kernels
