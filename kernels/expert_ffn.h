#pragma once
// The op, its CPU reference (kernels/expert_ffn_ref.cpp, libtorch ops) and its CUDA kernel
// (kernels/grouped_gemm.cu); kernels/expert_ffn.cpp chooses between them and holds the CUDA path's autograd.
// The tests compare the kernel with the reference on random inputs.
#include <torch/types.h>

#include "kernels/expert_bias_act.h"

namespace moelab::kernels {

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

// Whether expert_ffn on CUDA tensors under bf16 (`bf16`) reads no row counts back to the
// host, so that a CUDA graph can capture it: the grouped-GEMM path, where libtorch has it.
bool expert_ffn_host_sync_free(bool bf16);

namespace reference {
torch::Tensor expert_ffn(const torch::Tensor& x, const torch::Tensor& expert_rows, const torch::Tensor& w1,
                         const torch::Tensor& b1, const torch::Tensor& w2, const torch::Tensor& b2,
                         ExpertActivation activation);
}  // namespace reference

#ifdef MOELAB_CUDA
// The CUDA entry points and their raw launchers (MOELAB_CUDA builds).
namespace cuda {
bool expert_ffn_gelu_supported(const torch::Tensor& x, const torch::Tensor& w1);
torch::Tensor expert_ffn_gelu(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1, const torch::Tensor& w2,
                              const torch::Tensor& b2, const torch::Tensor& offsets);
}  // namespace cuda
#endif

}  // namespace moelab::kernels
