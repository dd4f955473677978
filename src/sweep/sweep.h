#pragma once
// Sweeps: a grid over config keys, each cell a normal run directory, run one after another
// or several at once, resumable (finished cells are skipped, unfinished ones resumed), with
// a summary CSV and a Markdown report.
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/run_config.h"

namespace moelab {

struct SweepCell {
  std::string name;                  // e.g. "strategy-softk_capacity_factor-1.25"
  std::vector<std::string> overrides;  // "router.strategy=\"softk\"", ...
  nlohmann::ordered_json values;     // grid key -> value
};

struct SweepPlan {
  std::string out;                  // the sweep's directory
  nlohmann::json base;              // the base config (defaults <- base file/object)
  std::vector<std::string> keys;    // grid keys in file order
  std::vector<SweepCell> cells;
  // A fine-tuning study's base run, trained first into OUT/pretrain; every cell fine-tunes it
  // (finetune.base). Null when the sweep has none.
  nlohmann::json pretrain;
};

// Reads SWEEP.jsonc: {"base": PATH or {...}, "grid": {"key": [values...]}, "out": DIR,
// "set": {"key": value}}; every cell's config is checked before anything runs. Instead of
// "grid", "grids": [{...}, {...}] makes the cells of each grid (a study whose variants have
// different keys: PERFT-R's N and K, the other methods' none). "pretrain": PATH or {...} is a
// config trained first, the base every cell fine-tunes.
// `validate` adds checks this torch-free library cannot make (the router registry's names).
SweepPlan load_sweep(const std::string& path, const std::string& out_override,
                     const std::function<void(const RunConfig&, const std::string& origin)>& validate = {});

struct SweepOptions {
  int parallel = 1;
  std::string moelab_binary;  // the executable that trains each cell
  // Called for each finished cell whose directory has no plots/ yet (pictures of the run).
  std::function<void(const std::string& cell_dir)> draw_cell;
};

// Runs the cells that are not finished and writes summary.csv and report.md; returns the
// number of cells that failed.
int run_sweep(const SweepPlan& plan, const SweepOptions& options);

// Whether the sweep's cells fine-tune a base (its CSV, report and pictures then add the
// fine-tuning figures).
bool sweep_finetunes(const SweepPlan& plan);

// One CSV row per finished cell (the columns SPEC section 5 lists, then the grid keys).
std::string sweep_summary_csv(const SweepPlan& plan);

}  // namespace moelab
