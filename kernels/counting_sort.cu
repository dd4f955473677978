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
//      the entry's rank within its key (its position less the bucket's start). For capacity
//      (capacity_slots) the ranks of the selected entries by expert are their queue places:
//      the rank kernel writes kept (place < C), the slot and the kept count per expert instead,
//      so capacity is these three kernels and a scan, not a sort plus six element-wise ones.
// Traffic: the keys read twice (8 bytes each), positions written once, 4 * buckets * chunks
// bytes of counts. The one-hot running count it replaces on CUDA (kernels/counting_sort_ref.cpp,
// still the CPU reference) ran about 11 kernels over buckets x N counts.
#include <ATen/cuda/CUDAContext.h>
#include <torch/torch.h>

#include "kernels/counting_sort.h"

namespace moelab::kernels::cuda {
namespace {

constexpr int kChunk = 256;  // entries per block: 8 warps of 32
constexpr int kWarps = kChunk / 32;
constexpr int kMaxBuckets = 1024;

// Entry i's key; with a mask, entries not valid take the last bucket.
__device__ int64_t key_of(const int64_t* keys, const bool* valid, int buckets, int64_t i) {
  return valid && !valid[i] ? buckets - 1 : keys[i];
}

__global__ void chunk_histogram_kernel(const int64_t* __restrict__ keys, const bool* __restrict__ valid, int64_t n,
                                       int buckets, int chunks, int* __restrict__ chunk_counts) {
  extern __shared__ int histogram[];  // [buckets]
  for (int b = threadIdx.x; b < buckets; b += blockDim.x) histogram[b] = 0;
  __syncthreads();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kChunk + threadIdx.x;
  if (i < n) atomicAdd(&histogram[key_of(keys, valid, buckets, i)], 1);  // integer counts: the order of the adds does not matter
  __syncthreads();
  for (int b = threadIdx.x; b < buckets; b += blockDim.x) chunk_counts[static_cast<int64_t>(b) * chunks + blockIdx.x] = histogram[b];
}

// Outputs: a KeySort's (position, order, within_key, counts), or with `kept` the capacity
// slots' (kept, slot, counts of the kept per key, the last bucket excluded); the others null.
struct RankOutputs {
  int64_t* position;
  int64_t* order;
  int64_t* within_key;
  int64_t* counts;
  bool* kept;
  int64_t* slot;
  int64_t capacity;
};

__global__ void chunk_rank_kernel(const int64_t* __restrict__ keys, const bool* __restrict__ valid, int64_t n, int buckets,
                                  int chunks, const int* __restrict__ chunk_counts, const int* __restrict__ scanned,
                                  RankOutputs out) {
  extern __shared__ int warp_counts[];  // [kWarps][buckets]: then each warp's start within the chunk
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int j = threadIdx.x; j < kWarps * buckets; j += blockDim.x) warp_counts[j] = 0;
  __syncthreads();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kChunk + threadIdx.x;
  const int64_t key = i < n ? key_of(keys, valid, buckets, i) : -1;
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
    const int64_t cell = key * chunks + blockIdx.x;
    const int64_t place = static_cast<int64_t>(scanned[cell] - chunk_counts[cell]) + warp_counts[warp * buckets + key] + lane_rank;
    const int64_t rank = place - (key > 0 ? scanned[(key - 1) * chunks + chunks - 1] : 0);
    if (out.kept) {
      const bool kept = key < buckets - 1 && rank < out.capacity;
      out.kept[i] = kept;
      out.slot[i] = kept ? rank : -1;
    } else {
      out.position[i] = place;
      out.order[place] = i;
      out.within_key[i] = rank;
    }
  }
  if (blockIdx.x == 0)
    for (int b = threadIdx.x; b < buckets; b += blockDim.x) {
      const int end = scanned[static_cast<int64_t>(b) * chunks + chunks - 1];
      const int64_t count = end - (b > 0 ? scanned[static_cast<int64_t>(b - 1) * chunks + chunks - 1] : 0);
      if (!out.kept) out.counts[b] = count;
      else if (b < buckets - 1) out.counts[b] = min(count, out.capacity);
    }
}

// Histogram, scan and ranks over keys (valid: optional mask); ranks go to `out`.
void rank_by_key(const torch::Tensor& keys, const torch::Tensor& valid, int64_t buckets, const RankOutputs& out) {
  const int64_t n = keys.size(0);
  const int chunks = static_cast<int>((n + kChunk - 1) / kChunk);
  const int b = static_cast<int>(buckets);
  const bool* mask = valid.defined() ? valid.data_ptr<bool>() : nullptr;
  torch::Tensor chunk_counts = torch::empty({buckets * chunks}, keys.options().dtype(torch::kInt32));
  auto stream = at::cuda::getCurrentCUDAStream();
  chunk_histogram_kernel<<<chunks, kChunk, b * sizeof(int), stream>>>(keys.data_ptr<int64_t>(), mask, n, b, chunks,
                                                                       chunk_counts.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  torch::Tensor scanned = chunk_counts.cumsum(0, torch::kInt32);
  chunk_rank_kernel<<<chunks, kChunk, kWarps * b * sizeof(int), stream>>>(keys.data_ptr<int64_t>(), mask, n, b, chunks,
                                                                           chunk_counts.data_ptr<int>(), scanned.data_ptr<int>(), out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

bool counting_sort_supported(int64_t n, int64_t buckets) {
  return buckets <= kMaxBuckets && n * buckets < (int64_t{1} << 31);
}

KeySort stable_sort_by_key(const torch::Tensor& keys, int64_t buckets) {
  torch::Tensor input = keys.contiguous();
  KeySort out{torch::empty_like(input), torch::empty({buckets}, input.options()), torch::empty_like(input),
              torch::empty_like(input)};
  if (input.size(0) == 0) {
    out.counts.zero_();
    return out;
  }
  rank_by_key(input, torch::Tensor(), buckets,
              RankOutputs{out.position.data_ptr<int64_t>(), out.order.data_ptr<int64_t>(), out.within_key.data_ptr<int64_t>(),
                          out.counts.data_ptr<int64_t>(), nullptr, nullptr, 0});
  return out;
}

CapacitySlots capacity_slots(const torch::Tensor& expert_ids, const torch::Tensor& selected, int64_t experts, int64_t capacity) {
  torch::Tensor ids = expert_ids.contiguous(), valid = selected.contiguous();
  CapacitySlots out{torch::empty(ids.sizes(), valid.options()), torch::empty_like(ids), torch::empty({experts}, ids.options())};
  if (ids.size(0) == 0) {
    out.kept_counts.zero_();
    return out;
  }
  rank_by_key(ids, valid, experts + 1,
              RankOutputs{nullptr, nullptr, nullptr, out.kept_counts.data_ptr<int64_t>(), out.kept.data_ptr<bool>(),
                          out.slot.data_ptr<int64_t>(), capacity});
  return out;
}

}  // namespace moelab::kernels::cuda
