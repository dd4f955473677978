// sinkhorn: experts picked by top-k of a Sinkhorn-balanced matrix computed without gradient;
// gates = softmax of the raw logits over the picked experts (sigmoid of the logit for k = 1),
// as Megatron-Core does, so the router still gets a gradient from the LM loss.
#include <torch/torch.h>

#include "kernels/routing_kernels.h"
#include "routers/strategy.h"

namespace moelab {
namespace {

class SinkhornStrategy : public RoutingStrategy {
 public:
  SinkhornStrategy(int64_t iters, double temperature) : iters_(iters), temperature_(temperature) {}

  StrategyChoice route(const StrategyInputs& in) const override {
    torch::Tensor balanced = kernels::sinkhorn(in.selection_logits, iters_, temperature_);
    torch::Tensor ids = kernels::topk_ids(balanced, in.top_k);
    torch::Tensor chosen = in.logits.gather(1, ids);
    torch::Tensor gates = in.top_k == 1 ? torch::sigmoid(chosen) : torch::softmax(chosen, -1);
    return {ids, gates, torch::ones_like(ids, torch::kBool), gates.detach()};
  }

 private:
  int64_t iters_;
  double temperature_;
};

}  // namespace

std::unique_ptr<RoutingStrategy> make_sinkhorn_strategy(const RouterConfig& config) {
  return std::make_unique<SinkhornStrategy>(config.sinkhorn_iters, config.temperature);
}

}  // namespace moelab
