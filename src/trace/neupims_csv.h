#pragma once
// The NeuPIMs-MoE routing-trace CSV and its top-k statistics, as DynaNDE's trace generator
// writes them (`DynaNDE-Trcegenerator/Prefiller.ipynb` and `decoder.ipynb`) and its simulator
// reads them. Conventions, all the producer's (docs/placement.md, "NeuPIMs-MoE files"):
// - CSV: header `layer_id,token_id,expert_0,...,expert_{E-1}`, one row per token, the score
//   with 6 decimals at the token's k chosen experts and 0.000000 elsewhere; `layer_id` is 0
//   (the consumer reads only rows of layer 0 in each per-layer file) unless true ids are asked;
//   CRLF line ends (Python's csv module).
// - Top-k per token: the k largest scores as written (6 decimals); among equal scores the
//   higher expert id ranks first (numpy's `argsort(scores)[-k:]`).
// - `_top{k}_stats.csv`: `Expert_ID,Token_Count,Percentage,Rank`, Percentage = count /
//   tokens x 100 with 2 decimals (the column sums to 100 k), sorted by count high to low,
//   ties by expert id; CRLF line ends (Python's csv module).
// - `_top{k}_stats.txt`: the producer's fixed-width report, in its prefill layout (layer,
//   sequences, sequence length) or decode layout (the token position, bandwidth formulas).
#include <cstdint>
#include <string>

#include "trace/trace_record.h"

namespace moelab {

// record.weights are the scores of record.experts. Layer id 0 on every row unless
// `true_layer_id`. A chosen expert whose score would print as 0.000000 is written as
// 0.000001, so that every row keeps exactly k routed experts.
std::string neupims_csv(const TraceRecord& record, int64_t experts, bool true_layer_id = false);

// Each row's nonzero scores ranked as above; the first k become the token's experts (k = 0:
// the largest number of nonzero scores in any row; a row with fewer than k is an error).
// `layer` >= 0 replaces the file's layer_id column. A wrong header, a short row, or a score
// that is not a finite non-negative number is a UserError naming file, line and field.
TraceRecord read_neupims_csv(const std::string& path, int k = 0, int64_t layer = -1);
int64_t neupims_csv_experts(const std::string& path);  // E from the header

// The record as its CSV holds it: scores rounded to 6 decimals (and raised to 0.000001 where
// they would vanish), each token's entries in rank order. Stats of moelab's own traces are
// computed from this, as the producer computes them from the CSV it wrote.
TraceRecord as_written(const TraceRecord& record);

// What the .txt report states besides the counts.
struct StatsReport {
  int64_t layer = 0;     // prefill layout: "Layer {layer}"
  int64_t seq_len = 0;   // prefill layout: sequence length (sequences = tokens / seq_len)
  int64_t position = 0;  // > 0: the decode layout for this 1-based token position
};

// Top-k counts of a ranked record (as_written or read_neupims_csv): the first k entries.
std::string topk_stats_csv(const TraceRecord& ranked, int k, int64_t experts);
std::string topk_stats_txt(const TraceRecord& ranked, int k, int64_t experts, const StatsReport& report);

// The k values the producer writes stats for: 1, 2 and the model's k.
std::vector<int> stats_ks(int model_k);

// Writes base.csv and its stats files for k in stats_ks(record.k).
void write_neupims_with_stats(const std::string& base, const TraceRecord& record, int64_t experts,
                              const StatsReport& report, bool true_layer_id = false);

// 1st, 2nd, 3rd, 4th, ... 11th, 12th, 13th, 21st (the decode folders' names).
std::string ordinal(int64_t n);

}  // namespace moelab
