// The expert FFN's bias and activation over the grouped GEMM's output, fused: rows are packed
// expert-major, so row r belongs to the expert e with offsets[e-1] <= r < offsets[e] (a
// binary search over E <= 512 offsets); rows at or past offsets[E-1] are padding and are
// skipped. bf16 in and out, fp32 arithmetic; N a multiple of 8 (16-byte vectors).
//   forward:  out[r, c] = act(h[r, c] + bias[e, c]); SwiGLU: silu(a + ba) * (b + bb) over the
//             two column halves. Traffic: read M*N + E*N, write M*N_out (bf16).
//   backward: grad_h[r, c] = grad_out[r, c] * act'(h[r, c] + bias[e, c]) (written, as the
//             GEMM's gradient input) and grad_bias[e, c] = sum over e's rows of grad_h[r, c].
//             A block takes a tile of kTileRows rows and keeps fp32 column sums in registers,
//             adding them to grad_bias (one atomic per column) when the tile's expert changes
//             and at its end: rows are sorted by expert, so a tile holds one or two experts
//             and the atomics are M / kTileRows per column, not M. Traffic: read 2*M*N + E*N,
//             write M*N (bf16) + atomics. Without an activation grad_h is grad_out itself: the
//             kernel only reads grad_out and sums the bias gradients.
#include <algorithm>

#include <ATen/cuda/CUDAContext.h>
#include <c10/util/BFloat16.h>
#include <torch/types.h>

#include "kernels/cuda_ops.h"
#include "kernels/vector_io.cuh"

namespace moelab::kernels::cuda {
namespace {

constexpr int kThreads = 64;    // vectors of columns per block (64 measured a little faster than 128 on an H100)
constexpr int kTileRows = 32;   // backward rows per block; 8, 16 and 64 measured slower on an H100
constexpr int kBatch = 4;       // backward rows whose loads are in flight together

__device__ int expert_of_row(const int* offsets, int experts, int64_t row) {
  int lo = 0, hi = experts - 1;  // first e with offsets[e] > row
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (offsets[mid] > row) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

// erf(x / sqrt(2)) by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7, some 10^4 times
// below a bf16 ulp at 1), sharing exp(-x^2 / 2) with the normal density the gradient needs:
// one exp and one reciprocal, no branch. CUDA's erff branches on |x|, so warps diverge, and
// with it the GELU backward was compute-bound (56 us for 16384 x 1024 on an H100).
__device__ void erf_and_gauss(float x, float& erf_z, float& gauss) {
  const float t = __fdividef(1.0f, 1.0f + 0.3275911f * 0.70710678118654752f * fabsf(x));
  gauss = __expf(-0.5f * x * x);
  const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  erf_z = copysignf(1.0f - poly * gauss, x);
}
__device__ float gelu(float x) {
  float erf_z, gauss;
  erf_and_gauss(x, erf_z, gauss);
  return 0.5f * x * (1.0f + erf_z);
}
__device__ float gelu_grad(float x) {
  float erf_z, gauss;
  erf_and_gauss(x, erf_z, gauss);
  return 0.5f * (1.0f + erf_z) + x * 0.39894228040143268f * gauss;
}
__device__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <int Act>
__global__ void expert_bias_act_kernel(const c10::BFloat16* __restrict__ h, const float* __restrict__ bias,
                                       const int* __restrict__ offsets, int experts, int64_t cols_out,
                                       c10::BFloat16* __restrict__ out) {
  const int64_t row = blockIdx.x;
  if (row >= offsets[experts - 1]) return;
  const int e = expert_of_row(offsets, experts, row);
  const int64_t cols_in = Act == kSwiGLU ? 2 * cols_out : cols_out;
  for (int64_t c = (static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x) * kVec; c < cols_out;
       c += static_cast<int64_t>(gridDim.y) * kThreads * kVec) {
    float x[kVec], b[kVec], y[kVec];
    load8(h + row * cols_in + c, x);
    load8(bias + e * cols_in + c, b);
    if (Act == kSwiGLU) {
      float g[kVec], bg[kVec];
      load8(h + row * cols_in + cols_out + c, g);
      load8(bias + e * cols_in + cols_out + c, bg);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float a = x[i] + b[i];
        y[i] = a * sigmoid(a) * (g[i] + bg[i]);
      }
    } else {
#pragma unroll
      for (int i = 0; i < kVec; ++i) y[i] = Act == kGelu ? gelu(x[i] + b[i]) : x[i] + b[i];
    }
    store8(out + row * cols_out + c, y);
  }
}

template <int Act>
__global__ void expert_bias_act_backward_kernel(const c10::BFloat16* __restrict__ grad_out, const c10::BFloat16* __restrict__ h,
                                                const float* __restrict__ bias, const int* __restrict__ offsets, int experts,
                                                int64_t cols_out, c10::BFloat16* __restrict__ grad_h,
                                                float* __restrict__ grad_bias) {
  const int64_t total = offsets[experts - 1];
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int64_t c = (static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x) * kVec;
  if (first >= total || c >= cols_out) return;
  const int64_t last = min(first + kTileRows, total);
  const int64_t cols_in = Act == kSwiGLU ? 2 * cols_out : cols_out;
  constexpr int kParts = Act == kSwiGLU ? 2 : 1;
  float sum[kParts][kVec] = {};
  int e = expert_of_row(offsets, experts, first);
  auto flush = [&](int expert) {
#pragma unroll
    for (int p = 0; p < kParts; ++p)
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        atomicAdd(grad_bias + expert * cols_in + p * cols_out + c + i, sum[p][i]);
        sum[p][i] = 0.0f;
      }
  };
  float b[kParts][kVec];
#pragma unroll
  for (int p = 0; p < kParts; ++p) load8(bias + e * cols_in + p * cols_out + c, b[p]);
  // kBatch rows' loads are issued before any of them is used: a thread walks its tile in
  // order, and without this each row's loads would wait for the previous row's math.
  for (int64_t row0 = first; row0 < last; row0 += kBatch) {
    float g[kBatch][kVec], x[kBatch][kVec], v[kBatch][kVec];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      if (row0 + j >= last) break;
      load8(grad_out + (row0 + j) * cols_out + c, g[j]);
      if (Act != kNoActivation) load8(h + (row0 + j) * cols_in + c, x[j]);
      if (Act == kSwiGLU) load8(h + (row0 + j) * cols_in + cols_out + c, v[j]);
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int64_t row = row0 + j;
      if (row >= last) break;
      if (row >= offsets[e]) {  // the next expert's rows begin (skipping empty experts)
        flush(e);
        while (row >= offsets[e]) ++e;
#pragma unroll
        for (int p = 0; p < kParts; ++p) load8(bias + e * cols_in + p * cols_out + c, b[p]);
      }
      float dx[kVec];
      if (Act == kSwiGLU) {
        float dv[kVec];
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          const float a = x[j][i] + b[0][i], s = sigmoid(a), gate = v[j][i] + b[1][i];
          dx[i] = g[j][i] * gate * s * (1.0f + a * (1.0f - s));
          dv[i] = g[j][i] * a * s;
          sum[0][i] += dx[i];
          sum[kParts - 1][i] += dv[i];
        }
        store8(grad_h + row * cols_in + cols_out + c, dv);
      } else {
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          dx[i] = Act == kGelu ? g[j][i] * gelu_grad(x[j][i] + b[0][i]) : g[j][i];
          sum[0][i] += dx[i];
        }
      }
      if (Act != kNoActivation) store8(grad_h + row * cols_in + c, dx);
    }
  }
  flush(e);
}

int column_blocks(int64_t cols_out) {
  return static_cast<int>(std::min<int64_t>((cols_out / kVec + kThreads - 1) / kThreads, 65535));
}

}  // namespace

void launch_expert_bias_act(const torch::Tensor& h, const torch::Tensor& bias, const torch::Tensor& offsets, int activation,
                            torch::Tensor& out) {
  const int64_t rows = h.size(0), cols_out = out.size(1);
  if (rows == 0 || cols_out == 0) return;
  const int experts = static_cast<int>(offsets.size(0));
  const dim3 grid(static_cast<unsigned>(rows), column_blocks(cols_out));
  auto stream = at::cuda::getCurrentCUDAStream();
  auto args = [&](auto kernel) {
    kernel<<<grid, kThreads, 0, stream>>>(h.data_ptr<c10::BFloat16>(), bias.data_ptr<float>(), offsets.data_ptr<int>(), experts,
                                          cols_out, out.data_ptr<c10::BFloat16>());
  };
  if (activation == kGelu) args(expert_bias_act_kernel<kGelu>);
  else if (activation == kSwiGLU) args(expert_bias_act_kernel<kSwiGLU>);
  else args(expert_bias_act_kernel<kNoActivation>);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_expert_bias_act_backward(const torch::Tensor& grad_out, const torch::Tensor& h, const torch::Tensor& bias,
                                     const torch::Tensor& offsets, int activation, torch::Tensor& grad_h,
                                     torch::Tensor& grad_bias) {
  const int64_t rows = h.size(0), cols_out = grad_out.size(1);
  if (rows == 0 || cols_out == 0) return;
  const int experts = static_cast<int>(offsets.size(0));
  const dim3 grid(static_cast<unsigned>((rows + kTileRows - 1) / kTileRows), column_blocks(cols_out));
  auto stream = at::cuda::getCurrentCUDAStream();
  auto args = [&](auto kernel) {
    kernel<<<grid, kThreads, 0, stream>>>(grad_out.data_ptr<c10::BFloat16>(), h.data_ptr<c10::BFloat16>(), bias.data_ptr<float>(),
                                          offsets.data_ptr<int>(), experts, cols_out, grad_h.data_ptr<c10::BFloat16>(),
                                          grad_bias.data_ptr<float>());
  };
  if (activation == kGelu) args(expert_bias_act_backward_kernel<kGelu>);
  else if (activation == kSwiGLU) args(expert_bias_act_backward_kernel<kSwiGLU>);
  else args(expert_bias_act_backward_kernel<kNoActivation>);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace moelab::kernels::cuda
