#include <iostream>

#include "cli/commands.h"
#include "cli/options.h"
#include "data/corpus.h"
#include "sweep/sweep_plots.h"
#include "trace/routing_pictures.h"
#include "train/run.h"
#include "util/files.h"

namespace moelab::cli {

namespace {
const char* kPlotUsage = "usage: moelab plot sweep --config SWEEP.jsonc [--out DIR] | moelab plot run --run DIR [--out PREFIX] [--data TEXT]";
}

int plot_command(int argc, char** argv) {
  if (argc >= 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
    std::cout << "Pictures from a sweep's results or a run.\n" << kPlotUsage << "\n(moelab plot sweep --help, moelab plot run --help: the options)\n";
    return 0;
  }
  if (argc < 2) throw UserError(std::string("moelab plot: ") + kPlotUsage);
  const std::string what = argv[1];
  cxxopts::Options options("moelab plot " + what, "Pictures from a sweep's results or a run.");
  options.add_options()("config", "sweep file (required by plot sweep)", cxxopts::value<std::string>())(
      "out", "sweep directory (plot sweep) or picture prefix (plot run)", cxxopts::value<std::string>()->default_value(""))(
      "run", "run directory (required by plot run)", cxxopts::value<std::string>())(
      "data", "text to route for the heatmap and coloured tokens (plot run; default: the run's validation text)",
      cxxopts::value<std::string>()->default_value(""));
  auto args = parse_options(options, argc - 1, argv + 1);
  if (what == "sweep") {
    SweepPlan plan = load_sweep(required<std::string>(args, "config", "moelab plot sweep"), args["out"].as<std::string>());
    for (const std::string& png : draw_sweep_plots(plan)) std::cout << plan.out << "/" << png << "\n";
    return 0;
  }
  if (what == "run") {
    const std::string dir = required<std::string>(args, "run", "moelab plot run");
    std::string prefix = args["out"].as<std::string>();
    if (prefix.empty()) {
      ensure_directory(dir + "/plots");
      prefix = dir + "/plots/run";
    }
    draw_run_pictures(dir, prefix);
    LoadedRun run = load_run(dir);
    const std::string text =
        args["data"].as<std::string>().empty() ? validation_sample(run, dir) : read_corpus_file(args["data"].as<std::string>());
    if (!run.model->moe_layers().empty()) draw_routing_pictures(run, text, prefix);
    std::cout << "pictures written with prefix " << prefix << "\n";
    return 0;
  }
  throw UserError("moelab plot: unknown picture set '" + what + "' (expected sweep or run)");
}

}  // namespace moelab::cli
