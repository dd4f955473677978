#include <chrono>
#include <deque>
#include <filesystem>
#include <future>
#include <iostream>
#include <map>
#include <regex>
#include <thread>

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
#include "util/thread_pool.h"

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

// The path, once the folder it names exists.
const std::string& with_folder(const std::string& path) {
  const std::string folder = std::filesystem::path(path).parent_path().string();
  if (!folder.empty()) ensure_directory(folder);
  return path;
}

// Streams records into a JSONL file that appears only once complete (AtomicFileWriter: a
// failed run leaves nothing, a full disk is one error). Lines are formatted on worker
// threads, a few records ahead, and written in order: on a GPU, formatting rather than the
// model bounds a trace.
class JsonlFile {
 public:
  explicit JsonlFile(const std::string& path) : file_(with_folder(path)) {}
  void write(const TraceRecord& r) {
    pending_.push_back(formatters_.submit([r] { return placement_jsonl_line(r); }));
    if (pending_.size() > max_pending_) write_oldest();
  }
  void commit() {
    while (!pending_.empty()) write_oldest();
    file_.commit();
  }

 private:
  void write_oldest() {
    const std::string line = pending_.front().get();
    pending_.pop_front();
    file_.write(line.data(), line.size());
  }
  AtomicFileWriter file_;
  std::deque<std::future<std::string>> pending_;
  const size_t max_pending_ = std::max(2u, std::thread::hardware_concurrency());
  ThreadPool formatters_{max_pending_};
};

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
  options.add_options()("run", "run directory (required)", cxxopts::value<std::string>())(
      "data", "text file (TinyStories format or plain) (required)", cxxopts::value<std::string>())(
      "mode", "prefill (every token) | decode (--positions)", cxxopts::value<std::string>()->default_value("prefill"))(
      "positions", "1-based positions for decode, e.g. 1,2,3", cxxopts::value<std::string>()->default_value(""))(
      "format", "jsonl | neupims | coact | freq", cxxopts::value<std::string>()->default_value("jsonl"))(
      "out", "file (jsonl), folder (neupims) or prefix (coact, freq) (required)", cxxopts::value<std::string>())(
      "rows", "mesh rows for origin rows", cxxopts::value<int64_t>()->default_value("16"))(
      "origin", "round-robin (by sequence) | random", cxxopts::value<std::string>()->default_value("round-robin"))(
      "batch-size", "sequences per forward pass (default: the run's batch size)", cxxopts::value<int64_t>()->default_value("0"))(
      "max-sequences", "stop after this many sequences (0 = all)", cxxopts::value<int64_t>()->default_value("0"))(
      "seed", "seed for random origin rows", cxxopts::value<uint64_t>()->default_value("0"))(
      "true-layer-ids", "neupims: write each layer's own id in layer_id (default 0, which the simulator reads)")(
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
  o.gates_before_capacity = format == "neupims";
  const bool true_layer_ids = args["true-layer-ids"].as<bool>();

  const std::string run_dir = required<std::string>(args, "run", "moelab trace");
  LoadedRun run = load_run(run_dir, args["device"].as<std::string>());
  o.batch_size = args["batch-size"].as<int64_t>() > 0 ? args["batch-size"].as<int64_t>() : run.config.train.batch_size;
  if (run.model->moe_layers().empty()) throw UserError(run_dir + ": a dense model has no routing to trace");
  EncodedText text = encode_text_for_run(*run.tokenizer, required<std::string>(args, "data", "moelab trace"), run_dir + "/data",
                                         run.config.model.seq_len + 1, "one sequence of model.seq_len + 1");
  const TokenFile& tokens = *text.tokens;

  const int64_t experts = run.config.router.num_experts;
  const int64_t seq = run.config.model.seq_len;
  const std::string name = "moelab_" + std::filesystem::path(run_dir).filename().string();
  std::unique_ptr<JsonlFile> jsonl;
  if (format == "jsonl") jsonl = std::make_unique<JsonlFile>(out);
  LayerSummaries summaries{experts, {}, {}};
  // On a CPU a small model's ops last microseconds, too short for the intra-op pool to share
  // cores well (its barriers cost more than its threads gain): one replica per core routes
  // consecutive batches at once instead. Larger models split their ops well, and a replica
  // per core would multiply their memory.
  constexpr int64_t kReplicatedTraceParameters = 20'000'000;
  std::vector<std::shared_ptr<TinyMoE>> extra_replicas;
  std::vector<TinyMoE*> replicas{run.model.get()};
  if (run.device.is_cpu() && run.model->parameter_count() < kReplicatedTraceParameters)
    for (int i = 1; i < at::get_num_threads(); ++i) {
      extra_replicas.push_back(load_run(run_dir, "cpu").model);
      replicas.push_back(extra_replicas.back().get());
    }
  auto start = std::chrono::steady_clock::now();
  int64_t recorded = record_routing(replicas, tokens, o, run.device, [&](const TraceRecord& r, int64_t batch, int64_t position) {
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
      StatsReport report;
      report.layer = r.layer;
      report.seq_len = seq;
      report.position = std::max<int64_t>(position, 0);
      write_neupims_with_stats(base, r, experts, report, true_layer_ids);
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
  options.add_options()("out", "JSONL file to write (required)", cxxopts::value<std::string>())(
      "layers", "MoE layers", cxxopts::value<int64_t>()->default_value(std::to_string(d.layers)))(
      "batches", "batches", cxxopts::value<int64_t>()->default_value(std::to_string(d.batches)))(
      "tokens-per-batch", "tokens per batch", cxxopts::value<int64_t>()->default_value(std::to_string(d.tokens_per_batch)))(
      "rows", "mesh rows for origin rows", cxxopts::value<int64_t>()->default_value(std::to_string(d.rows)))(
      "experts", "experts", cxxopts::value<int64_t>()->default_value(std::to_string(d.experts)))(
      "top-k", "experts per token (also --k)", cxxopts::value<int64_t>()->default_value(std::to_string(d.k)))(
      "zipf", "Zipf exponent of expert popularity", cxxopts::value<double>()->default_value(strf("%g", d.zipf)))(
      "coact", "co-activation probability", cxxopts::value<double>()->default_value(strf("%g", d.coactivation)))(
      "generator", "moe-balance (generate_trace.py's output, byte for byte) | partners (moelab's, with co-activation structure)",
      cxxopts::value<std::string>()->default_value(d.generator))(
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
  o.generator = args["generator"].as<std::string>();
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
  options.add_options()("data-dir", "folder of .npz files (required)", cxxopts::value<std::string>())(
      "out", "JSONL file to write (required)", cxxopts::value<std::string>())(
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
  options.add_options()("in", "NeuPIMs CSV (required)", cxxopts::value<std::vector<std::string>>())(
      "out", "JSONL file to write (required)", cxxopts::value<std::string>())(
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

// What a stats report states that the CSV does not hold, read from the producer's names when
// not given: the layer (`..._layer20_...`, `layer20.csv` or a `Layer_20` folder), the decode
// position (a `..._firstTokens_NxL` file in a `2nd` folder) and the sequence length
// (`..._{S}seqs_{T}tokens`).
StatsReport stats_report(const std::string& path, int64_t layer, int64_t seq_len, int64_t position, int64_t file_layer) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  const std::string name = p.filename().string(), folder = p.parent_path().filename().string();
  const std::string grandparent = p.parent_path().parent_path().filename().string();
  std::smatch m;
  StatsReport report;
  report.layer = file_layer;
  if (layer >= 0) report.layer = layer;
  else if (std::regex_search(name, m, std::regex("layer_?(\\d+)", std::regex::icase))) report.layer = std::stoll(m[1]);
  else if (std::regex_match(folder, m, std::regex("Layer_(\\d+)"))) report.layer = std::stoll(m[1]);
  report.position = position;
  if (position <= 0 && name.find("_firstTokens_") != std::string::npos) {
    if (!std::regex_match(grandparent, m, std::regex("(\\d+)(st|nd|rd|th)")))
      throw UserError(path + ": a decode trace (firstTokens) outside a 1st/2nd/... folder: give --position");
    report.position = std::stoll(m[1]);
  }
  report.seq_len = seq_len;
  if (report.position <= 0 && seq_len <= 0) {
    if (!std::regex_search(name, m, std::regex("_(\\d+)seqs_(\\d+)tokens")) || std::stoll(m[1]) == 0)
      throw UserError(path + ": the report states the sequence length, which the file name does not give: pass --seq-len");
    report.seq_len = std::stoll(m[2]) / std::stoll(m[1]);
  }
  return report;
}

int stats(int argc, char** argv) {
  cxxopts::Options options("moelab trace stats", "Recompute the top-k statistics files of a NeuPIMs-MoE CSV, as its producer writes them.");
  options.add_options()("in", "NeuPIMs CSV (required)", cxxopts::value<std::string>())(
      "out-prefix", "prefix of the _top{k}_stats files (default: the CSV path without .csv)",
      cxxopts::value<std::string>()->default_value(""))("top-k", "the model's k (also --k; default: inferred)",
                                                         cxxopts::value<int>()->default_value("0"))(
      "layer", "layer named in the report (default: from the file name, else layer_id)", cxxopts::value<int64_t>()->default_value("-1"))(
      "seq-len", "sequence length (prefill report; default: from ..._{S}seqs_{T}tokens)", cxxopts::value<int64_t>()->default_value("0"))(
      "position", "1-based token position: the decode report (default: from a 1st/2nd/... folder)",
      cxxopts::value<int64_t>()->default_value("0"));
  std::vector<std::string> storage;
  auto args = parse_renamed(options, argc, argv, storage);
  const std::string in = required<std::string>(args, "in", "moelab trace stats");
  const TraceRecord r = read_neupims_csv(in, args["top-k"].as<int>());
  const int64_t experts = neupims_csv_experts(in);
  const StatsReport report =
      stats_report(in, args["layer"].as<int64_t>(), args["seq-len"].as<int64_t>(), args["position"].as<int64_t>(), r.layer);
  std::string prefix = args["out-prefix"].as<std::string>();
  if (prefix.empty()) prefix = in.size() > 4 && in.compare(in.size() - 4, 4, ".csv") == 0 ? in.substr(0, in.size() - 4) : in;
  for (int k : stats_ks(r.k)) {
    write_file_atomic(prefix + strf("_top%d_stats.csv", k), topk_stats_csv(r, k, experts));
    write_file_atomic(prefix + strf("_top%d_stats.txt", k), topk_stats_txt(r, k, experts, report));
  }
  std::string ks;
  for (int k : stats_ks(r.k)) ks += (ks.empty() ? "" : ",") + std::to_string(k);
  std::cout << strf("%s: %lld tokens, %lld experts, k = %d; stats written to %s_top{%s}_stats.{csv,txt}\n", in.c_str(),
                    (long long)r.tokens(), (long long)experts, r.k, prefix.c_str(), ks.c_str());
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
