#include "placement/search.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "placement/initial_placement.h"

namespace moelab::placement {
namespace {

double uniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

struct SearchState {
  const Evaluator& evaluator;
  const Replication& replication;
  std::mt19937_64 rng;
  Placement best;
  double best_objective;
  SearchResult& result;

  // The best objective so far over every restart, one entry per iteration.
  void record() {
    const auto& c = result.convergence;
    result.convergence.push_back(c.empty() ? best_objective : std::min(best_objective, c.back()));
  }

  void random_step(int64_t iters) {
    uint64_t state = rng();
    const std::string& objective = evaluator.system().objective;
    for (int64_t i = 0; i < iters; ++i) {
      Placement candidate = random_placement(evaluator.system(), replication, state);
      double score = evaluator.evaluate(candidate).objective(objective);
      ++result.evaluations;
      if (score < best_objective) {
        best_objective = score;
        best = std::move(candidate);
      }
      record();
    }
  }

  // Swap moves (local search when t0 <= 0, else simulated annealing), incrementally costed.
  void swap_step(int64_t iters, double t0, double t1) {
    const int64_t devices = evaluator.system().devices();
    if (devices < 2) return;  // nothing to swap between
    SwapEvaluator current(evaluator, best);
    double current_objective = current.objective();
    std::vector<std::vector<int32_t>> on_device(devices);
    for (size_t i = 0; i < best.device.size(); ++i) on_device[best.device[i]].push_back(static_cast<int32_t>(i));
    for (int64_t i = 0; i < iters; ++i) {
      int32_t d1 = static_cast<int32_t>(rng() % devices), d2 = static_cast<int32_t>(rng() % (devices - 1));
      if (d2 >= d1) ++d2;
      if (on_device[d1].empty() || on_device[d2].empty()) {
        record();
        continue;
      }
      size_t i1 = rng() % on_device[d1].size(), i2 = rng() % on_device[d2].size();
      int32_t a = on_device[d1][i1], b = on_device[d2][i2];
      if (replication.instance_expert[a] == replication.instance_expert[b]) {
        record();
        continue;
      }
      double score = current.swap(a, b);
      ++result.evaluations;
      bool accept;
      if (t0 <= 0) {
        accept = score < current_objective;
      } else {
        double t = t0 * std::pow(t1 / t0, static_cast<double>(i) / static_cast<double>(std::max<int64_t>(1, iters - 1)));
        double delta = score - current_objective;
        accept = delta <= 0 || uniform(rng) < std::exp(-delta / std::max(1e-9, t));
      }
      if (accept) {
        current_objective = score;
        on_device[d1][i1] = b;
        on_device[d2][i2] = a;
        if (score < best_objective) {
          best_objective = score;
          best = current.placement();
        }
      } else {
        current.undo();
      }
      record();
    }
  }
};

}  // namespace

SearchResult run_search(const Evaluator& evaluator, const SearchConfig& search, const Replication& replication,
                        const Placement& start, uint64_t seed) {
  auto clock_start = std::chrono::steady_clock::now();
  SearchResult result;
  result.before = evaluator.evaluate(start);
  const std::string& objective = evaluator.system().objective;
  Placement overall = start;
  double overall_objective = result.before.objective(objective);
  std::mt19937_64 seeds(seed);
  for (int64_t restart = 0; restart < search.restarts && search.search != "none"; ++restart) {
    SearchState s{evaluator, replication, std::mt19937_64(seeds()), start, result.before.objective(objective), result};
    if (search.search == "random") s.random_step(search.iters);
    else if (search.search == "local") s.swap_step(search.local_search_iters, 0.0, 0.0);
    else if (search.search == "anneal") s.swap_step(search.anneal_iters, search.anneal_t0, search.anneal_t1);
    else
      for (const SearchStep& step : search.search_sequence) {
        if (step.type == "random") s.random_step(step.iters);
        else if (step.type == "local") s.swap_step(step.iters, 0.0, 0.0);
        else s.swap_step(step.iters, step.t0, step.t1);
      }
    if (s.best_objective < overall_objective) {
      overall_objective = s.best_objective;
      overall = s.best;
    }
  }
  result.best = overall;
  result.after = evaluator.evaluate(overall);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - clock_start).count();
  return result;
}

}  // namespace moelab::placement
