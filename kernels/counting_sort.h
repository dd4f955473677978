#pragma once
// The op, its CPU reference (kernels/counting_sort_ref.cpp, libtorch ops) and its CUDA kernel
// (kernels/counting_sort.cu); kernels/counting_sort.cpp chooses between them and holds the CUDA path's autograd.
// The tests compare the kernel with the reference on random inputs.
#include <torch/types.h>

namespace moelab::kernels {

// A stable counting sort by small integer keys (int64 [N] in [0, buckets)): where the sort
// puts each entry (equal keys keep index order), the entries per key, the inverse
// permutation and each entry's rank within its key, all int64. CUDA
// (buckets <= 1024): kernels/counting_sort.cu; the reference is kernels/counting_sort_ref.cpp.
struct KeySort {
  torch::Tensor position;   // [N]: where the sort puts each entry
  torch::Tensor counts;     // [buckets]
  torch::Tensor order;      // [N]: the entry the sort puts at each place (position's inverse)
  torch::Tensor within_key; // [N]: the entry's index among the entries of its key
};
KeySort stable_sort_by_key(const torch::Tensor& keys, int64_t buckets);

// Capacity in one pass: the selected flat assignments (expert_ids, selected: [N]) queue per
// expert in `order` (a permutation of 0..N-1; undefined = flat order, drop_policy
// "position") and the first `capacity` of each queue keep a slot. Returns whether each entry is
// kept, its slot (its place in its expert's queue, -1 when not kept) and the kept entries
// per expert. CUDA with flat order: the counting sort's kernels writing these directly.
struct CapacitySlots {
  torch::Tensor kept;         // [N] bool
  torch::Tensor slot;         // [N] int64
  torch::Tensor kept_counts;  // [E] int64
};
CapacitySlots capacity_slots(const torch::Tensor& expert_ids, const torch::Tensor& selected, const torch::Tensor& order,
                             int64_t num_experts, int64_t capacity);

namespace reference {
KeySort stable_sort_by_key(const torch::Tensor& keys, int64_t buckets);
CapacitySlots capacity_slots(const torch::Tensor& expert_ids, const torch::Tensor& selected, const torch::Tensor& order,
                             int64_t num_experts, int64_t capacity);
}  // namespace reference

#ifdef MOELAB_CUDA
// The CUDA entry points and their raw launchers (MOELAB_CUDA builds).
namespace cuda {
KeySort stable_sort_by_key(const torch::Tensor& keys, int64_t buckets);
CapacitySlots capacity_slots(const torch::Tensor& expert_ids, const torch::Tensor& selected, int64_t experts, int64_t capacity);
bool counting_sort_supported(int64_t n, int64_t buckets);
}  // namespace cuda
#endif

}  // namespace moelab::kernels
