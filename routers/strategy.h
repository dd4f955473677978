#pragma once
// A routing strategy turns gate logits into assignments and gates. Strategies are stateless;
// the router around them owns the gate network, capacity, balancing terms and expert bias.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "config/run_config.h"

namespace moelab {

struct StrategyInputs {
  torch::Tensor logits;            // [T, E] float32 (undefined for strategies without a gate)
  torch::Tensor selection_logits;  // logits + aux-loss-free expert bias: used to choose only
  torch::Tensor token_ids;         // [T] int64
  int64_t num_experts = 0, top_k = 0, capacity = 0;
};

struct StrategyChoice {
  torch::Tensor expert_ids;  // [T, K] int64
  torch::Tensor gates;       // [T, K] float32 (before capacity)
  torch::Tensor selected;    // [T, K] bool
  torch::Tensor priority;    // [T, K] float32: who keeps a slot under drop_policy "probs"
};

class RoutingStrategy {
 public:
  virtual ~RoutingStrategy() = default;
  virtual StrategyChoice route(const StrategyInputs& in) const = 0;
  // False for strategies that route without a learned gate (hash).
  virtual bool uses_gate() const { return true; }
  // True when the strategy enforces capacity itself (expert choice).
  virtual bool applies_capacity() const { return false; }
  // False when an expert may keep more than the capacity (expert choice's fallback routes
  // the tokens no expert picked on top of the experts' C).
  virtual bool keeps_within_capacity() const { return true; }
  // Experts each token is routed to, which sizes the capacity: top1 routes to one whatever
  // router.top_k says.
  virtual int64_t experts_per_token(const RouterConfig& config) const { return config.top_k; }
  // Expert FFN passes per token on average, what FLOPs and MFU count: experts_per_token for
  // token choice; expert choice computes its E * C slots whatever each token got.
  virtual double expert_passes_per_token(const RouterConfig& config) const {
    return static_cast<double>(experts_per_token(config));
  }
  // The strategy's own rules on a config it was built from; UserError naming the key.
  virtual void validate(const RouterConfig& config) const { (void)config; }
};

using StrategyFactory = std::function<std::unique_ptr<RoutingStrategy>(const RouterConfig&)>;

// name -> factory; routers/registry.cpp holds the one line per strategy.
std::unique_ptr<RoutingStrategy> make_strategy(const RouterConfig& config);
std::vector<std::string> strategy_names();

// Checks a router config against the registry, the gate names and the strategy's own
// validate(); UserError prefixed with `origin`.
void validate_router_config(const RouterConfig& config, const std::string& origin);

}  // namespace moelab
