#include "kernels/topk_gate.h"

#include <torch/torch.h>

#include "kernels/device.h"

namespace moelab::kernels {

TopKGate softmax_topk(const torch::Tensor& logits, int64_t k, double temperature, bool renormalize) {
#ifdef MOELAB_CUDA
  if (cuda_kernels_enabled() && logits.is_cuda() && logits.size(-1) <= kMaxRowExperts && k <= kMaxGateK) return cuda::softmax_topk(logits, k, temperature, renormalize);
#endif
  return reference::softmax_topk(logits, k, temperature, renormalize);
}

torch::Tensor topk_ids(const torch::Tensor& values, int64_t k) {
#ifdef MOELAB_CUDA
  if (cuda_kernels_enabled() && values.is_cuda() && values.dim() == 2 && values.size(1) <= kMaxRowExperts && k <= kMaxGateK &&
      (values.scalar_type() == torch::kFloat32 || values.scalar_type() == torch::kBFloat16))
    return cuda::topk_ids(values, k);
#endif
  return reference::topk_ids(values, k);
}

#ifdef MOELAB_CUDA
namespace cuda {
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct SoftmaxTopK : public torch::autograd::Function<SoftmaxTopK> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& logits, int64_t k, double temperature, bool renormalize) {
    torch::Tensor input = logits.contiguous();
    torch::Tensor gates = torch::empty({input.size(0), k}, input.options().dtype(torch::kFloat32));
    torch::Tensor ids = torch::empty({input.size(0), k}, input.options().dtype(torch::kLong));
    launch_softmax_topk(input, k, temperature, renormalize, gates, ids);
    ctx->save_for_backward({input, ids, gates});
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["renormalize"] = renormalize;
    ctx->mark_non_differentiable({ids});
    return {gates, ids};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    torch::Tensor grad_logits = torch::empty_like(saved[0]);
    launch_softmax_topk_backward(saved[0], saved[1], saved[2], grads[0].to(torch::kFloat32).contiguous(),
                                 ctx->saved_data["temperature"].toDouble(), ctx->saved_data["renormalize"].toBool(),
                                 grad_logits);
    return {grad_logits, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

TopKGate softmax_topk(const torch::Tensor& logits, int64_t k, double temperature, bool renormalize) {
  auto out = SoftmaxTopK::apply(logits, k, temperature, renormalize);
  return {out[0], out[1]};
}

// Temperature 1 makes the kernel rank by the values themselves (x * 1.0f is exact).
torch::Tensor topk_ids(const torch::Tensor& values, int64_t k) {
  torch::Tensor input = values.detach().contiguous();
  torch::Tensor probs = torch::empty({input.size(0), k}, input.options().dtype(torch::kFloat32));
  torch::Tensor ids = torch::empty({input.size(0), k}, input.options().dtype(torch::kLong));
  launch_softmax_topk(input, k, 1.0, /*renormalize=*/false, probs, ids);
  return ids;
}

}  // namespace cuda
#endif

}  // namespace moelab::kernels
