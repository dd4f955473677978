#include "models/experts.h"

#include <torch/torch.h>

#include "kernels/routing_kernels.h"

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

std::shared_ptr<Experts> Experts::slice(int64_t first, int64_t count) const {
  auto part = std::make_shared<Experts>(count, w1.size(1), w2.size(1), swiglu_);
  part->to(w1.device());
  torch::NoGradGuard no_grad;
  part->w1.copy_(w1.narrow(0, first, count));
  part->b1.copy_(b1.narrow(0, first, count));
  part->w2.copy_(w2.narrow(0, first, count));
  part->b2.copy_(b2.narrow(0, first, count));
  return part;
}

void Experts::add_lora(int64_t rank) {
  const int64_t experts = w1.size(0), dim = w1.size(1), up = w1.size(2), hidden = w2.size(1);
  w1_lora_ = register_module("adapter_lora_w1", std::make_shared<LowRankUpdate>(dim, up, rank, experts, false));
  w2_lora_ = register_module("adapter_lora_w2", std::make_shared<LowRankUpdate>(hidden, dim, rank, experts, false));
}

void Experts::zero_output() {
  torch::NoGradGuard no_grad;
  w2.zero_();
  b2.zero_();
}

torch::Tensor Experts::forward(const ExpertInput& in) {
  const auto activation = swiglu_ ? kernels::kSwiGLU : kernels::kGelu;
  const torch::Tensor w1 = w1_lora_ ? w1_lora_->merged(this->w1) : this->w1;
  const torch::Tensor w2 = w2_lora_ ? w2_lora_->merged(this->w2) : this->w2;
  if (in.rows_per_expert == 0) return kernels::expert_ffn(in.rows, in.expert_rows, w1, b1, w2, b2, activation);
  // Uniform: [E, n, d] through batched GEMMs, no row counts needed.
  torch::Tensor h = torch::baddbmm(b1.unsqueeze(1), in.rows, w1);  // [E, n, up]
  if (swiglu_) {
    auto halves = h.chunk(2, -1);
    h = torch::silu(halves[0]) * halves[1];
  } else {
    h = torch::gelu(h);
  }
  return torch::baddbmm(b2.unsqueeze(1), h, w2);  // [E, n, d]
}

}  // namespace moelab
