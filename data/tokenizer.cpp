#include "data/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "data/corpus.h"
#include "util/error.h"
#include "util/files.h"
#include "util/process.h"
#include "util/strings.h"

namespace moelab {
using nlohmann::json;

CharTokenizer::CharTokenizer(std::vector<char32_t> code_points, bool plain_text)
    : code_points_(std::move(code_points)), plain_text_(plain_text) {}

CharTokenizer CharTokenizer::train(const std::string& text, bool plain_text) {
  std::set<char32_t> seen;
  const std::vector<std::string> parts = plain_text ? std::vector<std::string>{text} : split_stories(text);
  for (const std::string& part : parts)
    for (size_t pos = 0; pos < part.size();) seen.insert(next_code_point(part, pos));
  return CharTokenizer(std::vector<char32_t>(seen.begin(), seen.end()), plain_text);
}

std::vector<uint32_t> CharTokenizer::encode(const std::string& text) {
  std::vector<uint32_t> ids;
  ids.reserve(text.size());
  auto encode_characters = [&](const std::string& part) {
    for (size_t pos = 0; pos < part.size();) {
      char32_t cp = next_code_point(part, pos);
      auto it = std::lower_bound(code_points_.begin(), code_points_.end(), cp);
      if (it != code_points_.end() && *it == cp) {
        ids.push_back(static_cast<uint32_t>(it - code_points_.begin()) + 2);
      } else {
        ids.push_back(0);
        ++unknown_;
      }
    }
  };
  if (plain_text_) {
    encode_characters(text);
    return ids;
  }
  for (const std::string& story : split_stories(text)) {
    encode_characters(story);
    ids.push_back(eot_id());
  }
  return ids;
}

std::string CharTokenizer::decode(const std::vector<uint32_t>& ids) const {
  std::string out;
  for (uint32_t id : ids) {
    if (id == 0) out += "\xEF\xBF\xBD";  // U+FFFD replacement character
    else if (id == eot_id()) out += std::string("\n") + kEndOfText + "\n";
    else if (id - 2 < code_points_.size()) append_utf8(out, code_points_[id - 2]);
  }
  return out;
}

void CharTokenizer::save(const std::string& run_dir) const {
  json j = {{"type", "char"}, {"code_points", json::array()}};
  if (plain_text_) j["end_of_text"] = "text";
  for (char32_t cp : code_points_) j["code_points"].push_back(static_cast<uint32_t>(cp));
  write_file_atomic(run_dir + "/tokenizer.json", j.dump() + "\n");
}

// ---- BPE through the moelab-bpe helper ----

std::string bpe_tool_path() {
  if (const char* env = std::getenv("MOELAB_BPE")) return env;
  return executable_directory() + "/moelab-bpe";
}

void run_tool(const std::vector<std::string>& argv) {
  const std::string log_path = temp_path_beside("/tmp/moelab-tool.log");
  const pid_t pid = spawn_logged(argv, log_path);
  if (pid < 0) {
    std::remove(log_path.c_str());
    throw UserError(argv[0] + ": cannot run the BPE helper (build it, or set MOELAB_BPE to its path)");
  }
  const bool ok = wait_for(pid).second;
  std::string log;
  try {
    log = read_text_file(log_path);
  } catch (const UserError&) {
  }
  std::remove(log_path.c_str());
  if (!ok) {
    while (!log.empty() && log.back() == '\n') log.pop_back();
    size_t nl = log.rfind('\n');
    throw UserError(strf("%s %s failed: %s", argv[0].c_str(), argv.size() > 1 ? argv[1].c_str() : "",
                         nl == std::string::npos ? log.c_str() : log.substr(nl + 1).c_str()));
  }
}

BpeTokenizer::BpeTokenizer(std::string model_path, int64_t vocab_size)
    : model_path_(std::move(model_path)), vocab_size_(vocab_size) {}

BpeTokenizer BpeTokenizer::train(const std::string& text, int64_t vocab_size, const std::string& run_dir) {
  std::string input = temp_path_beside(run_dir + "/bpe-train.txt");
  write_file_atomic(input, text);
  std::string prefix = run_dir + "/tokenizer";
  try {
    run_tool({bpe_tool_path(), "train", "--input", input, "--model-prefix", prefix, "--vocab-size",
              std::to_string(vocab_size)});
  } catch (...) {
    std::remove(input.c_str());
    throw;
  }
  std::remove(input.c_str());
  std::remove((prefix + ".vocab").c_str());
  return BpeTokenizer(prefix + ".model", vocab_size);
}

static std::vector<uint32_t> read_ids(const std::string& path) {
  std::string bytes = read_text_file(path);
  std::vector<uint32_t> ids(bytes.size() / 4);
  std::copy(bytes.data(), bytes.data() + ids.size() * 4, reinterpret_cast<char*>(ids.data()));
  return ids;
}

std::vector<uint32_t> BpeTokenizer::encode(const std::string& text) {
  std::string in = temp_path_beside("/tmp/moelab-bpe-in.txt"), out = in + ".ids";
  write_file_atomic(in, text);
  std::vector<uint32_t> ids;
  try {
    run_tool({bpe_tool_path(), "encode", "--model", model_path_, "--input", in, "--output", out});
    ids = read_ids(out);
  } catch (...) {
    std::remove(in.c_str());
    std::remove(out.c_str());
    throw;
  }
  std::remove(in.c_str());
  std::remove(out.c_str());
  return ids;
}

std::string BpeTokenizer::decode(const std::vector<uint32_t>& ids) const {
  std::string in = temp_path_beside("/tmp/moelab-bpe-in.ids"), out = in + ".txt";
  write_file_atomic(in, std::string(reinterpret_cast<const char*>(ids.data()), ids.size() * 4));
  std::string text;
  try {
    run_tool({bpe_tool_path(), "decode", "--model", model_path_, "--input", in, "--output", out});
    text = read_text_file(out);
  } catch (...) {
    std::remove(in.c_str());
    std::remove(out.c_str());
    throw;
  }
  std::remove(in.c_str());
  std::remove(out.c_str());
  return text;
}

void BpeTokenizer::save(const std::string& run_dir) const {
  // A tokenizer loaded from another run (a fine-tuning run's base) brings its model file along.
  const std::string model_path = run_dir + "/tokenizer.model";
  if (model_path_ != model_path) write_file_atomic(model_path, read_text_file(model_path_));
  json j = {{"type", "bpe"}, {"model", "tokenizer.model"}, {"vocab_size", vocab_size_}};
  write_file_atomic(run_dir + "/tokenizer.json", j.dump() + "\n");
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& run_dir) {
  std::string path = run_dir + "/tokenizer.json";
  json j;
  try {
    j = json::parse(read_text_file(path));
    std::string type = j.at("type").get<std::string>();
    if (type == "char") {
      std::vector<char32_t> cps;
      for (const json& v : j.at("code_points")) cps.push_back(static_cast<char32_t>(v.get<uint32_t>()));
      if (!std::is_sorted(cps.begin(), cps.end())) throw UserError(path + ": 'code_points' must be sorted");
      const std::string end_of_text = j.value("end_of_text", std::string("token"));
      if (end_of_text != "token" && end_of_text != "text")
        throw UserError(path + ": field 'end_of_text': must be \"token\" or \"text\", got \"" + end_of_text + "\"");
      return std::make_unique<CharTokenizer>(std::move(cps), end_of_text == "text");
    }
    if (type == "bpe") {
      std::string model = run_dir + "/" + j.at("model").get<std::string>();
      if (!file_exists(model)) throw UserError(path + ": the BPE model " + model + " is missing");
      return std::make_unique<BpeTokenizer>(model, j.at("vocab_size").get<int64_t>());
    }
    throw UserError(path + ": 'type' must be char or bpe, got '" + printable(type) + "'");
  } catch (const json::exception& e) {
    throw UserError(path + ": not a moelab tokenizer file (" + e.what() + ")");
  }
}

}  // namespace moelab
