#include "train/cuda_graph.h"

#include <stdexcept>

#include <torch/torch.h>
#include <ATen/autocast_mode.h>

#if defined(MOELAB_CUDA) && TORCH_VERSION_MAJOR >= 2
#define MOELAB_CUDA_GRAPHS 1
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace moelab {

#ifdef MOELAB_CUDA_GRAPHS
struct CudaGraph::Impl {
  at::cuda::CUDAGraph graph;
};
struct CudaSideStream::Impl {
  explicit Impl(int device) : guard(at::cuda::getStreamFromPool(/*isHighPriority=*/false, static_cast<c10::DeviceIndex>(device))) {}
  c10::cuda::CUDAStreamGuard guard;
};

bool CudaGraph::available() { return true; }
CudaGraph::CudaGraph() : impl_(std::make_unique<Impl>()) {}

void CudaGraph::capture(const std::function<void()>& body) {
  const bool cache = at::autocast::is_autocast_cache_enabled();
  at::autocast::set_autocast_cache_enabled(false);
  impl_->graph.capture_begin();
  try {
    body();
  } catch (...) {
    try {
      impl_->graph.capture_end();
    } catch (...) {
    }
    at::autocast::set_autocast_cache_enabled(cache);
    throw;
  }
  impl_->graph.capture_end();
  at::autocast::set_autocast_cache_enabled(cache);
}

void CudaGraph::replay() { impl_->graph.replay(); }

CudaSideStream::CudaSideStream(int device_index) {
  torch::cuda::synchronize(device_index);
  impl_ = std::make_unique<Impl>(device_index);
}
CudaSideStream::~CudaSideStream() { torch::cuda::synchronize(); }
#else
struct CudaGraph::Impl {};
struct CudaSideStream::Impl {};
bool CudaGraph::available() { return false; }
CudaGraph::CudaGraph() { throw std::logic_error("CUDA graphs need a CUDA build of libtorch 2.x"); }
void CudaGraph::capture(const std::function<void()>&) {}
void CudaGraph::replay() {}
CudaSideStream::CudaSideStream(int) {}
CudaSideStream::~CudaSideStream() = default;
#endif

CudaGraph::~CudaGraph() = default;

}  // namespace moelab
