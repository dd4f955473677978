// Reference load-balancing loss with libtorch ops (autograd differentiates it through the
// softmax; the counts are integers and carry no gradient).
#include <torch/torch.h>

#include "kernels/balancing_loss.h"

namespace moelab::kernels::reference {

torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_ids,
                                  const torch::Tensor& selected, int64_t experts) {
  torch::Tensor counts = torch::zeros({experts}, logits.options())
                             .index_add_(0, expert_ids.reshape(-1), selected.reshape(-1).to(logits.scalar_type()));
  torch::Tensor share = counts / counts.sum().clamp_min(1.0);
  torch::Tensor mean_prob = torch::softmax(logits, -1).mean(0);
  return static_cast<double>(experts) * (share * mean_prob).sum();
}

}  // namespace moelab::kernels::reference
