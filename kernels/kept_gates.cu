// The gates of a routing plan's kept assignments, one thread per token (k <= 8):
//   out[t, j] = g[t, j] * s_t * kept[t, j], with s_t = B / max(A, 1e-20) when renormalising
//   and the token lost some but not all of its selected assignments (B = sum_j g sel,
//   A = sum_j g kept), else 1: the kept gates carry the mass the selected ones had.
//   backward: with S = sum_j go_j kept_j g_j, grad g_i = go_i kept_i s_t
//             + [token renormalised] (sel_i / A - [A >= 1e-20] B kept_i / A^2) S.
// It replaces the dozen libtorch kernels of the reference (sums, masks, where, products)
// forward and about as many backward, per MoE layer. Traffic: 6 bytes per assignment in,
// 4 out.
#include <ATen/cuda/CUDAContext.h>
#include <torch/torch.h>

#include "kernels/kept_gates.h"

namespace moelab::kernels::cuda {
namespace {

constexpr int kMaxK = 8;
constexpr int kThreads = 256;
constexpr float kMinKept = 1e-20f;  // the reference's clamp of the kept mass

struct TokenScale {
  float before, after, scale;
  bool renormalised;
};

__device__ TokenScale token_scale(const float* g, const bool* sel, const bool* kept, int k, bool renormalize) {
  TokenScale s{0.f, 0.f, 1.f, false};
  bool lost = false, any_kept = false;
  for (int j = 0; j < k; ++j) {
    s.before += sel[j] ? g[j] : 0.f;
    s.after += kept[j] ? g[j] : 0.f;
    lost = lost || (sel[j] && !kept[j]);
    any_kept = any_kept || kept[j];
  }
  s.renormalised = renormalize && lost && any_kept;
  if (s.renormalised) s.scale = s.before / fmaxf(s.after, kMinKept);
  return s;
}

__global__ void kept_gates_kernel(const float* __restrict__ gates, const bool* __restrict__ selected,
                                  const bool* __restrict__ kept, int64_t tokens, int k, bool renormalize,
                                  float* __restrict__ out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= tokens) return;
  const TokenScale s = token_scale(gates + t * k, selected + t * k, kept + t * k, k, renormalize);
  for (int j = 0; j < k; ++j) out[t * k + j] = kept[t * k + j] ? gates[t * k + j] * s.scale : 0.f;
}

__global__ void kept_gates_backward_kernel(const float* __restrict__ gates, const bool* __restrict__ selected,
                                           const bool* __restrict__ kept, const float* __restrict__ grad_out,
                                           int64_t tokens, int k, bool renormalize, float* __restrict__ grad_gates) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= tokens) return;
  const float* g = gates + t * k;
  const bool* sel = selected + t * k;
  const bool* kp = kept + t * k;
  const float* go = grad_out + t * k;
  const TokenScale s = token_scale(g, sel, kp, k, renormalize);
  float mixed = 0.f;
  for (int j = 0; j < k; ++j) mixed += kp[j] ? go[j] * g[j] : 0.f;
  const float a = fmaxf(s.after, kMinKept);
  for (int i = 0; i < k; ++i) {
    float grad = kp[i] ? go[i] * s.scale : 0.f;
    if (s.renormalised) {
      const float d_scale = (sel[i] ? 1.f / a : 0.f) - (kp[i] && s.after >= kMinKept ? s.before / (a * a) : 0.f);
      grad += d_scale * mixed;
    }
    grad_gates[t * k + i] = grad;
  }
}

unsigned blocks_for(int64_t tokens) { return static_cast<unsigned>((tokens + kThreads - 1) / kThreads); }

}  // namespace

bool kept_gates_supported(int64_t k) { return k <= kMaxK; }

void launch_kept_gates(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept, bool renormalize,
                       torch::Tensor& out) {
  const int64_t tokens = gates.size(0);
  if (tokens == 0) return;
  kept_gates_kernel<<<blocks_for(tokens), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      gates.data_ptr<float>(), selected.data_ptr<bool>(), kept.data_ptr<bool>(), tokens, static_cast<int>(gates.size(1)),
      renormalize, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_kept_gates_backward(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept,
                                bool renormalize, const torch::Tensor& grad_out, torch::Tensor& grad_gates) {
  const int64_t tokens = gates.size(0);
  if (tokens == 0) return;
  kept_gates_backward_kernel<<<blocks_for(tokens), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      gates.data_ptr<float>(), selected.data_ptr<bool>(), kept.data_ptr<bool>(), grad_out.data_ptr<float>(), tokens,
      static_cast<int>(gates.size(1)), renormalize, grad_gates.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace moelab::kernels::cuda
