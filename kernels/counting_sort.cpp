#include "kernels/counting_sort.h"

#include <torch/torch.h>

#include "kernels/device.h"

namespace moelab::kernels {

KeySort stable_sort_by_key(const torch::Tensor& keys, int64_t buckets) {
#ifdef MOELAB_CUDA
  if (cuda_kernels_enabled() && keys.is_cuda() && keys.scalar_type() == torch::kLong && cuda::counting_sort_supported(keys.size(0), buckets))
    return cuda::stable_sort_by_key(keys, buckets);
#endif
  return reference::stable_sort_by_key(keys, buckets);
}

CapacitySlots capacity_slots(const torch::Tensor& expert_ids, const torch::Tensor& selected, const torch::Tensor& order,
                             int64_t num_experts, int64_t capacity) {
#ifdef MOELAB_CUDA
  if (cuda_kernels_enabled() && expert_ids.is_cuda() && !order.defined() && expert_ids.scalar_type() == torch::kLong &&
      selected.scalar_type() == torch::kBool && cuda::counting_sort_supported(expert_ids.size(0), num_experts + 1))
    return cuda::capacity_slots(expert_ids, selected, num_experts, capacity);
#endif
  return reference::capacity_slots(expert_ids, selected, order, num_experts, capacity);
}

}  // namespace moelab::kernels
