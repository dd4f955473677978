#pragma once
// E feed-forward experts held as stacked weights: w1 [E, d, h] (w1 [E, d, 2h] for SwiGLU),
// w2 [E, h, d], with biases; Xavier-initialised. forward() runs each expert on its rows of
// the packed buffer, a grouped GEMM with no padding to capacity: on CUDA with a libtorch
// that has it (2.8+), one at::_grouped_mm per projection (CUTLASS on Hopper, bf16, row
// offsets stay on the device), each followed by the fused bias + activation kernel; for
// GELU on an H100, kernels::fused_expert_ffn (kernels/grouped_gemm.cu for the GEMMs, with
// the bias, GELU and bias-gradient work in their epilogues); elsewhere one addmm per expert.
#include <memory>
#include <vector>

#include <torch/nn/module.h>

namespace moelab {

class Experts : public torch::nn::Module {
 public:
  Experts(int64_t experts, int64_t dim, int64_t hidden, bool swiglu);
  // expert_rows: [E] int64 rows of `packed` per expert, on packed's device; rows after
  // their sum are padding, never computed on: their results are unspecified (zeros on the
  // CPU path, whatever the memory held on the grouped-GEMM path) and get no gradient.
  torch::Tensor forward(const torch::Tensor& packed, const torch::Tensor& expert_rows);
  // Every expert on every token, combined by a dense [T, E] gate matrix (zero where not
  // routed): the seed's masked_matmul strategy, E times the FLOPs, no data movement.
  torch::Tensor masked_forward(const torch::Tensor& x, const torch::Tensor& dense_gates);
  // One expert on rows x [n, d]: the plain per-token definition the tests compare against.
  torch::Tensor expert_forward(int64_t expert, const torch::Tensor& x);

  // Experts [first, first + count) as a module of their own (copies of the weights).
  std::shared_ptr<Experts> slice(int64_t first, int64_t count) const;

  torch::Tensor w1, b1, w2, b2;
  static bool grouped_gemm_available();

 private:
  torch::Tensor activation(const torch::Tensor& h) const;  // gelu, or SwiGLU over the two halves

  bool swiglu_;
};

}  // namespace moelab
