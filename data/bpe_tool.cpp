// moelab-bpe: sentencepiece BPE training, encoding and decoding in a process of its own.
// Debian's sentencepiece bundles protobuf-lite 3.14 and libtorch loads protobuf 3.21: one
// process with both crashes before main, so moelab runs this helper instead.
//   moelab-bpe train  --input TEXT --model-prefix PREFIX --vocab-size N
//   moelab-bpe encode --model M --input TEXT --output IDS   (raw little-endian uint32)
//   moelab-bpe decode --model M --input IDS --output TEXT
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "data/corpus.h"
#include "util/files.h"

namespace {

std::map<std::string, std::string> parse_flags(int argc, char** argv) {
  std::map<std::string, std::string> flags;
  for (int i = 2; i + 1 < argc; i += 2) flags[argv[i]] = argv[i + 1];
  return flags;
}

std::string need(const std::map<std::string, std::string>& flags, const std::string& name) {
  auto it = flags.find(name);
  if (it == flags.end()) throw std::runtime_error("missing " + name);
  return it->second;
}

// Exact round trips: no normalisation, whitespace kept, unseen characters as bytes.
int train(const std::map<std::string, std::string>& flags) {
  std::string input = need(flags, "--input");
  // One sentence per line; the separator lines are not text.
  std::string lines_path = input + ".lines";
  {
    std::ofstream out(lines_path);
    for (const std::string& story : moelab::split_stories(moelab::read_text_file(input))) out << story << "\n";
  }
  std::ostringstream args;
  args << "--input=" << lines_path << " --model_prefix=" << need(flags, "--model-prefix")
       << " --vocab_size=" << need(flags, "--vocab-size")
       << " --model_type=bpe --character_coverage=1.0 --byte_fallback=true"
       << " --normalization_rule_name=identity --remove_extra_whitespaces=false --add_dummy_prefix=false"
       << " --split_digits=true --unk_id=0 --eos_id=1 --bos_id=-1 --pad_id=-1"
       << " --max_sentence_length=65536 --num_threads=2 --minloglevel=1";
  auto status = sentencepiece::SentencePieceTrainer::Train(args.str());
  std::remove(lines_path.c_str());
  if (!status.ok()) throw std::runtime_error("training: " + status.ToString());
  return 0;
}

std::unique_ptr<sentencepiece::SentencePieceProcessor> load(const std::map<std::string, std::string>& flags) {
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  auto status = sp->Load(need(flags, "--model"));
  if (!status.ok()) throw std::runtime_error(need(flags, "--model") + ": " + status.ToString());
  return sp;
}

int encode(const std::map<std::string, std::string>& flags) {
  auto processor = load(flags);
  auto& sp = *processor;
  std::vector<uint32_t> ids;
  for (const std::string& story : moelab::split_stories(moelab::read_text_file(need(flags, "--input")))) {
    std::vector<int> piece_ids;
    auto status = sp.Encode(story, &piece_ids);
    if (!status.ok()) throw std::runtime_error("encode: " + status.ToString());
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
    ids.push_back(static_cast<uint32_t>(sp.eos_id()));
  }
  moelab::write_file_atomic(need(flags, "--output"),
                            std::string(reinterpret_cast<const char*>(ids.data()), ids.size() * 4));
  return 0;
}

int decode(const std::map<std::string, std::string>& flags) {
  auto processor = load(flags);
  auto& sp = *processor;
  std::string bytes = moelab::read_text_file(need(flags, "--input"));
  std::vector<int> ids(bytes.size() / 4);
  std::copy(bytes.data(), bytes.data() + ids.size() * 4, reinterpret_cast<char*>(ids.data()));
  std::string text;
  std::vector<int> run;
  auto flush = [&] {
    std::string piece;
    auto status = sp.Decode(run, &piece);
    if (!status.ok()) throw std::runtime_error("decode: " + status.ToString());
    text += piece;
    run.clear();
  };
  for (int id : ids) {
    if (id < 0 || id >= sp.GetPieceSize()) throw std::runtime_error("decode: id " + std::to_string(id) + " out of range");
    if (id == sp.eos_id()) {
      flush();
      text += std::string("\n") + moelab::kEndOfText + "\n";
    } else {
      run.push_back(id);
    }
  }
  flush();
  moelab::write_file_atomic(need(flags, "--output"), text);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: moelab-bpe train|encode|decode --flag value ...\n";
    return 2;
  }
  std::string command = argv[1];
  try {
    auto flags = parse_flags(argc, argv);
    if (command == "train") return train(flags);
    if (command == "encode") return encode(flags);
    if (command == "decode") return decode(flags);
    std::cerr << "moelab-bpe: unknown command " << command << "\n";
  } catch (const std::exception& e) {
    std::cerr << "moelab-bpe " << command << ": " << e.what() << "\n";
  }
  return 2;
}
