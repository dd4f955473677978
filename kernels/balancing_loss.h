#pragma once
// The op, its CPU reference (kernels/balancing_loss_ref.cpp, libtorch ops) and its CUDA kernel
// (kernels/balancing_loss.cu); kernels/balancing_loss.cpp chooses between them and holds the CUDA path's autograd.
// The tests compare the kernel with the reference on random inputs.
#include <torch/types.h>

namespace moelab::kernels {

// The Switch load-balancing loss E * sum_e f_e * P_e, unscaled (see routers/balancing.h):
// f_e the share of the selected assignments routed to e (no gradient), P_e the mean softmax
// probability of e; differentiable in the logits. CUDA (fp32 logits, E <= 32): two kernels
// forward, one backward.
torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_ids,
                                  const torch::Tensor& selected, int64_t experts);

namespace reference {
torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_ids,
                                  const torch::Tensor& selected, int64_t experts);
}  // namespace reference

#ifdef MOELAB_CUDA
// The CUDA entry points and their raw launchers (MOELAB_CUDA builds).
namespace cuda {
torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_ids, const torch::Tensor& selected);
bool balancing_loss_supported(int64_t experts);
// loss: fp32 scalar; share: fp32 [E], the f_e the backward needs. logits fp32 [T, E], ids
// int64 [T, k], selected bool [T, k], T > 0.
void launch_balancing_loss(const torch::Tensor& logits, const torch::Tensor& ids, const torch::Tensor& selected,
                           torch::Tensor& loss, torch::Tensor& share);
void launch_balancing_loss_backward(const torch::Tensor& logits, const torch::Tensor& share, const torch::Tensor& grad_loss,
                                    torch::Tensor& grad_logits);
}  // namespace cuda
#endif

}  // namespace moelab::kernels
