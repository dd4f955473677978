// bf16 -> fp32 conversion of a contiguous tensor, 8 values a thread (16-byte load, two 16-byte
// stores). libtorch converts between dtypes element by element (its copy kernel casts
// dynamically), about half the speed of moving the bytes. Traffic: 2 bytes read and 4 written per value. The reference is Tensor::to.
#include <ATen/cuda/CUDAContext.h>
#include <c10/util/BFloat16.h>
#include <torch/types.h>

#include "kernels/linear.h"
#include "kernels/vector_io.cuh"

namespace moelab::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void bf16_to_fp32_kernel(const c10::BFloat16* __restrict__ in, float* __restrict__ out, int64_t vectors) {
  const int64_t v = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (v >= vectors) return;
  float values[kVec];
  load8(in + v * kVec, values);
  store8(out + v * kVec, values);
}

}  // namespace

bool bf16_to_fp32_supported(const torch::Tensor& in) {
  return in.is_cuda() && in.scalar_type() == torch::kBFloat16 && in.is_contiguous() && in.numel() % kVec == 0 &&
         reinterpret_cast<uintptr_t>(in.data_ptr()) % 16 == 0;
}

torch::Tensor bf16_to_fp32(const torch::Tensor& in) {
  torch::Tensor out = torch::empty(in.sizes(), in.options().dtype(torch::kFloat32));
  const int64_t vectors = in.numel() / kVec;
  if (vectors == 0) return out;
  bf16_to_fp32_kernel<<<static_cast<unsigned>((vectors + kThreads - 1) / kThreads), kThreads, 0,
                        at::cuda::getCurrentCUDAStream()>>>(in.data_ptr<c10::BFloat16>(), out.data_ptr<float>(), vectors);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace moelab::kernels::cuda
