#pragma once
// Kernel benchmarks (seed 003's conventions): each op timed with the CUDA kernel and with the
// plain libtorch ops doing the same work, beside the device's measured copy bandwidth.
//   topk       fused softmax + top-k gate vs torch softmax + topk + renormalisation
//   sinkhorn   Sinkhorn balancing (3 rounds) in scaling-vector form vs the matrix rounds
//   pack       dispatch gather vs index_select; bytes (1 + k) * d * dtype per token
//   combine    gate-weighted combine vs gather * gates + sum; bytes (1 + k) * d * dtype per token
//   routing    T_logit (router matmul), T_select (gate), T_pack (capacity + dispatch), T_route
//   moe-layer  gate + pack + experts + combine, forward and backward, kernels vs libtorch ops;
//              and the experts' grouped GEMM vs one dense GEMM of the same total size
// bw_GiBps_strict uses (2 + 2k) * d * bytes per token for pack + combine, GiB = 2^30.
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moelab {

struct KernelBenchOptions {
  std::string op = "topk";
  int64_t tokens = 16384, hidden = 4096, experts = 128, top_k = 2, iters = 50;
  int64_t expand = 4;        // expert FFN width = expand * hidden (moe-layer)
  double capacity_factor = 1.25;
  int64_t skew_experts = 0;  // add skew_bias to the first N experts' logits
  double skew_bias = 0.0;
  std::string dtype = "bf16";
  uint64_t seed = 17;
  std::string profile_dir;   // moe-layer: when set, Kineto profiles of both paths go under it
};

std::vector<nlohmann::json> run_kernel_bench(const KernelBenchOptions& options);

}  // namespace moelab
