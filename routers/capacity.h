#pragma once
// Expert capacity and token dropping.
#include <string>

#include <torch/types.h>

namespace moelab {

// C = ceil(CF * T * k / E) slots per expert; 0 (dropless) when CF <= 0.
int64_t expert_capacity(int64_t tokens, int64_t top_k, int64_t experts, double capacity_factor);

// Which selected assignments keep a slot. policy "position": earlier flat entries t*K+j
// first (the seed); "probs": higher priority first, ties to the earlier entry (Megatron-Core).
torch::Tensor apply_capacity(const torch::Tensor& expert_ids, const torch::Tensor& selected,
                             const torch::Tensor& priority, int64_t experts, int64_t capacity,
                             const std::string& policy);

// Scales each token's kept gates so that they sum to what all its selected gates summed to
// (for gates that sum to 1, as softk's: divides kept gates by their sum). Tokens that lost
// nothing, or everything, are left as they are.
torch::Tensor renormalize_after_drop(const torch::Tensor& gates, const torch::Tensor& selected,
                                     const torch::Tensor& kept);

}  // namespace moelab
