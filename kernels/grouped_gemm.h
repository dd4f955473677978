#pragma once
// Grouped GEMM for Hopper (sm_90a) with the expert FFN's elementwise work in its epilogue.
// Rows of A are packed expert-major (expert e owns rows [ends[e-1], ends[e])); every expert
// multiplies its rows by its own weight matrix B_e:
//   kBiasGelu      out = gelu(pre),  gelu_slope = gelu'(pre),  pre = A_e B_e + bias_e
//                  (the FFN's first layer; the slope is what the backward needs of pre)
//   kGeluBackward  out = (A_e B_e) * gelu_slope,  bias_grad_e += column sums of out,
//                  a_column_sums_e += column sums of A_e (summed from shared memory while the
//                  tensor cores work, so b2's gradient costs no pass of its own)
//                  (A = the gradient of the FFN's output, B_e = W2_e^T: the second layer's
//                  input gradient and the first layer's GELU backward)
//   kBias          out = A_e B_e (+ bias_e if bias is given)   (the second layer; the first
//                  layer's input gradient, B_e = W1_e^T)
// at::_grouped_mm (CUTLASS) computes the same products but has no epilogue: the GELU and its
// gradient then cost a separate pass over the [rows, N] activations each way (256 and 384
// MB at the bench shape, a fifth of the layer's time); here they happen on the accumulators.
// Its mainloop is also faster than at::_grouped_mm's at the bench shape (670 against ~520
// TFLOP/s at 16384 x 1024 x 4096, E 32, on an H100, epilogue left out), which is why kBias
// exists.
//
// The kernel is persistent (a CTA per SM) and warp-specialised: warpgroup 0 is the producer,
// whose one thread loads 128 x 64 tiles of A and 64 x 256 tiles of B into a ring of shared
// memory with TMA (4 stages; 3 for kGeluBackward, which also reads each tile's slopes into
// shared memory while the mainloop runs); warpgroups 1 and 2 are the consumers, each
// multiplying 64 of the tile's 128 rows with wgmma (64 x 256 x 16 per instruction, fp32
// accumulators in registers). Each consumer applies the epilogue on its registers a 64-column
// box at a time, staging the box in shared memory in TMA's swizzled layout and having it stored
// by TMA while it works on the next box (two buffers used in turn), so stores and arithmetic
// overlap. Tiles are 128 x 256 of one expert (an expert's last row tile is partial: its extra
// rows are loaded, computed and not stored), taken in order expert, column tile, row tile so
// that neighbouring CTAs share B in L2.
// Per tile: 2*128*256*K flops; reads (128 + 256)*K*2 bytes (mostly L2 hits: A is reused
// N/256 times, B by an expert's row tiles), writes 128*256*2 bytes (x2 for kBiasGelu), and
// kGeluBackward reads 128*256*2 bytes of slopes. Requirements: K % 64 == 0, N % 256 == 0,
// 16-byte aligned row-major operands, a device of compute capability 9.0.
#include <cstdint>

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace moelab::kernels::cuda {

enum class GroupedGemmEpilogue { kBiasGelu, kGeluBackward, kBias };

struct GroupedGemmArgs {
  const __nv_bfloat16* a = nullptr;  // [rows, k]
  const __nv_bfloat16* b = nullptr;  // [experts, k, n] if !b_transposed, else [experts, n, k] (B_e = b[e]^T)
  bool b_transposed = false;
  const int* ends = nullptr;         // [experts] int32, the cumulative row counts (on the device)
  int experts = 0;
  int64_t rows = 0;
  int k = 0, n = 0;
  int m = 0;                         // grouped_gemm_weight_grad: a's columns
  const float* bias = nullptr;       // kBiasGelu, and optionally kBias: [experts, n]
  __nv_bfloat16* out = nullptr;      // [rows, n]
  __nv_bfloat16* gelu_slope = nullptr;  // [rows, n]: written by kBiasGelu, read by kGeluBackward
  float* bias_grad = nullptr;        // kGeluBackward: [experts, n], added into
  float* a_column_sums = nullptr;    // kGeluBackward, optional: [experts, k], added into: each
                                     // expert's column sums of A (the second layer's bias gradient)
};

// Whether grouped_gemm can run these sizes on `device`.
bool grouped_gemm_supported(int64_t k, int64_t n, int experts, int device);
void grouped_gemm(const GroupedGemmArgs& args, GroupedGemmEpilogue epilogue, cudaStream_t stream);

// The weight gradients, grouped along the reduction: out[e] = a_e^T b_e, [experts, m, n], with
// a [rows, m] and b [rows, n] the expert-major rows (an expert without rows gets zeros). The
// same kernel with A read M-contiguous; an expert's last 64-row step is cut at its last row
// by zeroing the following rows of A in shared memory. m % 128 == 0, n % 256 == 0.
bool grouped_gemm_weight_grad_supported(int64_t m, int64_t n, int experts, int device);
void grouped_gemm_weight_grad(const GroupedGemmArgs& args, cudaStream_t stream);

}  // namespace moelab::kernels::cuda
