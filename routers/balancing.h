#pragma once
// Balancing terms of the router.
#include <torch/types.h>

namespace moelab {

// Switch load-balancing loss E * sum_e f_e * P_e (unscaled): f_e = share of the selected
// assignments routed to e before dropping (no gradient), P_e = mean full-softmax probability
// of e (the gradient flows through P).
torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_ids,
                                  const torch::Tensor& selected, int64_t experts);

// Router z-loss mean(logsumexp(logits)^2) (unscaled), ST-MoE.
torch::Tensor router_z_loss(const torch::Tensor& logits);

// Selected assignments per expert, [E] int64.
torch::Tensor expert_counts(const torch::Tensor& expert_ids, const torch::Tensor& mask, int64_t experts);

// Aux-loss-free balancing (DeepSeek-V3): bias_e += rate * sign(mean load - load_e).
void update_expert_bias(torch::Tensor& bias, const torch::Tensor& load, double rate);

}  // namespace moelab
