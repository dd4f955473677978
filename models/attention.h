#pragma once
// Causal multi-head self-attention with optional rotary position embedding.
#include <memory>

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include "models/adapters.h"

namespace moelab {

class CausalSelfAttention : public torch::nn::Module {
 public:
  // dropout: on the attention probabilities, while training.
  CausalSelfAttention(int64_t dim, int64_t heads, int64_t max_seq_len, bool rope, double dropout = 0.0);
  torch::Tensor forward(const torch::Tensor& x);  // [B, S, d] -> [B, S, d]
  // LoRA of rank r on the qkv and output projections (finetune.method lora).
  void add_lora(int64_t rank);

 private:
  int64_t heads_;
  bool rope_;
  double dropout_;
  torch::nn::Linear qkv_{nullptr}, proj_{nullptr};
  std::shared_ptr<LowRankUpdate> qkv_lora_, proj_lora_;  // null unless add_lora
  torch::Tensor rope_cos_, rope_sin_;  // [max_seq_len, head_dim / 2]
};

}  // namespace moelab
