#pragma once
// Seeded random training windows: each row is seq_len + 1 consecutive tokens starting at a
// uniformly drawn offset (every offset can be drawn, as in the seed). The generator state is
// part of a checkpoint, so a resumed run draws exactly the batches it would have drawn.
#include <cstdint>
#include <random>
#include <string>

#include "data/token_file.h"

namespace moelab {

class BatchSampler {
 public:
  BatchSampler(const TokenFile& tokens, int64_t batch_size, int64_t seq_len, uint64_t seed);
  // Fills inputs[b*seq_len + i] and targets (the same window shifted by one).
  void next(int64_t* inputs, int64_t* targets);
  // The same draw as next(), as the batch_size window starts only (the windows are then
  // gathered where the tokens are, e.g. on the GPU).
  void next_starts(int64_t* starts);
  std::string state() const;
  void restore(const std::string& state);  // UserError if it does not parse

 private:
  const TokenFile& tokens_;
  int64_t batch_size_, seq_len_;
  std::mt19937_64 rng_;
};

}  // namespace moelab
