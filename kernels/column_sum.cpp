#include "kernels/column_sum.h"

#include <torch/torch.h>

#include "kernels/device.h"

namespace moelab::kernels {

torch::Tensor column_sum(const torch::Tensor& x) {
#ifdef MOELAB_CUDA
  if (cuda_kernels_enabled() && x.is_cuda() && x.dim() == 2 && kernel_storable(x.scalar_type()) && x.size(1) % 8 == 0) {
    torch::Tensor out = torch::empty({x.size(1)}, x.options().dtype(torch::kFloat32));
    cuda::launch_column_sum(x.contiguous(), out);
    return out;
  }
#endif
  return reference::column_sum(x);
}

}  // namespace moelab::kernels
