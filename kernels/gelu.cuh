#pragma once
// GELU (the exact, erf form) and its derivative for the CUDA kernels that fuse it.

namespace moelab::kernels::cuda {

// erf(x / sqrt(2)) by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7, some 10^4 times
// below a bf16 ulp at 1), sharing exp(-x^2 / 2) with the normal density the gradient needs:
// one exp and one reciprocal, no branch. CUDA's erff branches on |x|, so warps diverge, and
// with it the GELU backward is compute-bound instead of memory-bound.
__device__ __forceinline__ void erf_and_gauss(float x, float& erf_z, float& gauss) {
  const float t = __fdividef(1.0f, 1.0f + 0.3275911f * 0.70710678118654752f * fabsf(x));
  gauss = __expf(-0.5f * x * x);
  const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  erf_z = copysignf(1.0f - poly * gauss, x);
}
__device__ __forceinline__ float gelu(float x) {
  float erf_z, gauss;
  erf_and_gauss(x, erf_z, gauss);
  return 0.5f * x * (1.0f + erf_z);
}
// gelu(x), and its derivative in `slope`, from one erf.
__device__ __forceinline__ float gelu_and_slope(float x, float& slope) {
  float erf_z, gauss;
  erf_and_gauss(x, erf_z, gauss);
  slope = 0.5f * (1.0f + erf_z) + x * 0.39894228040143268f * gauss;
  return 0.5f * x * (1.0f + erf_z);
}
__device__ __forceinline__ float gelu_grad(float x) {
  float erf_z, gauss;
  erf_and_gauss(x, erf_z, gauss);
  return 0.5f * (1.0f + erf_z) + x * 0.39894228040143268f * gauss;
}

}  // namespace moelab::kernels::cuda
