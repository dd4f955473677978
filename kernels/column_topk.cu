// Expert choice's selection: in each column e of scores [T, E], the C largest entries (equal
// values: the lower token first), marked in a bool [T, E] mask. A block per column:
//   1. keys: each fp32 score as a uint32 whose unsigned order is the float order, cached in
//      shared memory when the column fits (T <= 11264), else re-read from L2 each pass;
//   2. radix select, 8 bits a pass from the top: a 256-bin histogram of the keys that share
//      the prefix found so far (warp-aggregated shared atomics: scores concentrate in a few
//      exponent bins), then one warp scans the bins from the top for the digit where the
//      C-th largest key lies. After 4 passes the prefix is that key, K, and `remaining` says
//      how many entries equal to K belong in the top C;
//   3. marking, in token order: key > K, or key == K among the first `remaining` such
//      tokens (ranked by warp ballots and per-warp counts).
// Work: 5 passes over T keys per column; traffic: T*E scores read (once when cached), T*E
// flags written. libtorch would sort every column of [E, T] in full to keep its top C.
#include <ATen/cuda/CUDAContext.h>
#include <torch/types.h>

#include "kernels/column_topk.h"

namespace moelab::kernels::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kCachedTokens = 11264;  // 44 KB of keys: with the static arrays, within the 48 KB of a block that does not opt in

__device__ uint32_t order_key(float v) {
  const uint32_t bits = __float_as_uint(v);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__global__ void __launch_bounds__(kThreads)
    column_topk_kernel(const float* __restrict__ scores, int tokens, int columns, int take, bool* __restrict__ selected) {
  extern __shared__ uint32_t cached[];
  __shared__ int histogram[256];
  __shared__ int warp_counts[kWarps];
  __shared__ uint32_t found_prefix;
  __shared__ int found_remaining;
  const int e = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const bool use_cache = tokens <= kCachedTokens;
  if (use_cache) {
    for (int t = threadIdx.x; t < tokens; t += kThreads) cached[t] = order_key(scores[static_cast<int64_t>(t) * columns + e]);
  }
  auto key_at = [&](int t) { return use_cache ? cached[t] : order_key(scores[static_cast<int64_t>(t) * columns + e]); };

  uint32_t prefix = 0, prefix_mask = 0;
  int remaining = take;  // entries sharing the prefix that still belong in the top C
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += kThreads) histogram[i] = 0;
    __syncthreads();
    for (int base = 0; base < tokens; base += kThreads) {  // whole warps iterate: __match_any_sync below
      const int t = base + threadIdx.x;
      int bin = 256;  // no bin
      if (t < tokens) {
        const uint32_t key = key_at(t);
        if ((key & prefix_mask) == prefix) bin = static_cast<int>((key >> shift) & 255u);
      }
      const unsigned peers = __match_any_sync(0xffffffffu, bin);
      if (bin < 256 && lane == __ffs(peers) - 1) atomicAdd(&histogram[bin], __popc(peers));
    }
    __syncthreads();
    if (warp == 0) {
      // Lane l holds the bins 255 - 8l down to 248 - 8l; an inclusive scan over lanes counts
      // the keys at or above each lane's lowest bin.
      int count[8], lane_total = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) lane_total += count[i] = histogram[255 - 8 * lane - i];
      int inclusive = lane_total;
#pragma unroll
      for (int offset = 1; offset < 32; offset *= 2) {
        const int before = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += before;
      }
      const int above = inclusive - lane_total;
      if (above < remaining && remaining <= inclusive) {  // exactly one lane: 1 <= remaining <= matching keys
        int i = 0, higher = above;
        while (i < 7 && higher + count[i] < remaining) higher += count[i++];
        found_prefix = prefix | (static_cast<uint32_t>(255 - 8 * lane - i) << shift);
        found_remaining = remaining - higher;
      }
    }
    __syncthreads();
    prefix = found_prefix;
    remaining = found_remaining;
    prefix_mask |= 255u << shift;
  }

  int equal_before = 0;  // tokens with key == K in the chunks already marked
  for (int base = 0; base < tokens; base += kThreads) {
    const int t = base + threadIdx.x;
    const uint32_t key = t < tokens ? key_at(t) : 0u;
    const bool equal = t < tokens && key == prefix;
    const unsigned ballot = __ballot_sync(0xffffffffu, equal);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int rank = equal_before + __popc(ballot & ((1u << lane) - 1u)), chunk_equal = 0;
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) rank += warp_counts[w];
      chunk_equal += warp_counts[w];
    }
    if (t < tokens) selected[static_cast<int64_t>(t) * columns + e] = key > prefix || (equal && rank < remaining);
    equal_before += chunk_equal;
    __syncthreads();  // warp_counts is rewritten by the next chunk
  }
}

}  // namespace

torch::Tensor column_topk_mask(const torch::Tensor& scores_in, int64_t take) {
  torch::Tensor scores = scores_in.detach().to(torch::kFloat32).contiguous();
  const int64_t tokens = scores.size(0), columns = scores.size(1);
  TORCH_CHECK(take >= 0 && take <= tokens, "column_topk_mask: take must be in [0, T]");
  TORCH_CHECK(tokens < (int64_t{1} << 31), "column_topk_mask: T < 2^31");
  if (take == 0 || columns == 0) return torch::zeros(scores.sizes(), scores.options().dtype(torch::kBool));
  if (take == tokens) return torch::ones(scores.sizes(), scores.options().dtype(torch::kBool));
  torch::Tensor selected = torch::empty(scores.sizes(), scores.options().dtype(torch::kBool));
  const size_t cache_bytes = tokens <= kCachedTokens ? static_cast<size_t>(tokens) * sizeof(uint32_t) : 0;
  column_topk_kernel<<<static_cast<unsigned>(columns), kThreads, cache_bytes, at::cuda::getCurrentCUDAStream()>>>(
      scores.data_ptr<float>(), static_cast<int>(tokens), static_cast<int>(columns), static_cast<int>(take),
      selected.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return selected;
}

}  // namespace moelab::kernels::cuda
