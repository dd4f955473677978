#pragma once
// The op, its CPU reference (kernels/expert_bias_act_ref.cpp, libtorch ops) and its CUDA kernel
// (kernels/expert_bias_act.cu); kernels/expert_bias_act.cpp chooses between them and holds the CUDA path's autograd.
// The tests compare the kernel with the reference on random inputs.
#include <torch/types.h>

namespace moelab::kernels {

// The expert FFN's bias and activation after a grouped GEMM: out[r] = act(h[r] + bias[e(r)])
// for packed rows r < offsets[E-1], where e(r) is the expert whose rows [offsets[e-1],
// offsets[e]) hold r (offsets: int32 [E] cumulative ends, on h's device). SwiGLU takes
// h [M, 2H] and gives silu(a + ba) * (b + bb) over the halves, [M, H]. Rows past the last
// offset are padding: their results are unspecified and they get no gradient. Differentiable
// in h and bias; on CUDA (bf16, columns a multiple of 8) one fused kernel each way.
enum ExpertActivation { kNoActivation = 0, kGelu = 1, kSwiGLU = 2 };
torch::Tensor expert_bias_activation(const torch::Tensor& h, const torch::Tensor& bias, const torch::Tensor& offsets,
                                     ExpertActivation activation);

namespace reference {
torch::Tensor expert_bias_activation(const torch::Tensor& h, const torch::Tensor& bias, const torch::Tensor& offsets,
                                     ExpertActivation activation);
}  // namespace reference

#ifdef MOELAB_CUDA
// The CUDA entry points and their raw launchers (MOELAB_CUDA builds).
namespace cuda {
torch::Tensor expert_bias_activation(const torch::Tensor& h, const torch::Tensor& bias, const torch::Tensor& offsets,
                                     ExpertActivation activation);
void launch_expert_bias_act(const torch::Tensor& h, const torch::Tensor& bias, const torch::Tensor& offsets, int activation,
                            torch::Tensor& out);
// grad_bias must hold zeros: the kernel adds into it.
void launch_expert_bias_act_backward(const torch::Tensor& grad_out, const torch::Tensor& h, const torch::Tensor& bias,
                                     const torch::Tensor& offsets, int activation, torch::Tensor& grad_h,
                                     torch::Tensor& grad_bias);
}  // namespace cuda
#endif

}  // namespace moelab::kernels
