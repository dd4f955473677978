#include "train/evaluate.h"

#include <cmath>

#include <torch/torch.h>

#include "util/error.h"

namespace moelab {

EvalResult evaluate(TinyMoE& model, const TokenFile& tokens, int64_t seq_len, int64_t batch_size,
                    int64_t max_windows, double chars_per_token, const torch::Device& device,
                    const DistributedContext& dist) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  int64_t windows = (tokens.size() - 1) / seq_len;
  if (max_windows > 0) windows = std::min(windows, max_windows);
  if (windows <= 0) throw UserError(tokens.path() + ": too few tokens for one evaluation window of model.seq_len + 1");
  const int64_t share = (windows + dist.world - 1) / dist.world;
  const int64_t begin = std::min(windows, dist.rank * share), end = std::min(windows, begin + share);
  // Sharded experts need every rank in every forward: all ranks take the same number of
  // batches, a rank out of windows scoring its first one again, uncounted.
  const int64_t batches = (share + batch_size - 1) / batch_size;
  torch::Tensor total_nats = torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat64).device(device));
  std::vector<int64_t> window(seq_len + 1);
  for (int64_t b = 0; b < batches; ++b) {
    const int64_t first = begin + b * batch_size;
    const int64_t rows = std::max<int64_t>(0, std::min(batch_size, end - first));
    if (rows == 0 && dist.expert_parallel == 1) continue;
    const int64_t filled = std::max<int64_t>(rows, 1);
    torch::Tensor inputs = torch::empty({filled, seq_len}, torch::kLong), targets = torch::empty({filled, seq_len}, torch::kLong);
    for (int64_t r = 0; r < filled; ++r) {
      tokens.copy_window((rows == 0 ? 0 : first + r) * seq_len, seq_len + 1, window.data());
      std::copy(window.begin(), window.end() - 1, inputs.data_ptr<int64_t>() + r * seq_len);
      std::copy(window.begin() + 1, window.end(), targets.data_ptr<int64_t>() + r * seq_len);
    }
    torch::Tensor logits = model.forward(inputs.to(device)).logits;
    if (rows == 0) continue;
    total_nats += torch::nn::functional::cross_entropy(
        logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32), targets.to(device).reshape(-1),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum)).to(torch::kFloat64);
  }
  if (dist.world_group) dist.world_group->all_reduce_sum(total_nats);
  if (was_training) model.train();
  EvalResult r;
  r.windows = windows;
  r.tokens = windows * seq_len;
  r.loss = total_nats.item<double>() / static_cast<double>(r.tokens);
  r.ppl = std::exp(r.loss);
  r.bits_per_token = r.loss / std::log(2.0);
  r.bits_per_char = r.bits_per_token / chars_per_token;
  return r;
}

}  // namespace moelab
