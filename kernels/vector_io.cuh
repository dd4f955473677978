#pragma once
// 16-byte vector loads and stores of 8 values, bf16 or fp32 in memory, fp32 in registers:
// the kernels' element-wise loops move whole vectors (callers keep columns a multiple of 8);
// and the warp and block sums the kernels share.
#include <c10/util/BFloat16.h>

namespace moelab::kernels::cuda {

constexpr int kVec = 8;  // values per vector

// A bf16 vector kept packed (4 registers instead of 8) until its values are needed: kernels
// that hold several rows' loads in flight unpack each row just before its arithmetic.
__device__ inline uint4 load_packed8(const c10::BFloat16* p) { return *reinterpret_cast<const uint4*>(p); }
__device__ inline void unpack8(const uint4& raw, float* out) {
  const c10::BFloat16* b = reinterpret_cast<const c10::BFloat16*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec; ++i) out[i] = static_cast<float>(b[i]);
}
__device__ inline void load8(const c10::BFloat16* p, float* out) { unpack8(load_packed8(p), out); }
__device__ inline void load8(const float* p, float* out) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w, out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}
__device__ inline void store8(c10::BFloat16* p, const float* in) {
  uint4 raw;
  c10::BFloat16* b = reinterpret_cast<c10::BFloat16*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec; ++i) b[i] = c10::BFloat16(in[i]);
  *reinterpret_cast<uint4*>(p) = raw;
}
__device__ inline void store8(float* p, const float* in) {
  *reinterpret_cast<float4*>(p) = make_float4(in[0], in[1], in[2], in[3]);
  *reinterpret_cast<float4*>(p + 4) = make_float4(in[4], in[5], in[6], in[7]);
}

__device__ inline float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
  return v;
}

// A block's sums by column of per-thread values v[c], c < columns <= kColumns (a thread per
// token, its experts' values in registers), added in a fixed order: each warp's lanes, then
// the warps in turn (deterministic). Thread c < columns gets column c's sum, the others 0.
// It holds a barrier: every thread of the block must call it.
template <int kWarps, int kColumns>
__device__ float block_column_sum(const float* v, int columns, float (&warp_sums)[kWarps][kColumns]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
    if (c >= columns) break;
    const float s = warp_sum(v[c]);
    if (lane == 0) warp_sums[warp][c] = s;
  }
  __syncthreads();
  float total = 0.f;
  if (static_cast<int>(threadIdx.x) < columns)
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w][threadIdx.x];
  return total;
}

}  // namespace moelab::kernels::cuda
