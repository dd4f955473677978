#include "kernels/balancing_loss.h"

#include <torch/torch.h>

#include "kernels/device.h"

namespace moelab::kernels {

torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_ids,
                                  const torch::Tensor& selected, int64_t experts) {
#ifdef MOELAB_CUDA
  if (cuda_kernels_enabled() && logits.is_cuda() && logits.scalar_type() == torch::kFloat32 && logits.dim() == 2 &&
      logits.size(0) > 0 && logits.size(1) == experts && cuda::balancing_loss_supported(experts))
    return cuda::load_balancing_loss(logits, expert_ids, selected);
#endif
  return reference::load_balancing_loss(logits, expert_ids, selected, experts);
}

#ifdef MOELAB_CUDA
namespace cuda {
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct BalancingLoss : public torch::autograd::Function<BalancingLoss> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits, const torch::Tensor& ids,
                               const torch::Tensor& selected) {
    torch::Tensor input = logits.contiguous();
    torch::Tensor loss = torch::empty({}, input.options()), share = torch::empty({input.size(1)}, input.options());
    launch_balancing_loss(input, ids.contiguous(), selected.contiguous(), loss, share);
    ctx->save_for_backward({input, share});
    return loss;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    torch::Tensor grad_logits = torch::empty_like(saved[0]);
    launch_balancing_loss_backward(saved[0], saved[1], grads[0].to(torch::kFloat32).contiguous(), grad_logits);
    return {grad_logits, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_ids, const torch::Tensor& selected) {
  return BalancingLoss::apply(logits, expert_ids, selected);
}

}  // namespace cuda
#endif

}  // namespace moelab::kernels
