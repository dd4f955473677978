#include "models/experts.h"

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

// at::_grouped_mm (PyTorch 2.8+): a grouped GEMM over row groups given by device offsets.
#if defined(MOELAB_CUDA) && (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8))
#define MOELAB_GROUPED_MM 1
#endif

namespace moelab {

Experts::Experts(int64_t experts, int64_t dim, int64_t hidden, bool swiglu) : swiglu_(swiglu) {
#ifdef MOELAB_GROUPED_MM
  // act(1) rounded to bf16 as the grouped-GEMM path computes it (see first_weight).
  activation_at_one_ = activation(torch::ones({swiglu ? 2 : 1}, torch::kBFloat16))[0].item<double>();
#endif
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

#ifdef MOELAB_GROUPED_MM
namespace {
// The biases ride inside the two grouped GEMMs: no per-row bias gather going in, and no
// index_add_ atomics contending on E rows for their gradients coming back. The input gains
// a column of ones; each expert's first weight gains a row holding b1 and, per activation
// input half, an output column that is 1 before the activation, so the activation's output
// has a constant column c = act(1); the second weight gains a row b2 / c. Each gain is padded
// with zeros to 8 (bf16 rows stay 16-byte aligned, as the grouped GEMM needs; act(0) = 0 keeps
// the padding inert). Both bias gradients then come out of the GEMMs' weight gradients,
// summed over each expert's own rows.
constexpr int64_t kGain = 8;

torch::Tensor with_ones_column(const torch::Tensor& x) {  // [M, K] -> [M, K + 8] bf16
  const auto options = x.options().dtype(torch::kBFloat16);
  return torch::cat({x.to(torch::kBFloat16), torch::ones({x.size(0), 1}, options), torch::zeros({x.size(0), kGain - 1}, options)}, 1);
}

// [E, K, N] weight and [E, N] bias -> [E, K + 8, N] with the bias as row K.
torch::Tensor with_bias_row(const torch::Tensor& w, const torch::Tensor& b) {
  return torch::cat({w, b.unsqueeze(1), torch::zeros({w.size(0), kGain - 1, w.size(2)}, w.options())}, 1);
}

// The first weight with the bias row and, after each of `halves` column blocks, 8 columns
// that are zero except a 1 in the bias row: [E, K, halves * H] -> [E, K + 8, halves * (H + 8)].
torch::Tensor first_weight(const torch::Tensor& w1, const torch::Tensor& b1, int64_t halves) {
  torch::Tensor w = with_bias_row(w1, b1);
  torch::Tensor unit = torch::zeros({w.size(0), w.size(1), kGain}, w.options());
  unit.select(1, w1.size(1)).select(1, 0).fill_(1.0);
  std::vector<torch::Tensor> blocks;
  for (const auto& half : w.chunk(halves, 2)) {
    blocks.push_back(half);
    blocks.push_back(unit);
  }
  return torch::cat(blocks, 2).to(torch::kBFloat16);
}
}  // namespace
#endif

torch::Tensor Experts::forward(const torch::Tensor& packed, const torch::Tensor& expert_rows) {
#ifdef MOELAB_GROUPED_MM
  if (packed.is_cuda() && (packed.scalar_type() == torch::kBFloat16 || at::autocast::is_autocast_enabled(at::kCUDA))) {
    // The offsets stay on the device: no host sync. at::_grouped_mm leaves rows past the
    // last offset unwritten, and its gradients ignore them.
    torch::Tensor offsets = expert_rows.cumsum(0).to(torch::kInt32);
    torch::Tensor h = at::_grouped_mm(with_ones_column(packed), first_weight(w1, b1, swiglu_ ? 2 : 1), offsets);
    h = activation(h);  // [M, H + 8]: column H is the constant act(1), the rest of the gain 0
    torch::Tensor w2_with_bias = with_bias_row(w2, b2 / activation_at_one_).to(torch::kBFloat16);
    return at::_grouped_mm(h, w2_with_bias, offsets);
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
