#include <fstream>
#include <iostream>

#include "bench/capacity_bench.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "util/files.h"
#include "util/strings.h"

namespace moelab::cli {
namespace {

template <typename T>
std::vector<T> parse_list(const std::string& text, const std::string& flag) {
  std::vector<T> out;
  for (const std::string& part : split(text, ','))
    if (!part.empty()) {
      try {
        out.push_back(static_cast<T>(std::stod(part)));
      } catch (...) {
        throw UserError("moelab bench: " + flag + " expects comma-separated numbers, got '" + text + "'");
      }
    }
  return out;
}

void write_rows(const std::vector<nlohmann::json>& rows, const std::string& path) {
  if (path.empty()) return;
  std::string text;
  for (const auto& r : rows) text += r.dump() + "\n";
  write_file_atomic(path, text);
}

int capacity(int argc, char** argv) {
  cxxopts::Options options("moelab bench capacity", "Drop rate and routing throughput over capacity factor x E x k, random logits.");
  options.add_options()("config", "JSONC with the grid (see experiments/capacity*.jsonc)", cxxopts::value<std::string>()->default_value(""))(
      "tokens", "tokens per batch", cxxopts::value<int64_t>())("experts", "comma-separated E values", cxxopts::value<std::string>())(
      "top-k", "comma-separated k values", cxxopts::value<std::string>())(
      "capacity-factors", "comma-separated CF values", cxxopts::value<std::string>())(
      "iters", "timed iterations per point", cxxopts::value<int64_t>())(
      "skew-experts", "add --skew-bias to the first N experts", cxxopts::value<int64_t>())(
      "skew-bias", "logit bias of the skewed experts", cxxopts::value<double>())(
      "device", "auto|cpu|cuda", cxxopts::value<std::string>())("out", "JSONL file", cxxopts::value<std::string>()->default_value(""));
  auto args = parse_options(options, argc, argv);
  CapacityBenchOptions o = args["config"].as<std::string>().empty() ? CapacityBenchOptions{} : load_capacity_bench(args["config"].as<std::string>());
  if (args.count("tokens")) o.tokens = args["tokens"].as<int64_t>();
  if (args.count("experts")) o.experts = parse_list<int64_t>(args["experts"].as<std::string>(), "--experts");
  if (args.count("top-k")) o.top_k = parse_list<int64_t>(args["top-k"].as<std::string>(), "--top-k");
  if (args.count("capacity-factors")) o.capacity_factors = parse_list<double>(args["capacity-factors"].as<std::string>(), "--capacity-factors");
  if (args.count("iters")) o.iters = args["iters"].as<int64_t>();
  if (args.count("skew-experts")) o.skew_experts = args["skew-experts"].as<int64_t>();
  if (args.count("skew-bias")) o.skew_bias = args["skew-bias"].as<double>();
  if (args.count("device")) o.device = args["device"].as<std::string>();
  auto rows = run_capacity_bench(o);
  std::cout << strf("capacity microbenchmark: %lld tokens, softk selection, position drop policy, seed %llu\n",
                    (long long)o.tokens, (unsigned long long)o.seed)
            << strf("%6s %3s %6s %8s %10s %12s\n", "E", "k", "CF", "C", "drop rate", "tokens/s");
  for (const auto& r : rows)
    std::cout << strf("%6lld %3lld %6.2f %8lld %10.4f %12s\n", (long long)r["experts"].get<int64_t>(), (long long)r["top_k"].get<int64_t>(),
                      r["capacity_factor"].get<double>(), (long long)r["capacity"].get<int64_t>(), r["drop_rate"].get<double>(),
                      human_count(r["tokens_per_s"].get<double>()).c_str());
  write_rows(rows, args["out"].as<std::string>());
  return 0;
}

}  // namespace

int bench_command(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "capacity") return capacity(argc - 1, argv + 1);
  throw UserError("moelab bench: usage: moelab bench capacity [options]");
}

}  // namespace moelab::cli
