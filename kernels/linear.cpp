#include "kernels/linear.h"

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include "kernels/column_sum.h"

// at::mm with an fp32 output from bf16 inputs (PyTorch 2.8+, CUDA).
#if defined(MOELAB_CUDA) && (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8))
#define MOELAB_FP32_GRAD_LINEAR 1
#endif

namespace moelab::kernels {

#ifdef MOELAB_FP32_GRAD_LINEAR
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Bf16Linear : public torch::autograd::Function<Bf16Linear> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight,
                               const torch::Tensor& bias) {
    const auto bf16 = torch::kBFloat16;
    torch::Tensor x16 = x.to(bf16), w16 = weight.to(bf16);
    ctx->save_for_backward({x16, w16});
    return at::linear(x16, w16, bias.to(bf16));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    const torch::Tensor& w = saved[1];
    const int64_t out_features = w.size(0), in_features = w.size(1);
    torch::Tensor g = grads[0].to(torch::kBFloat16).reshape({-1, out_features}).contiguous();
    torch::Tensor dx, dw, db;
    if (ctx->needs_input_grad(0)) dx = g.mm(w).view(x.sizes());
    if (ctx->needs_input_grad(1)) dw = at::mm(g.t(), x.reshape({-1, in_features}), torch::kFloat32);
    if (ctx->needs_input_grad(2)) db = column_sum(g);
    return {dx, dw, db};
  }
};
}  // namespace
#endif

#ifdef MOELAB_CUDA
namespace {
struct Bf16Operand : public torch::autograd::Function<Bf16Operand> {
  static torch::Tensor forward(torch::autograd::AutogradContext*, const torch::Tensor& weight) {
    return weight.to(torch::kBFloat16);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*, torch::autograd::variable_list grads) {
    torch::Tensor g = grads[0].to(torch::kBFloat16).contiguous();
    return {cuda::bf16_to_fp32_supported(g) ? cuda::bf16_to_fp32(g) : g.to(torch::kFloat32)};
  }
};
}  // namespace
#endif

torch::Tensor bf16_operand(const torch::Tensor& weight) {
#ifdef MOELAB_CUDA
  if (weight.is_cuda() && weight.scalar_type() == torch::kFloat32 && weight.requires_grad() && torch::GradMode::is_enabled())
    return Bf16Operand::apply(weight);
#endif
  return weight.to(torch::kBFloat16);
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
#ifdef MOELAB_FP32_GRAD_LINEAR
  // libtorch's C++ Function::apply takes no undefined inputs: bias-free layers (the LM head,
  // a small one) stay with at::linear.
  if (bias.defined() && x.is_cuda() && torch::GradMode::is_enabled() && at::autocast::is_autocast_enabled(at::kCUDA) &&
      at::autocast::get_autocast_dtype(at::kCUDA) == torch::kBFloat16 && weight.scalar_type() == torch::kFloat32)
    return Bf16Linear::apply(x, weight, bias);
#endif
  return at::linear(x, weight, bias);
}

}  // namespace moelab::kernels
