#pragma once
// Routing metrics of one layer's plan (SPEC section 3). Computing them reads values back to
// the host, so the trainer asks for them at log steps only.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "routers/routing_plan.h"

namespace moelab {

struct RoutingMetrics {
  double load_cv = 0;          // std / mean of kept assignments per expert (biased std)
  double max_over_mean = 0;    // max_load / mean_load
  double drop_rate = 0;        // 1 - kept / selected (selected = T*k for token choice)
  double token_drop_rate = 0;  // tokens that lost every assignment
  double used_capacity = 0;    // max kept count / C (NaN when dropless)
  double gate_entropy = 0;     // mean over tokens of -sum p log p, p = kept gates / their sum
  double router_entropy = 0;   // mean entropy of the full softmax (nats)
  double router_entropy_norm = 0;  // router_entropy / log E
  double mean_topk_prob = 0;   // mean over tokens of the largest kept gate's share
  double dead_experts = 0;     // experts that received no token
  double lb_loss = 0, z_loss = 0;
  std::vector<int64_t> expert_load;  // kept assignments per expert

  nlohmann::json to_json() const;
};

RoutingMetrics compute_routing_metrics(const RoutingPlan& plan);
// Field-wise mean over layers; expert_load is summed over them.
RoutingMetrics average_metrics(const std::vector<RoutingMetrics>& layers);

}  // namespace moelab
