#pragma once
// CUDA versions of the routing ops (MOELAB_CUDA builds only): autograd-aware wrappers in
// cuda_ops.cpp around the raw launchers of the .cu files.
#include <torch/types.h>

#include "kernels/adamw.h"
#include "kernels/layer_norm.h"
#include "kernels/routing_kernels.h"

namespace moelab::kernels::cuda {

TopKGate softmax_topk(const torch::Tensor& logits, int64_t k, double temperature, bool renormalize);
torch::Tensor topk_ids(const torch::Tensor& values, int64_t k);  // no gradient
torch::Tensor column_topk_mask(const torch::Tensor& scores, int64_t take);  // no gradient
// Contiguous bf16 (numel a multiple of 8, 16-byte aligned) -> a new fp32 tensor.
bool bf16_to_fp32_supported(const torch::Tensor& in);
torch::Tensor bf16_to_fp32(const torch::Tensor& in);
bool adamw_supported(const AdamWState& state);  // CUDA fp32, contiguous, 16-byte aligned
void adamw_step(const AdamWState& state, const torch::Tensor& lr, const torch::Tensor& step, const torch::Tensor& grad_scale,
                double beta1, double beta2, double eps);
torch::Tensor permute(const torch::Tensor& x, const torch::Tensor& token_index, const torch::Tensor& row_of_entry);
torch::Tensor unpermute(const torch::Tensor& y, const torch::Tensor& row_of_entry, const torch::Tensor& gates);
torch::Tensor sinkhorn(const torch::Tensor& logits, int64_t iters, double temperature);  // no gradient
torch::Tensor expert_bias_activation(const torch::Tensor& h, const torch::Tensor& bias, const torch::Tensor& offsets,
                                     ExpertActivation activation);
bool expert_ffn_gelu_supported(const torch::Tensor& x, const torch::Tensor& w1);
torch::Tensor expert_ffn_gelu(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1, const torch::Tensor& w2,
                              const torch::Tensor& b2, const torch::Tensor& offsets);
torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& gamma, const torch::Tensor& beta, double eps,
                         torch::ScalarType out_dtype);
ResidualNorm add_layer_norm(const torch::Tensor& residual, const torch::Tensor& branch, const torch::Tensor& gamma,
                            const torch::Tensor& beta, double eps, torch::ScalarType out_dtype);
bool layer_norm_supported(int64_t cols);
KeySort stable_sort_by_key(const torch::Tensor& keys, int64_t buckets);
CapacitySlots capacity_slots(const torch::Tensor& expert_ids, const torch::Tensor& selected, int64_t experts, int64_t capacity);
PackedRows packed_rows(const torch::Tensor& expert_ids, const torch::Tensor& slot, const torch::Tensor& kept_counts, int64_t rows,
                       int64_t columns);
bool counting_sort_supported(int64_t n, int64_t buckets);
torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_ids, const torch::Tensor& selected);
bool balancing_loss_supported(int64_t experts);
torch::Tensor kept_gates(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept, bool renormalize);
bool kept_gates_supported(int64_t k);

// Raw launchers (no autograd), on the current CUDA stream.
void launch_softmax_topk(const torch::Tensor& logits, int64_t k, double temperature, bool renormalize, torch::Tensor& gates,
                         torch::Tensor& ids);
// grad_logits: like logits; gates: the forward's output; grad_gates: fp32 [T, k].
void launch_softmax_topk_backward(const torch::Tensor& logits, const torch::Tensor& ids, const torch::Tensor& gates,
                                  const torch::Tensor& grad_gates, double temperature, bool renormalize,
                                  torch::Tensor& grad_logits);
void launch_gather_rows(const torch::Tensor& src, const torch::Tensor& index, torch::Tensor& dst);
void launch_combine(const torch::Tensor& y, const torch::Tensor& row_of_entry, const torch::Tensor& gates, torch::Tensor& out);
void launch_expert_bias_act(const torch::Tensor& h, const torch::Tensor& bias, const torch::Tensor& offsets, int activation,
                            torch::Tensor& out);
// grad_bias must hold zeros: the kernel adds into it.
void launch_expert_bias_act_backward(const torch::Tensor& grad_out, const torch::Tensor& h, const torch::Tensor& bias,
                                     const torch::Tensor& offsets, int activation, torch::Tensor& grad_h,
                                     torch::Tensor& grad_bias);
// x, y, dy, dx: [M, N]; gamma, beta: fp32 [N]; mean, rstd: fp32 [M]; param_grads: fp32
// [2, N], gamma's gradient then beta's. With branch defined the forward normalises
// sum = x + branch and writes sum; the backward adds ds (if defined) to dx and writes dx
// again into dbranch (if defined, in its dtype).
void launch_layer_norm(const torch::Tensor& x, const torch::Tensor& branch, const torch::Tensor& gamma,
                       const torch::Tensor& beta, double eps, torch::Tensor& sum, torch::Tensor& y, torch::Tensor& mean,
                       torch::Tensor& rstd);
void launch_layer_norm_backward(const torch::Tensor& dy, const torch::Tensor& x, const torch::Tensor& gamma,
                                const torch::Tensor& mean, const torch::Tensor& rstd, const torch::Tensor& ds,
                                torch::Tensor& dx, torch::Tensor& dbranch, torch::Tensor& param_grads);
// loss: fp32 scalar; share: fp32 [E], the f_e the backward needs. logits fp32 [T, E], ids
// int64 [T, k], selected bool [T, k], T > 0.
void launch_balancing_loss(const torch::Tensor& logits, const torch::Tensor& ids, const torch::Tensor& selected,
                           torch::Tensor& loss, torch::Tensor& share);
void launch_balancing_loss_backward(const torch::Tensor& logits, const torch::Tensor& share, const torch::Tensor& grad_loss,
                                    torch::Tensor& grad_logits);
// gates, out, grad_*: fp32 [T, k]; selected, kept: bool [T, k].
void launch_kept_gates(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept, bool renormalize,
                       torch::Tensor& out);
void launch_kept_gates_backward(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept,
                                bool renormalize, const torch::Tensor& grad_out, torch::Tensor& grad_gates);
// out (fp32 [N]) = the column sums of x ([M, N], bf16 or fp32, N % 8 == 0).
void launch_column_sum(const torch::Tensor& x, torch::Tensor& out);
// out (fp32 [W]) = the column sums of partials (fp32 [G, W]), G small: one kernel.
void launch_sum_partial_rows(const torch::Tensor& partials, torch::Tensor& out);
// grad_out: [tokens, dim] rows grad_out_stride apart (0: one row broadcast over the tokens).
void launch_combine_backward(const torch::Tensor& y, const torch::Tensor& row_of_entry, const torch::Tensor& gates,
                             const torch::Tensor& grad_out, int64_t grad_out_stride, torch::Tensor& grad_y, torch::Tensor& grad_gates);

}  // namespace moelab::kernels::cuda
