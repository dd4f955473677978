// The Switch load-balancing loss E * sum_e f_e * P_e over fp32 logits [T, E] with E <= 32
// (f_e: share of the selected assignments routed to e, no gradient; P_e: mean softmax
// probability of e), forward and backward, one thread per token with its row in registers:
//   partials: softmax of the row, warp sums of the probabilities per expert, block sums in
//             warp order -> prob_partials[block][e]; the selected assignments counted per
//             expert in shared memory (integers, order-free) -> count_partials[block][e].
//   finish:   8 warps add the partial rows, lane e of each for expert e, then the warps'
//             sums in warp order: P_e, f_e, the loss.
//   backward: dL/dlogit[t, j] = g * E / T * p[t, j] * (f_j - sum_e f_e p[t, e]), g read on the
//             device (no host sync).
// Traffic: the logits read once each way (+ 9 bytes per assignment), 8 * E bytes per block.
// It replaces about a dozen libtorch kernels forward and eight backward per MoE layer.
#include <ATen/cuda/CUDAContext.h>
#include <torch/torch.h>

#include "kernels/balancing_loss.h"
#include "kernels/vector_io.cuh"

namespace moelab::kernels::cuda {
namespace {

constexpr int kMaxExperts = 32;
constexpr int kThreads = 64;  // a token per thread: 256-thread blocks would put 8192 tokens on 32 of 132 SMs

__device__ void row_softmax(const float* __restrict__ row, int experts, float* p) {
  float row_max = -INFINITY;
#pragma unroll
  for (int e = 0; e < kMaxExperts; ++e) {
    p[e] = e < experts ? row[e] : -INFINITY;
    row_max = fmaxf(row_max, p[e]);
  }
  float sum = 0.f;
#pragma unroll
  for (int e = 0; e < kMaxExperts; ++e) {
    p[e] = e < experts ? __expf(p[e] - row_max) : 0.f;
    sum += p[e];
  }
  const float inv_sum = 1.f / sum;
#pragma unroll
  for (int e = 0; e < kMaxExperts; ++e) p[e] *= inv_sum;
}

__global__ void balancing_partials_kernel(const float* __restrict__ logits, const int64_t* __restrict__ ids,
                                          const bool* __restrict__ selected, int64_t tokens, int experts, int k,
                                          float* __restrict__ prob_partials, int* __restrict__ count_partials) {
  __shared__ float warp_sums[kThreads / 32][kMaxExperts];
  __shared__ int counts[kMaxExperts];
  if (threadIdx.x < kMaxExperts) counts[threadIdx.x] = 0;
  __syncthreads();
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  float p[kMaxExperts] = {};
  if (t < tokens) {
    row_softmax(logits + t * experts, experts, p);
    for (int j = 0; j < k; ++j)
      if (selected[t * k + j]) atomicAdd(&counts[ids[t * k + j]], 1);
  }
  const float prob = block_column_sum(p, experts, warp_sums);  // its barrier also publishes the counts
  if (threadIdx.x < experts) {
    prob_partials[static_cast<int64_t>(blockIdx.x) * experts + threadIdx.x] = prob;
    count_partials[static_cast<int64_t>(blockIdx.x) * experts + threadIdx.x] = counts[threadIdx.x];
  }
}

// Warp w adds the partial rows w, w + kFinishWarps, ... for lane e; warp 0 adds the warps'
// sums in warp order (deterministic), rather than one warp walking all 128 rows serially.
constexpr int kFinishWarps = 8;
__global__ void balancing_finish_kernel(const float* __restrict__ prob_partials, const int* __restrict__ count_partials,
                                        int blocks, int64_t tokens, int experts, float* __restrict__ loss,
                                        float* __restrict__ share) {
  __shared__ float warp_probs[kFinishWarps][kMaxExperts];
  __shared__ long long warp_counts[kFinishWarps][kMaxExperts];
  const int e = threadIdx.x % 32, warp = threadIdx.x / 32;
  float prob = 0.f;
  long long count = 0;
  if (e < experts)
    for (int b = warp; b < blocks; b += kFinishWarps) {
      prob += prob_partials[static_cast<int64_t>(b) * experts + e];
      count += count_partials[static_cast<int64_t>(b) * experts + e];
    }
  warp_probs[warp][e] = prob;
  warp_counts[warp][e] = count;
  __syncthreads();
  if (warp != 0) return;
  prob = 0.f;
  count = 0;
  for (int w = 0; w < kFinishWarps; ++w) {
    prob += warp_probs[w][e];
    count += warp_counts[w][e];
  }
  long long total = count;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);
  const float f = static_cast<float>(count) / static_cast<float>(total > 0 ? total : 1);
  const float value = warp_sum(e < experts ? f * prob / static_cast<float>(tokens) : 0.f);
  if (e < experts) share[e] = f;
  if (e == 0) *loss = static_cast<float>(experts) * value;
}

__global__ void balancing_backward_kernel(const float* __restrict__ logits, const float* __restrict__ share,
                                          const float* __restrict__ grad_loss, int64_t tokens, int experts,
                                          float* __restrict__ grad_logits) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= tokens) return;
  float p[kMaxExperts];
  row_softmax(logits + t * experts, experts, p);
  float mixed = 0.f;
#pragma unroll
  for (int e = 0; e < kMaxExperts; ++e)
    if (e < experts) mixed += share[e] * p[e];
  const float scale = *grad_loss * static_cast<float>(experts) / static_cast<float>(tokens);
#pragma unroll
  for (int e = 0; e < kMaxExperts; ++e)
    if (e < experts) grad_logits[t * experts + e] = scale * p[e] * (share[e] - mixed);
}

unsigned blocks_for(int64_t tokens) { return static_cast<unsigned>((tokens + kThreads - 1) / kThreads); }

}  // namespace

bool balancing_loss_supported(int64_t experts) { return experts <= kMaxExperts; }

void launch_balancing_loss(const torch::Tensor& logits, const torch::Tensor& ids, const torch::Tensor& selected,
                           torch::Tensor& loss, torch::Tensor& share) {
  const int64_t tokens = logits.size(0);
  const int experts = static_cast<int>(logits.size(1)), k = static_cast<int>(ids.size(1));
  const unsigned blocks = blocks_for(tokens);
  torch::Tensor prob_partials = torch::empty({blocks, experts}, logits.options());
  torch::Tensor count_partials = torch::empty({blocks, experts}, logits.options().dtype(torch::kInt32));
  auto stream = at::cuda::getCurrentCUDAStream();
  balancing_partials_kernel<<<blocks, kThreads, 0, stream>>>(logits.data_ptr<float>(), ids.data_ptr<int64_t>(),
                                                             selected.data_ptr<bool>(), tokens, experts, k,
                                                             prob_partials.data_ptr<float>(), count_partials.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  balancing_finish_kernel<<<1, 32 * kFinishWarps, 0, stream>>>(prob_partials.data_ptr<float>(), count_partials.data_ptr<int>(),
                                                static_cast<int>(blocks), tokens, experts, loss.data_ptr<float>(),
                                                share.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_balancing_loss_backward(const torch::Tensor& logits, const torch::Tensor& share, const torch::Tensor& grad_loss,
                                    torch::Tensor& grad_logits) {
  const int64_t tokens = logits.size(0);
  balancing_backward_kernel<<<blocks_for(tokens), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      logits.data_ptr<float>(), share.data_ptr<float>(), grad_loss.data_ptr<float>(), tokens,
      static_cast<int>(logits.size(1)), grad_logits.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace moelab::kernels::cuda
