// topk_hard: top-k experts by logit, equal weights: 1 each, summed (hard_weight "sum": each
// expert's full output, as a token sent to k experts gets all k) or 1/k each ("mean": the
// output keeps the scale of one expert's). The router learns only through the
// balancing terms; under drop_policy "probs" the softmax probability decides who stays.
#include <torch/torch.h>

#include "kernels/routing_kernels.h"
#include "routers/strategy.h"

namespace moelab {
namespace {

class TopkHardStrategy : public RoutingStrategy {
 public:
  explicit TopkHardStrategy(bool mean) : mean_(mean) {}

  StrategyChoice route(const StrategyInputs& in) const override {
    torch::Tensor ids = kernels::topk_ids(in.selection_logits, in.top_k);
    torch::Tensor gates = torch::full(ids.sizes(), mean_ ? 1.0 / static_cast<double>(in.top_k) : 1.0,
                                      in.logits.options());
    torch::Tensor priority = torch::softmax(in.logits.detach(), -1).gather(1, ids);
    return {ids, gates, torch::ones_like(ids, torch::kBool), priority};
  }

 private:
  bool mean_;
};

}  // namespace

std::unique_ptr<RoutingStrategy> make_topk_hard_strategy(const RouterConfig& config) {
  return std::make_unique<TopkHardStrategy>(config.hard_weight == "mean");
}

}  // namespace moelab
