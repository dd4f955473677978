#pragma once
// Pictures of how a trained run routes: per MoE layer, a token-to-expert heatmap of the
// gates over a sample of text and the sample itself with each token coloured by its top
// expert; per run, training curves and per-expert load bars.
#include <string>

#include "train/run.h"

namespace moelab {

// Writes PREFIX_heatmap_layer{l}.png and PREFIX_tokens_layer{l}.png for the first tokens of
// `text` (at most one context window), routed without capacity so that every token shows.
void draw_routing_pictures(LoadedRun& run, const std::string& text, const std::string& prefix);

// The first context window of a run's validation text, as text (the default sample).
std::string validation_sample(const LoadedRun& run, const std::string& run_dir);

// PREFIX_curves.png (train and validation loss) and PREFIX_expert_load.png from a run
// directory's metrics.jsonl and summary.json; no model needed.
void draw_run_pictures(const std::string& run_dir, const std::string& prefix);

}  // namespace moelab
