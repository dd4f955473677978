#include "kernels/expert_ffn.h"

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include "kernels/device.h"
#include "kernels/grouped_mm_available.h"
#include "kernels/linear.h"
#ifdef MOELAB_CUDA
#include <ATen/cuda/CUDAContext.h>

#include "kernels/grouped_gemm.h"
#endif

namespace moelab::kernels {

bool fused_expert_ffn_available(const torch::Tensor& x, const torch::Tensor& w1) {
#ifdef MOELAB_CUDA
  return cuda_kernels_enabled() && cuda::expert_ffn_gelu_supported(x, w1);
#else
  (void)x, (void)w1;
  return false;
#endif
}

torch::Tensor fused_expert_ffn(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1, const torch::Tensor& w2,
                               const torch::Tensor& b2, const torch::Tensor& offsets) {
  TORCH_CHECK(fused_expert_ffn_available(x, w1), "fused_expert_ffn: no fused kernel serves these tensors");
#ifdef MOELAB_CUDA
  return cuda::expert_ffn_gelu(x, w1, b1, w2, b2, offsets);
#else
  (void)b1, (void)w2, (void)b2, (void)offsets;
  return torch::Tensor();
#endif
}

bool expert_ffn_host_sync_free(bool bf16) {
#ifdef MOELAB_GROUPED_MM
  return bf16;
#else
  (void)bf16;
  return false;
#endif
}

torch::Tensor expert_ffn(const torch::Tensor& x, const torch::Tensor& expert_rows, const torch::Tensor& w1,
                         const torch::Tensor& b1, const torch::Tensor& w2, const torch::Tensor& b2,
                         ExpertActivation activation) {
#ifdef MOELAB_GROUPED_MM
  if (x.is_cuda() && (x.scalar_type() == torch::kBFloat16 || at::autocast::is_autocast_enabled(at::kCUDA))) {
    // at::_grouped_mm leaves rows past the last offset unwritten, its gradients ignore them,
    // and so does the fused bias and activation after each GEMM.
    const auto bf16 = torch::kBFloat16;
    torch::Tensor offsets = expert_rows.cumsum(0).to(torch::kInt32);
    if (activation == kGelu && fused_expert_ffn_available(x, w1))
      return fused_expert_ffn(x.to(bf16), bf16_operand(w1), b1, bf16_operand(w2), b2, offsets);
    torch::Tensor h = at::_grouped_mm(x.to(bf16), bf16_operand(w1), offsets);
    h = expert_bias_activation(h, b1, offsets, activation);
    return expert_bias_activation(at::_grouped_mm(h, bf16_operand(w2), offsets), b2, offsets, kNoActivation);
  }
#endif
  return reference::expert_ffn(x, expert_rows, w1, b1, w2, b2, activation);
}

#ifdef MOELAB_CUDA
namespace cuda {
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

#ifdef MOELAB_GROUPED_MM
GroupedGemmArgs grouped_gemm_args(const torch::Tensor& a, const torch::Tensor& b, bool b_transposed, const torch::Tensor& ends,
                                  int64_t n, torch::Tensor& out, torch::Tensor& gelu_slope) {
  GroupedGemmArgs args;
  args.a = reinterpret_cast<const __nv_bfloat16*>(a.data_ptr());
  args.b = reinterpret_cast<const __nv_bfloat16*>(b.data_ptr());
  args.b_transposed = b_transposed;
  args.ends = ends.data_ptr<int>();
  args.experts = static_cast<int>(ends.size(0));
  args.rows = a.size(0);
  args.k = static_cast<int>(a.size(1));
  args.n = static_cast<int>(n);
  args.out = reinterpret_cast<__nv_bfloat16*>(out.data_ptr());
  args.gelu_slope = reinterpret_cast<__nv_bfloat16*>(gelu_slope.data_ptr());
  return args;
}

// The GEMMs with D outputs (the second layer, the input gradient) run on grouped_gemm too
// when D allows (D % 256 == 0): its mainloop beats at::_grouped_mm's, and the second
// layer's bias rides in its epilogue.
bool second_layer_on_grouped_gemm(const torch::Tensor& w1, const torch::Tensor& x) {
  return grouped_gemm_supported(w1.size(2), w1.size(1), static_cast<int>(w1.size(0)), x.get_device());
}

// Each expert's a_e^T b_e ([E, a's columns, b's columns]): the weight gradients.
torch::Tensor weight_grad(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& ends) {
  const int experts = static_cast<int>(ends.size(0));
  if (!grouped_gemm_weight_grad_supported(a.size(1), b.size(1), experts, a.get_device())) return at::_grouped_mm(a.t(), b, ends);
  torch::Tensor out = torch::empty({experts, a.size(1), b.size(1)}, a.options());
  GroupedGemmArgs args = grouped_gemm_args(a, b, false, ends, b.size(1), out, out);
  args.m = static_cast<int>(a.size(1));
  grouped_gemm_weight_grad(args, at::cuda::getCurrentCUDAStream());
  return out;
}

// y = gelu(x W1_e + b1_e) W2_e + b2_e. Saved for the backward: x, the weights, h (the first
// layer's output after the GELU) and the GELU's slope there (all the backward needs of the
// output before it).
struct ExpertFfnGelu : public torch::autograd::Function<ExpertFfnGelu> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1,
                               const torch::Tensor& w2, const torch::Tensor& b2, const torch::Tensor& offsets) {
    const auto bf16 = torch::kBFloat16;
    torch::Tensor input = x.to(bf16).contiguous(), first = w1.to(bf16).contiguous(), second = w2.to(bf16).contiguous();
    torch::Tensor ends = offsets.to(torch::kInt32).contiguous(), bias1 = b1.to(torch::kFloat32).contiguous();
    const int64_t hidden = first.size(2);
    torch::Tensor slope = torch::empty({input.size(0), hidden}, input.options()), h = torch::empty_like(slope);
    GroupedGemmArgs args = grouped_gemm_args(input, first, false, ends, hidden, h, slope);
    args.bias = bias1.data_ptr<float>();
    grouped_gemm(args, GroupedGemmEpilogue::kBiasGelu, at::cuda::getCurrentCUDAStream());
    torch::Tensor bias2 = b2.to(torch::kFloat32).contiguous(), out;
    if (second_layer_on_grouped_gemm(first, input)) {
      out = torch::empty({input.size(0), first.size(1)}, input.options());
      GroupedGemmArgs second_args = grouped_gemm_args(h, second, false, ends, first.size(1), out, out);
      second_args.bias = bias2.data_ptr<float>();
      grouped_gemm(second_args, GroupedGemmEpilogue::kBias, at::cuda::getCurrentCUDAStream());
    } else {
      torch::Tensor y = at::_grouped_mm(h, second, ends);
      out = torch::empty_like(y);
      launch_expert_bias_act(y, bias2, ends, kNoActivation, out);
    }
    ctx->save_for_backward({input, first, second, ends, slope, h, bias2});
    ctx->saved_data["dtypes"] = std::vector<int64_t>{static_cast<int64_t>(x.scalar_type()), static_cast<int64_t>(w1.scalar_type()),
                                                     static_cast<int64_t>(b1.scalar_type()), static_cast<int64_t>(w2.scalar_type()),
                                                     static_cast<int64_t>(b2.scalar_type())};
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    torch::Tensor x = saved[0], w1 = saved[1], w2 = saved[2], ends = saved[3], slope = saved[4], h = saved[5], bias2 = saved[6];
    const auto dtypes = ctx->saved_data["dtypes"].toIntVector();
    auto as = [&](const torch::Tensor& t, int i) {
      return t.defined() ? t.to(static_cast<torch::ScalarType>(dtypes[i])) : t;
    };
    torch::Tensor dy = grads[0].to(torch::kBFloat16).contiguous();
    // Frozen experts (fine-tuning) need no weight gradients: two of the backward's four GEMMs.
    torch::Tensor dw2 = ctx->needs_input_grad(3) ? weight_grad(h, dy, ends) : torch::Tensor();
    // dy W2_e^T with the GELU's gradient and b1's gradient in the epilogue, and b2's gradient
    // (the per-expert column sums of dy) summed from its tiles on the way.
    torch::Tensor dpre = torch::empty_like(slope), db1 = torch::zeros({w1.size(0), w1.size(2)}, dy.options().dtype(torch::kFloat32));
    torch::Tensor db2 = torch::zeros_like(bias2);
    GroupedGemmArgs args = grouped_gemm_args(dy, w2, true, ends, w2.size(1), dpre, slope);
    args.bias_grad = db1.data_ptr<float>();
    args.a_column_sums = db2.data_ptr<float>();
    grouped_gemm(args, GroupedGemmEpilogue::kGeluBackward, at::cuda::getCurrentCUDAStream());
    torch::Tensor dw1 = ctx->needs_input_grad(1) ? weight_grad(x, dpre, ends) : torch::Tensor();
    torch::Tensor dx;
    if (second_layer_on_grouped_gemm(w1, x)) {
      dx = torch::empty_like(x);
      GroupedGemmArgs dx_args = grouped_gemm_args(dpre, w1, true, ends, w1.size(1), dx, dx);
      grouped_gemm(dx_args, GroupedGemmEpilogue::kBias, at::cuda::getCurrentCUDAStream());
    } else {
      dx = at::_grouped_mm(dpre, w1.transpose(-2, -1), ends);
    }
    return {as(dx, 0), as(dw1, 1), as(db1, 2), as(dw2, 3), as(db2, 4), torch::Tensor()};
  }
};
#endif

}  // namespace

bool expert_ffn_gelu_supported(const torch::Tensor& x, const torch::Tensor& w1) {
#ifdef MOELAB_GROUPED_MM
  return x.is_cuda() && x.dim() == 2 && w1.dim() == 3 && x.size(1) == w1.size(1) &&
         grouped_gemm_supported(w1.size(1), w1.size(2), static_cast<int>(w1.size(0)), x.get_device());
#else
  (void)x, (void)w1;
  return false;
#endif
}

torch::Tensor expert_ffn_gelu(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1, const torch::Tensor& w2,
                              const torch::Tensor& b2, const torch::Tensor& offsets) {
#ifdef MOELAB_GROUPED_MM
  return ExpertFfnGelu::apply(x, w1, b1, w2, b2, offsets);
#else
  (void)x, (void)w1, (void)b1, (void)w2, (void)b2, (void)offsets;
  TORCH_CHECK(false, "expert_ffn_gelu needs at::_grouped_mm (libtorch 2.8+)");
#endif
}

}  // namespace cuda
#endif

}  // namespace moelab::kernels
