#include "kernels/expert_bias_act.h"

#include <torch/torch.h>

#include "kernels/device.h"

namespace moelab::kernels {

torch::Tensor expert_bias_activation(const torch::Tensor& h, const torch::Tensor& bias, const torch::Tensor& offsets,
                                     ExpertActivation activation) {
#ifdef MOELAB_CUDA
  const int64_t cols_out = activation == kSwiGLU ? h.size(1) / 2 : h.size(1);
  if (cuda_kernels_enabled() && h.is_cuda() && h.scalar_type() == torch::kBFloat16 && cols_out % 8 == 0)
    return cuda::expert_bias_activation(h, bias, offsets, activation);
#endif
  return reference::expert_bias_activation(h, bias, offsets, activation);
}

#ifdef MOELAB_CUDA
namespace cuda {
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct ExpertBiasAct : public torch::autograd::Function<ExpertBiasAct> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& h, const torch::Tensor& bias,
                               const torch::Tensor& offsets, int64_t activation) {
    torch::Tensor input = h.contiguous(), b = bias.to(torch::kFloat32).contiguous(), ends = offsets.to(torch::kInt32).contiguous();
    const int64_t cols_out = activation == kSwiGLU ? input.size(1) / 2 : input.size(1);
    torch::Tensor out = torch::empty({input.size(0), cols_out}, input.options());
    launch_expert_bias_act(input, b, ends, static_cast<int>(activation), out);
    ctx->save_for_backward({input, b, ends});
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["bias_dtype"] = static_cast<int64_t>(bias.scalar_type());
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    torch::Tensor h = saved[0], bias = saved[1], offsets = saved[2];
    const int activation = static_cast<int>(ctx->saved_data["activation"].toInt());
    torch::Tensor grad_out = grads[0].to(h.scalar_type()).contiguous();
    torch::Tensor grad_h = activation == kNoActivation ? grad_out : torch::empty_like(h), grad_bias = torch::zeros_like(bias);
    launch_expert_bias_act_backward(grad_out, h, bias, offsets, activation, grad_h, grad_bias);
    const auto bias_dtype = static_cast<torch::ScalarType>(ctx->saved_data["bias_dtype"].toInt());
    return {grad_h, grad_bias.to(bias_dtype), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor expert_bias_activation(const torch::Tensor& h, const torch::Tensor& bias, const torch::Tensor& offsets,
                                     ExpertActivation activation) {
  return ExpertBiasAct::apply(h, bias, offsets, static_cast<int64_t>(activation));
}

}  // namespace cuda
#endif

}  // namespace moelab::kernels
