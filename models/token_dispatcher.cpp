#include "models/token_dispatcher.h"

#include <torch/torch.h>

#include "kernels/routing_kernels.h"

namespace moelab {

DispatchedTokens TokenDispatcher::dispatch(const torch::Tensor& x, const RoutingPlan& plan) const {
  const int64_t tokens = x.size(0), columns = plan.expert_ids.size(1), entries = tokens * columns;
  // The buffer's size is a bound known on the host, T*K or, with a capacity C, at most E*C
  // kept (expert choice: K = E columns, of which only C per expert are kept), so no size is
  // read back from the device; its rows past the kept ones are never read.
  const int64_t rows = plan.capacity > 0 ? std::min(entries, plan.num_experts * plan.capacity) : entries;
  DispatchedTokens out;
  out.gates = plan.gates;
  if (plan.slot.defined()) {  // capacity already queued every expert's entries: rows = start + slot
    kernels::PackedRows packed =
        kernels::packed_rows(plan.expert_ids.reshape(-1), plan.slot.reshape(-1), plan.kept_counts, rows, columns);
    out.token_index = packed.token_index;
    out.row_of_entry = packed.row_of_entry.view({tokens, columns});
    out.packed = kernels::permute(x, out.token_index, out.row_of_entry);
    out.expert_rows = plan.kept_counts;
    return out;
  }
  // Kept entries sort by expert, stably (flat order inside an expert: deterministic packing);
  // dropped ones sort after them under an extra key.
  torch::Tensor kept = plan.kept.reshape(-1);
  torch::Tensor ids = plan.expert_ids.reshape(-1);
  torch::Tensor key = torch::where(kept, ids, torch::full_like(ids, plan.num_experts));
  kernels::KeySort sorted = kernels::stable_sort_by_key(key, plan.num_experts + 1);
  const torch::Tensor& rank = sorted.position;  // the packed row of each entry

  out.token_index = sorted.order.narrow(0, 0, rows).div(columns, "floor");
  out.row_of_entry = torch::where(kept, rank, torch::full_like(rank, -1)).view({tokens, columns});
  out.packed = kernels::permute(x, out.token_index, out.row_of_entry);
  out.expert_rows = sorted.counts.narrow(0, 0, plan.num_experts);
  return out;
}

torch::Tensor TokenDispatcher::combine(const torch::Tensor& expert_output, const DispatchedTokens& dispatched) const {
  return kernels::unpermute(expert_output, dispatched.row_of_entry, dispatched.gates);
}

}  // namespace moelab
