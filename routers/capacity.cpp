#include "routers/capacity.h"

#include <cmath>

#include <torch/torch.h>

#include "kernels/routing_kernels.h"

namespace moelab {

int64_t expert_capacity(int64_t tokens, int64_t top_k, int64_t experts, double capacity_factor) {
  if (capacity_factor <= 0) return 0;
  // The product is formed in double; nudge down by a relative epsilon so that an exact
  // integer (CF 1.25, T*k/E = 64 -> 80) is not bumped to the next one by rounding noise.
  double slots = capacity_factor * static_cast<double>(tokens * top_k) / static_cast<double>(experts);
  return static_cast<int64_t>(std::ceil(slots * (1.0 - 1e-12)));
}

kernels::CapacitySlots assign_capacity(const torch::Tensor& expert_ids, const torch::Tensor& selected,
                                       const torch::Tensor& priority, int64_t experts, int64_t capacity,
                                       const std::string& policy) {
  torch::Tensor order;
  if (policy == "probs")
    order = std::get<1>(priority.detach().reshape(-1).sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  kernels::CapacitySlots slots =
      kernels::capacity_slots(expert_ids.reshape(-1), selected.reshape(-1), order, experts, capacity);
  slots.kept = slots.kept.view(expert_ids.sizes());
  slots.slot = slots.slot.view(expert_ids.sizes());
  return slots;
}

torch::Tensor apply_capacity(const torch::Tensor& expert_ids, const torch::Tensor& selected,
                             const torch::Tensor& priority, int64_t experts, int64_t capacity,
                             const std::string& policy) {
  if (capacity <= 0) return selected;
  return assign_capacity(expert_ids, selected, priority, experts, capacity, policy).kept;
}

}  // namespace moelab
