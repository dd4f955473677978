#include "train/generate.h"

#include <torch/torch.h>

namespace moelab {
namespace {
constexpr int64_t kUnknownId = 0;  // both tokenizers reserve id 0 for unknown input
}

std::vector<uint32_t> sample_tokens(TinyMoE& model, const std::vector<uint32_t>& prompt, uint32_t end_of_text,
                                    const SamplingOptions& options, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  model.eval();
  model.set_dropless(true);
  auto generator = at::detail::createCPUGenerator(options.seed);
  std::vector<int64_t> context(prompt.begin(), prompt.end());
  if (context.empty()) context.push_back(end_of_text);  // a story starts after an end of text
  std::vector<uint32_t> generated;
  const int64_t window = model.config().seq_len;
  for (int64_t i = 0; i < options.tokens; ++i) {
    const int64_t start = std::max<int64_t>(0, static_cast<int64_t>(context.size()) - window);
    torch::Tensor input = torch::tensor(std::vector<int64_t>(context.begin() + start, context.end()), torch::kLong)
                              .unsqueeze(0)
                              .to(device);
    torch::Tensor logits = model.forward(input).logits.select(1, -1).squeeze(0).to(torch::kFloat32).cpu();
    logits[kUnknownId] = -INFINITY;  // never write the unknown-character mark
    int64_t next;
    if (options.temperature <= 0) {
      next = logits.argmax().item<int64_t>();
    } else {
      logits = logits / options.temperature;
      if (options.top_k > 0 && options.top_k < logits.size(0)) {
        double kth = std::get<0>(logits.topk(options.top_k)).min().item<double>();
        logits = logits.masked_fill(logits < kth, -INFINITY);
      }
      next = torch::multinomial(torch::softmax(logits, -1), 1, false, generator).item<int64_t>();
    }
    if (options.stop_at_end_of_text && next == end_of_text) break;
    generated.push_back(static_cast<uint32_t>(next));
    context.push_back(next);
  }
  model.set_dropless(false);
  return generated;
}

std::string generate_text(TinyMoE& model, Tokenizer& tokenizer, const std::string& prompt,
                          const SamplingOptions& options, const torch::Device& device) {
  std::vector<uint32_t> ids;
  if (!prompt.empty()) {
    ids = tokenizer.encode(prompt);
    if (!ids.empty() && ids.back() == tokenizer.eot_id()) ids.pop_back();  // continue the story, do not end it
  }
  std::vector<uint32_t> all = ids;
  std::vector<uint32_t> generated = sample_tokens(model, ids, tokenizer.eot_id(), options, device);
  all.insert(all.end(), generated.begin(), generated.end());
  return tokenizer.decode(all);
}

}  // namespace moelab
