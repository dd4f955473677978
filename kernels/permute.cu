// Dispatch (permute) and combine (unpermute) for the packed expert buffer.
//   gather_rows:      dst[i] = src[index[i]]; a warp per row, 16-byte loads and stores.
//                     Traffic: 2 * M * d * bytes.
//   combine:          out[t] = sum_j gates[t, j] * y[row[t, j]], rows read in j order (no
//                     atomics: deterministic), fp32 accumulation, a warp per token. Traffic:
//                     (K + 1) * T * d * bytes.
//   combine_backward: per kept (t, j): grad_y[row] = gates[t, j] * grad_out[t] and
//                     grad_gates[t, j] = <y[row], grad_out[t]>, a warp per token; grad_out's
//                     rows lie grad_out_stride apart (0: one row broadcast over the tokens,
//                     a sum's gradient). Traffic: 3 * kept * d * bytes (2 when broadcast).
#include <algorithm>

#include <ATen/cuda/CUDAContext.h>
#include <c10/util/BFloat16.h>
#include <torch/types.h>

#include "kernels/permute.h"
#include "kernels/vector_io.cuh"

namespace moelab::kernels::cuda {
namespace {

// A warp per row (kRowsPerBlock rows a block): a block per row leaves 32 of 64 threads idle
// at d 256.
constexpr int kRowsPerBlock = 8;

__global__ void gather_rows_kernel(const uint4* __restrict__ src, const int64_t* __restrict__ index, uint4* __restrict__ dst,
                                   int64_t rows, int64_t vectors_per_row) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const uint4* from = src + index[row] * vectors_per_row;
  uint4* to = dst + row * vectors_per_row;
#pragma unroll 4
  for (int64_t v = threadIdx.x % 32; v < vectors_per_row; v += 32) to[v] = from[v];
}

__global__ void gather_rows_bytes_kernel(const char* __restrict__ src, const int64_t* __restrict__ index, char* __restrict__ dst,
                                         int64_t row_bytes) {
  const int64_t row = blockIdx.x;
  for (int64_t b = threadIdx.x; b < row_bytes; b += blockDim.x) dst[row * row_bytes + b] = src[index[row] * row_bytes + b];
}

// 16 bytes of T as floats: 4 floats or 8 bf16.
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  static constexpr int N = 4;
  __device__ static void load(const float* p, float* out) {
    float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  }
  __device__ static void store(float* p, const float* in) { *reinterpret_cast<float4*>(p) = make_float4(in[0], in[1], in[2], in[3]); }
};
template <>
struct Vec<c10::BFloat16> {
  static constexpr int N = 8;
  __device__ static void load(const c10::BFloat16* p, float* out) {
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    const c10::BFloat16* b = reinterpret_cast<const c10::BFloat16*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = static_cast<float>(b[i]);
  }
  __device__ static void store(c10::BFloat16* p, const float* in) {
    uint4 raw;
    c10::BFloat16* b = reinterpret_cast<c10::BFloat16*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) b[i] = c10::BFloat16(in[i]);
    *reinterpret_cast<uint4*>(p) = raw;
  }
};

template <typename T>
__global__ void combine_kernel(const T* __restrict__ y, const int64_t* __restrict__ rows, const float* __restrict__ gates,
                               T* __restrict__ out, int64_t tokens, int columns, int64_t dim) {
  constexpr int N = Vec<T>::N;
  const int64_t token = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (token >= tokens) return;
  for (int64_t c = (threadIdx.x % 32) * N; c < dim; c += 32 * N) {
    float acc[N] = {0.f};
    for (int j = 0; j < columns; ++j) {
      const int64_t row = rows[token * columns + j];
      if (row < 0) continue;
      const float g = gates[token * columns + j];
      float v[N];
      Vec<T>::load(y + row * dim + c, v);
#pragma unroll
      for (int i = 0; i < N; ++i) acc[i] += g * v[i];
    }
    Vec<T>::store(out + token * dim + c, acc);
  }
}

// A warp per token, kRowsPerBlock tokens per block, over the token's entries in turn (its
// grad_out row is re-read from L1): with a block per entry, the 8 * T mostly-unkept entries
// of expert choice at d 256 cost more in block launches than in data moved.
template <typename T>
__global__ void combine_backward_kernel(const T* __restrict__ y, const int64_t* __restrict__ rows, const float* __restrict__ gates,
                                        const T* __restrict__ grad_out, int64_t grad_out_stride, T* __restrict__ grad_y,
                                        float* __restrict__ grad_gates, int64_t tokens, int columns, int64_t dim) {
  constexpr int N = Vec<T>::N;
  const int64_t token = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (token >= tokens) return;
  for (int j = 0; j < columns; ++j) {
    const int64_t entry = token * columns + j, row = rows[entry];
    if (row < 0) {
      if (lane == 0) grad_gates[entry] = 0.f;
      continue;
    }
    const float g = gates[entry];
    float dot = 0.f;
    for (int64_t c = lane * N; c < dim; c += 32 * N) {
      float go[N], v[N], gy[N];
      Vec<T>::load(grad_out + token * grad_out_stride + c, go);
      Vec<T>::load(y + row * dim + c, v);
#pragma unroll
      for (int i = 0; i < N; ++i) {
        gy[i] = g * go[i];
        dot += v[i] * go[i];
      }
      Vec<T>::store(grad_y + row * dim + c, gy);
    }
    dot = warp_sum(dot);
    if (lane == 0) grad_gates[entry] = dot;
  }
}

// The packed layout from capacity slots: each block's first warp scans the kept counts
// (E <= 1024) into shared memory, then a thread per entry writes its row and, when
// kept, the token of that row; threads past the kept rows write token 0 there (those rows
// are gathered but never computed on). Traffic: 17 bytes read and 16 written per entry.
constexpr int kPackThreads = 256;
constexpr int kMaxPackExperts = 1024;

__global__ void packed_rows_kernel(const int64_t* __restrict__ expert_ids, const int64_t* __restrict__ slot,
                                   const int64_t* __restrict__ kept_counts, int experts, int64_t entries, int64_t rows,
                                   int columns, int64_t* __restrict__ row_of_entry, int64_t* __restrict__ token_index) {
  __shared__ int64_t start[kMaxPackExperts + 1];
  if (threadIdx.x < 32) {  // lane l sums its run of E / 32 experts; a warp scan places the runs
    const int lane = threadIdx.x, per_lane = (experts + 31) / 32;
    const int first = min(lane * per_lane, experts), last = min(first + per_lane, experts);
    int64_t local = 0;
    for (int e = first; e < last; ++e) local += kept_counts[e];
    int64_t inclusive = local;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const int64_t before = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += before;
    }
    int64_t run = inclusive - local;
    for (int e = first; e < last; ++e) {
      start[e] = run;
      run += kept_counts[e];
    }
    if (lane == 31) start[experts] = inclusive;
  }
  __syncthreads();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kPackThreads + threadIdx.x;
  if (i < entries) {
    const int64_t s = slot[i];
    const int64_t row = s >= 0 ? start[expert_ids[i]] + s : -1;
    row_of_entry[i] = row;
    if (row >= 0) token_index[row] = i / columns;
  }
  if (i >= start[experts] && i < rows) token_index[i] = 0;
}

unsigned blocks_for(int64_t rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

void launch_gather_rows(const torch::Tensor& src, const torch::Tensor& index, torch::Tensor& dst) {
  const int64_t rows = index.size(0);
  if (rows == 0) return;
  const int64_t row_bytes = src.size(1) * src.element_size();
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool aligned = row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(src.data_ptr()) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(dst.data_ptr()) % 16 == 0;
  if (aligned) {
    const int64_t vectors = row_bytes / 16;
    gather_rows_kernel<<<blocks_for(rows), 32 * kRowsPerBlock, 0, stream>>>(
        static_cast<const uint4*>(src.data_ptr()), index.data_ptr<int64_t>(), static_cast<uint4*>(dst.data_ptr()), rows, vectors);
  } else {
    gather_rows_bytes_kernel<<<rows, 256, 0, stream>>>(static_cast<const char*>(src.data_ptr()), index.data_ptr<int64_t>(),
                                                      static_cast<char*>(dst.data_ptr()), row_bytes);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_combine(const torch::Tensor& y, const torch::Tensor& rows, const torch::Tensor& gates, torch::Tensor& out) {
  const int64_t tokens = rows.size(0), dim = y.size(1);
  if (tokens == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int columns = static_cast<int>(rows.size(1));
  if (y.scalar_type() == torch::kBFloat16) {
    TORCH_CHECK(dim % 8 == 0, "combine: bf16 rows need d % 8 == 0");
    combine_kernel<c10::BFloat16><<<blocks_for(tokens), 32 * kRowsPerBlock, 0, stream>>>(
        y.data_ptr<c10::BFloat16>(), rows.data_ptr<int64_t>(), gates.data_ptr<float>(), out.data_ptr<c10::BFloat16>(), tokens, columns,
        dim);
  } else {
    TORCH_CHECK(y.scalar_type() == torch::kFloat32 && dim % 4 == 0, "combine: fp32 rows need d % 4 == 0 (or bf16)");
    combine_kernel<float><<<blocks_for(tokens), 32 * kRowsPerBlock, 0, stream>>>(
        y.data_ptr<float>(), rows.data_ptr<int64_t>(), gates.data_ptr<float>(), out.data_ptr<float>(), tokens, columns, dim);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_combine_backward(const torch::Tensor& y, const torch::Tensor& rows, const torch::Tensor& gates,
                             const torch::Tensor& grad_out, int64_t grad_out_stride, torch::Tensor& grad_y, torch::Tensor& grad_gates) {
  const int64_t tokens = rows.size(0), dim = y.size(1);
  if (rows.numel() == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int columns = static_cast<int>(rows.size(1));
  const unsigned blocks = blocks_for(tokens);
  if (y.scalar_type() == torch::kBFloat16) {
    combine_backward_kernel<c10::BFloat16><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(
        y.data_ptr<c10::BFloat16>(), rows.data_ptr<int64_t>(), gates.data_ptr<float>(), grad_out.data_ptr<c10::BFloat16>(),
        grad_out_stride, grad_y.data_ptr<c10::BFloat16>(), grad_gates.data_ptr<float>(), tokens, columns, dim);
  } else {
    combine_backward_kernel<float><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(
        y.data_ptr<float>(), rows.data_ptr<int64_t>(), gates.data_ptr<float>(), grad_out.data_ptr<float>(), grad_out_stride,
        grad_y.data_ptr<float>(), grad_gates.data_ptr<float>(), tokens, columns, dim);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

PackedRows packed_rows(const torch::Tensor& expert_ids, const torch::Tensor& slot, const torch::Tensor& kept_counts, int64_t rows,
                       int64_t columns) {
  const int64_t entries = slot.numel();
  PackedRows out{torch::empty_like(slot), torch::empty({rows}, slot.options())};
  const int64_t threads = std::max(entries, rows);
  if (threads == 0) return out;
  TORCH_CHECK(kept_counts.size(0) <= kMaxPackExperts, "packed_rows: E <= 1024");
  packed_rows_kernel<<<static_cast<unsigned>((threads + kPackThreads - 1) / kPackThreads), kPackThreads, 0,
                       at::cuda::getCurrentCUDAStream()>>>(
      expert_ids.contiguous().data_ptr<int64_t>(), slot.contiguous().data_ptr<int64_t>(), kept_counts.contiguous().data_ptr<int64_t>(),
      static_cast<int>(kept_counts.size(0)), entries, rows, static_cast<int>(columns), out.row_of_entry.data_ptr<int64_t>(),
      out.token_index.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace moelab::kernels::cuda
