// Reference kept gates with libtorch ops (autograd differentiates them).
#include <torch/torch.h>

#include "kernels/kept_gates.h"

namespace moelab::kernels::reference {

torch::Tensor kept_gates(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept, bool renormalize) {
  if (!renormalize) return gates * kept;
  torch::Tensor before = (gates * selected).sum(1, /*keepdim=*/true);
  torch::Tensor after = (gates * kept).sum(1, /*keepdim=*/true);
  torch::Tensor lost_some = (selected & ~kept).any(1, /*keepdim=*/true) & kept.any(1, /*keepdim=*/true);
  torch::Tensor scale = torch::where(lost_some, before / after.clamp_min(1e-20), torch::ones_like(after));
  return gates * scale * kept;
}

}  // namespace moelab::kernels::reference
