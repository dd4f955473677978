#include "models/moe_layer.h"

#include <torch/torch.h>

#include "kernels/expert_ffn.h"
#include "util/error.h"

namespace moelab {

MoeLayer::MoeLayer(const RouterConfig& router, int64_t dim, int64_t hidden, bool swiglu, const std::string& dispatcher)
    : dispatcher_(make_token_dispatcher(dispatcher)), uniform_rows_(dispatcher == "masked_matmul") {
  router_ = register_module("router", std::make_shared<Router>(router, dim));
  experts_ = register_module("experts", std::make_shared<Experts>(router.num_experts, dim, hidden, swiglu));
}

torch::Tensor MoeLayer::forward(const torch::Tensor& x, const torch::Tensor& token_ids) {
  last_plan_ = router_->forward(x, token_ids);
  return dispatcher_->combine(experts_->forward(dispatcher_->dispatch(x, last_plan_)));
}

bool MoeLayer::host_sync_free(bool bf16) const {
  return dispatcher_->host_sync_free() && (uniform_rows_ || kernels::expert_ffn_host_sync_free(bf16));
}

void MoeLayer::shard_experts(const std::shared_ptr<Communicator>& expert_group) {
  if (uniform_rows_)
    throw UserError("model.dispatcher masked_matmul runs every expert on every token and cannot shard them; use sparse with parallel.expert_parallel > 1");
  const int64_t per_rank = experts_->w1.size(0) / expert_group->size();
  dispatcher_ = std::make_unique<AllToAllDispatcher>(expert_group, experts_->w1.size(0));
  experts_ = replace_module("experts", experts_->slice(expert_group->rank() * per_rank, per_rank));
  sharded_ = true;
}

}  // namespace moelab
