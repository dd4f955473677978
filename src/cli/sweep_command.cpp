#include <iostream>

#include "cli/commands.h"
#include "cli/options.h"
#include "routers/strategy.h"
#include "sweep/sweep.h"
#include "trace/routing_pictures.h"
#include "train/run.h"
#include "util/files.h"
#include "util/strings.h"

namespace moelab::cli {

int sweep_command(int argc, char** argv) {
  cxxopts::Options options("moelab sweep", "Run a grid of training runs; finished cells are skipped on a rerun.");
  options.add_options()("config", "sweep file (JSON with comments) (required)", cxxopts::value<std::string>())(
      "out", "sweep directory (overrides the file's \"out\")", cxxopts::value<std::string>()->default_value(""))(
      "parallel", "cells to train at once", cxxopts::value<int>()->default_value("1"));
  auto args = parse_options(options, argc, argv);
  SweepPlan plan = load_sweep(required<std::string>(args, "config", "moelab sweep"), args["out"].as<std::string>(),
                              [](const RunConfig& c, const std::string& origin) { validate_router_config(c.router, origin); });
  SweepOptions run_options;
  run_options.parallel = args["parallel"].as<int>();
  if (run_options.parallel < 1) throw UserError("moelab sweep: --parallel must be >= 1");
  run_options.moelab_binary = executable_directory() + "/moelab";
  run_options.draw_cell = [](const std::string& dir) {
    draw_run_pictures(dir, dir + "/plots/run");
    LoadedRun run = load_run(dir);
    draw_routing_pictures(run, validation_sample(run, dir), dir + "/plots/routing");
  };
  int failed = run_sweep(plan, run_options);
  std::cout << read_text_file(plan.out + "/report.md");
  if (failed > 0) std::cout << strf("%d cell(s) failed; rerun the same command to retry them\n", failed);
  return failed > 0 ? 1 : 0;
}

}  // namespace moelab::cli
