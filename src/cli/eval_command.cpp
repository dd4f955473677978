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
  options.add_options()("run", "run directory", cxxopts::value<std::string>())(
      "data", "a text file (TinyStories format or plain text)", cxxopts::value<std::string>())(
      "windows", "score at most this many seq_len windows (0 = all)", cxxopts::value<int64_t>()->default_value("0"))(
      "device", "auto|cpu|cuda", cxxopts::value<std::string>()->default_value("auto"));
  auto args = parse_options(options, argc, argv);
  const std::string run_dir = required<std::string>(args, "run", "moelab eval");
  LoadedRun run = load_run(run_dir, args["device"].as<std::string>());

  std::string token_path = run_dir + "/data/valid.bin";
  double chars = 0;
  std::string temporary;
  if (args.count("data")) {
    temporary = temp_path_beside(run_dir + "/data/eval.bin");
    chars = static_cast<double>(encode_text_file(*run.tokenizer, args["data"].as<std::string>(), temporary));
    token_path = temporary;
  } else {
    auto info = nlohmann::json::parse(read_text_file(run_dir + "/data/info.json"));
    chars = info.at("valid_chars").get<double>();
  }
  TokenFile tokens(token_path);
  if (!temporary.empty()) std::remove(temporary.c_str());  // the mapping stays valid
  EvalResult r = evaluate(*run.model, tokens, run.config.model.seq_len, run.config.train.batch_size,
                          args["windows"].as<int64_t>(), chars / static_cast<double>(tokens.size()), run.device);
  nlohmann::json out = {{"run", run_dir}, {"step", run.step}, {"data", args.count("data") ? args["data"].as<std::string>() : "validation split"},
                        {"val_loss", r.loss}, {"val_ppl", r.ppl}, {"bits_per_token", r.bits_per_token},
                        {"bits_per_char", r.bits_per_char}, {"tokens", r.tokens}, {"windows", r.windows}};
  std::cout << out.dump(2) << std::endl;
  return 0;
}

}  // namespace moelab::cli
