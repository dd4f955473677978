#include "models/all_to_all_dispatcher.h"

#include <torch/torch.h>

#include "dist/all_to_all.h"
#include "kernels/permute.h"

namespace moelab {

AllToAllDispatcher::AllToAllDispatcher(std::shared_ptr<Communicator> group, int64_t num_experts, bool capacity_padded)
    : group_(std::move(group)), experts_per_rank_(num_experts / group_->size()), capacity_padded_(capacity_padded) {
  TORCH_CHECK(num_experts % group_->size() == 0, "AllToAllDispatcher: ", num_experts, " experts over ",
              group_->size(), " ranks");
}

torch::Tensor AllToAllDispatcher::expert_major_order(const torch::Tensor& counts) {
  const int64_t ranks = counts.size(0), per = counts.size(1);
  auto c = counts.accessor<int64_t, 2>();
  std::vector<int64_t> start(ranks * per + 1, 0);  // first received row of (j, e), source-major
  for (int64_t i = 0; i < ranks * per; ++i) start[i + 1] = start[i] + c[i / per][i % per];
  torch::Tensor order = torch::empty({start.back()}, torch::kLong);
  int64_t* out = order.data_ptr<int64_t>();
  for (int64_t e = 0; e < per; ++e)
    for (int64_t j = 0; j < ranks; ++j)
      for (int64_t i = 0; i < c[j][e]; ++i) *out++ = start[j * per + e] + i;
  return order;
}

ExchangedTokens AllToAllDispatcher::exchange_counts(PackedTokens local) const {
  const int ranks = group_->size();
  const int64_t per = experts_per_rank_;
  ExchangedTokens ex;
  ex.local = std::move(local);
  // Expert e lives on rank e / per, so the kept rows (expert-major) are already in rank order.
  std::vector<int64_t> per_rank(ranks, per);
  torch::Tensor recv_counts = group_->all_to_all(ex.local.expert_rows.view({-1, 1}), per_rank, per_rank).view({ranks, per});
  ex.send_counts = ex.local.expert_rows.view({ranks, per}).cpu();
  torch::Tensor send = ex.send_counts.sum(1);
  torch::Tensor recv = recv_counts.cpu();  // [source rank, local expert]
  torch::Tensor received = recv.sum(1);
  ex.send_rows.assign(send.data_ptr<int64_t>(), send.data_ptr<int64_t>() + ranks);
  ex.recv_rows.assign(received.data_ptr<int64_t>(), received.data_ptr<int64_t>() + ranks);
  for (int64_t n : ex.send_rows) ex.sent += n;

  ex.recv_counts = recv;
  torch::Tensor received_of_packed = expert_major_order(recv);
  const int64_t total = received_of_packed.size(0);
  const torch::Device device = ex.local.packed.device();
  ex.received_of_packed = received_of_packed.to(device);
  ex.packed_of_received = torch::empty_like(ex.received_of_packed)
                              .index_put_({ex.received_of_packed}, torch::arange(total, ex.received_of_packed.options()));
  ex.expert_rows = recv.sum(0).to(device);
  return ex;
}

void AllToAllDispatcher::exchange_rows(ExchangedTokens& ex) const {
  torch::Tensor received = differentiable_all_to_all(group_, ex.local.packed.narrow(0, 0, ex.sent), ex.send_rows, ex.recv_rows);
  ex.packed = received.index_select(0, ex.received_of_packed);
}

ExpertInput AllToAllDispatcher::dispatch(const torch::Tensor& x, const RoutingPlan& plan) {
  last_padded_ = plan.slot.defined() && plan.capacity > 0;
  if (last_padded_) return dispatch_padded(x, plan, padded_);
  exchanged_ = exchange_counts(pack_tokens(x, plan));
  exchange_rows(exchanged_);
  return {exchanged_.packed, exchanged_.expert_rows};
}

torch::Tensor AllToAllDispatcher::combine(const torch::Tensor& expert_output) {
  return last_padded_ ? combine_padded(expert_output, padded_) : combine_exchanged(expert_output, exchanged_);
}

// Layouts, with P ranks, L = E / P local experts, C slots:
//   sent      [E*C, d]: row e*C + s = the token in slot s of expert e (global e), or padding;
//                       rows [j*L*C, (j+1)*L*C) go to rank j.
//   received  [P*L*C, d]: row (j*L + e)*C + s = rank j's slot s of local expert e.
//   packed    [E*C, d]: local expert e's valid rows, rank by rank, then expert e + 1's; rows
//                       past the valid ones are never computed.
ExpertInput AllToAllDispatcher::dispatch_padded(const torch::Tensor& x, const RoutingPlan& plan, PaddedExchange& state) const {
  const int64_t ranks = group_->size(), local = experts_per_rank_, experts = plan.num_experts, slots = plan.capacity;
  const int64_t tokens = x.size(0), columns = plan.expert_ids.size(1), rows = experts * slots;
  const torch::Device device = x.device();
  const auto index_options = torch::TensorOptions().dtype(torch::kLong).device(device);

  // Kept assignment -> row e*C + slot; each row's token (0 for padding rows, which are sent
  // but never computed on). Entries not kept scatter into one extra row, cut off after.
  const torch::Tensor slot = plan.slot.reshape(-1), kept = slot >= 0;
  const torch::Tensor row_of_entry = torch::where(kept, plan.expert_ids.reshape(-1) * slots + slot, torch::full_like(slot, -1));
  const torch::Tensor token_of_entry = torch::arange(tokens * columns, index_options).div(columns, "floor");
  const torch::Tensor token_index = torch::zeros({rows + 1}, index_options)
                                        .scatter_(0, torch::where(kept, row_of_entry, torch::full_like(slot, rows)), token_of_entry)
                                        .narrow(0, 0, rows);
  state.row_of_entry = row_of_entry.view({tokens, columns});
  state.gates = plan.gates;
  torch::Tensor sent = kernels::permute(x, token_index, state.row_of_entry);

  const std::vector<int64_t> per_rank(ranks, local), rows_per_rank(ranks, local * slots);
  // [P, L]: rows rank j holds for this rank's local expert e (kept_counts is [E], global
  // experts in rank order, so its rank-j block is what rank j's experts receive).
  torch::Tensor counts = group_->all_to_all(plan.kept_counts.view({-1, 1}), per_rank, per_rank).view({ranks, local});
  torch::Tensor received = differentiable_all_to_all(group_, sent, rows_per_rank, rows_per_rank);

  // Segments expert-major: segment e*P + j holds rank j's rows for local expert e.
  torch::Tensor segment_rows = counts.t().reshape(-1);
  torch::Tensor segment_end = segment_rows.cumsum(0);
  torch::Tensor segment_start = segment_end - segment_rows;
  torch::Tensor total = segment_end[-1];

  // Each packed row's received row (padding beyond the valid rows reads an appended zero row).
  // Both layouts have E*C rows, so one index range serves both maps.
  const torch::Tensor packed_row = torch::arange(rows, index_options), &received_index = packed_row;
  torch::Tensor segment = torch::searchsorted(segment_end, packed_row, /*out_int32=*/false, /*right=*/true)
                              .clamp_max(local * ranks - 1);
  torch::Tensor expert_of = segment.div(ranks, "floor"), rank_of = segment.remainder(ranks);
  torch::Tensor received_row = (rank_of * local + expert_of) * slots + packed_row - segment_start.index_select(0, segment);
  torch::Tensor received_of_packed = torch::where(packed_row < total, received_row, torch::full_like(received_row, rows));
  torch::Tensor with_zero = torch::cat({received, received.new_zeros({1, received.size(1)})}, 0);
  torch::Tensor packed = with_zero.index_select(0, received_of_packed);

  // Each received row's packed row, for the way back (-1: padding).
  torch::Tensor received_slot = received_index.remainder(slots), source_block = received_index.div(slots, "floor");
  torch::Tensor from_rank = source_block.div(local, "floor"), to_expert = source_block.remainder(local);
  torch::Tensor valid = received_slot < counts.reshape(-1).index_select(0, source_block);
  torch::Tensor target = segment_start.index_select(0, to_expert * ranks + from_rank) + received_slot;
  state.packed_of_received = torch::where(valid, target, torch::full_like(target, -1));

  ExpertInput in;
  in.rows = packed;
  in.expert_rows = counts.sum(0);
  return in;
}

torch::Tensor AllToAllDispatcher::combine_padded(const torch::Tensor& expert_output, const PaddedExchange& state) const {
  const int64_t ranks = group_->size(), rows = state.packed_of_received.size(0), computed = expert_output.size(0);
  // The experts' output has the valid rows first, then (on some paths) rows never computed
  // that may hold anything: padding reads an appended zero row instead.
  torch::Tensor with_zero = torch::cat({expert_output, expert_output.new_zeros({1, expert_output.size(1)})}, 0);
  torch::Tensor index = torch::where(state.packed_of_received >= 0, state.packed_of_received,
                                     torch::full_like(state.packed_of_received, computed));
  torch::Tensor by_source = with_zero.index_select(0, index);
  const std::vector<int64_t> rows_per_rank(ranks, rows / ranks);
  torch::Tensor returned = differentiable_all_to_all(group_, by_source, rows_per_rank, rows_per_rank);
  return kernels::unpermute(returned, state.row_of_entry, state.gates);
}

torch::Tensor AllToAllDispatcher::combine_exchanged(const torch::Tensor& expert_output, const ExchangedTokens& ex) const {
  torch::Tensor by_source = expert_output.index_select(0, ex.packed_of_received);
  torch::Tensor returned = differentiable_all_to_all(group_, by_source, ex.recv_rows, ex.send_rows);
  // The local combine reads only the kept rows; the rest of its buffer stays zero.
  const int64_t rows = ex.local.packed.size(0);
  if (rows > ex.sent) returned = torch::cat({returned, returned.new_zeros({rows - ex.sent, returned.size(1)})}, 0);
  return combine_packed(returned, ex.local);
}

}  // namespace moelab
