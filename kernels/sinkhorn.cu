// Sinkhorn balancing in scaling-vector form. With q0 = exp(logits/tau - rowmax), every round
// of "rows to 1, columns to T/E" leaves q = q0 * r[t] * c[e], so only the vectors change:
//   r[t] = 1 / sum_e q0[t, e] c[e]          (row pass: one warp per token; a thread for E <= 32)
//   c[e] = (T/E) / sum_t q0[t, e] r[t]      (block partial sums, then a fixed-order tree per expert)
// Per round: T*E exp + 2*T*E multiply-adds, logits read once; no [T, E] intermediate is
// written until the final q. Deterministic: partial sums are reduced in block order.
#include <ATen/cuda/CUDAContext.h>
#include <torch/types.h>

#include "kernels/sinkhorn.h"
#include "kernels/vector_io.cuh"

namespace moelab::kernels::cuda {
namespace {

constexpr int kMaxPerLane = kRowLogitsPerLane;
constexpr int kWarps = 8;

__device__ void load_row(const float* logits, int64_t token, int experts, float inv_t, int lane, float* v, float& row_max) {
  row_max = -INFINITY;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int e = lane + 32 * i;
    v[i] = e < experts ? logits[token * experts + e] * inv_t : -INFINITY;
    row_max = fmaxf(row_max, v[i]);
  }
  for (int offset = 16; offset > 0; offset /= 2) row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffff, row_max, offset));
}

// Row pass for the tokens of this block; partial[block][e] = sum over its tokens of q0 * r.
__global__ void row_pass(const float* __restrict__ logits, int64_t tokens, int experts, float inv_t, const float* __restrict__ c,
                         float* __restrict__ r, float* __restrict__ partial) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float column[kMaxPerLane] = {0.f};
  for (int64_t token = blockIdx.x * kWarps + warp; token < tokens; token += static_cast<int64_t>(gridDim.x) * kWarps) {
    float v[kMaxPerLane], row_max;
    load_row(logits, token, experts, inv_t, lane, v, row_max);
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int e = lane + 32 * i;
      if (e < experts) {
        v[i] = __expf(v[i] - row_max);
        sum += v[i] * c[e];
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    const float scale = 1.f / sum;
    if (lane == 0) r[token] = scale;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i)
      if (lane + 32 * i < experts) column[i] += v[i] * scale;
  }
  // [kWarps][experts], sized at launch: a fixed [kWarps][512] block would write 16 KB of
  // zeros per block at E = 8, more than the pass's own traffic.
  extern __shared__ float warp_columns[];
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i)
    if (lane + 32 * i < experts) warp_columns[warp * experts + lane + 32 * i] = column[i];
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    float total = 0.f;
    for (int w = 0; w < kWarps; ++w) total += warp_columns[w * experts + e];
    partial[static_cast<int64_t>(blockIdx.x) * experts + e] = total;
  }
}

// E <= 32: a thread per token, its row in registers, in blocks of kSmallThreads (a warp per
// token leaves 24 of 32 lanes idle at E = 8). Column
// partials: warp sums per expert, then the block's warps in order.
constexpr int kSmallExperts = 32;
constexpr int kSmallThreads = 64;

__global__ void row_pass_small(const float* __restrict__ logits, int64_t tokens, int experts, float inv_t,
                               const float* __restrict__ c, float* __restrict__ r, float* __restrict__ partial) {
  __shared__ float warp_columns[kSmallThreads / 32][kSmallExperts];
  const int64_t token = static_cast<int64_t>(blockIdx.x) * kSmallThreads + threadIdx.x;
  float v[kSmallExperts];
  float row_max = -INFINITY, sum = 0.f;
#pragma unroll
  for (int e = 0; e < kSmallExperts; ++e) {
    v[e] = token < tokens && e < experts ? logits[token * experts + e] * inv_t : -INFINITY;
    row_max = fmaxf(row_max, v[e]);
  }
#pragma unroll
  for (int e = 0; e < kSmallExperts; ++e) {
    v[e] = e < experts && token < tokens ? __expf(v[e] - row_max) : 0.f;
    if (e < experts) sum += v[e] * c[e];
  }
  const float scale = token < tokens ? 1.f / sum : 0.f;
  if (token < tokens) r[token] = scale;
#pragma unroll
  for (int e = 0; e < kSmallExperts; ++e) v[e] *= scale;
  const float column = block_column_sum(v, experts, warp_columns);
  if (threadIdx.x < experts) partial[static_cast<int64_t>(blockIdx.x) * experts + threadIdx.x] = column;
}

__global__ void write_q_small(const float* __restrict__ logits, int64_t tokens, int experts, float inv_t,
                              const float* __restrict__ r, const float* __restrict__ c, float* __restrict__ q) {
  const int64_t token = static_cast<int64_t>(blockIdx.x) * kSmallThreads + threadIdx.x;
  if (token >= tokens) return;
  float v[kSmallExperts], row_max = -INFINITY;
#pragma unroll
  for (int e = 0; e < kSmallExperts; ++e) {
    v[e] = e < experts ? logits[token * experts + e] * inv_t : -INFINITY;
    row_max = fmaxf(row_max, v[e]);
  }
#pragma unroll
  for (int e = 0; e < kSmallExperts; ++e)
    if (e < experts) q[token * experts + e] = __expf(v[e] - row_max) * r[token] * c[e];
}

// A block per expert: strided partial sums, then a shared-memory tree in a fixed order. One
// thread per expert summing all row-pass blocks serially leaves the GPU idle but for E threads.
constexpr int kColumnThreads = 256;
__global__ void column_pass(const float* __restrict__ partial, int blocks, int experts, float target, float* __restrict__ c) {
  __shared__ float sums[kColumnThreads];
  const int e = blockIdx.x;
  float total = 0.f;
  for (int b = threadIdx.x; b < blocks; b += kColumnThreads) total += partial[static_cast<int64_t>(b) * experts + e];
  sums[threadIdx.x] = total;
  __syncthreads();
  for (int stride = kColumnThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) sums[threadIdx.x] += sums[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) c[e] = target / sums[0];
}

__global__ void write_q(const float* __restrict__ logits, int64_t tokens, int experts, float inv_t, const float* __restrict__ r,
                        const float* __restrict__ c, float* __restrict__ q) {
  const int64_t token = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (token >= tokens) return;
  float v[kMaxPerLane], row_max;
  load_row(logits, token, experts, inv_t, lane, v, row_max);
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int e = lane + 32 * i;
    if (e < experts) q[token * experts + e] = __expf(v[i] - row_max) * r[token] * c[e];
  }
}

}  // namespace

torch::Tensor sinkhorn(const torch::Tensor& logits_in, int64_t iters, double temperature) {
  torch::NoGradGuard no_grad;
  torch::Tensor logits = logits_in.to(torch::kFloat32).contiguous();
  const int64_t tokens = logits.size(0);
  const int experts = static_cast<int>(logits.size(1));
  TORCH_CHECK(experts <= 32 * kMaxPerLane, "sinkhorn: E <= ", kMaxRowExperts, " on CUDA");
  auto options = logits.options();
  torch::Tensor r = torch::ones({tokens}, options), c = torch::ones({experts}, options), q = torch::empty_like(logits);
  if (tokens == 0) return q;
  const bool small = experts <= kSmallExperts;
  const int blocks = static_cast<int>(small ? (tokens + kSmallThreads - 1) / kSmallThreads
                                            : std::min<int64_t>((tokens + kWarps - 1) / kWarps, 1024));
  torch::Tensor partial = torch::empty({blocks, experts}, options);
  auto stream = at::cuda::getCurrentCUDAStream();
  const float inv_t = static_cast<float>(1.0 / temperature);
  const float target = static_cast<float>(tokens) / static_cast<float>(experts);
  for (int64_t i = 0; i < iters; ++i) {
    if (small)
      row_pass_small<<<blocks, kSmallThreads, 0, stream>>>(logits.data_ptr<float>(), tokens, experts, inv_t, c.data_ptr<float>(),
                                                            r.data_ptr<float>(), partial.data_ptr<float>());
    else
      row_pass<<<blocks, 32 * kWarps, kWarps * experts * sizeof(float), stream>>>(
          logits.data_ptr<float>(), tokens, experts, inv_t, c.data_ptr<float>(), r.data_ptr<float>(), partial.data_ptr<float>());
    column_pass<<<experts, kColumnThreads, 0, stream>>>(partial.data_ptr<float>(), blocks, experts, target, c.data_ptr<float>());
  }
  if (small)
    write_q_small<<<(tokens + kSmallThreads - 1) / kSmallThreads, kSmallThreads, 0, stream>>>(
        logits.data_ptr<float>(), tokens, experts, inv_t, r.data_ptr<float>(), c.data_ptr<float>(), q.data_ptr<float>());
  else
    write_q<<<(tokens * 32 + 255) / 256, 256, 0, stream>>>(logits.data_ptr<float>(), tokens, experts, inv_t, r.data_ptr<float>(),
                                                            c.data_ptr<float>(), q.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return q;
}

}  // namespace moelab::kernels::cuda
