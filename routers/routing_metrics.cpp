#include "routers/routing_metrics.h"

#include <cmath>
#include <limits>

#include <torch/torch.h>

#include "routers/balancing.h"

namespace moelab {

RoutingMetrics compute_routing_metrics(const RoutingPlan& plan) {
  torch::NoGradGuard no_grad;
  RoutingMetrics m;
  torch::Tensor kept = plan.kept.cpu(), selected = plan.selected.cpu(), ids = plan.expert_ids.cpu();
  torch::Tensor gates = plan.gates.detach().cpu().to(torch::kFloat64);
  torch::Tensor counts = expert_counts(ids, kept, plan.num_experts).contiguous();
  m.expert_load.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + plan.num_experts);
  torch::Tensor load = counts.to(torch::kFloat64);

  double mean = load.mean().item<double>();
  double std = (load - mean).pow(2).mean().sqrt().item<double>();
  m.load_cv = mean > 0 ? std / mean : 0.0;
  m.max_over_mean = mean > 0 ? load.max().item<double>() / mean : 0.0;
  double n_selected = selected.sum().item<double>(), n_kept = kept.sum().item<double>();
  m.drop_rate = n_selected > 0 ? 1.0 - n_kept / n_selected : 0.0;
  torch::Tensor has_selected = selected.any(1), has_kept = kept.any(1);
  double routed_tokens = has_selected.sum().item<double>();
  m.token_drop_rate = routed_tokens > 0 ? (has_selected & ~has_kept).sum().item<double>() / routed_tokens : 0.0;
  m.used_capacity = plan.capacity > 0 ? load.max().item<double>() / static_cast<double>(plan.capacity)
                                      : std::numeric_limits<double>::quiet_NaN();
  m.dead_experts = (load == 0).sum().item<double>();

  // Each token's kept gates as shares of their sum, so that constant gates (topk_hard: 1
  // each) and renormalised ones read alike: k equal gates have entropy log k.
  torch::Tensor share = gates * kept / (gates * kept).sum(1, /*keepdim=*/true).clamp_min(1e-30);
  torch::Tensor token_entropy = -(share * share.clamp_min(1e-30).log()).sum(1);
  double tokens_with_gates = has_kept.sum().item<double>();
  m.gate_entropy = tokens_with_gates > 0 ? (token_entropy * has_kept).sum().item<double>() / tokens_with_gates : 0.0;
  m.mean_topk_prob =
      tokens_with_gates > 0 ? (std::get<0>(share.max(1)) * has_kept).sum().item<double>() / tokens_with_gates : 0.0;
  if (plan.logits.defined()) {
    torch::Tensor logp = torch::log_softmax(plan.logits.detach().cpu().to(torch::kFloat64), -1);
    m.router_entropy = (-(logp.exp() * logp).sum(1)).mean().item<double>();
    m.router_entropy_norm = plan.num_experts > 1 ? m.router_entropy / std::log(static_cast<double>(plan.num_experts)) : 0;
  }
  m.lb_loss = plan.lb_loss.defined() ? plan.lb_loss.item<double>() : 0.0;
  m.z_loss = plan.z_loss.defined() ? plan.z_loss.item<double>() : 0.0;
  return m;
}

RoutingMetrics average_metrics(const std::vector<RoutingMetrics>& layers) {
  RoutingMetrics avg;
  if (layers.empty()) return avg;
  double n = static_cast<double>(layers.size());
  avg.expert_load.assign(layers[0].expert_load.size(), 0);
  for (const RoutingMetrics& m : layers) {
    avg.load_cv += m.load_cv / n;
    avg.max_over_mean += m.max_over_mean / n;
    avg.drop_rate += m.drop_rate / n;
    avg.token_drop_rate += m.token_drop_rate / n;
    avg.used_capacity += m.used_capacity / n;
    avg.gate_entropy += m.gate_entropy / n;
    avg.router_entropy += m.router_entropy / n;
    avg.router_entropy_norm += m.router_entropy_norm / n;
    avg.mean_topk_prob += m.mean_topk_prob / n;
    avg.dead_experts += m.dead_experts / n;
    avg.lb_loss += m.lb_loss / n;
    avg.z_loss += m.z_loss / n;
    for (size_t e = 0; e < m.expert_load.size() && e < avg.expert_load.size(); ++e) avg.expert_load[e] += m.expert_load[e];
  }
  return avg;
}

nlohmann::json RoutingMetrics::to_json() const {
  auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
  return {{"load_cv", num(load_cv)},
          {"max_over_mean_load", num(max_over_mean)},
          {"drop_rate", num(drop_rate)},
          {"token_drop_rate", num(token_drop_rate)},
          {"used_capacity", num(used_capacity)},
          {"gate_entropy", num(gate_entropy)},
          {"router_entropy", num(router_entropy)},
          {"router_entropy_norm", num(router_entropy_norm)},
          {"mean_topk_prob", num(mean_topk_prob)},
          {"dead_experts", num(dead_experts)},
          {"lb_loss", num(lb_loss)},
          {"z_loss", num(z_loss)},
          {"expert_load", expert_load}};
}

}  // namespace moelab
