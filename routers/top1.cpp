// top1 (Switch Transformer): each token goes to its highest-scoring expert. The gate is the
// expert's softmax probability, so the router learns from the LM loss; top1_gate = "none"
// gives a constant 1, with no router gradient from the LM loss (the balancing terms alone
// train the gate), to compare against.
#include <torch/torch.h>

#include "kernels/routing_kernels.h"
#include "routers/strategy.h"

namespace moelab {
namespace {

class Top1Strategy : public RoutingStrategy {
 public:
  explicit Top1Strategy(bool prob_gate) : prob_gate_(prob_gate) {}

  int64_t experts_per_token(const RouterConfig&) const override { return 1; }

  StrategyChoice route(const StrategyInputs& in) const override {
    torch::Tensor ids, prob;
    if (in.selection_logits.is_same(in.logits)) {  // the fused gate: softmax, arg-max and its probability
      kernels::TopKGate g = kernels::softmax_topk(in.logits, 1, 1.0, /*renormalize=*/false);
      ids = g.ids;
      prob = g.gates;
    } else {  // an expert bias steers the choice but not the weights
      ids = kernels::topk_ids(in.selection_logits, 1);
      prob = torch::softmax(in.logits, -1).gather(1, ids);
    }
    torch::Tensor gates = prob_gate_ ? prob : torch::ones_like(prob);
    return {ids, gates, torch::ones_like(ids, torch::kBool), prob.detach()};
  }

 private:
  bool prob_gate_;
};

}  // namespace

std::unique_ptr<RoutingStrategy> make_top1_strategy(const RouterConfig& config) {
  return std::make_unique<Top1Strategy>(config.top1_gate == "prob");
}

}  // namespace moelab
