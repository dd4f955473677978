// Reference column top-C: a stable descending sort of each column, its first C marked.
// Work: E sorts of T values; traffic: T*E values in, T*E flags out.
#include <torch/torch.h>

#include "kernels/column_topk.h"

namespace moelab::kernels::reference {

torch::Tensor column_topk_mask(const torch::Tensor& scores, int64_t take) {
  torch::Tensor columns = scores.detach().t();  // [E, T]
  torch::Tensor picked = std::get<1>(columns.sort(/*stable=*/true, -1, /*descending=*/true)).narrow(1, 0, take);
  return torch::zeros(columns.sizes(), scores.options().dtype(torch::kBool)).scatter_(1, picked, true).t().contiguous();
}

}  // namespace moelab::kernels::reference
