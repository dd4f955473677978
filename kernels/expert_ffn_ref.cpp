// The expert FFN reference: one addmm per expert over its rows, in plain libtorch ops.
#include <torch/torch.h>

#include "kernels/expert_ffn.h"

namespace moelab::kernels::reference {

torch::Tensor expert_ffn(const torch::Tensor& x, const torch::Tensor& expert_rows, const torch::Tensor& w1,
                         const torch::Tensor& b1, const torch::Tensor& w2, const torch::Tensor& b2,
                         ExpertActivation activation) {
  auto act = [&](const torch::Tensor& h) {
    if (activation == kGelu) return torch::gelu(h);
    if (activation == kSwiGLU) {
      auto halves = h.chunk(2, -1);
      return torch::silu(halves[0]) * halves[1];
    }
    return h;
  };
  torch::Tensor counts = expert_rows.cpu();
  std::vector<torch::Tensor> outputs;
  int64_t start = 0;
  for (int64_t e = 0; e < counts.size(0); ++e) {
    const int64_t n = counts[e].item<int64_t>();
    if (n == 0) continue;
    torch::Tensor rows = x.narrow(0, start, n);
    outputs.push_back(torch::addmm(b2[e], act(torch::addmm(b1[e], rows, w1[e])), w2[e]));
    start += n;
  }
  // No rows: an empty result that still hangs on x's graph, so that backward reaches what
  // produced it (with sharded experts, an all-to-all every rank must join).
  if (outputs.empty()) return x.new_zeros({0, w2.size(2)}) + x.sum() * 0;
  return torch::cat(outputs, 0);
}

}  // namespace moelab::kernels::reference
