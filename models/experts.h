#pragma once
// E feed-forward experts held as stacked weights: w1 [E, d, h] (w1 [E, d, 2h] for SwiGLU),
// w2 [E, h, d], with biases; Xavier-initialised. forward() runs each expert on its rows of
// a dispatcher's ExpertInput: the packed layout through kernels::expert_ffn (a grouped GEMM
// with no padding to capacity where the device has one, one GEMM per expert elsewhere), the
// uniform layout as one batched GEMM per projection.
#include <memory>

#include <torch/nn/module.h>

#include "models/adapters.h"
#include "models/token_dispatcher.h"

namespace moelab {

class Experts : public torch::nn::Module {
 public:
  Experts(int64_t experts, int64_t dim, int64_t hidden, bool swiglu);
  // Output rows in the input's layout. Packed rows after the experts' sum are padding, never
  // computed on: their results are unspecified (zeros on the CPU, whatever the memory held
  // on the grouped-GEMM path) and they get no gradient.
  torch::Tensor forward(const ExpertInput& in);

  // Experts [first, first + count) as a module of their own (copies of the weights).
  std::shared_ptr<Experts> slice(int64_t first, int64_t count) const;
  // LoRA of rank r on every expert's w1 and w2 (finetune.method lora).
  void add_lora(int64_t rank);
  // Zeroes the output projection (w2, b2): an adapter's experts start as adding nothing.
  void zero_output();

  torch::Tensor w1, b1, w2, b2;

 private:
  bool swiglu_;
  std::shared_ptr<LowRankUpdate> w1_lora_, w2_lora_;  // null unless add_lora
};

}  // namespace moelab
