// Reference expert bias + activation with libtorch ops (autograd differentiates it): each
// row's expert from the offsets, its bias row gathered and added, then the activation.
// Padding rows (past the last offset) are given a zero bias row of their own: the GEMM
// before leaves them (and their gradient) unwritten, and whatever they hold must not reach
// the last expert's bias gradient.
#include <torch/torch.h>

#include "kernels/expert_bias_act.h"

namespace moelab::kernels::reference {

torch::Tensor expert_bias_activation(const torch::Tensor& h, const torch::Tensor& bias, const torch::Tensor& offsets,
                                     ExpertActivation activation) {
  const int64_t rows = h.size(0), experts = bias.size(0);
  torch::Tensor ends = offsets.to(torch::kLong);
  torch::Tensor counts = torch::diff(ends, 1, 0, torch::zeros({1}, ends.options()));
  // Padding rows belong to an extra expert E with a zero bias, so that every row has an
  // expert and the sizes need no read-back.
  counts = torch::cat({counts, (rows - ends[experts - 1]).reshape({1})});
  torch::Tensor expert_of_row = torch::repeat_interleave(torch::arange(experts + 1, ends.options()), counts, 0, rows);
  torch::Tensor padded_bias = torch::cat({bias, torch::zeros({1, bias.size(1)}, bias.options())});
  torch::Tensor pre = h + padded_bias.index_select(0, expert_of_row).to(h.scalar_type());
  if (activation == kGelu) return torch::gelu(pre);
  if (activation == kSwiGLU) {
    auto halves = pre.chunk(2, -1);
    return torch::silu(halves[0]) * halves[1];
  }
  return pre;
}

}  // namespace moelab::kernels::reference
