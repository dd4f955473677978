#include "kernels/layer_norm.h"

#include <torch/torch.h>

#include "kernels/device.h"

namespace moelab::kernels {

torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& gamma, const torch::Tensor& beta, double eps,
                         torch::ScalarType out_dtype) {
#ifdef MOELAB_CUDA
  if (cuda_kernels_enabled() && x.is_cuda() && kernel_storable(x.scalar_type()) && kernel_storable(out_dtype) && cuda::layer_norm_supported(x.size(-1)))
    return cuda::layer_norm(x, gamma, beta, eps, out_dtype);
#endif
  return reference::layer_norm(x, gamma, beta, eps, out_dtype);
}

ResidualNorm add_layer_norm(const torch::Tensor& residual, const torch::Tensor& branch, const torch::Tensor& gamma,
                            const torch::Tensor& beta, double eps, torch::ScalarType out_dtype) {
#ifdef MOELAB_CUDA
  if (cuda_kernels_enabled() && residual.is_cuda() && residual.sizes() == branch.sizes() && kernel_storable(residual.scalar_type()) &&
      kernel_storable(branch.scalar_type()) && kernel_storable(out_dtype) && cuda::layer_norm_supported(residual.size(-1)))
    return cuda::add_layer_norm(residual, branch, gamma, beta, eps, out_dtype);
#endif
  return reference::add_layer_norm(residual, branch, gamma, beta, eps, out_dtype);
}

#ifdef MOELAB_CUDA
namespace cuda {
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

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

}  // namespace

torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& gamma, const torch::Tensor& beta, double eps,
                         torch::ScalarType out_dtype) {
  return LayerNorm::apply(x, gamma, beta, eps, static_cast<int64_t>(out_dtype));
}

ResidualNorm add_layer_norm(const torch::Tensor& residual, const torch::Tensor& branch, const torch::Tensor& gamma,
                            const torch::Tensor& beta, double eps, torch::ScalarType out_dtype) {
  auto out = AddLayerNorm::apply(residual, branch, gamma, beta, eps, static_cast<int64_t>(out_dtype));
  return {out[0], out[1]};
}

}  // namespace cuda
#endif

}  // namespace moelab::kernels
