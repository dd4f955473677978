#pragma once
// The token dispatcher packs tokens by expert according to a routing plan and combines the
// experts' outputs back, gate-weighted. It knows nothing of how the plan was made.
#include <vector>

#include <torch/types.h>

#include "routers/routing_plan.h"

namespace moelab {

struct DispatchedTokens {
  torch::Tensor packed;       // [M, d]: kept assignments, expert-major, flat order within an expert
  torch::Tensor token_index;  // [M] int64: the token each packed row came from
  torch::Tensor gates;        // [M] float32: its gate (differentiable)
  std::vector<int64_t> expert_rows;  // [E]: rows of `packed` per expert
  int64_t num_tokens = 0;
};

class TokenDispatcher {
 public:
  DispatchedTokens dispatch(const torch::Tensor& x, const RoutingPlan& plan) const;
  torch::Tensor combine(const torch::Tensor& expert_output, const DispatchedTokens& dispatched) const;
};

}  // namespace moelab
