#pragma once
// The op, its CPU reference (kernels/permute_ref.cpp, libtorch ops) and its CUDA kernel
// (kernels/permute.cu); kernels/permute.cpp chooses between them and holds the CUDA path's autograd.
// The tests compare the kernel with the reference on random inputs.
#include <torch/types.h>

namespace moelab::kernels {

// The packed layout from capacity slots: expert e's kept entries take rows start_e + slot,
// start_e = the kept entries of the experts before e. Returns row_of_entry ([N] int64, -1 when
// not kept) and token_index ([rows] int64: the token, entry / columns, of each packed row;
// 0 past the kept rows). CUDA: one kernel.
struct PackedRows {
  torch::Tensor row_of_entry;
  torch::Tensor token_index;
};
PackedRows packed_rows(const torch::Tensor& expert_ids, const torch::Tensor& slot, const torch::Tensor& kept_counts, int64_t rows,
                       int64_t columns);

// Dispatch: packed[i] = x[token_index[i]]. row_of_entry [T, K] (the packed row of each of a
// token's K assignments, -1 when not kept) is the inverse map the backward pass uses.
torch::Tensor permute(const torch::Tensor& x, const torch::Tensor& token_index, const torch::Tensor& row_of_entry);

// Combine: out[t] = sum_j gates[t, j] * y[row_of_entry[t, j]] over the kept j, in j order
// (deterministic, no atomics); gradients flow to y and gates.
torch::Tensor unpermute(const torch::Tensor& y, const torch::Tensor& row_of_entry, const torch::Tensor& gates);

namespace reference {
torch::Tensor permute(const torch::Tensor& x, const torch::Tensor& token_index, const torch::Tensor& row_of_entry);
PackedRows packed_rows(const torch::Tensor& expert_ids, const torch::Tensor& slot, const torch::Tensor& kept_counts, int64_t rows,
                       int64_t columns);
torch::Tensor unpermute(const torch::Tensor& y, const torch::Tensor& row_of_entry, const torch::Tensor& gates);
}  // namespace reference

#ifdef MOELAB_CUDA
// The CUDA entry points and their raw launchers (MOELAB_CUDA builds).
namespace cuda {
torch::Tensor permute(const torch::Tensor& x, const torch::Tensor& token_index, const torch::Tensor& row_of_entry);
torch::Tensor unpermute(const torch::Tensor& y, const torch::Tensor& row_of_entry, const torch::Tensor& gates);
PackedRows packed_rows(const torch::Tensor& expert_ids, const torch::Tensor& slot, const torch::Tensor& kept_counts, int64_t rows,
                       int64_t columns);
void launch_gather_rows(const torch::Tensor& src, const torch::Tensor& index, torch::Tensor& dst);
void launch_combine(const torch::Tensor& y, const torch::Tensor& row_of_entry, const torch::Tensor& gates, torch::Tensor& out);
// grad_out: [tokens, dim] rows grad_out_stride apart (0: one row broadcast over the tokens).
void launch_combine_backward(const torch::Tensor& y, const torch::Tensor& row_of_entry, const torch::Tensor& gates,
                             const torch::Tensor& grad_out, int64_t grad_out_stride, torch::Tensor& grad_y, torch::Tensor& grad_gates);
}  // namespace cuda
#endif

}  // namespace moelab::kernels
