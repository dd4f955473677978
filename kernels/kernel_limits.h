#pragma once
// The shapes the CUDA routing kernels serve, in one place: kernels/device_choice.cpp sends
// larger ones to the CPU-style references, and the kernels size their registers by them.
namespace moelab::kernels {

// topk_gate.cu (softmax_topk, topk_ids) and sinkhorn.cu hold a row of E logits in one warp's
// registers, kRowLogitsPerLane per lane.
constexpr int kRowLogitsPerLane = 16;
constexpr int kMaxRowExperts = 32 * kRowLogitsPerLane;  // 512
// topk_gate.cu keeps the k picked values and ids in registers.
constexpr int kMaxGateK = 8;

}  // namespace moelab::kernels
