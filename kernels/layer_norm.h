#pragma once
// LayerNorm over the last dimension, returning its output in `out_dtype` (statistics in
// fp32). The transformer's residual stream is fp32 while its GEMMs run in bf16 under
// autocast: normalising straight into bf16 saves a cast each way. CUDA tensors (fp32 or
// bf16, last dimension a multiple of 8 and at most 1024) go to the fused kernel in
// kernels/layer_norm.cu, everything else to the reference in kernels/layer_norm_ref.cpp.
// Differentiable in every tensor argument.
#include <torch/types.h>

namespace moelab::kernels {

torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& gamma, const torch::Tensor& beta, double eps,
                         torch::ScalarType out_dtype);

// A pre-LN block's residual add and the LayerNorm after it, fused: sum = residual + branch
// (in the residual's dtype; the branch, e.g. a bf16 attention output, is cast), normed =
// LayerNorm(sum) in out_dtype. The backward adds the sum's own gradient to the LayerNorm's
// and hands the total to both inputs, each in its dtype.
struct ResidualNorm {
  torch::Tensor sum, normed;
};
ResidualNorm add_layer_norm(const torch::Tensor& residual, const torch::Tensor& branch, const torch::Tensor& gamma,
                            const torch::Tensor& beta, double eps, torch::ScalarType out_dtype);

namespace reference {
torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& gamma, const torch::Tensor& beta, double eps,
                         torch::ScalarType out_dtype);
ResidualNorm add_layer_norm(const torch::Tensor& residual, const torch::Tensor& branch, const torch::Tensor& gamma,
                            const torch::Tensor& beta, double eps, torch::ScalarType out_dtype);
}  // namespace reference

}  // namespace moelab::kernels
