// Reference dispatch and combine. permute moves M*d elements (read + write); unpermute reads
// M*d and writes T*d, with M*d multiply-adds. Autograd gives the backward of both: the
// gradient of x is a scatter-add, that of the gates a row-wise dot product.
#include <torch/torch.h>

#include "kernels/routing_kernels.h"

namespace moelab::kernels {

torch::Tensor permute(const torch::Tensor& x, const torch::Tensor& token_index) { return x.index_select(0, token_index); }

torch::Tensor unpermute(const torch::Tensor& y, const torch::Tensor& token_index, const torch::Tensor& gates,
                        int64_t num_tokens) {
  torch::Tensor weighted = y * gates.to(y.scalar_type()).unsqueeze(1);
  return torch::zeros({num_tokens, y.size(1)}, y.options()).index_add(0, token_index, weighted);
}

}  // namespace moelab::kernels
