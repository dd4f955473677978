// Queue positions for capacity as a stable counting sort: entries sorted by expert keep
// their queue order, and an entry's position is its rank minus its expert's offset.
// Work: one stable sort of N keys + a bincount and a cumsum over E; memory O(N + E), so it
// runs as well on the GPU (a few sort kernels) as on the CPU.
#include <torch/torch.h>

#include "kernels/routing_kernels.h"

namespace moelab::kernels {

torch::Tensor expert_positions(const torch::Tensor& expert_ids, const torch::Tensor& valid,
                               const torch::Tensor& order, int64_t num_experts) {
  const int64_t n = expert_ids.size(0);
  torch::Tensor ids = order.defined() ? expert_ids.index_select(0, order) : expert_ids;
  torch::Tensor ok = order.defined() ? valid.index_select(0, order) : valid;
  // Entries that take no place queue behind every expert, in an extra bucket.
  torch::Tensor key = torch::where(ok, ids, torch::full_like(ids, num_experts));
  torch::Tensor sorted = std::get<1>(key.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  // index_add rather than bincount: bincount reads the maximum back to the host.
  torch::Tensor counts = torch::zeros({num_experts + 1}, ids.options()).index_add_(0, key, torch::ones_like(key));
  torch::Tensor offsets = counts.cumsum(0) - counts;
  torch::Tensor rank = torch::arange(n, ids.options()) - offsets.index_select(0, key.index_select(0, sorted));
  torch::Tensor queued = torch::empty_like(ids).index_put_({sorted}, rank);
  queued = torch::where(ok, queued, torch::full_like(queued, n));
  if (!order.defined()) return queued;
  return torch::empty_like(queued).index_put_({order}, queued);
}

}  // namespace moelab::kernels
