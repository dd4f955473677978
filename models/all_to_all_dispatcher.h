#pragma once
// Expert parallelism's token dispatcher (Megatron-Core's "alltoall" dispatcher): the experts
// of a layer are sharded over the ranks of an expert group, E / EP consecutive experts each.
// dispatch() packs this rank's tokens by expert, exchanges the row counts, then the rows, and
// hands this rank's experts every row sent to them by any rank of the group; combine() sends
// the experts' outputs back and combines them gate-weighted. The plan is this rank's own (its
// capacity counts its own tokens), so the output equals the single-process layer's on them.
//
// Two exchanges, chosen per plan:
// - counted (dropless plans, expert choice): the row counts go to the host first, to size
//   the rows' all-to-all exactly; a CUDA graph cannot capture it.
// - capacity-padded (plans with capacity slots): every rank sends each peer E/EP x C rows
//   whatever the routing (expert e's kept tokens at rows e*C + slot, the rest padding), so
//   the exchange's shape is fixed and nothing is read back; the counts travel in a second
//   small all-to-all that stays on the device. The receiving rank packs the valid rows
//   expert-major (its experts compute no padding) and scatters their outputs back to the
//   padded layout for the return exchange. Costs (1 - kept / (E*C)) of the exchanged bytes
//   in padding: 20% at CF 1.25 with nothing dropped. A CUDA graph can capture it.
#include <memory>
#include <vector>

#include <torch/types.h>

#include "dist/communicator.h"
#include "models/token_dispatcher.h"

namespace moelab {

struct ExchangedTokens {
  PackedTokens local;                 // this rank's tokens packed by (global) expert
  torch::Tensor packed;               // [R, d] rows for this rank's experts, local-expert-major
  torch::Tensor expert_rows;          // [E / EP] int64 rows of `packed` per local expert
  torch::Tensor received_of_packed;   // [R] int64: the received row each packed row is
  torch::Tensor packed_of_received;   // [R] int64: the inverse
  torch::Tensor send_counts;          // [EP, E / EP] int64 on the host: rows to rank j's local expert e
  torch::Tensor recv_counts;          // [EP, E / EP] int64 on the host: rows from rank j for local expert e
  std::vector<int64_t> send_rows, recv_rows;  // rows to / from each rank of the group
  int64_t sent = 0;                   // kept rows of `local.packed` (sum of send_rows)
};

// The capacity-padded exchange's state between dispatch and combine (all on the device).
struct PaddedExchange {
  torch::Tensor row_of_entry;        // [T, K] int64: each kept assignment's row e*C + slot, -1 if dropped
  torch::Tensor gates;               // [T, K] the plan's gates
  torch::Tensor packed_of_received;  // [E*C] int64: each received row's packed row, -1 for padding
};

class AllToAllDispatcher : public TokenDispatcher {
 public:
  // capacity_padded: training's plans carry capacity slots (Router::assigns_capacity_slots),
  // so its steps take the padded exchange.
  AllToAllDispatcher(std::shared_ptr<Communicator> group, int64_t num_experts, bool capacity_padded);
  ExpertInput dispatch(const torch::Tensor& x, const RoutingPlan& plan) override;
  torch::Tensor combine(const torch::Tensor& expert_output) override;
  bool host_sync_free() const override { return capacity_padded_; }

  // The steps of dispatch and combine, for a benchmark that times them apart: the counts
  // exchange (one small all-to-all and a device-to-host read), the rows exchange, and the
  // way back.
  ExchangedTokens exchange_counts(PackedTokens local) const;
  void exchange_rows(ExchangedTokens& exchanged) const;
  torch::Tensor combine_exchanged(const torch::Tensor& expert_output, const ExchangedTokens& exchanged) const;

  // Received rows come source-major ([rank j][local expert e], counts [EP, E/EP] on the
  // host); the experts want them expert-major. For each expert-major row, its received row.
  static torch::Tensor expert_major_order(const torch::Tensor& counts);

  // The capacity-padded exchange (plan.slot defined): dispatch's rows for this rank's experts
  // and the state combine_padded needs.
  ExpertInput dispatch_padded(const torch::Tensor& x, const RoutingPlan& plan, PaddedExchange& state) const;
  torch::Tensor combine_padded(const torch::Tensor& expert_output, const PaddedExchange& state) const;

  const std::shared_ptr<Communicator>& group() const { return group_; }
  int64_t experts_per_rank() const { return experts_per_rank_; }

 private:
  std::shared_ptr<Communicator> group_;
  int64_t experts_per_rank_;
  bool capacity_padded_;
  // The last dispatch's, for combine: padded_ when its plan had capacity slots.
  bool last_padded_ = false;
  ExchangedTokens exchanged_;
  PaddedExchange padded_;
};

}  // namespace moelab
