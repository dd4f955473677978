#pragma once
// E feed-forward experts held as stacked weights: w1 [E, d, h] (w1 [E, d, 2h] for SwiGLU),
// w2 [E, h, d], with biases; Xavier-initialised. forward() runs each expert on its rows of
// the packed buffer (a grouped GEMM; no padding to capacity).
#include <vector>

#include <torch/nn/module.h>

namespace moelab {

class Experts : public torch::nn::Module {
 public:
  Experts(int64_t experts, int64_t dim, int64_t hidden, bool swiglu);
  torch::Tensor forward(const torch::Tensor& packed, const std::vector<int64_t>& expert_rows);
  // One expert on rows x [n, d]: the plain per-token definition the tests compare against.
  torch::Tensor expert_forward(int64_t expert, const torch::Tensor& x);

  torch::Tensor w1, b1, w2, b2;

 private:
  bool swiglu_;
};

}  // namespace moelab
