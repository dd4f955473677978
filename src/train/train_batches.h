#pragma once
// The training batches. Window starts are drawn on the host by the seeded BatchSampler (a
// run draws the same windows on any device and resumes where it stopped); the windows are
// gathered where the whole token corpus is held, on the training device: per step only the
// window starts cross the bus, and the gather can be part of a captured CUDA graph.
#include <torch/types.h>

#include "data/batch_sampler.h"
#include "data/token_file.h"

namespace moelab {

class TrainBatches {
 public:
  // The sampler draws global_batch windows a step; this rank trains on rows
  // [first_row, first_row + rows) of them.
  TrainBatches(const TokenFile& tokens, BatchSampler& sampler, int64_t global_batch, int64_t seq_len,
               int64_t first_row, int64_t rows, const torch::Device& device);

  void draw();    // host: the next step's starts, copied to the device's static buffer
  void gather();  // device: inputs() and targets() from the drawn starts (no host work)
  const torch::Tensor& inputs() const { return inputs_; }    // [rows, seq_len] int64
  const torch::Tensor& targets() const { return targets_; }  // inputs shifted by one token

 private:
  BatchSampler& sampler_;
  int64_t global_batch_, first_row_, rows_;
  torch::Tensor corpus_;   // [tokens] int32 on the device
  torch::Tensor starts_;   // [rows] int64 on the device
  torch::Tensor offsets_;  // [seq_len + 1] 0..seq_len
  torch::Tensor inputs_, targets_;
};

}  // namespace moelab
