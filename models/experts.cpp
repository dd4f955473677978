#include "models/experts.h"

#include <torch/torch.h>

namespace moelab {

Experts::Experts(int64_t experts, int64_t dim, int64_t hidden, bool swiglu) : swiglu_(swiglu) {
  int64_t up = swiglu ? 2 * hidden : hidden;
  w1 = register_parameter("w1", torch::empty({experts, dim, up}));
  b1 = register_parameter("b1", torch::zeros({experts, up}));
  w2 = register_parameter("w2", torch::empty({experts, hidden, dim}));
  b2 = register_parameter("b2", torch::zeros({experts, dim}));
  torch::NoGradGuard no_grad;
  for (int64_t e = 0; e < experts; ++e) {
    torch::nn::init::xavier_uniform_(w1[e]);
    torch::nn::init::xavier_uniform_(w2[e]);
  }
}

torch::Tensor Experts::expert_forward(int64_t e, const torch::Tensor& x) {
  torch::Tensor h = torch::addmm(b1[e], x, w1[e]);
  if (swiglu_) {
    auto halves = h.chunk(2, -1);
    h = torch::silu(halves[0]) * halves[1];
  } else {
    h = torch::gelu(h);
  }
  return torch::addmm(b2[e], h, w2[e]);
}

torch::Tensor Experts::forward(const torch::Tensor& packed, const std::vector<int64_t>& expert_rows) {
  std::vector<torch::Tensor> outputs;
  int64_t start = 0;
  for (size_t e = 0; e < expert_rows.size(); ++e) {
    if (expert_rows[e] == 0) continue;
    outputs.push_back(expert_forward(static_cast<int64_t>(e), packed.narrow(0, start, expert_rows[e])));
    start += expert_rows[e];
  }
  if (outputs.empty()) return packed.new_zeros({0, w2.size(2)});
  return torch::cat(outputs, 0);
}

}  // namespace moelab
