#pragma once
// bf16 autocast for CUDA forward passes (fp32 master weights and optimizer state stay as
// they are). A no-op on the CPU and on libtorch builds without the device-type autocast API.
#include <torch/torch.h>
#include <torch/version.h>
#include <ATen/autocast_mode.h>

namespace moelab {

class CudaAutocast {
 public:
  explicit CudaAutocast(bool enabled) : enabled_(enabled) {
#if TORCH_VERSION_MAJOR >= 2
    if (!enabled_) return;
    previous_ = at::autocast::is_autocast_enabled(at::kCUDA);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
#endif
  }
  ~CudaAutocast() {
#if TORCH_VERSION_MAJOR >= 2
    if (!enabled_) return;
    at::autocast::set_autocast_enabled(at::kCUDA, previous_);
    at::autocast::clear_cache();
#endif
  }
  CudaAutocast(const CudaAutocast&) = delete;
  CudaAutocast& operator=(const CudaAutocast&) = delete;

 private:
  bool enabled_;
  bool previous_ = false;
};

}  // namespace moelab
