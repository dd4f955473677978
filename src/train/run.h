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

// A fine-tuned run loads as its base's weights with its own adapters (or, under method full,
// its own whole model).
LoadedRun load_run(const std::string& run_dir, const std::string& device = "auto");

// Fine-tuning: the base run's weights into `model` (on the CPU, built from the base's config),
// then finetune.method's adapters beside them; returns the base checkpoint's checksum.
std::string adapt_base_model(TinyMoE& model, const FinetuneConfig& finetune);

}  // namespace moelab
