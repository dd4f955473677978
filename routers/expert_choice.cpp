// expert_choice (Zhou et al. 2022): S = softmax(logits) over experts; each expert takes its
// top-C tokens by S, C = ceil(CF*T*k/E) (not capped: a fixed cap below that leaves most
// tokens unpicked, and with the fallback routes them softk-style, so that the run measures
// softk rather than expert choice); gate = S[t, e]. A token no expert picked passes through
// the residual only, or, with ec_fallback "topk", is routed softk-style. Expert choice looks at every
// token of the batch, future ones included: it is not causal, and a model trained with it
// routes differently when it generates one token at a time.
#include <algorithm>

#include <torch/torch.h>

#include "kernels/routing_kernels.h"
#include "routers/strategy.h"
#include "util/error.h"

namespace moelab {
namespace {

class ExpertChoiceStrategy : public RoutingStrategy {
 public:
  ExpertChoiceStrategy(bool fallback, double temperature) : fallback_(fallback), temperature_(temperature) {}

  bool applies_capacity() const override { return true; }
  bool keeps_within_capacity() const override { return !fallback_; }

  void validate(const RouterConfig& config) const override {
    if (config.capacity_factor <= 0)
      throw UserError("'router.capacity_factor' must be > 0 for expert_choice (each expert takes ceil(CF*T*k/E) "
                      "tokens; there is no dropless expert choice)");
  }

  // Each expert computes its C = ceil(CF*T*k/E) tokens: CF*k passes per token (at most E).
  double expert_passes_per_token(const RouterConfig& config) const override {
    return std::min(static_cast<double>(config.num_experts), config.capacity_factor * static_cast<double>(config.top_k));
  }

  StrategyChoice route(const StrategyInputs& in) const override {
    const int64_t tokens = in.logits.size(0), experts = in.num_experts;
    const int64_t per_expert = std::min(in.capacity, tokens);
    torch::Tensor scores = torch::softmax(in.logits, -1);  // [T, E]
    // Each expert's top tokens; equal scores keep the earlier token.
    torch::Tensor selected = kernels::column_topk_mask(scores, per_expert);  // [T, E]
    torch::Tensor ids = torch::arange(experts, in.token_ids.options()).expand({tokens, experts}).contiguous();
    // where, not scores * selected: a float-by-bool product casts element by element.
    torch::Tensor gates = torch::where(selected, scores, torch::zeros({}, scores.options()));
    if (fallback_) {
      torch::Tensor orphan = ~selected.any(1);  // [T]
      kernels::TopKGate g = kernels::softmax_topk(in.logits, in.top_k, temperature_, /*renormalize=*/true);
      torch::Tensor fallback_mask = torch::zeros_like(selected).scatter_(1, g.ids, true) & orphan.unsqueeze(1);
      torch::Tensor fallback_gates = torch::zeros_like(gates).scatter(1, g.ids, g.gates);
      gates = torch::where(fallback_mask, fallback_gates, gates);
      selected = selected | fallback_mask;
    }
    return {ids, gates, selected, gates.detach()};
  }

 private:
  bool fallback_;
  double temperature_;
};

}  // namespace

std::unique_ptr<RoutingStrategy> make_expert_choice_strategy(const RouterConfig& config) {
  return std::make_unique<ExpertChoiceStrategy>(config.ec_fallback == "topk", config.temperature);
}

}  // namespace moelab
