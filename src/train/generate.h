#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "models/tiny_moe.h"

namespace moelab {

struct SamplingOptions {
  int64_t tokens = 300;
  double temperature = 0.8;
  int64_t top_k = 40;  // 0 = the whole vocabulary
  uint64_t seed = 17;
  bool stop_at_end_of_text = true;
};

// Continues `prompt` (an empty prompt starts a new story) and returns the generated ids.
std::vector<uint32_t> sample_tokens(TinyMoE& model, const std::vector<uint32_t>& prompt, uint32_t end_of_text,
                                    const SamplingOptions& options, const torch::Device& device);

// Text in, text out: the prompt followed by what the model wrote.
std::string generate_text(TinyMoE& model, Tokenizer& tokenizer, const std::string& prompt,
                          const SamplingOptions& options, const torch::Device& device);

}  // namespace moelab
