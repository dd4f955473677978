#pragma once
// The token dispatcher packs tokens by expert according to a routing plan and combines the
// experts' outputs back, gate-weighted. It knows nothing of how the plan was made.
#include <torch/types.h>

#include "routers/routing_plan.h"

namespace moelab {

struct DispatchedTokens {
  torch::Tensor packed;        // [R, d], R = min(T*K, E*capacity) (T*K when dropless): the kept
                               //   assignments first, expert-major, in capacity-queue order within
                               //   an expert (flat order, but priority order under drop_policy
                               //   "probs"); then rows never computed on or read
  torch::Tensor token_index;   // [R] int64: the token each packed row came from
  torch::Tensor row_of_entry;  // [T, K] int64: the packed row of each assignment, -1 if not kept
  torch::Tensor gates;         // [T, K] float32: the plan's gates (differentiable)
  torch::Tensor expert_rows;    // [E] int64: rows of `packed` per expert (on the device)
};

class TokenDispatcher {
 public:
  DispatchedTokens dispatch(const torch::Tensor& x, const RoutingPlan& plan) const;
  torch::Tensor combine(const torch::Tensor& expert_output, const DispatchedTokens& dispatched) const;
};

}  // namespace moelab
