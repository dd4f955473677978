#pragma once
// The routing path's kernels, one dispatch point each: CUDA tensors go to the kernels in
// kernels/<op>.cu (built with MOELAB_CUDA), everything else to the CPU references in
// kernels/<op>_ref.cpp, written with libtorch ops that autograd differentiates. The tests
// compare the two on random inputs.
#include <torch/types.h>

namespace moelab::kernels {

struct TopKGate {
  torch::Tensor gates;  // [T, k] float32: softmax(logits / temperature) at the chosen experts,
                        //   renormalised over the k when `renormalize`
  torch::Tensor ids;    // [T, k] int64, by descending probability; ties: lower expert id first
};

// Fused gate: softmax over experts + top-k (+ renormalisation over the k). E <= 512, k <= 8
// on CUDA; fp32 or bf16 logits.
TopKGate softmax_topk(const torch::Tensor& logits, int64_t k, double temperature, bool renormalize);

// The indices of each row's k largest values ([T, E] -> int64 [T, k]), by descending value;
// equal values: the lower index first (a stable descending sort's order). No gradient. On
// CUDA (fp32 or bf16, E <= 512, k <= 8) the gate kernel's selection, its softmax unused: a
// register scan per row where libtorch runs a full radix sort of every row.
torch::Tensor topk_ids(const torch::Tensor& values, int64_t k);

// Expert choice's selection: a bool [T, E] mask of the `take` largest entries of each column
// of scores [T, E] (equal values: the lower row first), 0 <= take <= T. No gradient. CUDA:
// a radix select per column (kernels/column_topk.cu).
torch::Tensor column_topk_mask(const torch::Tensor& scores, int64_t take);

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

// The expert FFN's bias and activation after a grouped GEMM: out[r] = act(h[r] + bias[e(r)])
// for packed rows r < offsets[E-1], where e(r) is the expert whose rows [offsets[e-1],
// offsets[e]) hold r (offsets: int32 [E] cumulative ends, on h's device). SwiGLU takes
// h [M, 2H] and gives silu(a + ba) * (b + bb) over the halves, [M, H]. Rows past the last
// offset are padding: their results are unspecified and they get no gradient. Differentiable
// in h and bias; on CUDA (bf16, columns a multiple of 8) one fused kernel each way.
enum ExpertActivation { kNoActivation = 0, kGelu = 1, kSwiGLU = 2 };
torch::Tensor expert_bias_activation(const torch::Tensor& h, const torch::Tensor& bias, const torch::Tensor& offsets,
                                     ExpertActivation activation);

// The whole GELU expert FFN as one differentiable op, y = gelu(x W1_e + b1_e) W2_e + b2_e over
// packed rows grouped by offsets (as above; w1 [E, D, H], w2 [E, H, D]), where a fused kernel
// serves it: on an H100 with the CUDA kernels on, D % 64 == 0, H % 256 == 0. The first GEMM
// then applies b1 and the GELU in its epilogue, and the backward's dy W2_e^T applies the
// GELU's gradient and sums b1's and b2's (kernels/grouped_gemm.cu); the other GEMMs run
// on the same kernel where D % 256 == 0 (else at::_grouped_mm), all in bf16 with fp32
// accumulation. Elsewhere
// fused_expert_ffn_available() is false and the caller composes the GEMMs with
// expert_bias_activation.
bool fused_expert_ffn_available(const torch::Tensor& x, const torch::Tensor& w1);
torch::Tensor fused_expert_ffn(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1, const torch::Tensor& w2,
                               const torch::Tensor& b2, const torch::Tensor& offsets);

// The expert FFN over packed rows: y[r] = act(x[r] W1_e + b1_e) W2_e + b2_e for the rows
// expert_rows[e] of expert e (expert-major; w1 [E, D, H] or [E, D, 2H] for SwiGLU, w2
// [E, H, D]); rows past their sum are padding (unspecified results, no gradient).
// Differentiable. On CUDA under bf16 (or bf16 autocast) with a libtorch that has
// at::_grouped_mm (2.8+): fused_expert_ffn for GELU where it serves, else one grouped GEMM
// per projection each followed by expert_bias_activation; the row offsets stay on the device.
// Elsewhere the reference: one addmm per expert, reading the row counts back to the host.
torch::Tensor expert_ffn(const torch::Tensor& x, const torch::Tensor& expert_rows, const torch::Tensor& w1,
                         const torch::Tensor& b1, const torch::Tensor& w2, const torch::Tensor& b2,
                         ExpertActivation activation);

// The gates of the kept assignments ([T, k] fp32; selected, kept bool [T, k]): zero where not
// kept; with `renormalize`, a token that lost some but not all of its selected assignments
// has its kept gates scaled to the mass all its selected gates had (for gates summing to 1,
// as softk's, divided by their own sum). Differentiable in the gates. CUDA (fp32, k <= 8):
// one kernel each way.
torch::Tensor kept_gates(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept, bool renormalize);

// The Switch load-balancing loss E * sum_e f_e * P_e, unscaled (see routers/balancing.h):
// f_e the share of the selected assignments routed to e (no gradient), P_e the mean softmax
// probability of e; differentiable in the logits. CUDA (fp32 logits, E <= 32): two kernels
// forward, one backward.
torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_ids,
                                  const torch::Tensor& selected, int64_t experts);

// Sinkhorn balancing without gradient: q = exp(logits/tau - rowmax) in fp32, then `iters`
// rounds of scaling rows to sum 1 and columns to sum T/E.
torch::Tensor sinkhorn(const torch::Tensor& logits, int64_t iters, double temperature);

// The CPU references, callable on any device (the tests compare against them).
namespace reference {
KeySort stable_sort_by_key(const torch::Tensor& keys, int64_t buckets);
CapacitySlots capacity_slots(const torch::Tensor& expert_ids, const torch::Tensor& selected, const torch::Tensor& order,
                             int64_t num_experts, int64_t capacity);
torch::Tensor kept_gates(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept, bool renormalize);
torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_ids,
                                  const torch::Tensor& selected, int64_t experts);
TopKGate softmax_topk(const torch::Tensor& logits, int64_t k, double temperature, bool renormalize);
torch::Tensor topk_ids(const torch::Tensor& values, int64_t k);
torch::Tensor column_topk_mask(const torch::Tensor& scores, int64_t take);
torch::Tensor permute(const torch::Tensor& x, const torch::Tensor& token_index);
PackedRows packed_rows(const torch::Tensor& expert_ids, const torch::Tensor& slot, const torch::Tensor& kept_counts, int64_t rows,
                       int64_t columns);
torch::Tensor unpermute(const torch::Tensor& y, const torch::Tensor& row_of_entry, const torch::Tensor& gates);
torch::Tensor sinkhorn(const torch::Tensor& logits, int64_t iters, double temperature);
torch::Tensor expert_bias_activation(const torch::Tensor& h, const torch::Tensor& bias, const torch::Tensor& offsets,
                                     ExpertActivation activation);
torch::Tensor expert_ffn(const torch::Tensor& x, const torch::Tensor& expert_rows, const torch::Tensor& w1,
                         const torch::Tensor& b1, const torch::Tensor& w2, const torch::Tensor& b2,
                         ExpertActivation activation);
}  // namespace reference

bool cuda_kernels_built();
// Benchmarks turn the CUDA kernels off to time the same work done by plain libtorch ops.
void set_cuda_kernels_enabled(bool enabled);

}  // namespace moelab::kernels
