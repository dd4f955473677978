#include "kernels/adamw.h"

#include <torch/torch.h>

#include "kernels/device.h"

namespace moelab::kernels {

void adamw_step(const AdamWState& state, const torch::Tensor& lr, const torch::Tensor& step, const torch::Tensor& grad_scale,
                double beta1, double beta2, double eps) {
#ifdef MOELAB_CUDA
  if (cuda_kernels_enabled() && !state.params.empty() && state.params.front().is_cuda() && cuda::adamw_supported(state))
    return cuda::adamw_step(state, lr, step, grad_scale, beta1, beta2, eps);
#endif
  reference::adamw_step(state, lr, step, grad_scale, beta1, beta2, eps);
}

}  // namespace moelab::kernels
