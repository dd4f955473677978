#include "data/prepare.h"

#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "data/corpus.h"
#include "data/story_generator.h"
#include "data/token_file.h"
#include "util/error.h"
#include "util/files.h"
#include "util/log.h"
#include "util/strings.h"

namespace moelab {
using nlohmann::json;

static double unigram_entropy(const std::vector<uint32_t>& ids, int64_t vocab_size) {
  std::vector<double> counts(static_cast<size_t>(vocab_size), 0.0);
  for (uint32_t id : ids) counts[id] += 1.0;
  double entropy = 0, total = static_cast<double>(ids.size());
  for (double c : counts)
    if (c > 0) entropy -= c / total * std::log(c / total);
  return entropy;
}

// Characters of `text` as `tokenizer` reads it: a plain-text char tokenizer counts every one;
// otherwise each story counts its own and one for its end of text.
static int64_t text_chars(const std::string& text, const Tokenizer& tokenizer) {
  const auto* char_tokenizer = dynamic_cast<const CharTokenizer*>(&tokenizer);
  if (char_tokenizer && char_tokenizer->plain_text()) return static_cast<int64_t>(count_code_points(text));
  int64_t chars = 0;
  for (const std::string& story : split_stories(text)) chars += static_cast<int64_t>(count_code_points(story)) + 1;
  return chars;
}

json data_source(const DataConfig& data, int64_t seed, const std::string& tokenizer_run) {
  json source = {{"train", data.train}, {"valid", data.valid ? json(*data.valid) : json(nullptr)},
                 {"tokenizer", data.tokenizer}};
  if (!tokenizer_run.empty()) source["tokenizer_from"] = tokenizer_run;
  if (!data.valid) source["val_fraction"] = data.val_fraction;
  if (data.tokenizer == "bpe") source["bpe_vocab_size"] = data.bpe_vocab_size;
  if (data.end_of_text != "token") source["end_of_text"] = data.end_of_text;
  if (data.train == "builtin") {
    source["builtin_stories"] = data.builtin_stories;
    if (data.builtin_style != "tales") source["builtin_style"] = data.builtin_style;
    source["seed"] = seed;  // the generator's
  }
  // A corpus file's size: the same path holding another text is other data.
  if (data.train != "builtin" && file_exists(data.train)) source["train_bytes"] = file_size(data.train);
  if (data.valid && file_exists(*data.valid)) source["valid_bytes"] = file_size(*data.valid);
  return source;
}

namespace {
// The keys on which `prepared` (from info.json) and `wanted` differ, as "key: prepared -> wanted".
// A corpus size that the prepared data recorded but the file no longer has (moved or removed)
// is no difference: the prepared files are the data.
std::string source_differences(const json& prepared, const json& wanted) {
  std::string out;
  for (auto it = wanted.begin(); it != wanted.end(); ++it) {
    const json before = prepared.contains(it.key()) ? prepared[it.key()] : json(nullptr);
    if (before != it.value())
      out += (out.empty() ? "" : ", ") + it.key() + ": " + before.dump() + " -> " + it.value().dump();
  }
  for (auto it = prepared.begin(); it != prepared.end(); ++it)
    if (!wanted.contains(it.key()) && it.key().find("_bytes") == std::string::npos)
      out += (out.empty() ? "" : ", ") + it.key() + ": " + it.value().dump() + " -> (none)";
  return out;
}
}  // namespace

PreparedData prepare_data(const DataConfig& data, int64_t seed, const std::string& run_dir, bool resuming,
                          const std::string& tokenizer_run) {
  PreparedData out;
  std::string dir = run_dir + "/data";
  out.train_tokens = dir + "/train.bin";
  out.valid_tokens = dir + "/valid.bin";
  std::string info_path = dir + "/info.json";
  const json wanted = data_source(data, seed, tokenizer_run);
  if (file_exists(info_path)) {
    json info = json::parse(read_text_file(info_path), nullptr, /*allow_exceptions=*/false);
    if (!info.is_object() || !info.contains("valid_chars") || !info["valid_chars"].is_number_integer() ||
        !info.contains("valid_tokens") || !info.contains("unigram_entropy"))
      throw UserError(info_path + ": not the prepared data's description (the run's data/ folder is damaged)");
    const std::string differences = source_differences(info.value("source", json::object()), wanted);
    const bool complete = file_exists(out.train_tokens) && file_exists(out.valid_tokens) && file_exists(run_dir + "/tokenizer.json");
    if (differences.empty() && complete) {
      out.tokenizer = load_tokenizer(run_dir);
      out.valid_chars = info.at("valid_chars").get<int64_t>();
      out.valid_token_count = info.at("valid_tokens").get<int64_t>();
      out.unigram_entropy = info.at("unigram_entropy").get<double>();
      return out;
    }
    // A resumed run must train on the data its checkpoint was trained on.
    if (resuming)
      throw UserError(info_path + ": " +
                      (complete ? "the run's data was prepared from another source than its config and corpus give now (" +
                                      differences + "); restore them, or start a new run"
                                : std::string("the prepared token files are incomplete; start a new run")));
    log::info(info_path + ": prepared by an earlier attempt from other data (" + differences + "); preparing again");
  }
  ensure_directory(dir);

  std::string train_text = data.train == "builtin" ? generate_stories(data.builtin_stories, static_cast<uint64_t>(seed), data.builtin_style)
                                                   : read_corpus_file(data.train);
  std::string valid_text;
  if (data.valid) {
    valid_text = read_corpus_file(*data.valid);
  } else {
    auto parts = split_tail(train_text, data.val_fraction);
    train_text = std::move(parts.first);
    valid_text = std::move(parts.second);
  }
  if (split_stories(train_text).empty()) throw UserError(data.train + ": no text left for training");
  if (split_stories(valid_text).empty()) throw UserError("data: the validation text is empty");

  if (data.end_of_text == "text" && (data.tokenizer != "char" || !tokenizer_run.empty()))
    throw UserError("data.end_of_text: \"text\" needs data.tokenizer \"char\" trained on this run's text (the BPE "
                    "tokenizer, or a fine-tuning base's, keeps its own end of text)");
  if (!tokenizer_run.empty()) {
    out.tokenizer = load_tokenizer(tokenizer_run);
  } else if (data.tokenizer == "char") {
    out.tokenizer = std::make_unique<CharTokenizer>(CharTokenizer::train(train_text, data.end_of_text == "text"));
  } else {
    out.tokenizer = std::make_unique<BpeTokenizer>(BpeTokenizer::train(train_text, data.bpe_vocab_size, run_dir));
  }
  std::vector<uint32_t> train_ids = out.tokenizer->encode(train_text);
  int64_t unknown_before = out.tokenizer->unknown_count();
  if (unknown_before > 0)
    log::warn(strf("%s: %lld characters not in %s's tokenizer map to <unk>", data.train.c_str(), (long long)unknown_before,
                   tokenizer_run.c_str()));
  std::vector<uint32_t> valid_ids = out.tokenizer->encode(valid_text);
  int64_t unknown_valid = out.tokenizer->unknown_count() - unknown_before;
  if (unknown_valid > 0)
    log::warn(strf("validation text: %lld characters not in the training text map to <unk>", (long long)unknown_valid));

  write_token_file(out.train_tokens, train_ids, out.tokenizer->vocab_size());
  write_token_file(out.valid_tokens, valid_ids, out.tokenizer->vocab_size());
  out.tokenizer->save(run_dir);
  out.valid_chars = text_chars(valid_text, *out.tokenizer);
  out.valid_token_count = static_cast<int64_t>(valid_ids.size());
  out.unigram_entropy = unigram_entropy(train_ids, out.tokenizer->vocab_size());
  json info = {{"train_tokens", train_ids.size()},   {"valid_tokens", valid_ids.size()},
               {"train_chars", text_chars(train_text, *out.tokenizer)}, {"valid_chars", out.valid_chars},
               {"vocab_size", out.tokenizer->vocab_size()}, {"tokenizer", out.tokenizer->kind()},
               {"unknown_in_valid", unknown_valid}, {"unigram_entropy", out.unigram_entropy},
               {"source", wanted}};
  write_file_atomic(info_path, info.dump(2) + "\n");
  log::info(strf("data: %s train tokens, %s validation tokens, vocab %lld (%s), unigram entropy %.3f nats/token",
                 human_count(train_ids.size()).c_str(), human_count(valid_ids.size()).c_str(),
                 (long long)out.tokenizer->vocab_size(), out.tokenizer->kind().c_str(), out.unigram_entropy));
  return out;
}

int64_t encode_text_file(Tokenizer& tokenizer, const std::string& text_path, const std::string& token_path) {
  std::string text = read_corpus_file(text_path);
  int64_t before = tokenizer.unknown_count();
  std::vector<uint32_t> ids = tokenizer.encode(text);
  if (tokenizer.unknown_count() > before)
    log::warn(strf("%s: %lld characters unknown to the tokenizer map to <unk>", text_path.c_str(),
                   (long long)(tokenizer.unknown_count() - before)));
  write_token_file(token_path, ids, tokenizer.vocab_size());
  return text_chars(text, tokenizer);
}

EncodedText encode_text_for_run(Tokenizer& tokenizer, const std::string& text_path, const std::string& scratch_dir,
                                int64_t min_tokens, const std::string& what_needs_them) {
  const std::string scratch = temp_path_beside(scratch_dir + "/text.bin");
  struct RemoveOnExit {
    const std::string& path;
    ~RemoveOnExit() { std::remove(path.c_str()); }
  } remove_scratch{scratch};
  EncodedText out;
  out.chars = encode_text_file(tokenizer, text_path, scratch);
  out.tokens = std::make_unique<TokenFile>(scratch);
  if (out.tokens->size() < min_tokens)
    throw UserError(strf("%s: %lld tokens, fewer than the %lld that %s needs", text_path.c_str(), (long long)out.tokens->size(),
                         (long long)min_tokens, what_needs_them.c_str()));
  return out;
}

}  // namespace moelab
