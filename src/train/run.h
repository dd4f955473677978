#pragma once
// A finished or checkpointed run, loaded for evaluation, generation or tracing.
#include <memory>
#include <string>

#include "config/run_config.h"
#include "data/tokenizer.h"
#include "models/tiny_moe.h"

namespace moelab {

struct LoadedRun {
  RunConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  std::shared_ptr<TinyMoE> model;  // in eval mode, on `device`
  torch::Device device{torch::kCPU};
  int64_t step = 0;
};

LoadedRun load_run(const std::string& run_dir, const std::string& device = "auto");

}  // namespace moelab
