#include "models/token_dispatcher.h"

#include <torch/torch.h>

#include "kernels/routing_kernels.h"
#include "util/error.h"

namespace moelab {

PackedTokens pack_tokens(const torch::Tensor& x, const RoutingPlan& plan) {
  const int64_t tokens = x.size(0), columns = plan.expert_ids.size(1), entries = tokens * columns;
  // The buffer's size is the plan's bound known on the host (T*K, or E*C under a capacity C;
  // expert choice: K = E columns, of which only C per expert are kept), so no size is read
  // back from the device; its rows past the kept ones are never read.
  const int64_t rows = plan.kept_bound > 0 ? std::min(entries, plan.kept_bound) : entries;
  PackedTokens out;
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

torch::Tensor combine_packed(const torch::Tensor& expert_output, const PackedTokens& packed) {
  return kernels::unpermute(expert_output, packed.row_of_entry, packed.gates);
}

namespace {

class SparseDispatcher : public TokenDispatcher {
 public:
  ExpertInput dispatch(const torch::Tensor& x, const RoutingPlan& plan) override {
    packed_ = pack_tokens(x, plan);
    ExpertInput in{packed_.packed, packed_.expert_rows};
    packed_.packed = torch::Tensor();  // combine needs only the maps: the rows stay the experts'
    return in;
  }
  torch::Tensor combine(const torch::Tensor& expert_output) override { return combine_packed(expert_output, packed_); }
  bool host_sync_free() const override { return true; }

 private:
  PackedTokens packed_;
};

class MaskedDispatcher : public TokenDispatcher {
 public:
  ExpertInput dispatch(const torch::Tensor& x, const RoutingPlan& plan) override {
    const int64_t tokens = x.size(0), experts = plan.num_experts;
    // [T, E]: each token's gate for each expert, zero where not routed or not kept.
    dense_gates_ = torch::zeros({tokens, experts}, plan.gates.options()).scatter_add(1, plan.expert_ids, plan.gates);
    ExpertInput in;
    in.rows = x.unsqueeze(0).expand({experts, tokens, x.size(1)});
    in.expert_rows = torch::full({experts}, tokens, torch::TensorOptions().dtype(torch::kLong).device(x.device()));
    in.rows_per_expert = tokens;
    return in;
  }
  torch::Tensor combine(const torch::Tensor& expert_output) override {  // [E, T, d]
    return (expert_output * dense_gates_.t().unsqueeze(-1).to(expert_output.scalar_type())).sum(0);
  }
  bool host_sync_free() const override { return true; }

 private:
  torch::Tensor dense_gates_;
};

}  // namespace

std::unique_ptr<TokenDispatcher> make_token_dispatcher(const std::string& name) {
  if (name == "sparse") return std::make_unique<SparseDispatcher>();
  if (name == "masked_matmul") return std::make_unique<MaskedDispatcher>();
  throw UserError("model.dispatcher must be sparse or masked_matmul, got '" + name + "'");
}

}  // namespace moelab
