#pragma once
// The MoE layer composes router -> dispatcher -> experts -> combine, Megatron-Core's shape:
// the router returns a plan, the dispatcher (chosen when the layer is built) moves tokens by
// it, the experts compute, the dispatcher combines. It keeps the last plan so that metrics
// and traces can read what it did without recomputing anything.
#include <memory>

#include <torch/nn/module.h>

#include "config/run_config.h"
#include "dist/communicator.h"
#include "models/adapters.h"
#include "models/all_to_all_dispatcher.h"
#include "models/experts.h"
#include "models/token_dispatcher.h"
#include "routers/router.h"

namespace moelab {

class MoeLayer : public torch::nn::Module {
 public:
  // dispatcher: model.dispatcher (see make_token_dispatcher).
  MoeLayer(const RouterConfig& router, int64_t dim, int64_t hidden, bool swiglu, const std::string& dispatcher = "sparse");
  // x [T, d], token_ids [T] -> [T, d]; aux losses are in last_plan().
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& token_ids);
  // The router alone: last_plan() for these tokens, no expert computed (tracing's last layer).
  void route(const torch::Tensor& x, const torch::Tensor& token_ids) { last_plan_ = router_->forward(x, token_ids); }

  // Expert parallelism: keep only this rank's E / EP experts (a copy of their current
  // weights) and exchange tokens with the group's other ranks in every forward.
  void shard_experts(const std::shared_ptr<Communicator>& expert_group);
  bool experts_sharded() const { return sharded_; }
  // Whether a forward and backward on CUDA read nothing back to the host (so that a training
  // step can be captured as a CUDA graph): the dispatcher's and the experts' part.
  bool host_sync_free(bool bf16) const;
  const TokenDispatcher& dispatcher() const { return *dispatcher_; }

  const RoutingPlan& last_plan() const { return last_plan_; }
  Router& router() { return *router_; }
  Experts& experts() { return *experts_; }
  // The balancing terms of the last forward: the plan's, and the routed adapter's.
  torch::Tensor aux_loss() const;

  // Fine-tuning adapters beside the experts (models/adapters.h), each adding zero at first.
  // perft_r: an MoE layer of its own, `router.num_experts` experts of width `rank`.
  void add_routed_adapter(const RouterConfig& router, int64_t rank);
  // perft_e: one adapter per expert, on the rows dispatched to it, under the same gates.
  void add_expert_adapters(int64_t rank);
  // shared: one low-rank FFN on every token.
  void add_shared_adapter(int64_t rank);
  const std::shared_ptr<MoeLayer>& routed_adapter() const { return routed_adapter_; }

 private:
  std::shared_ptr<Router> router_;
  std::shared_ptr<Experts> experts_;
  std::unique_ptr<TokenDispatcher> dispatcher_;
  bool uniform_rows_;     // the dispatcher hands the experts every token (masked_matmul)
  bool sharded_ = false;  // the experts are this rank's share; the dispatcher exchanges tokens
  RoutingPlan last_plan_;
  std::shared_ptr<MoeLayer> routed_adapter_;
  std::shared_ptr<Experts> expert_adapters_;
  std::shared_ptr<LowRankFfn> shared_adapter_;
};

}  // namespace moelab
