#include <iostream>

#include "cli/commands.h"
#include "cli/options.h"
#include "train/generate.h"
#include "train/run.h"
#include "train/trainer.h"
#include "util/strings.h"

namespace moelab::cli {

int train_command(int argc, char** argv) {
  cxxopts::Options options("moelab train", "Train a TinyMoE model. With no --config, SPEC's unified defaults "
                                           "on the embedded story corpus.");
  options.add_options()("config", "JSON config (comments allowed)", cxxopts::value<std::string>())(
      "out", "run directory (overrides the config's \"out\")", cxxopts::value<std::string>())(
      "set", "override one key, e.g. --set train.max_steps=20 (repeatable)", cxxopts::value<std::vector<std::string>>())(
      "resume", "continue the run in this directory from its last checkpoint", cxxopts::value<std::string>())(
      "stop-after", "stop after this step, with a checkpoint (as if interrupted)", cxxopts::value<int64_t>())(
      "sample", "characters/tokens of story to sample at the end (0 = none)", cxxopts::value<int64_t>()->default_value("300"));
  auto args = parse_options(options, argc, argv);

  TrainOptions train_options;
  RunConfig config;
  if (args.count("resume")) {
    if (args.count("config") || args.count("set") || args.count("out"))
      throw UserError("moelab train: --resume continues a run with its own config; drop --config/--set/--out");
    train_options.resume_dir = args["resume"].as<std::string>();
  } else {
    std::vector<std::string> overrides;
    if (args.count("set")) overrides = args["set"].as<std::vector<std::string>>();
    if (args.count("out")) overrides.push_back("out=\"" + args["out"].as<std::string>() + "\"");
    config = load_run_config(args.count("config") ? args["config"].as<std::string>() : "", overrides);
  }
  if (args.count("stop-after")) train_options.stop_after = args["stop-after"].as<int64_t>();

  nlohmann::json summary = train(config, train_options);
  if (summary.value("stopped_early", false) || summary.value("rank", 0) != 0) return 0;  // rank 0 reports
  const std::string run_dir = train_options.resume_dir.empty() ? config.out : train_options.resume_dir;
  std::cout << "\n== " << run_dir << " ==\n"
            << strf("steps %lld | val loss %.4f nats/token (unigram entropy of the text: %.3f) | ppl %.3f | "
                    "%.3f bits/char | %s tokens/s (training only)\n",
                    (long long)summary["steps"].get<int64_t>(), summary["final_val_loss"].get<double>(),
                    summary["unigram_entropy"].get<double>(), summary["final_ppl"].get<double>(),
                    summary["bits_per_char"].get<double>(), human_count(summary["tokens_per_s"].get<double>()).c_str());
  const nlohmann::json& routing = summary["routing"];
  if (routing.contains("drop_rate"))
    std::cout << strf("routing: drop rate %.4f | load cv %.4f | gate entropy %.3f | dead experts %.1f\n",
                      routing["drop_rate"].get<double>(), routing["load_cv"].get<double>(),
                      routing["gate_entropy"].get<double>(), routing["dead_experts"].get<double>());
  const int64_t sample = args["sample"].as<int64_t>();
  if (sample > 0) {
    LoadedRun run = load_run(run_dir);
    SamplingOptions sampling;
    sampling.tokens = sample;
    std::cout << "\n-- a story from the model (temperature 0.8, top-k 40) --\n"
              << generate_text(*run.model, *run.tokenizer, "", sampling, run.device) << "\n";
  }
  return 0;
}

}  // namespace moelab::cli
