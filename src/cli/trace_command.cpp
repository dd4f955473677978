#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>

#include "cli/commands.h"
#include "cli/options.h"
#include "data/prepare.h"
#include "plot/gnuplot.h"
#include "trace/coactivation.h"
#include "trace/neupims_csv.h"
#include "trace/npz_import.h"
#include "trace/placement_jsonl.h"
#include "trace/recorder.h"
#include "trace/synthetic_trace.h"
#include "train/run.h"
#include "util/files.h"
#include "util/strings.h"

namespace moelab::cli {
namespace {

// cxxopts cannot name a long option with one letter; SPEC's command line says --k.
std::vector<std::string> rename_k(int argc, char** argv) {
  std::vector<std::string> renamed(argv, argv + argc);
  for (std::string& a : renamed) {
    if (a == "--k") a = "--top-k";
    else if (a.rfind("--k=", 0) == 0) a = "--top-k=" + a.substr(4);
  }
  return renamed;
}

cxxopts::ParseResult parse_renamed(cxxopts::Options& options, int argc, char** argv, std::vector<std::string>& storage) {
  storage = rename_k(argc, argv);
  std::vector<char*> args;
  for (std::string& a : storage) args.push_back(a.data());
  return parse_options(options, argc, args.data());
}

// Streams records into a JSONL file that appears only once complete.
class JsonlFile {
 public:
  explicit JsonlFile(const std::string& path) : path_(path), tmp_(temp_path_beside(path)), out_(tmp_) {
    if (!out_) throw UserError(path + ": cannot write");
  }
  void write(const TraceRecord& r) { write_placement_jsonl(out_, r); }
  void commit() {
    out_.close();
    commit_file(tmp_, path_);
  }

 private:
  std::string path_, tmp_;
  std::ofstream out_;
};

std::string ordinal(int64_t n) {
  const char* suffix = (n % 100 >= 11 && n % 100 <= 13) ? "th" : n % 10 == 1 ? "st" : n % 10 == 2 ? "nd" : n % 10 == 3 ? "rd" : "th";
  return std::to_string(n) + suffix;
}

// Per-layer expert frequency (CSV + bars) and co-activation (CSV + heatmap) of records.
struct LayerSummaries {
  int64_t experts;
  std::map<int64_t, CoactivationMatrix> coact;
  std::map<int64_t, std::vector<int64_t>> frequency;
  void add(const TraceRecord& r) {
    coact.try_emplace(r.layer, experts).first->second.add(r);
    auto& f = frequency.try_emplace(r.layer, std::vector<int64_t>(experts, 0)).first->second;
    for (int32_t e : r.experts) ++f[e];
  }
  void write(const std::string& prefix, bool coactivation) const {
    for (const auto& [layer, counts] : frequency) {
      std::string csv = "expert,count,share\n";
      int64_t total = 0;
      for (int64_t c : counts) total += c;
      std::vector<std::string> labels;
      std::vector<double> values;
      for (int64_t e = 0; e < experts; ++e) {
        csv += strf("%lld,%lld,%.6f\n", (long long)e, (long long)counts[e], total ? double(counts[e]) / total : 0.0);
        labels.push_back(std::to_string(e));
        values.push_back(static_cast<double>(counts[e]));
      }
      write_file_atomic(prefix + strf("_freq_layer%lld.csv", (long long)layer), csv);
      plot::bar_chart(prefix + strf("_freq_layer%lld.png", (long long)layer), strf("expert frequency, layer %lld", (long long)layer),
                      "expert", "assignments", labels, values);
    }
    if (!coactivation) return;
    for (const auto& [layer, m] : coact) {
      write_file_atomic(prefix + strf("_coact_layer%lld.csv", (long long)layer), m.to_csv());
      std::vector<std::vector<double>> v(experts, std::vector<double>(experts));
      for (int64_t a = 0; a < experts; ++a)
        for (int64_t b = 0; b < experts; ++b) v[a][b] = static_cast<double>(m.at(a, b));
      plot::heatmap(prefix + strf("_coact_layer%lld.png", (long long)layer), strf("expert co-activation, layer %lld", (long long)layer),
                    "expert", "expert", v);
    }
  }
};

int record(int argc, char** argv) {
  cxxopts::Options options("moelab trace", "Record the routing of a trained run over a text file.");
  options.add_options()("run", "run directory", cxxopts::value<std::string>())(
      "data", "text file (TinyStories format or plain)", cxxopts::value<std::string>())(
      "mode", "prefill (every token) | decode (--positions)", cxxopts::value<std::string>()->default_value("prefill"))(
      "positions", "1-based positions for decode, e.g. 1,2,3", cxxopts::value<std::string>()->default_value(""))(
      "format", "jsonl | neupims | coact | freq", cxxopts::value<std::string>()->default_value("jsonl"))(
      "out", "file (jsonl), folder (neupims) or prefix (coact, freq)", cxxopts::value<std::string>())(
      "rows", "mesh rows for origin rows", cxxopts::value<int64_t>()->default_value("16"))(
      "origin", "round-robin (by sequence) | random", cxxopts::value<std::string>()->default_value("round-robin"))(
      "batch-size", "sequences per forward pass (default: the run's batch size)", cxxopts::value<int64_t>()->default_value("0"))(
      "max-sequences", "stop after this many sequences (0 = all)", cxxopts::value<int64_t>()->default_value("0"))(
      "seed", "seed for random origin rows", cxxopts::value<uint64_t>()->default_value("0"))(
      "device", "auto|cpu|cuda", cxxopts::value<std::string>()->default_value("auto"));
  auto args = parse_options(options, argc, argv);
  const std::string format = args["format"].as<std::string>(), out = required<std::string>(args, "out", "moelab trace");
  if (format != "jsonl" && format != "neupims" && format != "coact" && format != "freq")
    throw UserError("moelab trace: --format must be jsonl|neupims|coact|freq, got '" + format + "'");
  RecordOptions o;
  o.mode = args["mode"].as<std::string>();
  if (o.mode != "prefill" && o.mode != "decode") throw UserError("moelab trace: --mode must be prefill or decode");
  o.positions = parse_list<int64_t>(args["positions"].as<std::string>(), "--positions");
  o.rows = args["rows"].as<int64_t>();
  o.origin = args["origin"].as<std::string>();
  if (o.origin != "round-robin" && o.origin != "random") throw UserError("moelab trace: --origin must be round-robin or random");
  if (o.rows < 1) throw UserError("moelab trace: --rows must be >= 1");
  o.max_sequences = args["max-sequences"].as<int64_t>();
  o.seed = args["seed"].as<uint64_t>();

  const std::string run_dir = required<std::string>(args, "run", "moelab trace");
  LoadedRun run = load_run(run_dir, args["device"].as<std::string>());
  o.batch_size = args["batch-size"].as<int64_t>() > 0 ? args["batch-size"].as<int64_t>() : run.config.train.batch_size;
  if (run.model->moe_layers().empty()) throw UserError(run_dir + ": a dense model has no routing to trace");
  const std::string token_path = temp_path_beside(run_dir + "/data/trace.bin");
  encode_text_file(*run.tokenizer, required<std::string>(args, "data", "moelab trace"), token_path);
  TokenFile tokens(token_path);
  std::remove(token_path.c_str());

  const int64_t experts = run.config.router.num_experts;
  const int64_t seq = run.config.model.seq_len;
  const std::string name = "moelab_" + std::filesystem::path(run_dir).filename().string();
  std::unique_ptr<JsonlFile> jsonl;
  if (format == "jsonl") jsonl = std::make_unique<JsonlFile>(out);
  LayerSummaries summaries{experts, {}, {}};
  auto start = std::chrono::steady_clock::now();
  int64_t recorded = record_routing(*run.model, tokens, o, run.device, [&](const TraceRecord& r, int64_t batch, int64_t position) {
    if (jsonl) jsonl->write(r);
    if (format == "coact" || format == "freq") summaries.add(r);
    if (format == "neupims") {
      const int64_t n = r.tokens();
      std::string dir = position < 0 ? strf("%s/Encoder_Batch_%lld/Layer_%lld", out.c_str(), (long long)batch, (long long)r.layer)
                                     : strf("%s/Batch_%lld/%s/Layer_%lld", out.c_str(), (long long)batch, ordinal(position).c_str(),
                                            (long long)r.layer);
      ensure_directory(dir);
      std::string base = position < 0 ? strf("%s/%s_layer%lld_encoder_%lldseqs_%lldtokens", dir.c_str(), name.c_str(),
                                             (long long)r.layer, (long long)(n / seq), (long long)n)
                                      : strf("%s/%s_layer%lld_firstTokens_%lldx%lld", dir.c_str(), name.c_str(), (long long)r.layer,
                                             (long long)n, (long long)seq);
      write_neupims_with_stats(base, r, experts);
    }
  });
  if (jsonl) jsonl->commit();
  if (format == "coact" || format == "freq") summaries.write(out, format == "coact");
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << strf("traced %lld tokens x %zu MoE layers in %.2f s (%s tokens/s) -> %s\n", (long long)recorded,
                    run.model->moe_layers().size(), seconds, human_count(recorded / seconds).c_str(), out.c_str());
  return 0;
}

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
  std::vector<std::string> storage;
  auto args = parse_renamed(options, argc, argv, storage);
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
  JsonlFile file(out);
  generate_synthetic_trace(o, [&](const TraceRecord& r) { file.write(r); });
  file.commit();
  std::cout << "wrote " << out << ": " << o.layers * o.batches << " records, " << o.batches * o.tokens_per_batch
            << " tokens per layer\n";
  return 0;
}

int import_npz(int argc, char** argv) {
  cxxopts::Options options("moelab trace import-npz", "Convert a folder of per-request .npz routing files to placement JSONL.");
  options.add_options()("data-dir", "folder of .npz files", cxxopts::value<std::string>())(
      "out", "JSONL file to write", cxxopts::value<std::string>())(
      "token-slice", "all | prompt | output", cxxopts::value<std::string>()->default_value("all"))(
      "layers", "comma-separated layers (default: all)", cxxopts::value<std::string>()->default_value(""))(
      "max-requests", "files to convert at most (0 = all)", cxxopts::value<int64_t>()->default_value("0"));
  auto args = parse_options(options, argc, argv);
  NpzImportOptions o;
  o.token_slice = args["token-slice"].as<std::string>();
  if (o.token_slice != "all" && o.token_slice != "prompt" && o.token_slice != "output")
    throw UserError("moelab trace import-npz: --token-slice must be all|prompt|output");
  for (int64_t l : parse_list<int64_t>(args["layers"].as<std::string>(), "--layers")) o.layers.insert(l);
  o.max_requests = args["max-requests"].as<int64_t>();
  const std::string out = required<std::string>(args, "out", "moelab trace import-npz");
  JsonlFile file(out);
  int64_t records = 0;
  int64_t files = import_npz_folder(required<std::string>(args, "data-dir", "moelab trace import-npz"), o, [&](const TraceRecord& r) {
    file.write(r);
    ++records;
  });
  file.commit();
  std::cout << strf("imported %lld request files as %lld records -> %s\n", (long long)files, (long long)records, out.c_str());
  return 0;
}

int convert(int argc, char** argv) {
  cxxopts::Options options("moelab trace convert", "NeuPIMs-MoE CSV to placement JSONL (each row's top-k scores).");
  options.add_options()("in", "NeuPIMs CSV", cxxopts::value<std::vector<std::string>>())(
      "out", "JSONL file to write", cxxopts::value<std::string>())(
      "top-k", "experts per token (also --k; default: the most nonzero scores in a row)", cxxopts::value<int>()->default_value("0"))(
      "layer", "layer id to write (default: the file's layer_id column)", cxxopts::value<int64_t>()->default_value("-1"))(
      "rows", "assign origin rows round-robin over this many rows (0 = none)", cxxopts::value<int64_t>()->default_value("0"));
  std::vector<std::string> storage;
  auto args = parse_renamed(options, argc, argv, storage);
  const std::string out = required<std::string>(args, "out", "moelab trace convert");
  JsonlFile file(out);
  int64_t batch = 0;
  for (const std::string& in : required<std::vector<std::string>>(args, "in", "moelab trace convert")) {
    TraceRecord r = read_neupims_csv(in, args["top-k"].as<int>(), args["layer"].as<int64_t>());
    r.batch_id = batch++;
    if (args["rows"].as<int64_t>() > 0)
      for (int64_t t = 0; t < r.tokens(); ++t) r.origin_rows.push_back(static_cast<int32_t>(t % args["rows"].as<int64_t>()));
    file.write(r);
  }
  file.commit();
  std::cout << "wrote " << out << "\n";
  return 0;
}

int stats(int argc, char** argv) {
  cxxopts::Options options("moelab trace stats", "Recompute the top-k statistics files of a NeuPIMs-MoE CSV.");
  options.add_options()("in", "NeuPIMs CSV", cxxopts::value<std::string>())(
      "out-prefix", "prefix of the _top{k}_stats files (default: the CSV path without .csv)",
      cxxopts::value<std::string>()->default_value(""))("top-k", "the model's k (also --k; default: inferred)",
                                                         cxxopts::value<int>()->default_value("0"));
  std::vector<std::string> storage;
  auto args = parse_renamed(options, argc, argv, storage);
  const std::string in = required<std::string>(args, "in", "moelab trace stats");
  TraceRecord r = read_neupims_csv(in, args["top-k"].as<int>());
  const int64_t experts = neupims_csv_experts(in);
  std::string prefix = args["out-prefix"].as<std::string>();
  if (prefix.empty()) prefix = in.size() > 4 && in.compare(in.size() - 4, 4, ".csv") == 0 ? in.substr(0, in.size() - 4) : in;
  for (int k : std::set<int>{1, std::min(2, r.k), r.k}) {
    write_file_atomic(prefix + strf("_top%d_stats.csv", k), topk_stats_csv(r, k, experts));
    write_file_atomic(prefix + strf("_top%d_stats.txt", k), topk_stats_txt(r, k, experts, in));
  }
  std::cout << strf("%s: %lld tokens, %lld experts, k = %d; stats written to %s_top{1,2,%d}_stats.{csv,txt}\n", in.c_str(),
                    (long long)r.tokens(), (long long)experts, r.k, prefix.c_str(), r.k);
  return 0;
}

}  // namespace

int trace_command(int argc, char** argv) {
  if (argc >= 2) {
    const std::string sub = argv[1];
    if (sub == "synth") return synth(argc - 1, argv + 1);
    if (sub == "import-npz") return import_npz(argc - 1, argv + 1);
    if (sub == "convert") return convert(argc - 1, argv + 1);
    if (sub == "stats") return stats(argc - 1, argv + 1);
  }
  return record(argc, argv);
}

}  // namespace moelab::cli
