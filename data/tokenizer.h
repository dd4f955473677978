#pragma once
// Tokenizers map corpus text (stories separated by "<|endoftext|>" lines) to ids, with
// each separator becoming the end-of-text id. Both are trained on the training split only
// and saved in the run directory, so a run can always be evaluated and sampled again.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moelab {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<uint32_t> encode(const std::string& text) = 0;
  virtual std::string decode(const std::vector<uint32_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual uint32_t eot_id() const = 0;
  // Characters that were not in the training text, mapped to the unknown id (char only).
  virtual int64_t unknown_count() const { return 0; }
  virtual std::string kind() const = 0;
  virtual void save(const std::string& run_dir) const = 0;
};

// Character tokenizer: id 0 = unknown, 1 = end of text, then the sorted code points of the
// training text.
class CharTokenizer : public Tokenizer {
 public:
  // plain_text: the text's characters as they are, separator lines included (data.end_of_text
  // "text"); otherwise each story ends in the end-of-text token.
  static CharTokenizer train(const std::string& text, bool plain_text = false);
  explicit CharTokenizer(std::vector<char32_t> code_points, bool plain_text = false);
  std::vector<uint32_t> encode(const std::string& text) override;
  std::string decode(const std::vector<uint32_t>& ids) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(code_points_.size()) + 2; }
  uint32_t eot_id() const override { return 1; }
  int64_t unknown_count() const override { return unknown_; }
  std::string kind() const override { return "char"; }
  void save(const std::string& run_dir) const override;
  const std::vector<char32_t>& code_points() const { return code_points_; }
  bool plain_text() const { return plain_text_; }

 private:
  std::vector<char32_t> code_points_;
  bool plain_text_;
  int64_t unknown_ = 0;
};

// Sentencepiece BPE. Sentencepiece and libtorch cannot share a process on Debian (their
// protobuf copies clash), so this class drives the torch-free `moelab-bpe` executable.
class BpeTokenizer : public Tokenizer {
 public:
  static BpeTokenizer train(const std::string& text, int64_t vocab_size, const std::string& run_dir);
  BpeTokenizer(std::string model_path, int64_t vocab_size);
  std::vector<uint32_t> encode(const std::string& text) override;
  std::string decode(const std::vector<uint32_t>& ids) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  uint32_t eot_id() const override { return 1; }
  std::string kind() const override { return "bpe"; }
  void save(const std::string& run_dir) const override;

 private:
  std::string model_path_;
  int64_t vocab_size_;
};

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& run_dir);

// Path of the moelab-bpe helper: $MOELAB_BPE if set, else beside the running executable.
std::string bpe_tool_path();
// Runs a program; a non-zero exit becomes a UserError quoting the last line it printed.
void run_tool(const std::vector<std::string>& argv);

}  // namespace moelab
