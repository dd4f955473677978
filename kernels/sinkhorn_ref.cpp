// Reference Sinkhorn balancing. Work: iters * 2*T*E multiply-adds; traffic per round: T*E
// floats read and written twice. Computed without gradient, as in Megatron-Core.
#include <torch/torch.h>

#include "kernels/sinkhorn.h"

namespace moelab::kernels::reference {

torch::Tensor sinkhorn(const torch::Tensor& logits, int64_t iters, double temperature) {
  torch::NoGradGuard no_grad;
  torch::Tensor scaled = logits.to(torch::kFloat32) / temperature;
  torch::Tensor q = torch::exp(scaled - std::get<0>(scaled.max(1, /*keepdim=*/true)));
  const double column_target = static_cast<double>(logits.size(0)) / static_cast<double>(logits.size(1));
  for (int64_t i = 0; i < iters; ++i) {
    q = q / q.sum(1, /*keepdim=*/true);
    q = q * (column_target / q.sum(0, /*keepdim=*/true));
  }
  return q;
}

}  // namespace moelab::kernels::reference
