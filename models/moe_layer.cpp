#include "models/moe_layer.h"

#include <torch/torch.h>

#include "util/error.h"

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
  if (exchange_) {
    ExchangedTokens exchanged = exchange_->dispatch(x, last_plan_);
    return exchange_->combine(experts_->forward(exchanged.packed, exchanged.expert_rows), exchanged);
  }
  DispatchedTokens dispatched = dispatcher_.dispatch(x, last_plan_);
  torch::Tensor expert_output = experts_->forward(dispatched.packed, dispatched.expert_rows);
  return dispatcher_.combine(expert_output, dispatched);
}

bool MoeLayer::host_sync_free(bool bf16) const {
  return masked_matmul_ || (!exchange_ && bf16 && Experts::grouped_gemm_available());
}

void MoeLayer::shard_experts(const std::shared_ptr<Communicator>& expert_group) {
  if (masked_matmul_)
    throw UserError("model.dispatcher masked_matmul runs every expert on every token and cannot shard them; use sparse with parallel.expert_parallel > 1");
  const int64_t per_rank = experts_->w1.size(0) / expert_group->size();
  exchange_ = std::make_shared<AllToAllDispatcher>(expert_group, experts_->w1.size(0));
  experts_ = replace_module("experts", experts_->slice(expert_group->rank() * per_rank, per_rank));
}

}  // namespace moelab
