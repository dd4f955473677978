#include <iostream>

#include "cli/commands.h"
#include "cli/options.h"
#include "plot/gnuplot.h"
#include "trace/coactivation.h"
#include "trace/placement_jsonl.h"
#include "util/files.h"
#include "util/strings.h"

namespace moelab::cli {

int coact_command(int argc, char** argv) {
  cxxopts::Options options("moelab coact", "Expert co-activation counts of one trace layer (E x E CSV, no header).");
  options.add_options()("trace", "placement JSONL trace (required)", cxxopts::value<std::string>())(
      "layer", "MoE layer", cxxopts::value<int64_t>()->default_value("0"))(
      "experts", "number of experts (default: the largest id + 1)", cxxopts::value<int64_t>()->default_value("0"))(
      "out", "CSV to write (required)", cxxopts::value<std::string>())("png", "heatmap picture", cxxopts::value<std::string>()->default_value(""));
  auto args = parse_options(options, argc, argv);
  const std::string trace = required<std::string>(args, "trace", "moelab coact");
  const std::string out = required<std::string>(args, "out", "moelab coact");
  const int64_t layer = args["layer"].as<int64_t>();
  int64_t experts = args["experts"].as<int64_t>();
  if (experts <= 0) {
    read_placement_jsonl(trace, layer, 0, [&](TraceRecord&& r) {
      for (int32_t e : r.experts) experts = std::max<int64_t>(experts, e + 1);
      return true;
    });
    if (experts <= 0) throw UserError(trace + ": no records for layer " + std::to_string(layer));
  }
  // A dense E x E matrix of counts: bounded, so that one stray id cannot ask for gigabytes.
  constexpr int64_t kMaxExperts = 8192;  // 512 MB of counts
  if (experts > kMaxExperts)
    throw UserError(strf("%s: %lld experts (%s) exceed the %lld a dense co-activation matrix is built for", trace.c_str(),
                         (long long)experts, args["experts"].as<int64_t>() > 0 ? "--experts" : "the largest id + 1",
                         (long long)kMaxExperts));
  CoactivationMatrix matrix(experts);
  read_placement_jsonl(trace, layer, 0, [&](TraceRecord&& r) {
    matrix.add(r);
    return true;
  });
  write_file_atomic(out, matrix.to_csv());
  if (!args["png"].as<std::string>().empty()) {
    std::vector<std::vector<double>> values(experts, std::vector<double>(experts));
    for (int64_t a = 0; a < experts; ++a)
      for (int64_t b = 0; b < experts; ++b) values[a][b] = static_cast<double>(matrix.at(a, b));
    plot::heatmap(args["png"].as<std::string>(), "expert co-activation, layer " + std::to_string(layer), "expert", "expert", values);
  }
  std::cout << "wrote " << out << " (" << experts << " x " << experts << ")\n";
  return 0;
}

}  // namespace moelab::cli
