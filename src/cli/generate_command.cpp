#include <cmath>
#include <iostream>

#include "cli/commands.h"
#include "cli/options.h"
#include "train/generate.h"
#include "train/run.h"

namespace moelab::cli {

int generate_command(int argc, char** argv) {
  cxxopts::Options options("moelab generate", "Sample a story from a run's checkpoint.");
  options.add_options()("run", "run directory (required)", cxxopts::value<std::string>())(
      "prompt", "text to continue (empty: a new story)", cxxopts::value<std::string>()->default_value(""))(
      "tokens", "tokens to generate at most", cxxopts::value<int64_t>()->default_value("400"))(
      "temperature", "sampling temperature (0 = greedy)", cxxopts::value<double>()->default_value("0.8"))(
      "top-k", "sample among the k likeliest tokens (0 = all)", cxxopts::value<int64_t>()->default_value("40"))(
      "seed", "random seed", cxxopts::value<uint64_t>()->default_value("17"))(
      "device", "auto|cpu|cuda", cxxopts::value<std::string>()->default_value("auto"));
  auto args = parse_options(options, argc, argv);
  LoadedRun run = load_run(required<std::string>(args, "run", "moelab generate"), args["device"].as<std::string>());
  SamplingOptions sampling;
  sampling.tokens = args["tokens"].as<int64_t>();
  sampling.temperature = args["temperature"].as<double>();
  sampling.top_k = args["top-k"].as<int64_t>();
  sampling.seed = args["seed"].as<uint64_t>();
  if (sampling.tokens < 0 || sampling.top_k < 0) throw UserError("moelab generate: --tokens and --top-k must be >= 0");
  if (!(sampling.temperature >= 0) || !std::isfinite(sampling.temperature))
    throw UserError("moelab generate: --temperature must be a finite number >= 0 (0 = greedy)");
  std::cout << generate_text(*run.model, *run.tokenizer, args["prompt"].as<std::string>(), sampling, run.device) << std::endl;
  return 0;
}

}  // namespace moelab::cli
