// softk: top-k experts by logit; gates = softmax of the k chosen logits / temperature, which
// equals the full softmax renormalised over the k (the fused gate kernel computes it so).
#include <torch/torch.h>

#include "kernels/routing_kernels.h"
#include "routers/strategy.h"

namespace moelab {
namespace {

class SoftkStrategy : public RoutingStrategy {
 public:
  explicit SoftkStrategy(double temperature) : temperature_(temperature) {}

  StrategyChoice route(const StrategyInputs& in) const override {
    torch::Tensor ids, gates;
    if (in.selection_logits.is_same(in.logits)) {
      kernels::TopKGate g = kernels::softmax_topk(in.logits, in.top_k, temperature_, /*renormalize=*/true);
      ids = g.ids;
      gates = g.gates;
    } else {  // an expert bias steers the choice but not the weights
      ids = kernels::topk_ids(in.selection_logits, in.top_k);
      gates = torch::softmax(in.logits.gather(1, ids) / temperature_, -1);
    }
    return {ids, gates, torch::ones_like(ids, torch::kBool), gates.detach()};
  }

 private:
  double temperature_;
};

}  // namespace

std::unique_ptr<RoutingStrategy> make_softk_strategy(const RouterConfig& config) {
  return std::make_unique<SoftkStrategy>(config.temperature);
}

}  // namespace moelab
