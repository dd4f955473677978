#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <iostream>

#include "bench/capacity_bench.h"
#include "bench/ep_bench.h"
#include "bench/kernel_bench.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "trace/placement_jsonl.h"
#include "util/files.h"
#include "util/strings.h"

namespace moelab::cli {
namespace {

void write_rows(const std::vector<nlohmann::json>& rows, const std::string& path) {
  if (path.empty()) return;
  std::string text;
  for (const auto& r : rows) text += r.dump() + "\n";
  write_file_atomic(path, text);
}

int capacity(int argc, char** argv) {
  cxxopts::Options options("moelab bench capacity", "Drop rate and routing throughput over capacity factor x E x k, random logits.");
  // Defaults: CapacityBenchOptions's, or the --config grid's; a flag given overrides either.
  const CapacityBenchOptions d;
  auto list = [](const auto& values) {
    std::string out;
    for (const auto& v : values) out += (out.empty() ? "" : ",") + strf("%g", static_cast<double>(v));
    return out;
  };
  options.add_options()("config", "JSONC with the grid (see experiments/capacity*.jsonc)", cxxopts::value<std::string>()->default_value(""))(
      "tokens", "tokens per batch (default: " + std::to_string(d.tokens) + ")", cxxopts::value<int64_t>())(
      "experts", "comma-separated E values (default: " + list(d.experts) + ")", cxxopts::value<std::string>())(
      "top-k", "comma-separated k values (default: " + list(d.top_k) + ")", cxxopts::value<std::string>())(
      "capacity-factors", "comma-separated CF values (default: " + list(d.capacity_factors) + ")", cxxopts::value<std::string>())(
      "iters", "timed iterations per point (default: " + std::to_string(d.iters) + ")", cxxopts::value<int64_t>())(
      "skew-experts", "add --skew-bias to the first N experts (default: " + std::to_string(d.skew_experts) + ")",
      cxxopts::value<int64_t>())("skew-bias", "logit bias of the skewed experts (default: " + strf("%g", d.skew_bias) + ")",
                                 cxxopts::value<double>())(
      "device", "auto|cpu|cuda (default: " + d.device + ")", cxxopts::value<std::string>())(
      "out", "JSONL file", cxxopts::value<std::string>()->default_value(""));
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

// topk | pack | combine | routing | moe-layer over the product of the comma-separated sizes
// (a single point by default; lists give the seed's sweep_pack).
int kernel(const std::string& op, int argc, char** argv) {
  cxxopts::Options options("moelab bench " + op, "Time a routing kernel beside libtorch ops and the device copy bandwidth.");
  options.add_options()("tokens", "tokens (comma list sweeps)", cxxopts::value<std::string>()->default_value("16384"))(
      "hidden", "hidden size d (comma list sweeps)", cxxopts::value<std::string>()->default_value("4096"))(
      "experts", "experts E (comma list sweeps)", cxxopts::value<std::string>()->default_value("128"))(
      "top-k", "experts per token k (comma list sweeps)", cxxopts::value<std::string>()->default_value("2"))(
      "iters", "timed iterations", cxxopts::value<int64_t>()->default_value("50"))(
      "expand", "expert FFN width / d (moe-layer)", cxxopts::value<int64_t>()->default_value("4"))(
      "capacity-factor", "capacity factor (routing, moe-layer)", cxxopts::value<double>()->default_value("1.25"))(
      "skew-experts", "add --skew-bias to the first N experts' logits", cxxopts::value<int64_t>()->default_value("0"))(
      "skew-bias", "logit bias of the skewed experts", cxxopts::value<double>()->default_value("0"))(
      "dtype", "bf16 | fp32", cxxopts::value<std::string>()->default_value("bf16"))(
      "seed", "random seed", cxxopts::value<uint64_t>()->default_value("17"))(
      "profile", "moe-layer: Kineto profiles of both paths under this directory (kernels/, torch/)",
      cxxopts::value<std::string>()->default_value(""))(
      "out", "JSONL file", cxxopts::value<std::string>()->default_value(""));
  auto args = parse_options(options, argc, argv);
  KernelBenchOptions o;
  o.op = op;
  o.profile_dir = args["profile"].as<std::string>();
  o.iters = args["iters"].as<int64_t>();
  o.expand = args["expand"].as<int64_t>();
  o.capacity_factor = args["capacity-factor"].as<double>();
  o.skew_experts = args["skew-experts"].as<int64_t>();
  o.skew_bias = args["skew-bias"].as<double>();
  o.dtype = args["dtype"].as<std::string>();
  o.seed = args["seed"].as<uint64_t>();
  if (o.dtype != "bf16" && o.dtype != "fp32") throw UserError("moelab bench: --dtype must be bf16 or fp32");
  std::vector<nlohmann::json> rows;
  for (int64_t tokens : parse_list<int64_t>(args["tokens"].as<std::string>(), "--tokens"))
    for (int64_t hidden : parse_list<int64_t>(args["hidden"].as<std::string>(), "--hidden"))
      for (int64_t experts : parse_list<int64_t>(args["experts"].as<std::string>(), "--experts"))
        for (int64_t k : parse_list<int64_t>(args["top-k"].as<std::string>(), "--top-k")) {
          o.tokens = tokens;
          o.hidden = hidden;
          o.experts = experts;
          o.top_k = k;
          for (auto& r : run_kernel_bench(o)) {
            std::cout << r.dump() << std::endl;
            rows.push_back(r);
          }
        }
  write_rows(rows, args["out"].as<std::string>());
  return 0;
}

// Seed 003's expert-parallel benchmark: every rank of a torchrun/mpirun job runs it; rank 0
// prints the row (and writes --out).
int expert_parallel(int argc, char** argv) {
  cxxopts::Options options("moelab bench ep",
                           "Expert-parallel MoE layer: T_route, T_comm, T_comp, load skew, sequential vs overlapped. "
                           "Run it on N ranks: torchrun --no-python --nproc-per-node N moelab bench ep ...");
  options.add_options()("tokens", "tokens per rank", cxxopts::value<int64_t>()->default_value("4096"))(
      "hidden", "hidden size d", cxxopts::value<int64_t>()->default_value("4096"))(
      "experts", "experts E (divisible by the ranks)", cxxopts::value<int64_t>()->default_value("64"))(
      "top-k", "experts per token k", cxxopts::value<int64_t>()->default_value("2"))(
      "expand", "expert FFN width / d", cxxopts::value<int64_t>()->default_value("4"))(
      "capacity-factor", "capacity factor (0 = dropless)", cxxopts::value<double>()->default_value("0"))(
      "strategy", "topk | sinkhorn (selection by Sinkhorn-balanced scores)", cxxopts::value<std::string>()->default_value("topk"))(
      "overlap-chunks", "expert groups pipelined in the overlapped layer", cxxopts::value<int64_t>()->default_value("4"))(
      "skew-experts", "add --skew-bias to the first N experts' logits", cxxopts::value<int64_t>()->default_value("0"))(
      "skew-bias", "logit bias of the skewed experts", cxxopts::value<double>()->default_value("0"))(
      "iters", "timed iterations", cxxopts::value<int64_t>()->default_value("20"))(
      "dtype", "bf16 | fp32 (CPU runs fp32)", cxxopts::value<std::string>()->default_value("bf16"))(
      "seed", "random seed", cxxopts::value<uint64_t>()->default_value("17"))(
      "out", "JSONL file (rank 0)", cxxopts::value<std::string>()->default_value(""));
  auto args = parse_options(options, argc, argv);
  EpBenchOptions o;
  o.tokens = args["tokens"].as<int64_t>();
  o.hidden = args["hidden"].as<int64_t>();
  o.experts = args["experts"].as<int64_t>();
  o.top_k = args["top-k"].as<int64_t>();
  o.expand = args["expand"].as<int64_t>();
  o.capacity_factor = args["capacity-factor"].as<double>();
  o.strategy = args["strategy"].as<std::string>();
  o.overlap_chunks = args["overlap-chunks"].as<int64_t>();
  o.skew_experts = args["skew-experts"].as<int64_t>();
  o.skew_bias = args["skew-bias"].as<double>();
  o.iters = args["iters"].as<int64_t>();
  o.dtype = args["dtype"].as<std::string>();
  o.seed = args["seed"].as<uint64_t>();
  if (o.dtype != "bf16" && o.dtype != "fp32") throw UserError("moelab bench ep: --dtype must be bf16 or fp32");
  if (o.tokens < 1 || o.hidden < 1 || o.experts < 1 || o.top_k < 1 || o.top_k > o.experts || o.expand < 1 || o.iters < 1 ||
      o.overlap_chunks < 1)
    throw UserError("moelab bench ep: --tokens, --hidden, --experts, --expand, --iters, --overlap-chunks must be >= 1 and 1 <= --top-k <= --experts");
  nlohmann::json row = run_ep_bench(o);
  if (row["rank"].get<int>() != 0) return 0;
  row.erase("rank");
  std::cout << row.dump() << std::endl;
  std::cout << strf("EP %d ranks (%s), %lld tokens/rank, d %lld, E %lld, k %lld, skew %lld@%.1f: T_route %.3f ms | T_comm %.3f ms "
                    "| T_comp %.3f ms | load skew %.2f cv %.3f | sequential %.3f ms | overlapped %.3f ms | eta_overlap %.3f\n",
                    row["ranks"].get<int>(), row["backend"].get<std::string>().c_str(), (long long)o.tokens,
                    (long long)o.hidden, (long long)o.experts, (long long)o.top_k, (long long)o.skew_experts, o.skew_bias,
                    row["T_route_ms"].get<double>(), row["T_comm_ms"].get<double>(), row["T_comp_ms"].get<double>(),
                    row["load_skew"].get<double>(), row["load_cv"].get<double>(), row["sequential_ms"].get<double>(),
                    row["overlapped_ms"].get<double>(), row["eta_overlap"].get<double>());
  // Where the exchange is small next to the experts' compute, no schedule can gain much.
  const double bound = row["eta_overlap_bound"].get<double>(), comm = row["T_comm_ms"].get<double>();
  const double share = comm / (comm + row["T_comp_ms"].get<double>());
  std::cout << strf("overlap: at most eta %.2f at this shape (the exchange is %.0f%% of exchange + compute); %s\n", bound,
                    100.0 * share,
                    bound < 1.2 ? "a 1.2x gain from overlap is impossible here"
                    : row["eta_overlap"].get<double>() >= 1.2 ? "overlap gains 1.2x or more here"
                                                               : "overlap could gain 1.2x here but this schedule does not");
  write_rows({row}, args["out"].as<std::string>());
  return 0;
}

// The placement-JSONL writer alone: synthetic records (with gates, as `moelab trace` writes
// them) formatted and written to a file, timed over the formatting and the write.
int trace_writer(int argc, char** argv) {
  cxxopts::Options options("moelab bench trace-writer", "Tokens per second of the placement-JSONL trace writer.");
  options.add_options()("tokens", "tokens in all", cxxopts::value<int64_t>()->default_value("2000000"))(
      "tokens-per-record", "tokens per record (a batch x layer)", cxxopts::value<int64_t>()->default_value("4096"))(
      "experts", "experts", cxxopts::value<int64_t>()->default_value("8"))(
      "top-k", "experts per token", cxxopts::value<int64_t>()->default_value("2"))(
      "out", "file to write (removed afterwards)", cxxopts::value<std::string>()->default_value("trace-writer-bench.jsonl"));
  auto args = parse_options(options, argc, argv);
  const int64_t tokens = args["tokens"].as<int64_t>(), per_record = args["tokens-per-record"].as<int64_t>();
  const int64_t experts = args["experts"].as<int64_t>(), k = args["top-k"].as<int64_t>();
  if (tokens < 1 || per_record < 1 || k < 1 || k > experts) throw UserError("moelab bench trace-writer: sizes must be >= 1 and k <= E");
  std::mt19937_64 rng(1);
  TraceRecord record;
  record.k = static_cast<int>(k);
  for (int64_t t = 0; t < per_record; ++t) {
    record.origin_rows.push_back(static_cast<int32_t>(t % 16));
    for (int64_t j = 0; j < k; ++j) {
      record.experts.push_back(static_cast<int32_t>((t + j * 3 + rng() % 2) % experts));
      record.weights.push_back(static_cast<float>(rng() >> 40) / static_cast<float>(1 << 24));
    }
  }
  const std::string path = args["out"].as<std::string>();
  std::ofstream out(path, std::ios::binary);
  if (!out) throw UserError(path + ": cannot write");
  const auto start = std::chrono::steady_clock::now();
  int64_t written = 0;
  for (int64_t batch = 0; written < tokens; ++batch, written += per_record) {
    record.batch_id = batch;
    write_placement_jsonl(out, record);
  }
  out.close();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto bytes = std::filesystem::file_size(path);
  std::remove(path.c_str());
  if (!out) throw UserError(path + ": write failed");
  std::cout << strf("trace writer: %lld tokens (k %lld, with gates) in %.3f s = %s tokens/s, %.1f MB/s\n", (long long)written,
                    (long long)k, seconds, human_count(written / seconds).c_str(), bytes / seconds / 1e6);
  return 0;
}

}  // namespace

int bench_command(int argc, char** argv) {
  const std::string op = argc >= 2 ? argv[1] : "";
  if (op == "--help" || op == "-h") {
    std::cout << "usage: moelab bench <benchmark> [options]     (moelab bench <benchmark> --help for its options)\n\n"
                 "benchmarks:\n"
                 "  topk          fused softmax + top-k gate against libtorch's ops (CUDA)\n"
                 "  sinkhorn      Sinkhorn balancing kernel against libtorch's ops (CUDA)\n"
                 "  pack          dispatch (token -> expert rows) against index_select (CUDA)\n"
                 "  combine       gate-weighted combine against libtorch's ops (CUDA)\n"
                 "  routing       the training path's Router and packing, phase by phase (CUDA)\n"
                 "  moe-layer     MoE layer forward + backward, kernels on and off; grouped GEMM (CUDA)\n"
                 "  capacity      drop rate and routing throughput over CF x E x k (CPU or CUDA)\n"
                 "  ep            expert-parallel layer over N ranks (torchrun; NCCL or Gloo)\n"
                 "  trace-writer  placement JSONL writer throughput (CPU)\n";
    return 0;
  }
  if (op == "capacity") return capacity(argc - 1, argv + 1);
  if (op == "ep") return expert_parallel(argc - 1, argv + 1);
  if (op == "trace-writer") return trace_writer(argc - 1, argv + 1);
  if (op == "topk" || op == "sinkhorn" || op == "pack" || op == "combine" || op == "routing" || op == "moe-layer") return kernel(op, argc - 1, argv + 1);
  throw UserError("moelab bench: usage: moelab bench topk|sinkhorn|routing|pack|combine|moe-layer|capacity|ep|trace-writer [options]");
}

}  // namespace moelab::cli
