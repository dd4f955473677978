#include "train/train_batches.h"

#include <vector>

#include <torch/torch.h>

namespace moelab {

TrainBatches::TrainBatches(const TokenFile& tokens, BatchSampler& sampler, int64_t global_batch, int64_t seq_len,
                           int64_t first_row, int64_t rows, const torch::Device& device)
    : sampler_(sampler), global_batch_(global_batch), first_row_(first_row), rows_(rows) {
  torch::Tensor host = torch::empty({tokens.size()}, torch::kInt32);
  int32_t* ids = host.data_ptr<int32_t>();
  for (int64_t i = 0; i < tokens.size(); ++i) ids[i] = static_cast<int32_t>(tokens.at(i));
  auto on_device = torch::TensorOptions().device(device);
  corpus_ = host.to(device);
  starts_ = torch::zeros({rows}, on_device.dtype(torch::kLong));
  offsets_ = torch::arange(seq_len + 1, on_device.dtype(torch::kLong));
  inputs_ = torch::zeros({rows, seq_len}, on_device.dtype(torch::kLong));
  targets_ = torch::zeros({rows, seq_len}, on_device.dtype(torch::kLong));
}

void TrainBatches::draw() {
  std::vector<int64_t> starts(global_batch_);
  sampler_.next_starts(starts.data());
  torch::Tensor mine = torch::from_blob(starts.data() + first_row_, {rows_}, torch::kLong);
  if (starts_.is_cuda()) {
    // A pinned copy from libtorch's caching host allocator is not reused until this
    // asynchronous copy has run, so the host can draw ahead of the device.
    starts_.copy_(mine.pin_memory(), /*non_blocking=*/true);
  } else {
    starts_.copy_(mine);
  }
}

void TrainBatches::gather() {
  const int64_t seq_len = inputs_.size(1);
  torch::Tensor windows =
      corpus_.index_select(0, (starts_.unsqueeze(1) + offsets_).reshape(-1)).view({rows_, seq_len + 1}).to(torch::kLong);
  inputs_.copy_(windows.narrow(1, 0, seq_len));
  targets_.copy_(windows.narrow(1, 1, seq_len));
}

}  // namespace moelab
