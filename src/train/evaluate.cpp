#include "train/evaluate.h"

#include <cmath>

#include <torch/torch.h>

#include "util/error.h"

namespace moelab {

EvalResult evaluate(TinyMoE& model, const TokenFile& tokens, int64_t seq_len, int64_t batch_size,
                    int64_t max_windows, double chars_per_token, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  int64_t windows = (tokens.size() - 1) / seq_len;
  if (max_windows > 0) windows = std::min(windows, max_windows);
  if (windows <= 0) throw UserError(tokens.path() + ": too few tokens for one evaluation window of model.seq_len + 1");
  double total_nats = 0;
  for (int64_t first = 0; first < windows; first += batch_size) {
    const int64_t rows = std::min(batch_size, windows - first);
    torch::Tensor inputs = torch::empty({rows, seq_len}, torch::kLong), targets = torch::empty({rows, seq_len}, torch::kLong);
    std::vector<int64_t> window(seq_len + 1);
    for (int64_t r = 0; r < rows; ++r) {
      tokens.copy_window((first + r) * seq_len, seq_len + 1, window.data());
      std::copy(window.begin(), window.end() - 1, inputs.data_ptr<int64_t>() + r * seq_len);
      std::copy(window.begin() + 1, window.end(), targets.data_ptr<int64_t>() + r * seq_len);
    }
    torch::Tensor logits = model.forward(inputs.to(device)).logits;
    total_nats += torch::nn::functional::cross_entropy(
                      logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32), targets.to(device).reshape(-1),
                      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                      .item<double>();
  }
  if (was_training) model.train();
  EvalResult r;
  r.windows = windows;
  r.tokens = windows * seq_len;
  r.loss = total_nats / static_cast<double>(r.tokens);
  r.ppl = std::exp(r.loss);
  r.bits_per_token = r.loss / std::log(2.0);
  r.bits_per_char = r.bits_per_token / chars_per_token;
  return r;
}

}  // namespace moelab
