// AdamW over up to kMaxTensors fp32 tensors per launch. The tensors' pointers travel in the
// kernel's arguments (as PyTorch's multi-tensor kernels do), so a captured CUDA graph
// replays them; every tensor is cut into chunks of kChunk elements and a block takes one
// chunk, finding its tensor in the list's chunk offsets. A thread moves kVectors float4 of
// each of param, grad, exp_avg and exp_avg_sq, all loads issued before any arithmetic; a
// tail not a multiple of 4 goes element by element. Traffic: 16 bytes read and 12 written per
// parameter (the gradient is only read: clipping's scale is applied here, not in a pass of
// its own); ~15 flops. libtorch's fused AdamW plus the clipping pass ran at 1.8 TB/s on an
// H100 and wrote the gradients once more.
#include <ATen/cuda/CUDAContext.h>
#include <torch/types.h>

#include "kernels/adamw.h"

namespace moelab::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kVectors = 4;                               // float4 per thread per tensor
constexpr int64_t kChunk = int64_t{kThreads} * kVectors * 4;  // elements per block
constexpr int kMaxTensors = 48;                            // ~2.3 KB of the 4 KB of kernel arguments

struct TensorList {
  float* param[kMaxTensors];
  const float* grad[kMaxTensors];
  float* exp_avg[kMaxTensors];
  float* exp_avg_sq[kMaxTensors];
  int64_t numel[kMaxTensors];
  float decay_rate[kMaxTensors];  // weight decay
  int first_block[kMaxTensors + 1];
  int count;
};

struct Hyper {
  float beta1, beta2, eps;
};

__device__ void update(float& p, float g, float& m, float& v, float scale, float decay, float step_size, float correction2_sqrt,
                       const Hyper& h) {
  g *= scale;
  p *= decay;
  m += (1.f - h.beta1) * (g - m);
  v = h.beta2 * v + (1.f - h.beta2) * g * g;
  p -= step_size * m / (sqrtf(v) / correction2_sqrt + h.eps);
}

__global__ void __launch_bounds__(kThreads)
    adamw_kernel(TensorList list, const float* __restrict__ lr_ptr, const float* __restrict__ step_ptr,
                 const float* __restrict__ scale_ptr, Hyper h) {
  int t = 0;
  while (t + 1 < list.count && list.first_block[t + 1] <= static_cast<int>(blockIdx.x)) ++t;
  const int64_t begin = (blockIdx.x - list.first_block[t]) * kChunk, numel = list.numel[t];
  const int64_t end = min(begin + kChunk, numel);
  const float lr = *lr_ptr, step = *step_ptr, scale = scale_ptr ? *scale_ptr : 1.f;
  if (!isfinite(scale)) return;  // a non-finite gradient norm: no update at all
  const float step_size = lr / (1.f - powf(h.beta1, step)), correction2_sqrt = sqrtf(1.f - powf(h.beta2, step));
  const float decay = 1.f - lr * list.decay_rate[t];
  float* __restrict__ param = list.param[t];
  const float* __restrict__ grad = list.grad[t];
  float* __restrict__ exp_avg = list.exp_avg[t];
  float* __restrict__ exp_avg_sq = list.exp_avg_sq[t];

  if (end - begin == kChunk) {
    float4 p[kVectors], g[kVectors], m[kVectors], v[kVectors];
#pragma unroll
    for (int j = 0; j < kVectors; ++j) {
      const int64_t i = begin + (int64_t{j} * kThreads + threadIdx.x) * 4;
      p[j] = *reinterpret_cast<const float4*>(param + i);
      g[j] = *reinterpret_cast<const float4*>(grad + i);
      m[j] = *reinterpret_cast<const float4*>(exp_avg + i);
      v[j] = *reinterpret_cast<const float4*>(exp_avg_sq + i);
    }
#pragma unroll
    for (int j = 0; j < kVectors; ++j) {
      update(p[j].x, g[j].x, m[j].x, v[j].x, scale, decay, step_size, correction2_sqrt, h);
      update(p[j].y, g[j].y, m[j].y, v[j].y, scale, decay, step_size, correction2_sqrt, h);
      update(p[j].z, g[j].z, m[j].z, v[j].z, scale, decay, step_size, correction2_sqrt, h);
      update(p[j].w, g[j].w, m[j].w, v[j].w, scale, decay, step_size, correction2_sqrt, h);
      const int64_t i = begin + (int64_t{j} * kThreads + threadIdx.x) * 4;
      *reinterpret_cast<float4*>(param + i) = p[j];
      *reinterpret_cast<float4*>(exp_avg + i) = m[j];
      *reinterpret_cast<float4*>(exp_avg_sq + i) = v[j];
    }
    return;
  }
  // The tensor's last, partial chunk.
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    float p = param[i], m = exp_avg[i], v = exp_avg_sq[i];
    update(p, grad[i], m, v, scale, decay, step_size, correction2_sqrt, h);
    param[i] = p;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
  }
}

bool aligned16(const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

}  // namespace

bool adamw_supported(const AdamWState& state) {
  for (size_t i = 0; i < state.params.size(); ++i)
    for (const torch::Tensor* t : {&state.params[i], &state.grads[i], &state.exp_avgs[i], &state.exp_avg_sqs[i]})
      if (!t->is_cuda() || t->scalar_type() != torch::kFloat32 || !t->is_contiguous() || !aligned16(*t) ||
          t->numel() != state.params[i].numel())
        return false;
  return true;
}

void adamw_step(const AdamWState& state, const torch::Tensor& lr, const torch::Tensor& step, const torch::Tensor& grad_scale,
                double beta1, double beta2, double eps) {
  const Hyper hyper{static_cast<float>(beta1), static_cast<float>(beta2), static_cast<float>(eps)};
  const float* scale = grad_scale.defined() ? grad_scale.data_ptr<float>() : nullptr;
  auto stream = at::cuda::getCurrentCUDAStream();
  TensorList list{};
  auto flush = [&] {
    if (list.count == 0 || list.first_block[list.count] == 0) return;
    adamw_kernel<<<list.first_block[list.count], kThreads, 0, stream>>>(list, lr.data_ptr<float>(), step.data_ptr<float>(),
                                                                       scale, hyper);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    list = TensorList{};
  };
  for (size_t i = 0; i < state.params.size(); ++i) {
    const int64_t numel = state.params[i].numel();
    if (numel == 0) continue;
    const int n = list.count;
    list.param[n] = state.params[i].data_ptr<float>();
    list.grad[n] = state.grads[i].data_ptr<float>();
    list.exp_avg[n] = state.exp_avgs[i].data_ptr<float>();
    list.exp_avg_sq[n] = state.exp_avg_sqs[i].data_ptr<float>();
    list.numel[n] = numel;
    list.decay_rate[n] = static_cast<float>(state.weight_decays[i]);
    list.first_block[n + 1] = list.first_block[n] + static_cast<int>((numel + kChunk - 1) / kChunk);
    list.count = n + 1;
    if (list.count == kMaxTensors) flush();
  }
  flush();
}

}  // namespace moelab::kernels::cuda
