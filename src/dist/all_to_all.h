#pragma once
// The all-to-all of token rows as an autograd operation: its backward is the same exchange
// with the send and receive counts swapped, so gradients travel back to the ranks the
// tokens came from.
#include <memory>
#include <vector>

#include <torch/types.h>

#include "dist/communicator.h"

namespace moelab {

torch::Tensor differentiable_all_to_all(const std::shared_ptr<Communicator>& group, const torch::Tensor& input,
                                        const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows);

}  // namespace moelab
