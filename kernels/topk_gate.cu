// Fused softmax + top-k (+ renormalisation) gate: one warp per token. Each lane keeps up to
// 16 logits in registers (E <= 512), the warp reduces the row max and the sum of exponentials,
// then k rounds of a warp arg-max pick the experts (equal values: the lower expert id, the
// reference's tie rule). With E <= 32 one thread takes a token instead, its logits in its
// registers and k serial arg-max scans: a warp per token would leave most lanes idle.
// Traffic: T*E logits read once, 2*T*k values
// written; work: T*E exp. The backward is one warp per token too: with g the output
// gradient and S = sum_j g_j gate_j, dlogit[e] = gate_j (g_j - S) / temperature at the
// chosen e = id_j when renormalised (the gates are a softmax over the k chosen), else
// p_e ([e = id_j] g_j - S) / temperature over every e (the full softmax recomputed).
#include <type_traits>

#include <ATen/cuda/CUDAContext.h>
#include <c10/util/BFloat16.h>
#include <torch/types.h>

#include "kernels/topk_gate.h"
#include "kernels/vector_io.cuh"

namespace moelab::kernels::cuda {
namespace {

constexpr int kMaxPerLane = kRowLogitsPerLane;
constexpr int kMaxK = kMaxGateK;

// A token's k choices, by descending probability: gates (renormalised over the k or not)
// and expert ids.
__device__ void write_choices(const float* picked, const int* picked_id, float picked_sum, int64_t token, int k,
                              bool renormalize, float* gates, int64_t* ids) {
  const float scale = renormalize ? 1.f / picked_sum : 1.f;
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) {
    if (j >= k) break;
    gates[token * k + j] = picked[j] * scale;
    ids[token * k + j] = picked_id[j];
  }
}

template <typename T>
__global__ void softmax_topk_kernel(const T* __restrict__ logits, int64_t tokens, int experts, int k, float inv_temperature,
                                    bool renormalize, float* __restrict__ gates, int64_t* __restrict__ ids) {
  const int64_t token = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (token >= tokens) return;
  const T* row = logits + token * experts;
  float v[kMaxPerLane];
  float row_max = -INFINITY;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int e = lane + 32 * i;
    v[i] = e < experts ? static_cast<float>(row[e]) * inv_temperature : -INFINITY;
    row_max = fmaxf(row_max, v[i]);
  }
  for (int offset = 16; offset > 0; offset /= 2) row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffff, row_max, offset));
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i)
    if (lane + 32 * i < experts) sum += __expf(v[i] - row_max);
  sum = warp_sum(sum);

  unsigned taken = 0;
  float picked[kMaxK];
  int picked_id[kMaxK];
  float picked_sum = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) {
    if (j >= k) break;
    float best = -INFINITY;
    int best_id = 0x7fffffff;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int e = lane + 32 * i;
      if (e < experts && !((taken >> i) & 1u) && (v[i] > best || best_id == 0x7fffffff)) {
        best = v[i];
        best_id = e;
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      const float other = __shfl_xor_sync(0xffffffff, best, offset);
      const int other_id = __shfl_xor_sync(0xffffffff, best_id, offset);
      if (other > best || (other == best && other_id < best_id)) {
        best = other;
        best_id = other_id;
      }
    }
    if ((best_id & 31) == lane) taken |= 1u << (best_id >> 5);
    picked[j] = __expf(best - row_max) / sum;
    picked_id[j] = best_id;
    picked_sum += picked[j];
  }
  if (lane == 0) write_choices(picked, picked_id, picked_sum, token, k, renormalize, gates, ids);
}

constexpr int kSmallExperts = 32;

template <typename T>
__global__ void softmax_topk_small_kernel(const T* __restrict__ logits, int64_t tokens, int experts, int k,
                                          float inv_temperature, bool renormalize, float* __restrict__ gates,
                                          int64_t* __restrict__ ids) {
  const int64_t token = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (token >= tokens) return;
  const T* row = logits + token * experts;
  float v[kSmallExperts];
  float row_max = -INFINITY;
#pragma unroll
  for (int e = 0; e < kSmallExperts; ++e) {
    v[e] = e < experts ? static_cast<float>(row[e]) * inv_temperature : -INFINITY;
    row_max = fmaxf(row_max, v[e]);
  }
  float sum = 0.f;
#pragma unroll
  for (int e = 0; e < kSmallExperts; ++e)
    if (e < experts) sum += __expf(v[e] - row_max);
  unsigned taken = 0;
  float picked[kMaxK];
  int picked_id[kMaxK];
  float picked_sum = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) {
    if (j >= k) break;
    float best = -INFINITY;
    int best_id = -1;
#pragma unroll
    for (int e = 0; e < kSmallExperts; ++e)  // ascending, strictly greater: ties keep the lower id
      if (e < experts && !((taken >> e) & 1u) && (best_id < 0 || v[e] > best)) {
        best = v[e];
        best_id = e;
      }
    taken |= 1u << best_id;
    picked[j] = __expf(best - row_max) / sum;
    picked_id[j] = best_id;
    picked_sum += picked[j];
  }
  write_choices(picked, picked_id, picked_sum, token, k, renormalize, gates, ids);
}

template <typename T>
__global__ void softmax_topk_backward_kernel(const T* __restrict__ logits, const int64_t* __restrict__ ids,
                                             const float* __restrict__ gates, const float* __restrict__ grad_gates,
                                             int64_t tokens, int experts, int k, float inv_temperature, bool renormalize,
                                             T* __restrict__ grad_logits) {
  const int64_t token = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (token >= tokens) return;
  float mixed = 0.f;
  for (int j = 0; j < k; ++j) mixed += grad_gates[token * k + j] * gates[token * k + j];
  const T* row = logits + token * experts;
  float row_max = -INFINITY, sum = 0.f;
  if (!renormalize) {
    for (int e = lane; e < experts; e += 32) row_max = fmaxf(row_max, static_cast<float>(row[e]) * inv_temperature);
    for (int offset = 16; offset > 0; offset /= 2) row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffff, row_max, offset));
    for (int e = lane; e < experts; e += 32) sum += __expf(static_cast<float>(row[e]) * inv_temperature - row_max);
    sum = warp_sum(sum);
  }
  for (int e = lane; e < experts; e += 32) {
    int chosen = -1;
    for (int j = 0; j < k; ++j)
      if (ids[token * k + j] == e) chosen = j;
    float grad = 0.f;
    if (renormalize) {
      if (chosen >= 0) grad = gates[token * k + chosen] * (grad_gates[token * k + chosen] - mixed);
    } else {
      const float p = __expf(static_cast<float>(row[e]) * inv_temperature - row_max) / sum;
      grad = p * ((chosen >= 0 ? grad_gates[token * k + chosen] : 0.f) - mixed);
    }
    grad_logits[token * experts + e] = static_cast<T>(grad * inv_temperature);
  }
}

}  // namespace

void launch_softmax_topk_backward(const torch::Tensor& logits, const torch::Tensor& ids, const torch::Tensor& gates,
                                  const torch::Tensor& grad_gates, double temperature, bool renormalize,
                                  torch::Tensor& grad_logits) {
  const int64_t tokens = logits.size(0);
  if (tokens == 0) return;
  const int threads = 256;
  const int64_t blocks = (tokens * 32 + threads - 1) / threads;
  const float inv_t = static_cast<float>(1.0 / temperature);
  auto launch = [&](auto* typed_logits) {
    using T = std::remove_pointer_t<decltype(typed_logits)>;
    softmax_topk_backward_kernel<T><<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        typed_logits, ids.data_ptr<int64_t>(), gates.data_ptr<float>(), grad_gates.data_ptr<float>(), tokens,
        static_cast<int>(logits.size(1)), static_cast<int>(ids.size(1)), inv_t, renormalize, grad_logits.data_ptr<T>());
  };
  if (logits.scalar_type() == torch::kBFloat16) launch(logits.data_ptr<c10::BFloat16>());
  else launch(logits.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_softmax_topk(const torch::Tensor& logits, int64_t k, double temperature, bool renormalize, torch::Tensor& gates,
                         torch::Tensor& ids) {
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous(), "softmax_topk: logits must be a contiguous [T, E] tensor");
  TORCH_CHECK(logits.size(1) <= 32 * kMaxPerLane && k <= kMaxK && k <= logits.size(1), "softmax_topk: needs E <= ", kMaxRowExperts, ", k <= ", kMaxGateK);
  const int64_t tokens = logits.size(0);
  if (tokens == 0) return;
  TORCH_CHECK(logits.scalar_type() == torch::kFloat32 || logits.scalar_type() == torch::kBFloat16,
              "softmax_topk: logits must be fp32 or bf16");
  // A thread per token in blocks of 64: 256-thread blocks put 8192 tokens on 32 of 132 SMs.
  const bool small = logits.size(1) <= kSmallExperts;
  const int threads = small ? 64 : 256;
  const int64_t blocks = ((small ? tokens : tokens * 32) + threads - 1) / threads;
  auto stream = at::cuda::getCurrentCUDAStream();
  const float inv_t = static_cast<float>(1.0 / temperature);
  auto launch = [&](auto* typed_logits) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(typed_logits)>>;
    auto kernel = small ? softmax_topk_small_kernel<T> : softmax_topk_kernel<T>;
    kernel<<<blocks, threads, 0, stream>>>(typed_logits, tokens, static_cast<int>(logits.size(1)), static_cast<int>(k), inv_t,
                                           renormalize, gates.data_ptr<float>(), ids.data_ptr<int64_t>());
  };
  if (logits.scalar_type() == torch::kBFloat16) launch(logits.data_ptr<c10::BFloat16>());
  else launch(logits.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace moelab::kernels::cuda
