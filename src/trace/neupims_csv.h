#pragma once
// The NeuPIMs-MoE routing-trace CSV (seed 001, DynaNDE's generator): header
// `layer_id,token_id,expert_0,...,expert_{E-1}`, one row per token with the routing score
// (6 decimals) at its routed experts and 0.000000 elsewhere; beside each CSV,
// `_top{k}_stats.csv` (Expert_ID,Token_Count,Percentage,Rank, by count) and `_top{k}_stats.txt`.
#include <cstdint>
#include <string>

#include "trace/trace_record.h"

namespace moelab {

// record.weights are the scores; the layer id written is record.layer (the seed wrote 0).
std::string neupims_csv(const TraceRecord& record, int64_t experts);

// Each row's top-k scores become the token's experts (k = 0: the largest number of nonzero
// scores in any row). `layer` >= 0 replaces the file's layer_id column. A wrong header, a
// short row or a bad number is a UserError naming file, line and field.
TraceRecord read_neupims_csv(const std::string& path, int k = 0, int64_t layer = -1);
int64_t neupims_csv_experts(const std::string& path);  // E from the header

// Top-k statistics of the tokens' k highest-scoring experts (k <= record.k).
std::string topk_stats_csv(const TraceRecord& record, int k, int64_t experts);
std::string topk_stats_txt(const TraceRecord& record, int k, int64_t experts, const std::string& title);

// Writes CSV + stats files for k in {1, 2, record.k}: base is the CSV path without ".csv".
void write_neupims_with_stats(const std::string& base, const TraceRecord& record, int64_t experts);

}  // namespace moelab
