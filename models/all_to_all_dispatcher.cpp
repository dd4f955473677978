#include "models/all_to_all_dispatcher.h"

#include <torch/torch.h>

#include "dist/all_to_all.h"

namespace moelab {

AllToAllDispatcher::AllToAllDispatcher(std::shared_ptr<Communicator> group, int64_t num_experts)
    : group_(std::move(group)), experts_per_rank_(num_experts / group_->size()) {
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
  exchanged_ = exchange_counts(pack_tokens(x, plan));
  exchange_rows(exchanged_);
  return {exchanged_.packed, exchanged_.expert_rows};
}

torch::Tensor AllToAllDispatcher::combine(const torch::Tensor& expert_output) {
  return combine_exchanged(expert_output, exchanged_);
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
