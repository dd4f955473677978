#pragma once
// The op, its CPU reference (kernels/topk_gate_ref.cpp, libtorch ops) and its CUDA kernel
// (kernels/topk_gate.cu); kernels/topk_gate.cpp chooses between them and holds the CUDA path's autograd.
// The tests compare the kernel with the reference on random inputs.
#include <torch/types.h>

namespace moelab::kernels {

// The shapes the CUDA kernel serves (topk_gate.cu and sinkhorn.cu hold a row of E logits in
// one warp's registers, kRowLogitsPerLane per lane; the gate keeps its k picks in registers):
// larger ones go to the reference.
constexpr int kRowLogitsPerLane = 16;
constexpr int kMaxRowExperts = 32 * kRowLogitsPerLane;  // 512
constexpr int kMaxGateK = 8;

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

namespace reference {
TopKGate softmax_topk(const torch::Tensor& logits, int64_t k, double temperature, bool renormalize);
torch::Tensor topk_ids(const torch::Tensor& values, int64_t k);
}  // namespace reference

#ifdef MOELAB_CUDA
// The CUDA entry points and their raw launchers (MOELAB_CUDA builds).
namespace cuda {
TopKGate softmax_topk(const torch::Tensor& logits, int64_t k, double temperature, bool renormalize);
torch::Tensor topk_ids(const torch::Tensor& values, int64_t k);
// Raw launchers (no autograd), on the current CUDA stream.
void launch_softmax_topk(const torch::Tensor& logits, int64_t k, double temperature, bool renormalize, torch::Tensor& gates,
                         torch::Tensor& ids);
// grad_logits: like logits; gates: the forward's output; grad_gates: fp32 [T, k].
void launch_softmax_topk_backward(const torch::Tensor& logits, const torch::Tensor& ids, const torch::Tensor& gates,
                                  const torch::Tensor& grad_gates, double temperature, bool renormalize,
                                  torch::Tensor& grad_logits);
}  // namespace cuda
#endif

}  // namespace moelab::kernels
