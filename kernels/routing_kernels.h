#pragma once
// The routing path's kernels, one dispatch point each. Every op has a CPU reference built
// from libtorch ops (kernels/<op>_ref.cpp) that autograd differentiates; the CUDA versions
// (kernels/<op>.cu, built with MOELAB_CUDA) are checked against these in the tests.
#include <torch/types.h>

namespace moelab::kernels {

struct TopKGate {
  torch::Tensor gates;  // [T, k] float32: softmax(logits / temperature) at the chosen experts,
                        //   renormalised over the k when `renormalize`
  torch::Tensor ids;    // [T, k] int64, by descending probability; ties: lower expert id first
};

// Fused gate: softmax over experts + top-k (+ renormalisation over the k).
TopKGate softmax_topk(const torch::Tensor& logits, int64_t k, double temperature, bool renormalize);

// Position of each flat assignment within its expert's queue. Assignments queue in `order`
// (a permutation of 0..N-1; undefined = flat order t*k+j, the seed's "position" policy);
// entries with valid = false take no place. Returns int64 [N]; invalid entries get N.
torch::Tensor expert_positions(const torch::Tensor& expert_ids, const torch::Tensor& valid,
                               const torch::Tensor& order, int64_t num_experts);

// Dispatch: rows of x gathered into expert-major order (packed[i] = x[token_index[i]]).
torch::Tensor permute(const torch::Tensor& x, const torch::Tensor& token_index);
// Combine: out[t] = sum over i with token_index[i] = t of gates[i] * y[i]; gradients flow to
// y and gates.
torch::Tensor unpermute(const torch::Tensor& y, const torch::Tensor& token_index, const torch::Tensor& gates,
                        int64_t num_tokens);

// Sinkhorn balancing without gradient: q = exp(logits/tau - rowmax) in fp32, then `iters`
// rounds of scaling rows to sum 1 and columns to sum T/E.
torch::Tensor sinkhorn(const torch::Tensor& logits, int64_t iters, double temperature);

}  // namespace moelab::kernels
