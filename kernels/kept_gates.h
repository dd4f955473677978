#pragma once
// The op, its CPU reference (kernels/kept_gates_ref.cpp, libtorch ops) and its CUDA kernel
// (kernels/kept_gates.cu); kernels/kept_gates.cpp chooses between them and holds the CUDA path's autograd.
// The tests compare the kernel with the reference on random inputs.
#include <torch/types.h>

namespace moelab::kernels {

// The gates of the kept assignments ([T, k] fp32; selected, kept bool [T, k]): zero where not
// kept; with `renormalize`, a token that lost some but not all of its selected assignments
// has its kept gates scaled to the mass all its selected gates had (for gates summing to 1,
// as softk's, divided by their own sum). Differentiable in the gates. CUDA (fp32, k <= 8):
// one kernel each way.
torch::Tensor kept_gates(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept, bool renormalize);

namespace reference {
torch::Tensor kept_gates(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept, bool renormalize);
}  // namespace reference

#ifdef MOELAB_CUDA
// The CUDA entry points and their raw launchers (MOELAB_CUDA builds).
namespace cuda {
torch::Tensor kept_gates(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept, bool renormalize);
bool kept_gates_supported(int64_t k);
// gates, out, grad_*: fp32 [T, k]; selected, kept: bool [T, k].
void launch_kept_gates(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept, bool renormalize,
                       torch::Tensor& out);
void launch_kept_gates_backward(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept,
                                bool renormalize, const torch::Tensor& grad_out, torch::Tensor& grad_gates);
}  // namespace cuda
#endif

}  // namespace moelab::kernels
