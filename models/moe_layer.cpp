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
  const ExpertInput rows = dispatcher_->dispatch(x, last_plan_);
  torch::Tensor out = experts_->forward(rows);
  // Combining is linear in the rows: the expert adapters' rows join the experts' before it.
  if (expert_adapters_) out = out + expert_adapters_->forward(rows);
  out = dispatcher_->combine(out);
  if (routed_adapter_) out = out + routed_adapter_->forward(x, token_ids);
  if (shared_adapter_) out = out + shared_adapter_->forward(x);
  return out;
}

torch::Tensor MoeLayer::aux_loss() const {
  torch::Tensor loss = last_plan_.lb_loss + last_plan_.z_loss;
  return routed_adapter_ ? loss + routed_adapter_->aux_loss() : loss;
}

bool MoeLayer::host_sync_free(bool bf16) const {
  return dispatcher_->host_sync_free() && (uniform_rows_ || kernels::expert_ffn_host_sync_free(bf16)) &&
         (!routed_adapter_ || routed_adapter_->host_sync_free(bf16));
}

void MoeLayer::add_routed_adapter(const RouterConfig& router, int64_t rank) {
  routed_adapter_ = register_module("adapter_routed", std::make_shared<MoeLayer>(router, experts_->w1.size(1), rank,
                                                                                 /*swiglu=*/false, "sparse"));
  routed_adapter_->experts().zero_output();
}

void MoeLayer::add_expert_adapters(int64_t rank) {
  expert_adapters_ = register_module("adapter_experts", std::make_shared<Experts>(experts_->w1.size(0), experts_->w1.size(1),
                                                                                  rank, /*swiglu=*/false));
  expert_adapters_->zero_output();
}

void MoeLayer::add_shared_adapter(int64_t rank) {
  shared_adapter_ = register_module("adapter_shared", std::make_shared<LowRankFfn>(experts_->w1.size(1), rank));
}

void MoeLayer::shard_experts(const std::shared_ptr<Communicator>& expert_group) {
  if (uniform_rows_)
    throw UserError("model.dispatcher masked_matmul runs every expert on every token and cannot shard them; use sparse with parallel.expert_parallel > 1");
  const int64_t per_rank = experts_->w1.size(0) / expert_group->size();
  dispatcher_ = std::make_unique<AllToAllDispatcher>(expert_group, experts_->w1.size(0), router_->assigns_capacity_slots());
  experts_ = replace_module("experts", experts_->slice(expert_group->rank() * per_rank, per_rank));
  sharded_ = true;
}

}  // namespace moelab
