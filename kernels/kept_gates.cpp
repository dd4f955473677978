#include "kernels/kept_gates.h"

#include <torch/torch.h>

#include "kernels/device.h"

namespace moelab::kernels {

torch::Tensor kept_gates(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept, bool renormalize) {
#ifdef MOELAB_CUDA
  if (cuda_kernels_enabled() && gates.is_cuda() && gates.scalar_type() == torch::kFloat32 && gates.dim() == 2 &&
      selected.scalar_type() == torch::kBool && kept.scalar_type() == torch::kBool && cuda::kept_gates_supported(gates.size(1)))
    return cuda::kept_gates(gates, selected, kept, renormalize);
#endif
  return reference::kept_gates(gates, selected, kept, renormalize);
}

#ifdef MOELAB_CUDA
namespace cuda {
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct KeptGates : public torch::autograd::Function<KeptGates> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gates, const torch::Tensor& selected,
                               const torch::Tensor& kept, bool renormalize) {
    torch::Tensor g = gates.contiguous(), sel = selected.contiguous(), kp = kept.contiguous();
    torch::Tensor out = torch::empty_like(g);
    launch_kept_gates(g, sel, kp, renormalize, out);
    ctx->save_for_backward({g, sel, kp});
    ctx->saved_data["renormalize"] = renormalize;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    torch::Tensor grad_gates = torch::empty_like(saved[0]);
    launch_kept_gates_backward(saved[0], saved[1], saved[2], ctx->saved_data["renormalize"].toBool(),
                               grads[0].to(torch::kFloat32).contiguous(), grad_gates);
    return {grad_gates, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor kept_gates(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept, bool renormalize) {
  return KeptGates::apply(gates, selected, kept, renormalize);
}

}  // namespace cuda
#endif

}  // namespace moelab::kernels
