#pragma once
// What a training run reports: the metrics.jsonl row and console line of a log step, and
// summary.json at the end. Figures follow the SPEC's rules: tokens/s over the wall time of
// the interval's steps (evaluation excluded), FLOPs and MFU from the experts actually routed.
#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "routers/routing_plan.h"
#include "train/evaluate.h"
#include "train/training_run.h"
#include "train/training_step.h"

namespace moelab {

// The routing metrics of a step's plans: averaged over the MoE layers, with "layers" per
// layer; empty for a dense model. Reads the plans back to the host.
nlohmann::json routing_report(const std::vector<RoutingPlan>& plans);

// Writes the row of log step `step` (the interval run.state.interval_* with this loss sum)
// and its console line; returns the row's routing metrics: {"routing": ...} and, with
// perft_r adapters, their router's {"adapter_routing": ...}.
nlohmann::json log_training_step(TrainingRun& run, int64_t step, double lr, double interval_loss_sum,
                                 const StepOutputs& out);

// summary.json's content for a finished run; `routing`: the last log step's (as above).
nlohmann::json training_summary(const TrainingRun& run, const EvalResult& eval, const nlohmann::json& routing);

}  // namespace moelab
