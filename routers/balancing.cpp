#include "routers/balancing.h"

#include <torch/torch.h>

#include "kernels/routing_kernels.h"

namespace moelab {

torch::Tensor expert_counts(const torch::Tensor& expert_ids, const torch::Tensor& mask, int64_t experts) {
  return torch::zeros({experts}, expert_ids.options())
      .index_add_(0, expert_ids.reshape(-1), mask.reshape(-1).to(torch::kLong));
}

torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_ids,
                                  const torch::Tensor& selected, int64_t experts) {
  return kernels::load_balancing_loss(logits, expert_ids, selected, experts);
}

torch::Tensor router_z_loss(const torch::Tensor& logits) { return torch::logsumexp(logits, -1).pow(2).mean(); }

void update_expert_bias(torch::Tensor& bias, const torch::Tensor& load, double rate) {
  torch::NoGradGuard no_grad;
  torch::Tensor l = load.to(torch::kFloat32);
  bias.add_(torch::sign(l.mean() - l) * rate);
}

}  // namespace moelab
