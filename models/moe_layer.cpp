#include "models/moe_layer.h"

#include <torch/torch.h>

namespace moelab {

MoeLayer::MoeLayer(const RouterConfig& router, int64_t dim, int64_t hidden, bool swiglu) {
  router_ = register_module("router", std::make_shared<Router>(router, dim));
  experts_ = register_module("experts", std::make_shared<Experts>(router.num_experts, dim, hidden, swiglu));
}

torch::Tensor MoeLayer::forward(const torch::Tensor& x, const torch::Tensor& token_ids) {
  last_plan_ = router_->forward(x, token_ids);
  DispatchedTokens dispatched = dispatcher_.dispatch(x, last_plan_);
  torch::Tensor expert_output = experts_->forward(dispatched.packed, dispatched.expert_rows);
  return dispatcher_.combine(expert_output, dispatched);
}

}  // namespace moelab
