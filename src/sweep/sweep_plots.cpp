#include "sweep/sweep_plots.h"

#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "config/run_config.h"
#include "plot/gnuplot.h"
#include "util/files.h"

namespace moelab {
using nlohmann::json;

namespace {

// Fine-tuning studies: the efficiency frontier (target val loss against the share of
// trainable parameters, a marker per method, the rank beside each point) and the perft_r
// adapter routers' expert load (share of assignments per adapter expert, layers averaged).
void draw_finetune_plots(const SweepPlan& plan, std::vector<std::string>& drawn) {
  std::map<std::string, plot::Series> frontier;
  std::vector<plot::Series> loads;
  for (const SweepCell& cell : plan.cells) {
    const std::string dir = plan.out + "/" + cell.name;
    if (!file_exists(dir + "/summary.json")) continue;
    const json s = parse_jsonc_file(dir + "/summary.json");
    if (!s.contains("finetune")) continue;
    const json& f = s["finetune"];
    const std::string method = f["method"];
    plot::Series& series = frontier.try_emplace(method, plot::Series{method, {}, {}, {}}).first->second;
    series.x.push_back(100.0 * f["trainable_share"].get<double>());
    series.y.push_back(s["final_val_loss"].get<double>());
    std::string label = f["rank"].is_null() ? "" : "r" + std::to_string(f["rank"].get<int64_t>());
    if (method == "perft_r") label += " " + std::to_string(f["top_k"].get<int64_t>()) + "/" + std::to_string(f["experts"].get<int64_t>());
    series.labels.push_back(label);
    if (!s.contains("adapter_routing") || !s["adapter_routing"].contains("expert_load")) continue;
    plot::Series load{cell.name, {}, {}, {}};
    const std::vector<double> counts = s["adapter_routing"]["expert_load"].get<std::vector<double>>();
    double total = 0;
    for (double c : counts) total += c;
    for (size_t e = 0; e < counts.size(); ++e) {
      load.x.push_back(static_cast<double>(e));
      load.y.push_back(total > 0 ? counts[e] / total : 0.0);
    }
    loads.push_back(load);
  }
  if (frontier.empty()) return;
  std::vector<plot::Series> series;
  for (const auto& [method, s] : frontier) series.push_back(s);
  if (plot::scatter(plan.out + "/finetune_frontier.png", "fine-tuning efficiency frontier (label: rank, perft_r K/N)",
                    "trainable parameters (% of the adapted model, log scale)", "validation loss on the target (nats/token)",
                    series, /*log_x=*/true))
    drawn.push_back("finetune_frontier.png");
  if (!loads.empty() && plot::line_chart(plan.out + "/adapter_load.png", "perft_r adapter routers: expert load at the last log step",
                                         "adapter expert", "share of assignments", loads, true))
    drawn.push_back("adapter_load.png");
}

}  // namespace

std::vector<std::string> draw_sweep_plots(const SweepPlan& plan) {
  std::map<std::string, plot::Series> frontier, drops, cv;
  std::vector<plot::Series> curves;
  for (const SweepCell& cell : plan.cells) {
    const std::string dir = plan.out + "/" + cell.name;
    if (!file_exists(dir + "/summary.json")) continue;
    json s = parse_jsonc_file(dir + "/summary.json");
    const std::string strategy = s["strategy"];
    const json r = s.value("routing", json::object());
    auto add = [&](std::map<std::string, plot::Series>& m, double x, double y) {
      plot::Series& series = m.try_emplace(strategy, plot::Series{strategy, {}, {}}).first->second;
      series.x.push_back(x);
      series.y.push_back(y);
    };
    add(frontier, s["tokens_per_s"].get<double>(), s["final_ppl"].get<double>());
    if (r.contains("drop_rate")) add(drops, s["capacity_factor"].get<double>(), r["drop_rate"].get<double>());
    if (r.contains("load_cv")) add(cv, r["load_cv"].get<double>(), s["final_ppl"].get<double>());
    plot::Series curve{cell.name, {}, {}};
    std::ifstream metrics(dir + "/metrics.jsonl");
    std::string line;
    while (std::getline(metrics, line)) {
      json row = json::parse(line, nullptr, false);
      if (row.is_discarded() || row.value("kind", "") != "train") continue;
      curve.x.push_back(row["step"].get<double>());
      curve.y.push_back(row["loss"].get<double>());
    }
    curves.push_back(curve);
  }
  auto values = [](const std::map<std::string, plot::Series>& m) {
    std::vector<plot::Series> out;
    for (const auto& [name, series] : m) out.push_back(series);
    return out;
  };
  std::vector<std::string> drawn;
  auto keep = [&](bool ok, const std::string& name) {
    if (ok) drawn.push_back(name);
  };
  if (frontier.empty()) return drawn;  // no finished cell yet
  keep(plot::scatter(plan.out + "/frontier.png", "quality / throughput frontier", "training tokens/s", "validation perplexity",
                     values(frontier)),
       "frontier.png");
  if (!drops.empty())
    keep(plot::line_chart(plan.out + "/drop_vs_cf.png", "token drop rate vs capacity factor", "capacity factor", "drop rate",
                          values(drops), true),
         "drop_vs_cf.png");
  if (!cv.empty())
    keep(plot::scatter(plan.out + "/loadcv_vs_ppl.png", "load imbalance vs quality", "load CV (std/mean of expert load)",
                       "validation perplexity", values(cv)),
         "loadcv_vs_ppl.png");
  if (!curves.empty())
    keep(plot::line_chart(plan.out + "/curves.png", "training loss of every cell", "step", "train loss (nats/token)", curves),
         "curves.png");
  if (sweep_finetunes(plan)) draw_finetune_plots(plan, drawn);
  return drawn;
}

}  // namespace moelab
