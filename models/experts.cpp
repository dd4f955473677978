#include "models/experts.h"

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include "kernels/grouped_mm_available.h"
#include "kernels/linear.h"
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

torch::Tensor Experts::activation(const torch::Tensor& h) const {
  if (!swiglu_) return torch::gelu(h);
  auto halves = h.chunk(2, -1);
  return torch::silu(halves[0]) * halves[1];
}

torch::Tensor Experts::expert_forward(int64_t e, const torch::Tensor& x) {
  return torch::addmm(b2[e], activation(torch::addmm(b1[e], x, w1[e])), w2[e]);
}

torch::Tensor Experts::masked_forward(const torch::Tensor& x, const torch::Tensor& dense_gates) {
  const int64_t experts = w1.size(0);
  torch::Tensor h = activation(torch::baddbmm(b1.unsqueeze(1), x.unsqueeze(0).expand({experts, x.size(0), x.size(1)}), w1));  // [E, T, h]
  torch::Tensor y = torch::baddbmm(b2.unsqueeze(1), h, w2);  // [E, T, d]
  return (y * dense_gates.t().unsqueeze(-1).to(y.scalar_type())).sum(0);
}

bool Experts::grouped_gemm_available() {
#ifdef MOELAB_GROUPED_MM
  return true;
#else
  return false;
#endif
}

torch::Tensor Experts::forward(const torch::Tensor& packed, const torch::Tensor& expert_rows) {
#ifdef MOELAB_GROUPED_MM
  if (packed.is_cuda() && (packed.scalar_type() == torch::kBFloat16 || at::autocast::is_autocast_enabled(at::kCUDA))) {
    // The offsets stay on the device: no host sync. at::_grouped_mm leaves rows past the
    // last offset unwritten, its gradients ignore them, and so does the fused bias and
    // activation after each GEMM.
    const auto bf16 = torch::kBFloat16;
    torch::Tensor offsets = expert_rows.cumsum(0).to(torch::kInt32);
    if (!swiglu_ && kernels::fused_expert_ffn_available(packed, w1))
      return kernels::fused_expert_ffn(packed.to(bf16), kernels::bf16_operand(w1), b1, kernels::bf16_operand(w2), b2, offsets);
    torch::Tensor h = at::_grouped_mm(packed.to(bf16), kernels::bf16_operand(w1), offsets);
    h = kernels::expert_bias_activation(h, b1, offsets, swiglu_ ? kernels::kSwiGLU : kernels::kGelu);
    return kernels::expert_bias_activation(at::_grouped_mm(h, kernels::bf16_operand(w2), offsets), b2, offsets,
                                           kernels::kNoActivation);
  }
#endif
  torch::Tensor counts = expert_rows.cpu();
  std::vector<torch::Tensor> outputs;
  int64_t start = 0;
  for (int64_t e = 0; e < counts.size(0); ++e) {
    const int64_t n = counts[e].item<int64_t>();
    if (n == 0) continue;
    outputs.push_back(expert_forward(e, packed.narrow(0, start, n)));
    start += n;
  }
  // No rows: an empty result that still hangs on `packed`'s graph, so that backward reaches
  // what produced it (with sharded experts, an all-to-all every rank must join).
  if (outputs.empty()) return packed.new_zeros({0, w2.size(2)}) + packed.sum() * 0;
  return torch::cat(outputs, 0);
}

}  // namespace moelab
