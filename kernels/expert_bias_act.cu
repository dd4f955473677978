// The expert FFN's bias and activation over the grouped GEMM's output, fused: rows are packed
// expert-major, so row r belongs to the expert e with offsets[e-1] <= r < offsets[e] (a
// binary search over E <= 512 offsets); rows at or past offsets[E-1] are padding and are
// skipped. bf16 in and out, fp32 arithmetic; N a multiple of 8 (16-byte vectors).
//   forward:  out[r, c] = act(h[r, c] + bias[e, c]); SwiGLU: silu(a + ba) * (b + bb) over the
//             two column halves. Traffic: read M*N + E*N, write M*N_out (bf16).
//   backward: grad_h[r, c] = grad_out[r, c] * act'(h[r, c] + bias[e, c]) (written, as the
//             GEMM's gradient input) and grad_bias[e, c] = sum over e's rows of grad_h[r, c].
//             A block of 8 warps takes a tile of kTileRows rows x 256 columns; warp w takes
//             the tile's rows w, w + 8, ... with kBatch rows' loads in flight, kept packed.
//             Rows are sorted by expert, so a tile mostly holds one expert: then the warps'
//             fp32 column sums meet in shared memory and one atomic per column goes to
//             grad_bias (M / kTileRows per column); a tile that crosses experts adds each
//             warp's sums per expert instead. Traffic: read 2*M*N + E*N, write M*N (bf16).
//             Without an activation grad_h is grad_out itself: the kernel only reads
//             grad_out and sums the bias gradients.
// Both are memory-bound at full occupancy; the GELU backward also does ~25 fp32 operations
// per element, which a warp only overlaps with its loads when enough other warps are
// resident: a thread per 32 rows with 8 floats per row in registers runs at a quarter of
// the SM's warps and leaves the arithmetic exposed.
#include <algorithm>

#include <ATen/cuda/CUDAContext.h>
#include <c10/util/BFloat16.h>
#include <torch/types.h>

#include "kernels/expert_bias_act.h"
#include "kernels/gelu.cuh"
#include "kernels/vector_io.cuh"

namespace moelab::kernels::cuda {
namespace {

constexpr int kThreads = 256;     // forward: a thread per 8-column vector of a row
constexpr int kColVectors = 32;   // backward: a warp spans 32 vectors (256 columns) of one row
constexpr int kRowWarps = 8;      // backward: warps per block, each over every 8th row of the tile
constexpr int kTileRows = 64;     // backward rows per block
// Backward rows per warp whose loads are in flight together: 2 keeps the activations' registers
// low enough for full occupancy; without an activation a row is one load, and a warp takes
// all 8 of its rows at once.
template <int Act>
constexpr int kBatch = Act == kNoActivation ? kTileRows / kRowWarps : 2;

__device__ int expert_of_row(const int* offsets, int experts, int64_t row) {
  int lo = 0, hi = experts - 1;  // first e with offsets[e] > row
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (offsets[mid] > row) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

__device__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <int Act>
__global__ void expert_bias_act_kernel(const c10::BFloat16* __restrict__ h, const float* __restrict__ bias,
                                       const int* __restrict__ offsets, int experts, int64_t cols_out,
                                       c10::BFloat16* __restrict__ out) {
  const int64_t vectors_per_row = cols_out / kVec;
  const int64_t vector = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  // A 32-bit division where the index fits: the 64-bit one is a long software routine.
  const int64_t row = vector < (int64_t{1} << 32) && vectors_per_row < (int64_t{1} << 32)
                          ? static_cast<uint32_t>(vector) / static_cast<uint32_t>(vectors_per_row)
                          : vector / vectors_per_row;
  if (row >= offsets[experts - 1]) return;
  const int e = expert_of_row(offsets, experts, row);
  const int64_t c = (vector - row * vectors_per_row) * kVec;
  const int64_t cols_in = Act == kSwiGLU ? 2 * cols_out : cols_out;
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

template <int Act>
__global__ void __launch_bounds__(kColVectors * kRowWarps)
    expert_bias_act_backward_kernel(const c10::BFloat16* __restrict__ grad_out, const c10::BFloat16* __restrict__ h,
                                    const float* __restrict__ bias, const int* __restrict__ offsets, int experts,
                                    int64_t cols_out, c10::BFloat16* __restrict__ grad_h, float* __restrict__ grad_bias) {
  constexpr int kParts = Act == kSwiGLU ? 2 : 1;
  __shared__ float warp_sums[kRowWarps][kParts][kVec][kColVectors];
  const int lane = threadIdx.x % kColVectors, warp = threadIdx.x / kColVectors;
  const int64_t total = offsets[experts - 1];
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kTileRows;
  if (first >= total) return;  // the whole block: no thread reaches the barrier below
  const int64_t last = min(first + kTileRows, total);
  const int64_t c = (static_cast<int64_t>(blockIdx.y) * kColVectors + lane) * kVec;
  const bool active = c < cols_out;
  const int64_t cols_in = Act == kSwiGLU ? 2 * cols_out : cols_out;
  int e = expert_of_row(offsets, experts, first);
  const bool one_expert = offsets[e] >= last;
  float sum[kParts][kVec] = {};
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
  if (active) {
#pragma unroll
    for (int p = 0; p < kParts; ++p) load8(bias + e * cols_in + p * cols_out + c, b[p]);
    constexpr int kRows = kBatch<Act>;
    for (int64_t row0 = first + warp; row0 < last; row0 += kRowWarps * kRows) {
      uint4 g[kRows], x[kRows], v[kRows];
#pragma unroll
      for (int j = 0; j < kRows; ++j) {
        const int64_t row = row0 + j * kRowWarps;
        if (row >= last) break;
        g[j] = load_packed8(grad_out + row * cols_out + c);
        if (Act != kNoActivation) x[j] = load_packed8(h + row * cols_in + c);
        if (Act == kSwiGLU) v[j] = load_packed8(h + row * cols_in + cols_out + c);
      }
#pragma unroll
      for (int j = 0; j < kRows; ++j) {
        const int64_t row = row0 + j * kRowWarps;
        if (row >= last) break;
        if (row >= offsets[e]) {  // the next expert's rows begin (skipping empty experts)
          flush(e);
          while (row >= offsets[e]) ++e;
#pragma unroll
          for (int p = 0; p < kParts; ++p) load8(bias + e * cols_in + p * cols_out + c, b[p]);
        }
        float dy[kVec], dx[kVec];
        unpack8(g[j], dy);
        if (Act == kNoActivation) {
#pragma unroll
          for (int i = 0; i < kVec; ++i) sum[0][i] += dy[i];
          continue;
        }
        float a[kVec];
        unpack8(x[j], a);
        if (Act == kSwiGLU) {
          float gate[kVec], dv[kVec];
          unpack8(v[j], gate);
#pragma unroll
          for (int i = 0; i < kVec; ++i) {
            const float pre = a[i] + b[0][i], s = sigmoid(pre), up = gate[i] + b[1][i];
            dx[i] = dy[i] * up * s * (1.0f + pre * (1.0f - s));
            dv[i] = dy[i] * pre * s;
            sum[0][i] += dx[i];
            sum[1][i] += dv[i];
          }
          store8(grad_h + row * cols_in + cols_out + c, dv);
        } else {
#pragma unroll
          for (int i = 0; i < kVec; ++i) {
            dx[i] = dy[i] * gelu_grad(a[i] + b[0][i]);
            sum[0][i] += dx[i];
          }
        }
        store8(grad_h + row * cols_in + c, dx);
      }
    }
  }
  if (!one_expert) {
    if (active) flush(e);
    return;
  }
#pragma unroll
  for (int p = 0; p < kParts; ++p)
#pragma unroll
    for (int i = 0; i < kVec; ++i) warp_sums[warp][p][i][lane] = sum[p][i];
  __syncthreads();
  if (warp != 0 || !active) return;
#pragma unroll
  for (int p = 0; p < kParts; ++p)
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      float total_sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kRowWarps; ++w) total_sum += warp_sums[w][p][i][lane];
      atomicAdd(grad_bias + e * cols_in + p * cols_out + c + i, total_sum);
    }
}

int column_blocks(int64_t cols_out) {
  return static_cast<int>(std::min<int64_t>((cols_out / kVec + kColVectors - 1) / kColVectors, 65535));
}

}  // namespace

void launch_expert_bias_act(const torch::Tensor& h, const torch::Tensor& bias, const torch::Tensor& offsets, int activation,
                            torch::Tensor& out) {
  const int64_t rows = h.size(0), cols_out = out.size(1);
  if (rows == 0 || cols_out == 0) return;
  const int experts = static_cast<int>(offsets.size(0));
  const int64_t blocks = (rows * (cols_out / kVec) + kThreads - 1) / kThreads;
  auto stream = at::cuda::getCurrentCUDAStream();
  auto args = [&](auto kernel) {
    kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(h.data_ptr<c10::BFloat16>(), bias.data_ptr<float>(), offsets.data_ptr<int>(), experts,
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
    kernel<<<grid, kColVectors * kRowWarps, 0, stream>>>(grad_out.data_ptr<c10::BFloat16>(), h.data_ptr<c10::BFloat16>(), bias.data_ptr<float>(),
                                          offsets.data_ptr<int>(), experts, cols_out, grad_h.data_ptr<c10::BFloat16>(),
                                          grad_bias.data_ptr<float>());
  };
  if (activation == kGelu) args(expert_bias_act_backward_kernel<kGelu>);
  else if (activation == kSwiGLU) args(expert_bias_act_backward_kernel<kSwiGLU>);
  else args(expert_bias_act_backward_kernel<kNoActivation>);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace moelab::kernels::cuda
