// Reference LayerNorm: libtorch's, in fp32, then cast to the output type; the residual add
// before it with libtorch's add.
#include <torch/torch.h>

#include "kernels/layer_norm.h"

namespace moelab::kernels::reference {

torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& gamma, const torch::Tensor& beta, double eps,
                         torch::ScalarType out_dtype) {
  return at::layer_norm(x.to(torch::kFloat32), {x.size(-1)}, gamma.to(torch::kFloat32), beta.to(torch::kFloat32), eps)
      .to(out_dtype);
}

ResidualNorm add_layer_norm(const torch::Tensor& residual, const torch::Tensor& branch, const torch::Tensor& gamma,
                            const torch::Tensor& beta, double eps, torch::ScalarType out_dtype) {
  torch::Tensor sum = residual + branch.to(residual.scalar_type());
  return {sum, layer_norm(sum, gamma, beta, eps, out_dtype)};
}

}  // namespace moelab::kernels::reference
