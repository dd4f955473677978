#include "sweep/sweep.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <thread>

#include "config/run_config.h"
#include "sweep/sweep_plots.h"
#include "util/error.h"
#include "util/files.h"
#include "util/log.h"
#include "util/process.h"
#include "util/strings.h"

namespace moelab {
using nlohmann::json;
using nlohmann::ordered_json;

namespace {

std::string cell_part(const std::string& key, const json& value) {
  std::string leaf = key.substr(key.rfind('.') + 1);
  std::string text = value.is_string() ? value.get<std::string>() : value.dump();
  std::string out = leaf + "-";
  for (char c : text) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-') ? c : '_';
  return out;
}

std::string cell_dir(const SweepPlan& plan, const SweepCell& cell) { return plan.out + "/" + cell.name; }

// Writes a run's config into OUT/configs and starts its training process, resumed from its
// checkpoint when it has one; the process logs to the run's train.log.
pid_t start_run(const SweepPlan& plan, const SweepOptions& options, json config, const std::string& name, int parallel) {
  const std::string dir = plan.out + "/" + name;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  config["out"] = dir;
  if (config["train"]["threads"].get<int64_t>() == 0) config["train"]["threads"] = std::max(1, cores / parallel);
  const std::string config_path = plan.out + "/configs/" + name + ".json";
  write_file_atomic(config_path, config.dump(2) + "\n");
  ensure_directory(dir);
  std::vector<std::string> argv = {options.moelab_binary, "train", "--sample", "0"};
  if (file_exists(dir + "/checkpoints/latest.pt")) {
    argv.insert(argv.end(), {"--resume", dir});
    log::info("sweep: resuming " + name);
  } else {
    argv.insert(argv.end(), {"--config", config_path});
    log::info("sweep: starting " + name);
  }
  const pid_t pid = spawn_logged(argv, dir + "/train.log");
  if (pid < 0) throw UserError(options.moelab_binary + ": cannot start a training process for the sweep");
  return pid;
}

}  // namespace

bool sweep_finetunes(const SweepPlan& plan) {
  if (!plan.pretrain.is_null()) return true;
  const json& base = plan.base.contains("finetune") ? plan.base["finetune"]["base"] : json();
  if (!base.is_null()) return true;
  for (const SweepCell& cell : plan.cells)
    if (cell.values.contains("finetune.base")) return true;
  return false;
}

SweepPlan load_sweep(const std::string& path, const std::string& out_override,
                     const std::function<void(const RunConfig&, const std::string& origin)>& validate) {
  ordered_json sweep;
  try {
    sweep = ordered_json::parse(read_text_file(path), nullptr, true, /*ignore_comments=*/true);
  } catch (const ordered_json::exception&) {
    parse_jsonc_file(path);  // re-parse for the error with a line and column
    throw;
  }
  if (!sweep.is_object()) throw UserError(path + ": a sweep file must be a JSON object");
  for (auto it = sweep.begin(); it != sweep.end(); ++it)
    if (it.key() != "base" && it.key() != "grid" && it.key() != "grids" && it.key() != "out" && it.key() != "set" &&
        it.key() != "pretrain")
      throw UserError(path + ": unknown key '" + printable(it.key()) + "' (expected base, grid, grids, out, set, pretrain)");
  SweepPlan plan;
  // A config given as a path or inline, over the defaults.
  auto config_of = [&](const std::string& key) {
    json config = default_config_json();
    const ordered_json& given = sweep[key];
    if (given.is_string()) merge_config(config, parse_jsonc_file(given.get<std::string>()), given.get<std::string>());
    else if (given.is_object()) merge_config(config, json::parse(given.dump()), path + ": " + key);
    else throw UserError(path + ": '" + key + "' must be a config path or an object");
    return config;
  };
  plan.base = sweep.contains("base") ? config_of("base") : default_config_json();
  if (sweep.contains("set")) {
    if (!sweep["set"].is_object()) throw UserError(path + ": 'set' must be an object of key: value");
    for (auto it = sweep["set"].begin(); it != sweep["set"].end(); ++it) apply_override(plan.base, it.key() + "=" + it.value().dump());
  }
  plan.out = !out_override.empty() ? out_override : sweep.value("out", std::string());
  if (plan.out.empty()) throw UserError(path + ": 'out' (or --out) must name the sweep's directory");
  if (sweep.contains("pretrain")) {
    plan.pretrain = config_of("pretrain");
    run_config_from_json(plan.pretrain, path + " (pretrain)");
    plan.base["finetune"]["base"] = plan.out + "/pretrain";
  }
  if (sweep.contains("grid") == sweep.contains("grids"))
    throw UserError(path + ": give either 'grid' (an object of key: [values]) or 'grids' (an array of them)");
  const ordered_json grids = sweep.contains("grids") ? sweep["grids"] : ordered_json::array({sweep["grid"]});
  if (!grids.is_array() || grids.empty()) throw UserError(path + ": 'grids' must be a non-empty array of grid objects");
  std::set<std::string> names;
  for (const ordered_json& grid : grids) {
    if (!grid.is_object() || grid.empty()) throw UserError(path + ": a grid must be a non-empty object of key: [values]");
    std::vector<SweepCell> cells = {SweepCell{}};
    for (auto it = grid.begin(); it != grid.end(); ++it) {
      if (!it.value().is_array() || it.value().empty())
        throw UserError(path + ": grid key '" + it.key() + "' must map to a non-empty array of values");
      if (std::find(plan.keys.begin(), plan.keys.end(), it.key()) == plan.keys.end()) plan.keys.push_back(it.key());
      std::vector<SweepCell> next;
      for (const SweepCell& cell : cells) {
        for (const auto& value : it.value()) {
          SweepCell c = cell;
          c.name += (c.name.empty() ? "" : "_") + cell_part(it.key(), json::parse(value.dump()));
          c.overrides.push_back(it.key() + "=" + value.dump());
          c.values[it.key()] = value;
          next.push_back(std::move(c));
        }
      }
      cells = std::move(next);
    }
    for (SweepCell& cell : cells) {
      if (!names.insert(cell.name).second) throw UserError(path + ": two grids make the same cell " + cell.name);
      plan.cells.push_back(std::move(cell));
    }
  }
  // Check every cell now, so that a typo fails before hours of training.
  for (const SweepCell& cell : plan.cells) {
    json config = plan.base;
    for (const std::string& o : cell.overrides) apply_override(config, o);
    const std::string origin = path + " (cell " + cell.name + ")";
    RunConfig checked = run_config_from_json(config, origin);
    if (validate) validate(checked, origin);
  }
  return plan;
}

int run_sweep(const SweepPlan& plan, const SweepOptions& options) {
  ensure_directory(plan.out + "/configs");
  const int parallel = std::max(1, options.parallel);
  if (!plan.pretrain.is_null() && !file_exists(plan.out + "/pretrain/summary.json")) {
    const pid_t pid = start_run(plan, options, plan.pretrain, "pretrain", 1);
    if (!wait_for(pid).second)
      throw UserError("sweep: the pretraining run failed (see " + plan.out +
                      "/pretrain/train.log); the cells fine-tune it, so none ran. Rerun the same command to retry");
    log::info("sweep: finished pretrain");
  }
  struct Running {
    pid_t pid;
    const SweepCell* cell;
  };
  std::vector<Running> running;
  int failed = 0, skipped = 0;
  auto reap_one = [&] {
    auto [pid, ok] = wait_for(-1);
    auto it = std::find_if(running.begin(), running.end(), [&](const Running& r) { return r.pid == pid; });
    if (it == running.end()) return;
    if (ok) {
      log::info("sweep: finished " + it->cell->name);
    } else {
      ++failed;
      log::error("sweep: cell " + it->cell->name + " failed (see " + cell_dir(plan, *it->cell) + "/train.log); continuing");
    }
    running.erase(it);
  };

  for (const SweepCell& cell : plan.cells) {
    const std::string dir = cell_dir(plan, cell);
    if (file_exists(dir + "/summary.json")) {
      ++skipped;
      continue;
    }
    while (static_cast<int>(running.size()) >= parallel) reap_one();
    json config = plan.base;
    for (const std::string& o : cell.overrides) apply_override(config, o);
    running.push_back({start_run(plan, options, config, cell.name, parallel), &cell});
  }
  while (!running.empty()) reap_one();
  if (skipped > 0) log::info(strf("sweep: %d finished cells skipped", skipped));

  write_file_atomic(plan.out + "/summary.csv", sweep_summary_csv(plan));
  std::vector<std::string> pictures = draw_sweep_plots(plan);
  if (options.draw_cell)
    for (const SweepCell& cell : plan.cells) {
      const std::string dir = cell_dir(plan, cell);
      if (file_exists(dir + "/summary.json") && !file_exists(dir + "/plots")) {
        ensure_directory(dir + "/plots");
        options.draw_cell(dir);
      }
    }
  std::string report = "# Sweep " + plan.out + "\n\n| cell | val loss | PPL | tokens/s | drop rate | load_cv |\n|---|---|---|---|---|---|\n";
  for (const SweepCell& cell : plan.cells) {
    std::string summary_path = cell_dir(plan, cell) + "/summary.json";
    if (!file_exists(summary_path)) {
      report += "| " + cell.name + " | failed | | | | |\n";
      continue;
    }
    json s = parse_jsonc_file(summary_path);
    const json& r = s["routing"];
    report += strf("| %s | %.4f | %.3f | %.0f | %s | %s |\n", cell.name.c_str(), s["final_val_loss"].get<double>(),
                   s["final_ppl"].get<double>(), s["tokens_per_s"].get<double>(),
                   r.contains("drop_rate") ? strf("%.4f", r["drop_rate"].get<double>()).c_str() : "-",
                   r.contains("load_cv") ? strf("%.4f", r["load_cv"].get<double>()).c_str() : "-");
  }
  report += "\nColumns: validation loss in nats per token, PPL = exp(loss), training tokens/s (evaluation excluded), "
            "drop rate and load CV at the last log step, averaged over MoE layers. Per-cell pictures (training curves, expert "
            "load, token-to-expert heatmaps, tokens coloured by expert) are in each cell's plots/ folder.\n";
  if (sweep_finetunes(plan)) {
    report += "\n## Fine-tuning\n\n| cell | method | trainable | share | val loss (target) | base-domain loss | tokens/s |\n"
              "|---|---|---|---|---|---|---|\n";
    for (const SweepCell& cell : plan.cells) {
      const std::string summary_path = cell_dir(plan, cell) + "/summary.json";
      if (!file_exists(summary_path)) continue;
      const json s = parse_jsonc_file(summary_path);
      const json f = s.value("finetune", json::object());
      if (f.empty()) continue;
      report += strf("| %s | %s | %lld | %.4f%% | %.4f | %.4f | %.0f |\n", cell.name.c_str(), f["method"].get<std::string>().c_str(),
                     (long long)f["trainable_parameters"].get<int64_t>(), 100.0 * f["trainable_share"].get<double>(),
                     s["final_val_loss"].get<double>(), f.value("final_base_val_loss", 0.0), s["tokens_per_s"].get<double>());
    }
    if (file_exists(plan.out + "/pretrain/summary.json")) {
      const json base = parse_jsonc_file(plan.out + "/pretrain/summary.json");
      report += strf("\nThe base (%s/pretrain): val loss %.4f on its own domain.", plan.out.c_str(), base["final_val_loss"].get<double>());
    }
    report += " Trainable share: trainable parameters over all of the adapted model's. Base-domain loss: the base's "
              "validation split after fine-tuning (forgetting).\n";
  }
  for (const std::string& png : pictures) report += "\n![" + png + "](" + png + ")\n";
  write_file_atomic(plan.out + "/report.md", report);
  return failed;
}

std::string sweep_summary_csv(const SweepPlan& plan) {
  const bool finetuning = sweep_finetunes(plan);
  std::string csv = "cell,strategy,gate,capacity_factor,num_experts,top_k,ppl,val_loss,tokens_per_s,drop_rate,load_cv,"
                    "gate_entropy,mean_topk_prob,router_params,steps";
  if (finetuning)
    csv += ",method,rank,adapter_experts,adapter_top_k,trainable_params,trainable_share,initial_val_loss,base_val_loss,"
           "initial_base_val_loss";
  for (const std::string& key : plan.keys) csv += "," + key;
  csv += "\n";
  auto number = [](const json& v) { return v.is_number() ? strf("%.6g", v.get<double>()) : std::string(); };
  for (const SweepCell& cell : plan.cells) {
    std::string summary_path = cell_dir(plan, cell) + "/summary.json";
    if (!file_exists(summary_path)) continue;
    json s = parse_jsonc_file(summary_path);
    json r = s.value("routing", json::object());
    csv += cell.name + "," + s["strategy"].get<std::string>() + "," + s["gate"].get<std::string>() + "," +
           number(s["capacity_factor"]) + "," + number(s["num_experts"]) + "," + number(s["top_k"]) + "," +
           number(s["final_ppl"]) + "," + number(s["final_val_loss"]) + "," + number(s["tokens_per_s"]) + "," +
           number(r.value("drop_rate", json())) + "," + number(r.value("load_cv", json())) + "," +
           number(r.value("gate_entropy", json())) + "," + number(r.value("mean_topk_prob", json())) + "," +
           number(s["router_parameters"]) + "," + number(s["steps"]);
    if (finetuning) {
      const json f = s.value("finetune", json::object());
      csv += "," + f.value("method", std::string()) + "," + number(f.value("rank", json())) + "," +
             number(f.value("experts", json())) + "," + number(f.value("top_k", json())) + "," +
             number(f.value("trainable_parameters", json())) + "," + number(f.value("trainable_share", json())) + "," +
             number(f.value("initial_val_loss", json())) + "," + number(f.value("final_base_val_loss", json())) + "," +
             number(f.value("initial_base_val_loss", json()));
    }
    for (const std::string& key : plan.keys) {  // empty where the cell's grid has no such key
      if (!cell.values.contains(key)) {
        csv += ",";
        continue;
      }
      const ordered_json& v = cell.values[key];
      csv += "," + (v.is_string() ? v.get<std::string>() : v.dump());
    }
    csv += "\n";
  }
  return csv;
}

}  // namespace moelab
