#pragma once
// Expert capacity and token dropping.
#include <string>

#include <torch/types.h>

#include "kernels/routing_kernels.h"

namespace moelab {

// C = ceil(CF * T * k / E) slots per expert; 0 (dropless) when CF <= 0.
int64_t expert_capacity(int64_t tokens, int64_t top_k, int64_t experts, double capacity_factor);

// Which selected assignments keep a slot. policy "position": earlier flat entries t*K+j
// first (a token earlier in the batch keeps its slot); "probs": higher priority first, ties to the earlier entry (Megatron-Core).
torch::Tensor apply_capacity(const torch::Tensor& expert_ids, const torch::Tensor& selected,
                             const torch::Tensor& priority, int64_t experts, int64_t capacity,
                             const std::string& policy);

// The same (capacity > 0), with each kept assignment's slot, its place in its expert's queue
// ([T, K], -1 when not kept), and the kept assignments per expert ([E]): what the dispatcher
// packs by without sorting again.
kernels::CapacitySlots assign_capacity(const torch::Tensor& expert_ids, const torch::Tensor& selected,
                                       const torch::Tensor& priority, int64_t experts, int64_t capacity,
                                       const std::string& policy);

}  // namespace moelab
