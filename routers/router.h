#pragma once
// A router: gate network (logits) + strategy (assignments and gates) + capacity + balancing.
#include <memory>

#include <torch/nn/module.h>

#include "config/run_config.h"
#include "routers/gate_networks.h"
#include "routers/routing_plan.h"
#include "routers/strategy.h"

namespace moelab {

class Router : public torch::nn::Module {
 public:
  Router(const RouterConfig& config, int64_t dim);

  // x [T, d], token_ids [T] -> the plan for these T tokens.
  RoutingPlan forward(const torch::Tensor& x, const torch::Tensor& token_ids);

  // Aux-loss-free balancing: moves the expert bias by the load seen since the last call.
  void update_expert_bias();
  // A frozen router's expert bias stays as it is: no load counted, no update (fine-tuning's
  // frozen base).
  void freeze_expert_bias() { bias_frozen_ = true; }
  // The load counted since the last update; data-parallel training sums it over the ranks
  // first, so every rank moves its bias alike.
  torch::Tensor& pending_load() { return pending_load_; }
  const RouterConfig& config() const { return config_; }
  // Generation routes each token without capacity: a lone sequence would otherwise fill the
  // experts with its earlier tokens and drop the very token being predicted. Expert choice,
  // whose capacity is its definition, keeps it.
  void set_dropless(bool dropless);
  // Whether training's plans carry capacity slots (RoutingPlan::slot): a capacity and a
  // strategy that leaves applying it to the router.
  bool assigns_capacity_slots() const { return trained_capacity_factor_ > 0 && !strategy_->applies_capacity(); }
  int64_t gate_parameter_count() const;

 private:
  RouterConfig config_;
  double trained_capacity_factor_;
  std::shared_ptr<GateNetwork> gate_;
  std::unique_ptr<RoutingStrategy> strategy_;
  torch::Tensor expert_bias_;  // buffer [E]: selection only, never the gates
  torch::Tensor pending_load_; // buffer [E]: selected assignments since the last bias update
  bool bias_frozen_ = false;
};

}  // namespace moelab
