#include "bench/capacity_bench.h"

#include <chrono>
#include <thread>

#include <torch/torch.h>

#include "config/run_config.h"
#include "kernels/routing_kernels.h"
#include "routers/capacity.h"
#include "train/trainer.h"
#include "util/error.h"

namespace moelab {
using nlohmann::json;

CapacityBenchOptions load_capacity_bench(const std::string& path) {
  CapacityBenchOptions d;
  json config = {{"tokens", d.tokens},     {"experts", d.experts},           {"top_k", d.top_k},
                 {"capacity_factors", d.capacity_factors}, {"iters", d.iters}, {"skew_experts", d.skew_experts},
                 {"skew_bias", d.skew_bias}, {"seed", d.seed},              {"device", d.device}};
  merge_config(config, parse_jsonc_file(path), path);
  CapacityBenchOptions o;
  try {
    o.tokens = config["tokens"];
    o.experts = config["experts"].get<std::vector<int64_t>>();
    o.top_k = config["top_k"].get<std::vector<int64_t>>();
    o.capacity_factors = config["capacity_factors"].get<std::vector<double>>();
    o.iters = config["iters"];
    o.skew_experts = config["skew_experts"];
    o.skew_bias = config["skew_bias"];
    o.seed = config["seed"];
    o.device = config["device"];
  } catch (const json::exception& e) {
    throw UserError(path + ": " + e.what());
  }
  if (o.tokens < 1 || o.iters < 1) throw UserError(path + ": 'tokens' and 'iters' must be >= 1");
  return o;
}

std::vector<json> run_capacity_bench(const CapacityBenchOptions& o) {
  torch::NoGradGuard no_grad;
  torch::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  const torch::Device device(resolve_device(o.device));
  std::vector<json> rows;
  for (int64_t experts : o.experts)
    for (int64_t k : o.top_k) {
      if (k > experts) throw UserError("bench capacity: top_k must be <= experts");
      auto generator = at::detail::createCPUGenerator(o.seed);
      torch::Tensor logits = torch::randn({o.tokens, experts}, generator, torch::kFloat32);
      if (o.skew_experts > 0) logits.narrow(1, 0, std::min(o.skew_experts, experts)).add_(o.skew_bias);
      logits = logits.to(device);
      for (double cf : o.capacity_factors) {
        const int64_t capacity = expert_capacity(o.tokens, k, experts, cf);
        double dropped = 0;
        auto route = [&] {
          kernels::TopKGate g = kernels::softmax_topk(logits, k, 1.0, true);
          torch::Tensor selected = torch::ones_like(g.ids, torch::kBool);
          return apply_capacity(g.ids, selected, g.gates, experts, capacity, "position");
        };
        route();  // warm up
        if (device.is_cuda()) torch::cuda::synchronize();
        auto start = std::chrono::steady_clock::now();
        for (int64_t i = 0; i < o.iters; ++i) dropped += 1.0 - route().to(torch::kFloat32).mean().item<double>();
        double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        rows.push_back({{"bench", "capacity"},
                        {"tokens", o.tokens},
                        {"experts", experts},
                        {"top_k", k},
                        {"capacity_factor", cf},
                        {"capacity", capacity},
                        {"drop_rate", dropped / o.iters},
                        {"tokens_per_s", o.tokens * o.iters / seconds},
                        {"skew_experts", o.skew_experts},
                        {"skew_bias", o.skew_bias},
                        {"device", device.str()},
                        {"seed", o.seed}});
      }
    }
  return rows;
}

}  // namespace moelab
