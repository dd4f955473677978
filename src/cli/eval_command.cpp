#include <iostream>

#include "cli/commands.h"
#include "cli/options.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "train/evaluate.h"
#include "train/run.h"
#include "util/files.h"
#include "util/strings.h"

namespace moelab::cli {

int eval_command(int argc, char** argv) {
  cxxopts::Options options("moelab eval", "Score a run's checkpoint: its validation split, or --data TEXT.");
  options.add_options()("run", "run directory (required)", cxxopts::value<std::string>())(
      "data", "a text file (TinyStories format or plain text)", cxxopts::value<std::string>())(
      "windows", "score at most this many seq_len windows (0 = all)", cxxopts::value<int64_t>()->default_value("0"))(
      "device", "auto|cpu|cuda", cxxopts::value<std::string>()->default_value("auto"));
  auto args = parse_options(options, argc, argv);
  const std::string run_dir = required<std::string>(args, "run", "moelab eval");
  LoadedRun run = load_run(run_dir, args["device"].as<std::string>());

  const int64_t window = run.config.model.seq_len + 1;
  std::unique_ptr<TokenFile> tokens;
  double chars = 0;
  if (args.count("data")) {
    EncodedText text = encode_text_for_run(*run.tokenizer, args["data"].as<std::string>(), run_dir + "/data", window,
                                           "one evaluation window of model.seq_len + 1");
    tokens = std::move(text.tokens);
    chars = static_cast<double>(text.chars);
  } else {
    const std::string info_path = run_dir + "/data/info.json";
    auto info = nlohmann::json::parse(read_text_file(info_path), nullptr, /*allow_exceptions=*/false);
    if (!info.is_object() || !info.contains("valid_chars") || !info["valid_chars"].is_number())
      throw UserError(info_path + ": field 'valid_chars': missing or not a number (the run's data/ folder is damaged)");
    chars = info["valid_chars"].get<double>();
    tokens = std::make_unique<TokenFile>(run_dir + "/data/valid.bin");
  }
  EvalResult r = evaluate(*run.model, *tokens, run.config.model.seq_len, run.config.train.batch_size,
                          args["windows"].as<int64_t>(), chars / static_cast<double>(tokens->size()), run.device);
  nlohmann::json out = {{"run", run_dir}, {"step", run.step}, {"data", args.count("data") ? args["data"].as<std::string>() : "validation split"},
                        {"val_loss", r.loss}, {"val_ppl", r.ppl}, {"bits_per_token", r.bits_per_token},
                        {"bits_per_char", r.bits_per_char}, {"tokens", r.tokens}, {"windows", r.windows}};
  std::cout << out.dump(2) << std::endl;
  return 0;
}

}  // namespace moelab::cli
