#include "data/batch_sampler.h"

#include <sstream>
#include <vector>

#include "util/error.h"
#include "util/strings.h"

namespace moelab {

BatchSampler::BatchSampler(const TokenFile& tokens, int64_t batch_size, int64_t seq_len, uint64_t seed)
    : tokens_(tokens), batch_size_(batch_size), seq_len_(seq_len), rng_(seed) {
  if (tokens.size() < seq_len + 1)
    throw UserError(strf("%s: %lld tokens, too few for one window of model.seq_len + 1 = %lld",
                         tokens.path().c_str(), (long long)tokens.size(), (long long)(seq_len + 1)));
}

void BatchSampler::next_starts(int64_t* starts) {
  const uint64_t offsets = static_cast<uint64_t>(tokens_.size() - seq_len_);  // last start: size - seq_len - 1
  for (int64_t b = 0; b < batch_size_; ++b) starts[b] = static_cast<int64_t>(rng_() % offsets);
}

void BatchSampler::next(int64_t* inputs, int64_t* targets) {
  std::vector<int64_t> starts(batch_size_), window(seq_len_ + 1);
  next_starts(starts.data());
  for (int64_t b = 0; b < batch_size_; ++b) {
    tokens_.copy_window(starts[b], seq_len_ + 1, window.data());
    std::copy(window.begin(), window.end() - 1, inputs + b * seq_len_);
    std::copy(window.begin() + 1, window.end(), targets + b * seq_len_);
  }
}

std::string BatchSampler::state() const {
  std::ostringstream out;
  out << rng_;
  return out.str();
}

void BatchSampler::restore(const std::string& state) {
  std::istringstream in(state);
  in >> rng_;
  if (!in) throw UserError("checkpoint: the data sampler state does not parse");
}

}  // namespace moelab
