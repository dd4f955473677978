#include "models/attention.h"

#include <cmath>

#include <torch/torch.h>

#include "models/kernel_modules.h"

namespace moelab {

CausalSelfAttention::CausalSelfAttention(int64_t dim, int64_t heads, int64_t max_seq_len, bool rope, double dropout)
    : heads_(heads), rope_(rope), dropout_(dropout) {
  qkv_ = register_module("qkv", torch::nn::Linear(dim, 3 * dim));
  proj_ = register_module("proj", torch::nn::Linear(dim, dim));
  if (rope_) {
    int64_t half = dim / heads / 2;
    torch::Tensor inv_freq = torch::pow(10000.0, -torch::arange(half, torch::kFloat32) / static_cast<double>(half));
    torch::Tensor angles = torch::outer(torch::arange(max_seq_len, torch::kFloat32), inv_freq);
    rope_cos_ = register_buffer("rope_cos", angles.cos());
    rope_sin_ = register_buffer("rope_sin", angles.sin());
  }
}

void CausalSelfAttention::add_lora(int64_t rank) {
  const int64_t dim = proj_->weight.size(0);
  qkv_lora_ = register_module("adapter_lora_qkv", std::make_shared<LowRankUpdate>(dim, 3 * dim, rank, 0, true));
  proj_lora_ = register_module("adapter_lora_proj", std::make_shared<LowRankUpdate>(dim, dim, rank, 0, true));
}

// Rotates (x1, x2) pairs of the two head-dimension halves by position-dependent angles.
static torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  auto halves = x.chunk(2, -1);
  torch::Tensor c = cos.to(x.scalar_type()), s = sin.to(x.scalar_type());
  return torch::cat({halves[0] * c - halves[1] * s, halves[0] * s + halves[1] * c}, -1);
}

torch::Tensor CausalSelfAttention::forward(const torch::Tensor& x) {
  const int64_t batch = x.size(0), seq = x.size(1), dim = x.size(2), head_dim = dim / heads_;
  // unbind's backward stacks the three gradients back into the GEMM's layout in one kernel;
  // indexing a permuted [3, B, H, S, hd] view would zero-fill a full-size gradient per part
  // and add the three.
  auto qkv = apply_linear(qkv_, x, qkv_lora_).view({batch, seq, 3, heads_, head_dim}).unbind(2);  // 3 x [B, S, H, hd]
  torch::Tensor q = qkv[0].transpose(1, 2), k = qkv[1].transpose(1, 2), v = qkv[2].transpose(1, 2);  // [B, H, S, hd]
  if (rope_) {
    torch::Tensor cos = rope_cos_.narrow(0, 0, seq), sin = rope_sin_.narrow(0, 0, seq);
    q = apply_rope(q, cos, sin);
    k = apply_rope(k, cos, sin);
  }
  torch::Tensor y;
  const double dropout = is_training() ? dropout_ : 0.0;
#if TORCH_VERSION_MAJOR >= 2
  y = at::scaled_dot_product_attention(q, k, v, {}, dropout, /*is_causal=*/true);
#else
  // The scale on q ([S, hd] per head) rather than on the scores ([S, S]), and the mask in
  // place: one pass over the scores fewer, and no copy of them.
  torch::Tensor scores = torch::matmul(q * (1.0 / std::sqrt(static_cast<double>(head_dim))), k.transpose(-2, -1));
  torch::Tensor future = torch::ones({seq, seq}, x.options().dtype(torch::kBool)).triu(1);
  torch::Tensor probs = torch::softmax(scores.masked_fill_(future, -INFINITY), -1);
  y = torch::matmul(dropout > 0 ? torch::dropout(probs, dropout, /*train=*/true) : probs, v);
#endif
  return apply_linear(proj_, y.transpose(1, 2).reshape({batch, seq, dim}), proj_lora_);
}

}  // namespace moelab
