#include "cli/commands.h"
#include "cli/options.h"
#include "placement/simulator.h"

namespace moelab::cli {

int place_command(int argc, char** argv) {
  cxxopts::Options options("moelab place", "Find where expert instances should live on a device mesh (seed 000's simulator).");
  options.add_options()("system", "system config (JSONC) (required)", cxxopts::value<std::string>())(
      "search", "search config (JSONC; default: none)", cxxopts::value<std::string>()->default_value(""))(
      "initial", "initial-placement config (JSONC; default: balance by rows)", cxxopts::value<std::string>()->default_value(""))(
      "trace", "trace file (overrides the system config's)", cxxopts::value<std::string>()->default_value(""))(
      "placement", "evaluate / start from this placement.json", cxxopts::value<std::string>()->default_value(""))(
      "out", "directory for result.json, placement.json, placement_grid.csv and PNGs",
      cxxopts::value<std::string>()->default_value(""))("seed", "random seed", cxxopts::value<uint64_t>()->default_value("0"));
  auto args = parse_options(options, argc, argv);
  placement::PlaceOptions o;
  o.system_path = required<std::string>(args, "system", "moelab place");
  o.search_path = args["search"].as<std::string>();
  o.initial_path = args["initial"].as<std::string>();
  o.trace_override = args["trace"].as<std::string>();
  o.placement_path = args["placement"].as<std::string>();
  o.out_dir = args["out"].as<std::string>();
  o.seed = args["seed"].as<uint64_t>();
  placement::run_placement(o);
  return 0;
}

}  // namespace moelab::cli
