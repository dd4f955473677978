#include "models/moe_layer.h"

#include <torch/torch.h>

namespace moelab {

MoeLayer::MoeLayer(const RouterConfig& router, int64_t dim, int64_t hidden, bool swiglu, const std::string& dispatcher)
    : masked_matmul_(dispatcher == "masked_matmul") {
  router_ = register_module("router", std::make_shared<Router>(router, dim));
  experts_ = register_module("experts", std::make_shared<Experts>(router.num_experts, dim, hidden, swiglu));
}

torch::Tensor MoeLayer::forward(const torch::Tensor& x, const torch::Tensor& token_ids) {
  last_plan_ = router_->forward(x, token_ids);
  if (masked_matmul_) {
    torch::Tensor dense_gates = torch::zeros({x.size(0), last_plan_.num_experts}, last_plan_.gates.options())
                                    .scatter_add(1, last_plan_.expert_ids, last_plan_.gates);
    return experts_->masked_forward(x, dense_gates);
  }
  DispatchedTokens dispatched = dispatcher_.dispatch(x, last_plan_);
  torch::Tensor expert_output = experts_->forward(dispatched.packed, dispatched.expert_rows);
  return dispatcher_.combine(expert_output, dispatched);
}

}  // namespace moelab
