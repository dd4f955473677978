#include "placement/simulator.h"

#include <iostream>

#include "placement/evaluator.h"
#include "placement/initial_placement.h"
#include "placement/search.h"
#include "plot/gnuplot.h"
#include "util/files.h"
#include "util/log.h"
#include "util/strings.h"

namespace moelab::placement {
using nlohmann::json;

namespace {

json evaluation_json(const Evaluation& e) {
  return {{"mean", e.mean},
          {"p95", e.p95},
          {"p99", e.p99},
          {"dispatch_mean", e.dispatch_mean},
          {"compute_mean", e.compute_mean},
          {"combine_mean", e.combine_mean}};
}

void draw_pictures(const std::string& out, const SystemConfig& system, const PreparedTrace& trace,
                   const Replication& replication, const Placement& placement, const SearchResult& result) {
  // Device load: tokens each device serves over the whole trace.
  std::vector<std::vector<double>> load(system.rows, std::vector<double>(system.cols, 0.0));
  for (const PreparedRecord& r : trace.records)
    for (size_t inst = 0; inst < r.instance_tokens.size(); ++inst) {
      int32_t d = placement.device[inst];
      load[d / system.cols][d % system.cols] += r.instance_tokens[inst];
    }
  plot::heatmap(out + "/placement_grid.png",
                strf("tokens served per device (%lld x %lld mesh, %lld instances)", (long long)system.rows,
                     (long long)system.cols, (long long)replication.num_instances()),
                "column", "row", load);
  if (!result.convergence.empty()) {
    plot::Series s{"best " + system.objective, {}, {}};
    for (size_t i = 0; i < result.convergence.size(); ++i) {
      s.x.push_back(static_cast<double>(i + 1));
      s.y.push_back(result.convergence[i]);
    }
    plot::line_chart(out + "/convergence.png", "placement search convergence", "iteration",
                     system.objective + " latency (us)", {s});
  }
}

}  // namespace

json run_placement(const PlaceOptions& options) {
  SystemConfig system = load_system_config(options.system_path);
  if (!options.trace_override.empty()) system.trace = options.trace_override;
  SearchConfig search = load_search_config(options.search_path);
  InitialPlacementConfig initial = load_initial_config(options.initial_path);

  std::vector<TraceRecord> records = load_layer_records(system, options.seed);
  std::vector<int64_t> frequency = count_expert_frequency(system, records);
  Replication replication;
  Placement start;
  if (!options.placement_path.empty()) {
    read_placement_json(options.placement_path, system, replication, start);
  } else {
    replication = replicate(system, frequency);
    start = initial_placement(system, initial, replication, frequency, coactivation_with_shared(system, records), options.seed);
    check_placement(system, replication, start, "initial placement");
  }
  PreparedTrace trace = prepare_trace(system, records, replication, options.seed);
  Evaluator evaluator(system, trace, static_cast<int>(search.threads));
  SearchResult result = run_search(evaluator, search, replication, start, options.seed);

  const double evals_per_s = result.seconds > 0 ? static_cast<double>(result.evaluations) / result.seconds : 0.0;
  json out = {{"trace", system.trace},
              {"layer", system.layer},
              {"records", trace.records.size()},
              {"tokens", trace.tokens},
              {"instances", replication.num_instances()},
              {"initial_placement", options.placement_path.empty() ? initial.placement_strategy : options.placement_path},
              {"search", search.search},
              {"objective", system.objective},
              {"objective_before", result.before.objective(system.objective)},
              {"objective_after", result.after.objective(system.objective)},
              {"before", evaluation_json(result.before)},
              {"after", evaluation_json(result.after)},
              {"evaluations", result.evaluations},
              {"search_seconds", result.seconds},
              {"evaluations_per_s", evals_per_s},
              {"seed", options.seed},
              {"coefficients", evaluator.coefficients()},
              {"search_trace", result.convergence}};
  if (!options.out_dir.empty()) {
    ensure_directory(options.out_dir);
    write_file_atomic(options.out_dir + "/result.json", out.dump(2) + "\n");
    write_file_atomic(options.out_dir + "/placement.json", placement_to_json(system, replication, result.best));
    write_file_atomic(options.out_dir + "/placement_grid.csv", placement_grid_csv(system, replication, result.best));
    draw_pictures(options.out_dir, system, trace, replication, result.best, result);
    // moe-balance's eval.md: its "- key: value" lines for the best placement, which scripts
    // parse; then the initial placement beside it.
    const Evaluation& best = result.after;
    std::string md = strf("# Search Evaluation Summary\n\n- objective: %s\n- mean: %.4f\n- p95: %.4f\n- p99: %.4f\n"
                          "- dispatch_mean: %.4f\n- compute_mean: %.4f\n- combine_mean: %.4f\n",
                          system.objective.c_str(), best.mean, best.p95, best.p99, best.dispatch_mean, best.compute_mean,
                          best.combine_mean);
    md += "\n| placement | mean | p95 | p99 | dispatch_mean | compute_mean | combine_mean |\n|---|---|---|---|---|---|---|\n";
    for (const auto& [name, e] : {std::pair<const char*, const Evaluation&>{"initial", result.before}, {"searched", result.after}})
      md += strf("| %s | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f |\n", name, e.mean, e.p95, e.p99, e.dispatch_mean,
                 e.compute_mean, e.combine_mean);
    write_file_atomic(options.out_dir + "/eval.md", md);
  }
  std::cout << strf("trace %s layer %lld: %zu records, %lld tokens, %lld instances on %lld x %lld\n", system.trace.c_str(),
                    (long long)system.layer, trace.records.size(), (long long)trace.tokens,
                    (long long)replication.num_instances(), (long long)system.rows, (long long)system.cols)
            << strf("%-8s %10s %10s %10s %10s %10s %10s\n", "", "mean", "p95", "p99", "dispatch", "compute", "combine");
  for (const auto& [name, e] : {std::pair<const char*, const Evaluation&>{"before", result.before}, {"after", result.after}})
    std::cout << strf("%-8s %10.3f %10.3f %10.3f %10.3f %10.3f %10.3f\n", name, e.mean, e.p95, e.p99, e.dispatch_mean,
                      e.compute_mean, e.combine_mean);
  std::cout << strf("search %s: %lld evaluations in %.3f s (%.0f evaluations/s)%s\n", search.search.c_str(),
                    (long long)result.evaluations, result.seconds, evals_per_s,
                    options.out_dir.empty() ? "" : (", results in " + options.out_dir).c_str());
  return out;
}

}  // namespace moelab::placement
