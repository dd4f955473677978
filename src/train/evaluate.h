#pragma once
// Evaluation over the non-overlapping seq_len windows of a token file, in order, so that two
// runs are scored on exactly the same tokens.
#include "data/token_file.h"
#include "dist/communicator.h"
#include "models/tiny_moe.h"

namespace moelab {

struct EvalResult {
  double loss = 0;        // mean cross-entropy per token (nats)
  double ppl = 0;         // exp(loss)
  double bits_per_token = 0;
  double bits_per_char = 0;  // total bits over the characters the scored tokens cover
  int64_t tokens = 0, windows = 0;
};

// max_windows 0 = all. chars_per_token converts to bits per character (characters of the
// text over its tokens; 1 for the char tokenizer apart from end-of-text marks). Distributed,
// each rank scores a contiguous share of the windows and the sums are all-reduced: every
// rank returns the same result, over the same windows as one process would score.
EvalResult evaluate(TinyMoE& model, const TokenFile& tokens, int64_t seq_len, int64_t batch_size,
                    int64_t max_windows, double chars_per_token, const torch::Device& device,
                    const DistributedContext& dist = {});

}  // namespace moelab
