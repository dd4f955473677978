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

#ifdef MOELAB_CUDA
// The CUDA entry points (kernels/layer_norm.cpp: autograd over kernels/layer_norm.cu) and the
// raw launchers.
namespace cuda {
torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& gamma, const torch::Tensor& beta, double eps,
                         torch::ScalarType out_dtype);
ResidualNorm add_layer_norm(const torch::Tensor& residual, const torch::Tensor& branch, const torch::Tensor& gamma,
                            const torch::Tensor& beta, double eps, torch::ScalarType out_dtype);
bool layer_norm_supported(int64_t cols);
// x, y, dy, dx: [M, N]; gamma, beta: fp32 [N]; mean, rstd: fp32 [M]; param_grads: fp32
// [2, N], gamma's gradient then beta's. With branch defined the forward normalises
// sum = x + branch and writes sum; the backward adds ds (if defined) to dx and writes dx
// again into dbranch (if defined, in its dtype).
void launch_layer_norm(const torch::Tensor& x, const torch::Tensor& branch, const torch::Tensor& gamma,
                       const torch::Tensor& beta, double eps, torch::Tensor& sum, torch::Tensor& y, torch::Tensor& mean,
                       torch::Tensor& rstd);
void launch_layer_norm_backward(const torch::Tensor& dy, const torch::Tensor& x, const torch::Tensor& gamma,
                                const torch::Tensor& mean, const torch::Tensor& rstd, const torch::Tensor& ds,
                                torch::Tensor& dx, torch::Tensor& dbranch, torch::Tensor& param_grads);
}  // namespace cuda
#endif

}  // namespace moelab::kernels
