#include "kernels/device.h"

namespace moelab::kernels {
namespace {
bool enabled = true;
}  // namespace

bool cuda_kernels_built() {
#ifdef MOELAB_CUDA
  return true;
#else
  return false;
#endif
}

void set_cuda_kernels_enabled(bool on) { enabled = on; }

bool cuda_kernels_enabled() { return cuda_kernels_built() && enabled; }

}  // namespace moelab::kernels
