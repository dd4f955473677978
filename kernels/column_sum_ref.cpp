// Reference column sums: libtorch's sum over rows, in fp32.
#include <torch/torch.h>

#include "kernels/column_sum.h"

namespace moelab::kernels::reference {

torch::Tensor column_sum(const torch::Tensor& x) { return x.to(torch::kFloat32).sum(0); }

}  // namespace moelab::kernels::reference
