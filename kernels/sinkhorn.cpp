#include "kernels/sinkhorn.h"

#include <torch/torch.h>

#include "kernels/device.h"

namespace moelab::kernels {

torch::Tensor sinkhorn(const torch::Tensor& logits, int64_t iters, double temperature) {
#ifdef MOELAB_CUDA
  if (cuda_kernels_enabled() && logits.is_cuda() && logits.size(-1) <= kMaxRowExperts) return cuda::sinkhorn(logits, iters, temperature);
#endif
  return reference::sinkhorn(logits, iters, temperature);
}

}  // namespace moelab::kernels
