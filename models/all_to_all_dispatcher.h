#pragma once
// Expert parallelism's token dispatcher (Megatron-Core's "alltoall" dispatcher): the experts
// of a layer are sharded over the ranks of an expert group, E / EP consecutive experts each.
// dispatch() packs this rank's tokens by expert, exchanges the row counts, then the rows, and
// hands this rank's experts every row sent to them by any rank of the group; combine() sends
// the experts' outputs back and combines them gate-weighted. The plan is this rank's own (its
// capacity counts its own tokens), so the output equals the single-process layer's on them.
// It reads the row counts back to the host (the exchange's sizes), so a CUDA graph cannot
// capture it.
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

class AllToAllDispatcher : public TokenDispatcher {
 public:
  AllToAllDispatcher(std::shared_ptr<Communicator> group, int64_t num_experts);
  ExpertInput dispatch(const torch::Tensor& x, const RoutingPlan& plan) override;
  torch::Tensor combine(const torch::Tensor& expert_output) override;
  bool host_sync_free() const override { return false; }

  // The steps of dispatch and combine, for a benchmark that times them apart: the counts
  // exchange (one small all-to-all and a device-to-host read), the rows exchange, and the
  // way back.
  ExchangedTokens exchange_counts(PackedTokens local) const;
  void exchange_rows(ExchangedTokens& exchanged) const;
  torch::Tensor combine_exchanged(const torch::Tensor& expert_output, const ExchangedTokens& exchanged) const;

  // Received rows come source-major ([rank j][local expert e], counts [EP, E/EP] on the
  // host); the experts want them expert-major. For each expert-major row, its received row.
  static torch::Tensor expert_major_order(const torch::Tensor& counts);

  const std::shared_ptr<Communicator>& group() const { return group_; }
  int64_t experts_per_rank() const { return experts_per_rank_; }

 private:
  std::shared_ptr<Communicator> group_;
  int64_t experts_per_rank_;
  ExchangedTokens exchanged_;  // the last dispatch's, for combine
};

}  // namespace moelab
