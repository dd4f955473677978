#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "cli/options.h"
#include "trace/placement_jsonl.h"
#include "trace/synthetic_trace.h"
#include "util/files.h"

namespace moelab::cli {
namespace {

int synth(int argc, char** argv) {
  cxxopts::Options options("moelab trace synth", "Write a synthetic routing trace (placement JSONL).");
  SyntheticTraceOptions d;
  options.add_options()("out", "JSONL file to write", cxxopts::value<std::string>())(
      "layers", "MoE layers", cxxopts::value<int64_t>()->default_value(std::to_string(d.layers)))(
      "batches", "batches", cxxopts::value<int64_t>()->default_value(std::to_string(d.batches)))(
      "tokens-per-batch", "tokens per batch", cxxopts::value<int64_t>()->default_value(std::to_string(d.tokens_per_batch)))(
      "rows", "mesh rows for origin rows", cxxopts::value<int64_t>()->default_value(std::to_string(d.rows)))(
      "experts", "experts", cxxopts::value<int64_t>()->default_value(std::to_string(d.experts)))(
      "top-k", "experts per token (also --k)", cxxopts::value<int64_t>()->default_value(std::to_string(d.k)))(
      "zipf", "Zipf exponent of expert popularity", cxxopts::value<double>()->default_value("1.0"))(
      "coact", "co-activation probability", cxxopts::value<double>()->default_value("0.0"))(
      "seed", "random seed", cxxopts::value<uint64_t>()->default_value("0"));
  // cxxopts cannot name a long option with one letter; SPEC's command line says --k.
  std::vector<std::string> renamed(argv, argv + argc);
  for (std::string& a : renamed) {
    if (a == "--k") a = "--top-k";
    else if (a.rfind("--k=", 0) == 0) a = "--top-k=" + a.substr(4);
  }
  std::vector<char*> args_v;
  for (std::string& a : renamed) args_v.push_back(a.data());
  auto args = parse_options(options, argc, args_v.data());
  SyntheticTraceOptions o;
  o.layers = args["layers"].as<int64_t>();
  o.batches = args["batches"].as<int64_t>();
  o.tokens_per_batch = args["tokens-per-batch"].as<int64_t>();
  o.rows = args["rows"].as<int64_t>();
  o.experts = args["experts"].as<int64_t>();
  o.k = args["top-k"].as<int64_t>();
  o.zipf = args["zipf"].as<double>();
  o.coactivation = args["coact"].as<double>();
  o.seed = args["seed"].as<uint64_t>();
  const std::string out = required<std::string>(args, "out", "moelab trace synth");
  const std::string tmp = temp_path_beside(out);
  {
    std::ofstream file(tmp);
    if (!file) throw UserError(out + ": cannot write");
    generate_synthetic_trace(o, [&](const TraceRecord& r) { write_placement_jsonl(file, r); });
  }
  commit_file(tmp, out);
  std::cout << "wrote " << out << ": " << o.layers * o.batches << " records, " << o.batches * o.tokens_per_batch
            << " tokens per layer\n";
  return 0;
}

}  // namespace

int trace_command(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "synth") return synth(argc - 1, argv + 1);
  throw UserError("moelab trace: usage: moelab trace synth --out FILE [options] (see moelab trace synth --help)");
}

}  // namespace moelab::cli
