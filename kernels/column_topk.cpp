#include "kernels/column_topk.h"

#include <torch/torch.h>

#include "kernels/device.h"

namespace moelab::kernels {

torch::Tensor column_topk_mask(const torch::Tensor& scores, int64_t take) {
#ifdef MOELAB_CUDA
  if (cuda_kernels_enabled() && scores.is_cuda() && scores.dim() == 2) return cuda::column_topk_mask(scores, take);
#endif
  return reference::column_topk_mask(scores, take);
}

}  // namespace moelab::kernels
