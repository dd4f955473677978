// Autograd for the CUDA kernels: each backward is its own kernel (the gate's, combine's, ...);
// permute's backward is a combine with unit gates (no atomics).
#include <ATen/cuda/CUDAContext.h>
#include <torch/torch.h>

#include "kernels/cuda_ops.h"
#include "kernels/grouped_gemm.h"
#include "kernels/grouped_mm_available.h"

namespace moelab::kernels::cuda {
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct SoftmaxTopK : public torch::autograd::Function<SoftmaxTopK> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& logits, int64_t k, double temperature, bool renormalize) {
    torch::Tensor input = logits.contiguous();
    torch::Tensor gates = torch::empty({input.size(0), k}, input.options().dtype(torch::kFloat32));
    torch::Tensor ids = torch::empty({input.size(0), k}, input.options().dtype(torch::kLong));
    launch_softmax_topk(input, k, temperature, renormalize, gates, ids);
    ctx->save_for_backward({input, ids, gates});
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["renormalize"] = renormalize;
    ctx->mark_non_differentiable({ids});
    return {gates, ids};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    torch::Tensor grad_logits = torch::empty_like(saved[0]);
    launch_softmax_topk_backward(saved[0], saved[1], saved[2], grads[0].to(torch::kFloat32).contiguous(),
                                 ctx->saved_data["temperature"].toDouble(), ctx->saved_data["renormalize"].toBool(),
                                 grad_logits);
    return {grad_logits, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor combine_forward(const torch::Tensor& y, const torch::Tensor& rows, const torch::Tensor& gates) {
  torch::Tensor out = torch::empty({rows.size(0), y.size(1)}, y.options());
  launch_combine(y.contiguous(), rows.contiguous(), gates.to(torch::kFloat32).contiguous(), out);
  return out;
}

struct Unpermute : public torch::autograd::Function<Unpermute> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& y, const torch::Tensor& rows, const torch::Tensor& gates) {
    ctx->save_for_backward({y, rows, gates});
    return combine_forward(y, rows, gates);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    torch::Tensor y = saved[0].contiguous(), rows = saved[1].contiguous(), gates = saved[2];
    torch::Tensor grad_out = grads[0].to(y.scalar_type());
    // A gradient broadcast over the tokens (a sum's, say) is read as its one row instead of
    // being materialised.
    const bool broadcast = grad_out.stride(0) == 0;
    grad_out = broadcast ? grad_out[0].contiguous() : grad_out.contiguous();
    torch::Tensor grad_y = torch::empty_like(y), grad_gates = torch::empty(rows.sizes(), y.options().dtype(torch::kFloat32));
    launch_combine_backward(y, rows, gates.to(torch::kFloat32).contiguous(), grad_out, broadcast ? 0 : y.size(1), grad_y, grad_gates);
    return {grad_y, torch::Tensor(), grad_gates.to(gates.scalar_type())};
  }
};

struct Permute : public torch::autograd::Function<Permute> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& index, const torch::Tensor& rows) {
    torch::Tensor input = x.contiguous();
    torch::Tensor out = torch::empty({index.size(0), input.size(1)}, input.options());
    launch_gather_rows(input, index.contiguous(), out);
    ctx->save_for_backward({rows});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    torch::Tensor rows = ctx->get_saved_variables()[0];
    torch::Tensor ones = torch::ones(rows.sizes(), rows.options().dtype(torch::kFloat32));
    return {combine_forward(grads[0].contiguous(), rows, ones), torch::Tensor(), torch::Tensor()};
  }
};

struct ExpertBiasAct : public torch::autograd::Function<ExpertBiasAct> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& h, const torch::Tensor& bias,
                               const torch::Tensor& offsets, int64_t activation) {
    torch::Tensor input = h.contiguous(), b = bias.to(torch::kFloat32).contiguous(), ends = offsets.to(torch::kInt32).contiguous();
    const int64_t cols_out = activation == kSwiGLU ? input.size(1) / 2 : input.size(1);
    torch::Tensor out = torch::empty({input.size(0), cols_out}, input.options());
    launch_expert_bias_act(input, b, ends, static_cast<int>(activation), out);
    ctx->save_for_backward({input, b, ends});
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["bias_dtype"] = static_cast<int64_t>(bias.scalar_type());
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    torch::Tensor h = saved[0], bias = saved[1], offsets = saved[2];
    const int activation = static_cast<int>(ctx->saved_data["activation"].toInt());
    torch::Tensor grad_out = grads[0].to(h.scalar_type()).contiguous();
    torch::Tensor grad_h = activation == kNoActivation ? grad_out : torch::empty_like(h), grad_bias = torch::zeros_like(bias);
    launch_expert_bias_act_backward(grad_out, h, bias, offsets, activation, grad_h, grad_bias);
    const auto bias_dtype = static_cast<torch::ScalarType>(ctx->saved_data["bias_dtype"].toInt());
    return {grad_h, grad_bias.to(bias_dtype), torch::Tensor(), torch::Tensor()};
  }
};

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
    auto as = [&](const torch::Tensor& t, int i) { return t.to(static_cast<torch::ScalarType>(dtypes[i])); };
    torch::Tensor dy = grads[0].to(torch::kBFloat16).contiguous();
    torch::Tensor dw2 = weight_grad(h, dy, ends);
    // dy W2_e^T with the GELU's gradient and b1's gradient in the epilogue, and b2's gradient
    // (the per-expert column sums of dy) summed from its tiles on the way.
    torch::Tensor dpre = torch::empty_like(slope), db1 = torch::zeros({w1.size(0), w1.size(2)}, dy.options().dtype(torch::kFloat32));
    torch::Tensor db2 = torch::zeros_like(bias2);
    GroupedGemmArgs args = grouped_gemm_args(dy, w2, true, ends, w2.size(1), dpre, slope);
    args.bias_grad = db1.data_ptr<float>();
    args.a_column_sums = db2.data_ptr<float>();
    grouped_gemm(args, GroupedGemmEpilogue::kGeluBackward, at::cuda::getCurrentCUDAStream());
    torch::Tensor dw1 = weight_grad(x, dpre, ends);
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


// LayerNorm and the fused residual add + LayerNorm, as two functions (libtorch's C++
// Function takes no undefined inputs or outputs) sharing their forward and backward.
variable_list layer_norm_forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& branch,
                                 const torch::Tensor& gamma, const torch::Tensor& beta, double eps, int64_t out_dtype) {
  const int64_t cols = x.size(-1);
  torch::Tensor input = x.contiguous().view({-1, cols});
  torch::Tensor added = branch.defined() ? branch.contiguous().view({-1, cols}) : torch::Tensor();
  torch::Tensor g = gamma.to(torch::kFloat32).contiguous(), b = beta.to(torch::kFloat32).contiguous();
  torch::Tensor sum = added.defined() ? torch::empty_like(input) : torch::Tensor();
  torch::Tensor y = torch::empty(input.sizes(), input.options().dtype(static_cast<torch::ScalarType>(out_dtype)));
  torch::Tensor mean = torch::empty({input.size(0)}, input.options().dtype(torch::kFloat32)), rstd = torch::empty_like(mean);
  launch_layer_norm(input, added, g, b, eps, sum, y, mean, rstd);
  ctx->save_for_backward({added.defined() ? sum : input, g, mean, rstd});
  ctx->saved_data["shape"] = x.sizes();
  ctx->saved_data["param_dtype"] = static_cast<int64_t>(gamma.scalar_type());
  if (!added.defined()) return {y.view(x.sizes())};
  ctx->saved_data["branch_dtype"] = static_cast<int64_t>(branch.scalar_type());
  return {sum.view(x.sizes()), y.view(x.sizes())};
}

// Gradients {x, [branch,] gamma, beta}; ds: the sum's gradient (undefined without a branch).
variable_list layer_norm_backward(AutogradContext* ctx, const torch::Tensor& ds_in, const torch::Tensor& dy_in, bool with_branch) {
  auto saved = ctx->get_saved_variables();
  torch::Tensor x = saved[0], gamma = saved[1], mean = saved[2], rstd = saved[3];
  torch::Tensor ds = ds_in.defined() ? ds_in.to(x.scalar_type()).contiguous().view(x.sizes()) : torch::Tensor();
  torch::Tensor dy = dy_in.defined() ? dy_in.contiguous().view(x.sizes()) : torch::zeros_like(x);
  torch::Tensor dx = torch::empty_like(x), param_grads = torch::empty({2, x.size(1)}, gamma.options()), dbranch;
  if (with_branch) {
    const auto branch_dtype = static_cast<torch::ScalarType>(ctx->saved_data["branch_dtype"].toInt());
    if (branch_dtype != x.scalar_type()) dbranch = torch::empty(x.sizes(), x.options().dtype(branch_dtype));
  }
  launch_layer_norm_backward(dy, x, gamma, mean, rstd, ds, dx, dbranch, param_grads);
  param_grads = param_grads.to(static_cast<torch::ScalarType>(ctx->saved_data["param_dtype"].toInt()));
  const auto shape = ctx->saved_data["shape"].toIntVector();
  variable_list grads{dx.view(shape)};
  if (with_branch) grads.push_back(dbranch.defined() ? dbranch.view(shape) : grads[0]);
  grads.insert(grads.end(), {param_grads[0], param_grads[1], torch::Tensor(), torch::Tensor()});
  return grads;
}

struct LayerNorm : public torch::autograd::Function<LayerNorm> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& gamma, const torch::Tensor& beta,
                               double eps, int64_t out_dtype) {
    return layer_norm_forward(ctx, x, torch::Tensor(), gamma, beta, eps, out_dtype)[0];
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return layer_norm_backward(ctx, torch::Tensor(), grads[0], false);
  }
};

struct AddLayerNorm : public torch::autograd::Function<AddLayerNorm> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& residual, const torch::Tensor& branch,
                               const torch::Tensor& gamma, const torch::Tensor& beta, double eps, int64_t out_dtype) {
    return layer_norm_forward(ctx, residual, branch, gamma, beta, eps, out_dtype);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return layer_norm_backward(ctx, grads[0], grads[1], true);
  }
};

struct BalancingLoss : public torch::autograd::Function<BalancingLoss> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits, const torch::Tensor& ids,
                               const torch::Tensor& selected) {
    torch::Tensor input = logits.contiguous();
    torch::Tensor loss = torch::empty({}, input.options()), share = torch::empty({input.size(1)}, input.options());
    launch_balancing_loss(input, ids.contiguous(), selected.contiguous(), loss, share);
    ctx->save_for_backward({input, share});
    return loss;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    torch::Tensor grad_logits = torch::empty_like(saved[0]);
    launch_balancing_loss_backward(saved[0], saved[1], grads[0].to(torch::kFloat32).contiguous(), grad_logits);
    return {grad_logits, torch::Tensor(), torch::Tensor()};
  }
};

struct KeptGates : public torch::autograd::Function<KeptGates> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gates, const torch::Tensor& selected,
                               const torch::Tensor& kept, bool renormalize) {
    torch::Tensor g = gates.contiguous(), sel = selected.contiguous(), kp = kept.contiguous();
    torch::Tensor out = torch::empty_like(g);
    launch_kept_gates(g, sel, kp, renormalize, out);
    ctx->save_for_backward({g, sel, kp});
    ctx->saved_data["renormalize"] = renormalize;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    torch::Tensor grad_gates = torch::empty_like(saved[0]);
    launch_kept_gates_backward(saved[0], saved[1], saved[2], ctx->saved_data["renormalize"].toBool(),
                               grads[0].to(torch::kFloat32).contiguous(), grad_gates);
    return {grad_gates, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor kept_gates(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept, bool renormalize) {
  return KeptGates::apply(gates, selected, kept, renormalize);
}

torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_ids, const torch::Tensor& selected) {
  return BalancingLoss::apply(logits, expert_ids, selected);
}

torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& gamma, const torch::Tensor& beta, double eps,
                         torch::ScalarType out_dtype) {
  return LayerNorm::apply(x, gamma, beta, eps, static_cast<int64_t>(out_dtype));
}

ResidualNorm add_layer_norm(const torch::Tensor& residual, const torch::Tensor& branch, const torch::Tensor& gamma,
                            const torch::Tensor& beta, double eps, torch::ScalarType out_dtype) {
  auto out = AddLayerNorm::apply(residual, branch, gamma, beta, eps, static_cast<int64_t>(out_dtype));
  return {out[0], out[1]};
}

torch::Tensor expert_bias_activation(const torch::Tensor& h, const torch::Tensor& bias, const torch::Tensor& offsets,
                                     ExpertActivation activation) {
  return ExpertBiasAct::apply(h, bias, offsets, static_cast<int64_t>(activation));
}

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

TopKGate softmax_topk(const torch::Tensor& logits, int64_t k, double temperature, bool renormalize) {
  auto out = SoftmaxTopK::apply(logits, k, temperature, renormalize);
  return {out[0], out[1]};
}

// Temperature 1 makes the kernel rank by the values themselves (x * 1.0f is exact).
torch::Tensor topk_ids(const torch::Tensor& values, int64_t k) {
  torch::Tensor input = values.detach().contiguous();
  torch::Tensor probs = torch::empty({input.size(0), k}, input.options().dtype(torch::kFloat32));
  torch::Tensor ids = torch::empty({input.size(0), k}, input.options().dtype(torch::kLong));
  launch_softmax_topk(input, k, 1.0, /*renormalize=*/false, probs, ids);
  return ids;
}

torch::Tensor permute(const torch::Tensor& x, const torch::Tensor& token_index, const torch::Tensor& row_of_entry) {
  return Permute::apply(x, token_index, row_of_entry);
}

torch::Tensor unpermute(const torch::Tensor& y, const torch::Tensor& row_of_entry, const torch::Tensor& gates) {
  return Unpermute::apply(y, row_of_entry, gates);
}

}  // namespace moelab::kernels::cuda
