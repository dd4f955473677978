#pragma once
// The capacity microbenchmark (the seed's sweep_capacity_ke / bench_capacity): random
// router logits, softk top-k selection and capacity C = ceil(CF*T*k/E) with the position
// policy; reports the drop rate and the routing throughput for every (E, k, CF).
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moelab {

struct CapacityBenchOptions {
  int64_t tokens = 16384;
  std::vector<int64_t> experts = {64, 128, 256};
  std::vector<int64_t> top_k = {1, 2, 4};
  std::vector<double> capacity_factors = {0.9, 1.0, 1.05, 1.1, 1.25, 1.5};
  int64_t iters = 20;
  int64_t skew_experts = 0;  // add skew_bias to the first N experts' logits
  double skew_bias = 0.0;
  uint64_t seed = 17;
  std::string device = "auto";
};

// Reads the options from a JSONC file (keys as the fields above); UserError on bad keys.
CapacityBenchOptions load_capacity_bench(const std::string& path);

// One JSON row per (E, k, CF).
std::vector<nlohmann::json> run_capacity_bench(const CapacityBenchOptions& options);

}  // namespace moelab
