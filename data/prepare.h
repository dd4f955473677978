#pragma once
// Data preparation for a run: corpus text -> tokenizer (trained on the training split) ->
// token files in RUN/data/. Done once per run directory; a resumed run reuses the files.
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "config/run_config.h"
#include "data/token_file.h"
#include "data/tokenizer.h"

namespace moelab {

struct PreparedData {
  std::unique_ptr<Tokenizer> tokenizer;
  std::string train_tokens, valid_tokens;  // token file paths
  int64_t valid_chars = 0;                 // code points of the validation text (bits per char)
  int64_t valid_token_count = 0;
  double unigram_entropy = 0;  // nats per token of the training ids: what a model without
                               // context can reach, the bar that learning must clear
};

// RUN/data/info.json records what produced the files (data_source: the data.* keys, the
// generator's seed for built-in stories, the corpus files' sizes). Files of another source are
// prepared again, but a resumed run refuses them (`resuming`): its checkpoint was trained on
// the old ones. A damaged info.json is a UserError naming it.
// `tokenizer_run`: a run directory whose tokenizer encodes the text (fine-tuning keeps its
// base's); empty: a tokenizer is trained on the training split.
PreparedData prepare_data(const DataConfig& data, int64_t seed, const std::string& run_dir, bool resuming = false,
                          const std::string& tokenizer_run = "");
nlohmann::json data_source(const DataConfig& data, int64_t seed, const std::string& tokenizer_run = "");

// Encodes a text file with a run's tokenizer into a token file.
int64_t encode_text_file(Tokenizer& tokenizer, const std::string& text_path, const std::string& token_path);

// A text file encoded with a run's tokenizer, to score or trace it (moelab eval --data,
// moelab trace): the ids go to a scratch file in `scratch_dir`, which is mapped and removed
// at once (the mapping stays valid), and removed too when encoding fails. Fewer than
// `min_tokens` ids is a UserError naming the text file and `what_needs_them`.
struct EncodedText {
  std::unique_ptr<TokenFile> tokens;
  int64_t chars = 0;  // code points of the text
};
EncodedText encode_text_for_run(Tokenizer& tokenizer, const std::string& text_path, const std::string& scratch_dir,
                                int64_t min_tokens, const std::string& what_needs_them);

}  // namespace moelab
