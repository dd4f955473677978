#include "routers/router.h"

#include <torch/torch.h>

#include "kernels/routing_kernels.h"
#include "routers/balancing.h"
#include "routers/capacity.h"

namespace moelab {

Router::Router(const RouterConfig& config, int64_t dim)
    : config_(config), trained_capacity_factor_(config.capacity_factor), strategy_(make_strategy(config)) {
  if (strategy_->uses_gate()) gate_ = register_module("gate", make_gate_network(config.gate, dim, config.num_experts));
  expert_bias_ = register_buffer("expert_bias", torch::zeros({config.num_experts}));
  pending_load_ = register_buffer("pending_load", torch::zeros({config.num_experts}, torch::kLong));
}

int64_t Router::gate_parameter_count() const {
  int64_t n = 0;
  if (gate_)
    for (const auto& p : gate_->parameters()) n += p.numel();
  return n;
}

RoutingPlan Router::forward(const torch::Tensor& x, const torch::Tensor& token_ids) {
  const int64_t tokens = x.size(0), experts = config_.num_experts, k = strategy_->experts_per_token(config_);
  RoutingPlan plan;
  plan.num_experts = experts;
  plan.top_k = k;
  plan.capacity = expert_capacity(tokens, k, experts, config_.capacity_factor);
  if (plan.capacity > 0 && strategy_->keeps_within_capacity()) plan.kept_bound = experts * plan.capacity;

  StrategyInputs in;
  in.token_ids = token_ids;
  in.num_experts = experts;
  in.top_k = k;
  in.capacity = plan.capacity;
  if (gate_) {
    plan.logits = gate_->forward(x).to(torch::kFloat32);
    in.logits = plan.logits;
    in.selection_logits = config_.bias_rate > 0 ? plan.logits + expert_bias_ : plan.logits;
  }
  StrategyChoice choice = strategy_->route(in);
  plan.expert_ids = choice.expert_ids;
  plan.selected = choice.selected;
  plan.chosen_gates = choice.gates;
  plan.kept = choice.selected;
  if (!strategy_->applies_capacity() && plan.capacity > 0) {
    kernels::CapacitySlots slots = assign_capacity(choice.expert_ids, choice.selected, choice.priority, experts,
                                                   plan.capacity, config_.drop_policy);
    plan.kept = slots.kept;
    plan.slot = slots.slot;
    plan.kept_counts = slots.kept_counts;
  }
  plan.gates = kernels::kept_gates(choice.gates, choice.selected, plan.kept,
                                   config_.renorm_after_drop && !strategy_->applies_capacity());

  torch::Tensor zero = torch::zeros({}, x.options().dtype(torch::kFloat32));
  plan.lb_loss = zero;
  plan.z_loss = zero;
  if (gate_ && config_.lb_coef > 0 && !strategy_->applies_capacity())
    plan.lb_loss = config_.lb_coef * load_balancing_loss(plan.logits, plan.expert_ids, plan.selected, experts);
  if (gate_ && config_.z_coef > 0) plan.z_loss = config_.z_coef * router_z_loss(plan.logits);
  if (config_.bias_rate > 0 && is_training() && !bias_frozen_) {
    torch::NoGradGuard no_grad;
    pending_load_.add_(expert_counts(plan.expert_ids, plan.selected, experts));
  }
  return plan;
}

void Router::set_dropless(bool dropless) {
  if (strategy_->applies_capacity()) return;
  config_.capacity_factor = dropless ? 0.0 : trained_capacity_factor_;
}

void Router::update_expert_bias() {
  if (config_.bias_rate <= 0 || bias_frozen_) return;
  moelab::update_expert_bias(expert_bias_, pending_load_, config_.bias_rate);
  pending_load_.zero_();
}

}  // namespace moelab
