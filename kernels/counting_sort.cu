// Stable counting sort by small integer keys (routing: expert ids plus one "dropped" bucket),
// deterministic, in three steps over chunks of kChunk entries:
//   1. chunk_histogram: a block counts its chunk's keys in shared memory and writes them
//      bucket-major, counts[b * chunks + c];
//   2. one inclusive scan of that array (cub, through at::cumsum): entry (b, c) minus its own
//      count is where chunk c's entries of bucket b start in the sorted order (every entry of
//      a lower bucket, then bucket b's entries of earlier chunks);
//   3. chunk_rank: each warp of a chunk takes 32 consecutive entries; __match_any_sync finds
//      the lanes holding the same key, so a lane's rank among them is the popcount of those
//      below it; the warps' per-bucket counts are added in warp order in shared memory. The
//      entry's sorted position is its chunk's start for the bucket, plus the earlier warps'
//      and lanes' entries of that bucket; the same pass writes the inverse permutation and
//      the entry's rank within its key (its position less the bucket's start).
// Traffic: the keys read twice (8 bytes each), positions written once, 4 * buckets * chunks
// bytes of counts. The one-hot running count it replaces on CUDA (kernels/expert_positions.cpp,
// still the CPU reference) ran about 11 kernels over buckets x N counts.
#include <ATen/cuda/CUDAContext.h>
#include <torch/torch.h>

#include "kernels/cuda_ops.h"

namespace moelab::kernels::cuda {
namespace {

constexpr int kChunk = 256;  // entries per block: 8 warps of 32
constexpr int kWarps = kChunk / 32;
constexpr int kMaxBuckets = 1024;

__global__ void chunk_histogram_kernel(const int64_t* __restrict__ keys, int64_t n, int buckets, int chunks,
                                       int* __restrict__ chunk_counts) {
  extern __shared__ int histogram[];  // [buckets]
  for (int b = threadIdx.x; b < buckets; b += blockDim.x) histogram[b] = 0;
  __syncthreads();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kChunk + threadIdx.x;
  if (i < n) atomicAdd(&histogram[keys[i]], 1);  // integer counts: the order of the adds does not matter
  __syncthreads();
  for (int b = threadIdx.x; b < buckets; b += blockDim.x) chunk_counts[static_cast<int64_t>(b) * chunks + blockIdx.x] = histogram[b];
}

__global__ void chunk_rank_kernel(const int64_t* __restrict__ keys, int64_t n, int buckets, int chunks,
                                  const int* __restrict__ chunk_counts, const int* __restrict__ scanned,
                                  int64_t* __restrict__ position, int64_t* __restrict__ order,
                                  int64_t* __restrict__ within_key, int64_t* __restrict__ counts) {
  extern __shared__ int warp_counts[];  // [kWarps][buckets]: then each warp's start within the chunk
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int j = threadIdx.x; j < kWarps * buckets; j += blockDim.x) warp_counts[j] = 0;
  __syncthreads();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kChunk + threadIdx.x;
  const int64_t key = i < n ? keys[i] : -1;
  const unsigned peers = __match_any_sync(0xffffffffu, key);
  const int lane_rank = __popc(peers & ((1u << lane) - 1u));
  if (key >= 0 && lane == __ffs(peers) - 1) warp_counts[warp * buckets + key] = __popc(peers);
  __syncthreads();
  for (int b = threadIdx.x; b < buckets; b += blockDim.x) {
    int run = 0;
    for (int w = 0; w < kWarps; ++w) {
      const int count = warp_counts[w * buckets + b];
      warp_counts[w * buckets + b] = run;
      run += count;
    }
  }
  __syncthreads();
  if (key >= 0) {
    const int64_t slot = key * chunks + blockIdx.x;
    const int64_t place = static_cast<int64_t>(scanned[slot] - chunk_counts[slot]) + warp_counts[warp * buckets + key] + lane_rank;
    const int64_t key_start = key > 0 ? scanned[(key - 1) * chunks + chunks - 1] : 0;
    position[i] = place;
    order[place] = i;
    within_key[i] = place - key_start;
  }
  if (blockIdx.x == 0)
    for (int b = threadIdx.x; b < buckets; b += blockDim.x) {
      const int end = scanned[static_cast<int64_t>(b) * chunks + chunks - 1];
      counts[b] = end - (b > 0 ? scanned[static_cast<int64_t>(b - 1) * chunks + chunks - 1] : 0);
    }
}

}  // namespace

bool counting_sort_supported(int64_t n, int64_t buckets) {
  return buckets <= kMaxBuckets && n * buckets < (int64_t{1} << 31);
}

KeySort stable_sort_by_key(const torch::Tensor& keys, int64_t buckets) {
  const int64_t n = keys.size(0);
  torch::Tensor input = keys.contiguous();
  KeySort out{torch::empty_like(input), torch::empty({buckets}, input.options()), torch::empty_like(input),
              torch::empty_like(input)};
  if (n == 0) {
    out.counts.zero_();
    return out;
  }
  const int chunks = static_cast<int>((n + kChunk - 1) / kChunk);
  const int b = static_cast<int>(buckets);
  torch::Tensor chunk_counts = torch::empty({buckets * chunks}, input.options().dtype(torch::kInt32));
  auto stream = at::cuda::getCurrentCUDAStream();
  chunk_histogram_kernel<<<chunks, kChunk, b * sizeof(int), stream>>>(input.data_ptr<int64_t>(), n, b, chunks,
                                                                       chunk_counts.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  torch::Tensor scanned = chunk_counts.cumsum(0, torch::kInt32);
  chunk_rank_kernel<<<chunks, kChunk, kWarps * b * sizeof(int), stream>>>(
      input.data_ptr<int64_t>(), n, b, chunks, chunk_counts.data_ptr<int>(), scanned.data_ptr<int>(),
      out.position.data_ptr<int64_t>(), out.order.data_ptr<int64_t>(), out.within_key.data_ptr<int64_t>(),
      out.counts.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace moelab::kernels::cuda
