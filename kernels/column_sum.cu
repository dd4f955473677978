// Column sums of a row-major [M, N] matrix, bf16 or fp32, into fp32 [N]: the bias gradient
// of a Linear layer is its output gradient summed over the tokens. Two deterministic stages
// (fixed summation order, no atomics), N a multiple of 8:
//   stage 1: a block of 32 x 8 threads takes 256 columns (one 16-byte vector of 8 per thread)
//            and every row_groups-th group of 8 rows; the 8 thread rows' sums are added in
//            order in shared memory and written as the block's partial row. Traffic: read
//            M*N*s, write 4*N*row_groups bytes.
//   stage 2: sum_partial_rows adds the partial rows, 32 columns per block with 16 thread rows
//            striding over them (layer_norm.cu's gamma/beta gradients use it too).
// libtorch's bf16 sum over dim 0 of a tall gradient reaches about a third of the read
// bandwidth: it is strided across the reduced dimension.
#include <algorithm>

#include <ATen/cuda/CUDAContext.h>
#include <c10/util/BFloat16.h>
#include <torch/torch.h>

#include "kernels/column_sum.h"
#include "kernels/vector_io.cuh"

namespace moelab::kernels::cuda {
namespace {

constexpr int kColThreads = 32, kRowThreads = 8;
constexpr int kBlockCols = kColThreads * kVec;

template <typename T>
__global__ void column_partial_sums_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, int row_groups,
                                           float* __restrict__ partials) {
  __shared__ float sums[kRowThreads][kBlockCols];
  const int64_t first_col = static_cast<int64_t>(blockIdx.x) * kBlockCols;
  const int64_t c = first_col + threadIdx.x * kVec;
  float acc[kVec] = {};
  if (c < cols) {
#pragma unroll 4
    for (int64_t r = static_cast<int64_t>(blockIdx.y) * kRowThreads + threadIdx.y; r < rows;
         r += static_cast<int64_t>(row_groups) * kRowThreads) {
      float v[kVec];
      load8(x + r * cols + c, v);
#pragma unroll
      for (int i = 0; i < kVec; ++i) acc[i] += v[i];
    }
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) sums[threadIdx.y][threadIdx.x * kVec + i] = acc[i];
  __syncthreads();
  const int t = threadIdx.y * kColThreads + threadIdx.x;  // 256 threads, one column each
  if (first_col + t >= cols) return;
  float s = 0.0f;
#pragma unroll
  for (int w = 0; w < kRowThreads; ++w) s += sums[w][t];
  partials[static_cast<int64_t>(blockIdx.y) * cols + first_col + t] = s;
}

__global__ void sum_partial_rows_kernel(const float* __restrict__ partials, int groups, int64_t width,
                                        float* __restrict__ out) {
  __shared__ float sums[16][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  float s = 0.0f;
  if (c < width)
    for (int g = threadIdx.y; g < groups; g += 16) s += partials[static_cast<int64_t>(g) * width + c];
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y != 0 || c >= width) return;
  for (int r = 1; r < 16; ++r) s += sums[r][threadIdx.x];
  out[c] = s;
}

}  // namespace

void launch_sum_partial_rows(const torch::Tensor& partials, torch::Tensor& out) {
  const int64_t width = partials.size(1);
  if (width == 0) return;
  sum_partial_rows_kernel<<<static_cast<unsigned>((width + 31) / 32), dim3(32, 16), 0, at::cuda::getCurrentCUDAStream()>>>(
      partials.data_ptr<float>(), static_cast<int>(partials.size(0)), width, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_column_sum(const torch::Tensor& x, torch::Tensor& out) {
  const int64_t rows = x.size(0), cols = x.size(1);
  if (cols == 0) return;
  if (rows == 0) {
    out.zero_();
    return;
  }
  // About four blocks per SM in all, each thread summing at least 4 rows.
  const int64_t col_blocks = (cols + kBlockCols - 1) / kBlockCols;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t by_rows = (rows + 4 * kRowThreads - 1) / (4 * kRowThreads);
  const int row_groups = static_cast<int>(std::clamp<int64_t>(std::min(by_rows, 4 * sms / col_blocks), 1, 65535));
  torch::Tensor partials = torch::empty({row_groups, cols}, x.options().dtype(torch::kFloat32));
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(row_groups));
  auto stream = at::cuda::getCurrentCUDAStream();
  if (x.scalar_type() == torch::kBFloat16)
    column_partial_sums_kernel<<<grid, dim3(kColThreads, kRowThreads), 0, stream>>>(x.data_ptr<c10::BFloat16>(), rows, cols,
                                                                                   row_groups, partials.data_ptr<float>());
  else
    column_partial_sums_kernel<<<grid, dim3(kColThreads, kRowThreads), 0, stream>>>(x.data_ptr<float>(), rows, cols, row_groups,
                                                                                   partials.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_sum_partial_rows(partials, out);
}

}  // namespace moelab::kernels::cuda
