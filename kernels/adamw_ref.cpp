// Reference AdamW step: libtorch ops per tensor, in place, with PyTorch's arithmetic.
#include <cmath>

#include <torch/torch.h>

#include "kernels/adamw.h"

namespace moelab::kernels::reference {

void adamw_step(const AdamWState& state, const torch::Tensor& lr, const torch::Tensor& step, const torch::Tensor& grad_scale,
                double beta1, double beta2, double eps) {
  torch::NoGradGuard no_grad;
  if (grad_scale.defined() && !std::isfinite(grad_scale.item<float>())) return;  // no update at all
  torch::Tensor step_size = lr / (1 - torch::pow(beta1, step));
  torch::Tensor correction2_sqrt = (1 - torch::pow(beta2, step)).sqrt();
  for (size_t i = 0; i < state.params.size(); ++i) {
    torch::Tensor g = grad_scale.defined() ? state.grads[i] * grad_scale : state.grads[i];
    const torch::Tensor& p = state.params[i];
    p.mul_(1 - lr * state.weight_decays[i]);
    state.exp_avgs[i].lerp_(g, 1 - beta1);
    state.exp_avg_sqs[i].mul_(beta2).addcmul_(g, g, 1 - beta2);
    p.sub_(step_size * state.exp_avgs[i] / (state.exp_avg_sqs[i].sqrt() / correction2_sqrt + eps));
  }
}

}  // namespace moelab::kernels::reference
