#include "models/token_dispatcher.h"

#include <torch/torch.h>

#include "kernels/routing_kernels.h"
#include "routers/balancing.h"

namespace moelab {

DispatchedTokens TokenDispatcher::dispatch(const torch::Tensor& x, const RoutingPlan& plan) const {
  const int64_t columns = plan.expert_ids.size(1);
  torch::Tensor entries = plan.kept.reshape(-1).nonzero().squeeze(1);  // flat t*K + j, ascending
  torch::Tensor experts = plan.expert_ids.reshape(-1).index_select(0, entries);
  // A stable sort by expert keeps the flat order inside each expert: deterministic packing.
  torch::Tensor order = std::get<1>(experts.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  entries = entries.index_select(0, order);

  DispatchedTokens out;
  out.token_index = entries.div(columns, "floor");
  out.row_of_entry = torch::full({x.size(0) * columns}, -1, entries.options())
                         .index_put_({entries}, torch::arange(entries.size(0), entries.options()))
                         .view({x.size(0), columns});
  out.gates = plan.gates;
  out.packed = kernels::permute(x, out.token_index, out.row_of_entry);
  out.expert_rows = expert_counts(experts, torch::ones_like(experts, torch::kBool), plan.num_experts);
  return out;
}

torch::Tensor TokenDispatcher::combine(const torch::Tensor& expert_output, const DispatchedTokens& dispatched) const {
  return kernels::unpermute(expert_output, dispatched.row_of_entry, dispatched.gates);
}

}  // namespace moelab
