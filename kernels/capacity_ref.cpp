// Reference queue positions for capacity. Work: N*E int adds (a cumulative sum of one-hot
// rows); traffic: N*E int64. Deterministic by construction: the queue order is explicit.
#include <torch/torch.h>

#include "kernels/routing_kernels.h"

namespace moelab::kernels {

torch::Tensor expert_positions(const torch::Tensor& expert_ids, const torch::Tensor& valid,
                               const torch::Tensor& order, int64_t num_experts) {
  const int64_t n = expert_ids.size(0);
  torch::Tensor ids = order.defined() ? expert_ids.index_select(0, order) : expert_ids;
  torch::Tensor ok = order.defined() ? valid.index_select(0, order) : valid;
  torch::Tensor one_hot = torch::one_hot(ids, num_experts).mul_(ok.unsqueeze(1).to(torch::kLong));
  torch::Tensor queued = one_hot.cumsum(0).gather(1, ids.unsqueeze(1)).squeeze(1) - 1;
  queued = torch::where(ok, queued, torch::full_like(queued, n));
  if (!order.defined()) return queued;
  return torch::empty_like(queued).index_put_({order}, queued);
}

}  // namespace moelab::kernels
