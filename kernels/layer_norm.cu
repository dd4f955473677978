// LayerNorm over the last dimension, fused, with fp32 statistics whatever the storage types.
// Under bf16 autocast the residual stream is fp32 and the next GEMM wants bf16: the forward
// reads fp32 and writes bf16 (libtorch would run an fp32 LayerNorm, then a cast), and the
// backward takes the bf16 output gradient and writes the fp32 input gradient. Optionally the
// residual add before a pre-LN block's LayerNorm is fused in: s = x + branch is written
// (fp32) and normalised, and the backward adds the stream's own gradient ds to the
// LayerNorm's and writes the sum twice, for x (fp32) and for the branch (its dtype): the add,
// the branch's cast to fp32 and, backward, the gradient add and cast back are gone.
//   forward:  one warp per row, the row in registers (N <= 32 * 8 * kMaxChunks, N % 8 == 0):
//             mean, then the variance about it (a second pass over registers, no
//             cancellation); y = (x - mean) * rstd * gamma + beta. Traffic: read M*N*sx
//             (+ M*N*sb), write M*N*sy (+ M*N*sx) + 8*M bytes.
//   backward: one warp per row again, dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//             (+ ds) with g = dy * gamma. Each warp keeps its columns' sums of dy * xhat and dy in
//             registers over the rows it visits; a block adds its warps' sums in shared memory
//             (in warp order) and writes one partial row, and column_sum.cu's second stage adds the partial rows
//             (deterministic, no atomics; libtorch's own gamma/beta reduction is a separate
//             pass over the rows, the largest part of its backward at d 256). Traffic: read M*N*(sx + sy) (+ M*N*sx)
//             + 8*M, write M*N*sx (+ M*N*sb), plus 2*N*4 bytes per block twice.
#include <algorithm>
#include <type_traits>

#include <ATen/cuda/CUDAContext.h>
#include <c10/util/BFloat16.h>
#include <torch/torch.h>

#include "kernels/column_sum.h"
#include "kernels/layer_norm.h"
#include "kernels/vector_io.cuh"

namespace moelab::kernels::cuda {
namespace {

constexpr int kWarps = 8;       // rows in flight per block
constexpr int kMaxChunks = 4;   // 256-column chunks a lane's registers hold: N <= 1024
constexpr int kChunkCols = 32 * kVec;

// branch and sum_out: both null (plain LayerNorm) or both set (x + branch is normalised and
// written to sum_out).
template <typename TX, typename TB, typename TY, int Chunks>
__global__ void layer_norm_forward_kernel(const TX* __restrict__ x, const TB* __restrict__ branch,
                                          const float* __restrict__ gamma, const float* __restrict__ beta, float eps,
                                          int64_t rows, int cols, TX* __restrict__ sum_out, TY* __restrict__ y,
                                          float* __restrict__ mean_out, float* __restrict__ rstd_out) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= rows) return;
  float v[Chunks][kVec];
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < Chunks; ++j) {
    const int c = j * kChunkCols + lane * kVec;
    if (c >= cols) break;
    load8(x + row * cols + c, v[j]);
    if (branch != nullptr) {
      float b[kVec];
      load8(branch + row * cols + c, b);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        v[j][i] += b[i];
        if constexpr (std::is_same_v<TX, c10::BFloat16>) v[j][i] = static_cast<float>(c10::BFloat16(v[j][i]));  // as stored
      }
      store8(sum_out + row * cols + c, v[j]);
    }
#pragma unroll
    for (int i = 0; i < kVec; ++i) sum += v[j][i];
  }
  const float mean = warp_sum(sum) / cols;
  float squares = 0.0f;
#pragma unroll
  for (int j = 0; j < Chunks; ++j) {
    if (j * kChunkCols + lane * kVec >= cols) break;
#pragma unroll
    for (int i = 0; i < kVec; ++i) squares += (v[j][i] - mean) * (v[j][i] - mean);
  }
  const float rstd = rsqrtf(warp_sum(squares) / cols + eps);
#pragma unroll
  for (int j = 0; j < Chunks; ++j) {
    const int c = j * kChunkCols + lane * kVec;
    if (c >= cols) break;
    float g[kVec], b[kVec], out[kVec];
    load8(gamma + c, g);
    load8(beta + c, b);
#pragma unroll
    for (int i = 0; i < kVec; ++i) out[i] = (v[j][i] - mean) * rstd * g[i] + b[i];
    store8(y + row * cols + c, out);
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// partials: [gridDim.x, 2, cols] (dgamma's then dbeta's sums of the block's rows). ds (the
// gradient the residual stream brings, added to dx) and dbranch (a copy of dx in the
// branch's dtype) may be null.
template <typename TX, typename TY, typename TB, int Chunks>
__global__ void layer_norm_backward_kernel(const TY* __restrict__ dy, const TX* __restrict__ x, const float* __restrict__ gamma,
                                           const float* __restrict__ mean, const float* __restrict__ rstd,
                                           const TX* __restrict__ ds, int64_t rows, int cols, TX* __restrict__ dx,
                                           TB* __restrict__ dbranch, float* __restrict__ partials) {
  extern __shared__ float block_sums[];  // [2][cols]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float g[Chunks][kVec], dgamma[Chunks][kVec] = {}, dbeta[Chunks][kVec] = {};
#pragma unroll
  for (int j = 0; j < Chunks; ++j) {
    const int c = j * kChunkCols + lane * kVec;
    if (c < cols) load8(gamma + c, g[j]);
  }
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp; row < rows;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {
    const float mu = mean[row], rs = rstd[row];
    float d[Chunks][kVec], xhat[Chunks][kVec];
    float sum_g = 0.0f, sum_gx = 0.0f;
#pragma unroll
    for (int j = 0; j < Chunks; ++j) {
      const int c = j * kChunkCols + lane * kVec;
      if (c >= cols) break;
      load8(dy + row * cols + c, d[j]);
      load8(x + row * cols + c, xhat[j]);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        xhat[j][i] = (xhat[j][i] - mu) * rs;
        dgamma[j][i] += d[j][i] * xhat[j][i];
        dbeta[j][i] += d[j][i];
        d[j][i] *= g[j][i];
        sum_g += d[j][i];
        sum_gx += d[j][i] * xhat[j][i];
      }
    }
    const float mean_g = warp_sum(sum_g) / cols, mean_gx = warp_sum(sum_gx) / cols;
#pragma unroll
    for (int j = 0; j < Chunks; ++j) {
      const int c = j * kChunkCols + lane * kVec;
      if (c >= cols) break;
      float out[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) out[i] = rs * (d[j][i] - mean_g - xhat[j][i] * mean_gx);
      if (ds != nullptr) {
        float stream[kVec];
        load8(ds + row * cols + c, stream);
#pragma unroll
        for (int i = 0; i < kVec; ++i) out[i] += stream[i];
      }
      store8(dx + row * cols + c, out);
      if (dbranch != nullptr) store8(dbranch + row * cols + c, out);
    }
  }
  // The warps add their sums into shared memory one after another, in warp order: the same
  // inputs give the same bits.
  for (int w = 0; w < kWarps; ++w) {
    if (warp == w) {
#pragma unroll
      for (int j = 0; j < Chunks; ++j) {
        const int c = j * kChunkCols + lane * kVec;
        if (c >= cols) break;
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          block_sums[c + i] = w == 0 ? dgamma[j][i] : block_sums[c + i] + dgamma[j][i];
          block_sums[cols + c + i] = w == 0 ? dbeta[j][i] : block_sums[cols + c + i] + dbeta[j][i];
        }
      }
    }
    __syncthreads();
  }
  for (int c = threadIdx.x; c < 2 * cols; c += blockDim.x)
    partials[static_cast<int64_t>(blockIdx.x) * 2 * cols + c] = block_sums[c];
}

int chunks_for(int cols) { return (cols + kChunkCols - 1) / kChunkCols; }

// Calls fn with null pointers of the three tensors' types (fp32 or bf16) and the chunk
// count as a constant.
template <typename Fn>
void dispatch_types(torch::ScalarType a, torch::ScalarType b, torch::ScalarType c, int chunks, Fn&& fn) {
  auto tag = [](torch::ScalarType t, auto&& next) {
    if (t == torch::kBFloat16) next(static_cast<c10::BFloat16*>(nullptr));
    else next(static_cast<float*>(nullptr));
  };
  tag(a, [&](auto a_tag) {
    tag(b, [&](auto b_tag) {
      tag(c, [&](auto c_tag) {
        if (chunks == 1) fn(a_tag, b_tag, c_tag, std::integral_constant<int, 1>());
        else if (chunks == 2) fn(a_tag, b_tag, c_tag, std::integral_constant<int, 2>());
        else fn(a_tag, b_tag, c_tag, std::integral_constant<int, kMaxChunks>());
      });
    });
  });
}

template <typename T>
T* data_or_null(const torch::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}  // namespace

bool layer_norm_supported(int64_t cols) { return cols % kVec == 0 && cols <= kMaxChunks * kChunkCols; }

void launch_layer_norm(const torch::Tensor& x, const torch::Tensor& branch, const torch::Tensor& gamma,
                       const torch::Tensor& beta, double eps, torch::Tensor& sum, torch::Tensor& y, torch::Tensor& mean,
                       torch::Tensor& rstd) {
  const int64_t rows = x.size(0);
  const int cols = static_cast<int>(x.size(1));
  if (rows == 0) return;
  const unsigned blocks = static_cast<unsigned>((rows + kWarps - 1) / kWarps);
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto branch_type = branch.defined() ? branch.scalar_type() : x.scalar_type();
  dispatch_types(x.scalar_type(), branch_type, y.scalar_type(), chunks_for(cols), [&](auto x_tag, auto b_tag, auto y_tag, auto chunks) {
    using TX = std::remove_pointer_t<decltype(x_tag)>;
    using TB = std::remove_pointer_t<decltype(b_tag)>;
    using TY = std::remove_pointer_t<decltype(y_tag)>;
    layer_norm_forward_kernel<TX, TB, TY, decltype(chunks)::value><<<blocks, kWarps * 32, 0, stream>>>(
        x.data_ptr<TX>(), data_or_null<TB>(branch), gamma.data_ptr<float>(), beta.data_ptr<float>(), static_cast<float>(eps),
        rows, cols, data_or_null<TX>(sum), y.data_ptr<TY>(), mean.data_ptr<float>(), rstd.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_layer_norm_backward(const torch::Tensor& dy, const torch::Tensor& x, const torch::Tensor& gamma,
                                const torch::Tensor& mean, const torch::Tensor& rstd, const torch::Tensor& ds,
                                torch::Tensor& dx, torch::Tensor& dbranch, torch::Tensor& param_grads) {
  const int64_t rows = x.size(0);
  const int cols = static_cast<int>(x.size(1));
  if (rows == 0) {
    param_grads.zero_();
    return;
  }
  // Two blocks per SM: each warp visits rows / (blocks * kWarps) rows, and the partial rows
  // stay few enough for the second kernel to add in a few microseconds.
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int blocks = static_cast<int>(std::min<int64_t>(2 * sms, (rows + kWarps - 1) / kWarps));
  torch::Tensor partials = torch::empty({blocks, 2, cols}, x.options().dtype(torch::kFloat32));
  const size_t shared = 2 * static_cast<size_t>(cols) * sizeof(float);
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto branch_type = dbranch.defined() ? dbranch.scalar_type() : x.scalar_type();
  dispatch_types(x.scalar_type(), dy.scalar_type(), branch_type, chunks_for(cols), [&](auto x_tag, auto y_tag, auto b_tag, auto chunks) {
    using TX = std::remove_pointer_t<decltype(x_tag)>;
    using TY = std::remove_pointer_t<decltype(y_tag)>;
    using TB = std::remove_pointer_t<decltype(b_tag)>;
    layer_norm_backward_kernel<TX, TY, TB, decltype(chunks)::value><<<blocks, kWarps * 32, shared, stream>>>(
        dy.data_ptr<TY>(), x.data_ptr<TX>(), gamma.data_ptr<float>(), mean.data_ptr<float>(), rstd.data_ptr<float>(),
        data_or_null<TX>(ds), rows, cols, dx.data_ptr<TX>(), data_or_null<TB>(dbranch), partials.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  torch::Tensor flat = param_grads.view({2 * cols});
  launch_sum_partial_rows(partials.view({blocks, 2 * cols}), flat);
}

}  // namespace moelab::kernels::cuda
