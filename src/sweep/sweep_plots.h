#pragma once
// The sweep's pictures, drawn from its cells' summary.json and metrics.jsonl.
#include <string>
#include <vector>

#include "sweep/sweep.h"

namespace moelab {

// Writes frontier.png (PPL vs tokens/s, a marker per strategy), drop_vs_cf.png,
// loadcv_vs_ppl.png and curves.png into the sweep directory; returns the files drawn.
std::vector<std::string> draw_sweep_plots(const SweepPlan& plan);

}  // namespace moelab
