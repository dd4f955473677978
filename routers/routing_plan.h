#pragma once
// The routing plan: what a router decided for one layer's batch of T tokens. Everything
// downstream consumes it: the dispatcher packs by it, the metrics summarise it, the trace
// recorder writes it down.
#include <torch/types.h>

namespace moelab {

struct RoutingPlan {
  // K columns per token: top_k for token-choice strategies, num_experts for expert choice
  // (column e is expert e, `selected` where the expert picked the token).
  torch::Tensor expert_ids;  // [T, K] int64
  torch::Tensor gates;       // [T, K] float32, zero where not kept; carries the router's gradient
  torch::Tensor chosen_gates;  // [T, K] float32: the strategy's gates before capacity dropped any
  torch::Tensor selected;    // [T, K] bool: an assignment the strategy made
  torch::Tensor kept;        // [T, K] bool: selected and within its expert's capacity
  // With a capacity the router applied: each kept assignment's slot in its expert's buffer
  // (its place in the capacity queue, -1 when not kept) and the kept assignments per expert,
  // so that the dispatcher packs without sorting again. Undefined otherwise.
  torch::Tensor slot;         // [T, K] int64
  torch::Tensor kept_counts;  // [E] int64
  torch::Tensor logits;      // [T, E] float32 gate-network output (undefined for hash)
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t capacity = 0;      // slots per expert; 0 = dropless
  // A bound on the kept assignments, known on the host (the dispatcher sizes its buffer by it
  // without a read-back): T*K, or E*C when no expert keeps more than its capacity.
  int64_t kept_bound = 0;
  torch::Tensor lb_loss;     // scalar, already scaled by lb_coef (zero when off)
  torch::Tensor z_loss;      // scalar, already scaled by z_coef (zero when off)
};

}  // namespace moelab
