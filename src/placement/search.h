#pragma once
// Placement searches, all seeded and reproducible:
//   random    best of `iters` random placements per restart (full evaluations, multi-threaded)
//   local     swap two instances between two random devices, keep strict improvements
//   anneal    T = t0 (t1/t0)^(i/(iters-1)); accept delta <= 0, or with probability exp(-delta/T)
//   sequence  the listed steps in order, each starting from the best so far
// A search never returns a placement worse than the one it started from.
#include <cstdint>
#include <vector>

#include "placement/evaluator.h"
#include "placement/placement_config.h"

namespace moelab::placement {

struct SearchResult {
  Placement best;
  Evaluation before, after;
  std::vector<double> convergence;  // best objective after each iteration
  int64_t evaluations = 0;          // candidate placements evaluated (full or incremental)
  double seconds = 0;
};

SearchResult run_search(const Evaluator& evaluator, const SearchConfig& search, const Replication& replication,
                        const Placement& start, uint64_t seed);

}  // namespace moelab::placement
