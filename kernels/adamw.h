#pragma once
// AdamW (decoupled weight decay) over a list of fp32 parameters: one step, with the gradient
// multiplied on the fly by `grad_scale` so that global-norm clipping costs no pass of its own.
// On CUDA one launch per 48 tensors (kernels/adamw.cu); the reference (kernels/adamw_ref.cpp)
// is libtorch ops per tensor, with PyTorch's AdamW arithmetic:
//   g = grad * scale;  p *= 1 - lr * wd;  m += (1 - b1) (g - m);  v = b2 v + (1 - b2) g^2
//   p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
#include <vector>

#include <torch/types.h>

namespace moelab::kernels {

struct AdamWState {
  std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs;  // fp32, contiguous, same sizes
  std::vector<double> weight_decays;                                  // one per parameter
};

// lr and step: fp32 scalars on the parameters' device, step already counting this step (the
// learning-rate schedule and the step advance on the device, so a captured CUDA graph can
// replay the update). grad_scale: fp32 scalar there too, or undefined for 1. A non-finite
// grad_scale skips the update: parameters and moments are left as they are (the trainer
// passes NaN when the gradient norm is not finite, without reading it back to the host).
void adamw_step(const AdamWState& state, const torch::Tensor& lr, const torch::Tensor& step, const torch::Tensor& grad_scale,
                double beta1, double beta2, double eps);

namespace reference {
void adamw_step(const AdamWState& state, const torch::Tensor& lr, const torch::Tensor& step, const torch::Tensor& grad_scale,
                double beta1, double beta2, double eps);
}  // namespace reference

#ifdef MOELAB_CUDA
namespace cuda {
bool adamw_supported(const AdamWState& state);
void adamw_step(const AdamWState& state, const torch::Tensor& lr, const torch::Tensor& step, const torch::Tensor& grad_scale,
                double beta1, double beta2, double eps);
}  // namespace cuda
#endif

}  // namespace moelab::kernels
