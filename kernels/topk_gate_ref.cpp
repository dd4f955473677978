// Reference fused gate. Work: T*E exp + T*E*log(E) compares (stable sort); traffic: T*E
// floats in, 2*T*k out. The sort is stable so equal probabilities keep the lower expert id
// first, which is the tie rule the CUDA kernel must reproduce.
#include <torch/torch.h>

#include "kernels/topk_gate.h"

namespace moelab::kernels::reference {

TopKGate softmax_topk(const torch::Tensor& logits, int64_t k, double temperature, bool renormalize) {
  torch::Tensor probs = torch::softmax(logits.to(torch::kFloat32) / temperature, -1);
  torch::Tensor ids = std::get<1>(probs.detach().sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true)).narrow(-1, 0, k);
  torch::Tensor gates = probs.gather(-1, ids);
  if (renormalize) gates = gates / gates.sum(-1, /*keepdim=*/true);
  return {gates, ids};
}

torch::Tensor topk_ids(const torch::Tensor& values, int64_t k) {
  return std::get<1>(values.detach().sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true)).narrow(-1, 0, k);
}

}  // namespace moelab::kernels::reference
