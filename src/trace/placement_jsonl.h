#pragma once
// The placement JSONL trace (seed 000): one line per (batch, layer):
//   {"layer": L, "batch_id": B, "origin_rows": [T], "topk_experts": [[k] x T],
//    "topk_weights": [[k] x T], "request_id": ..., "source_file": ...}
// The reader also takes the per-token form {"tokens": [{"origin_row": r, "topk_experts":
// [...]}, ...]}. Reading streams line by line, so a trace larger than memory is fine.
#include <functional>
#include <ostream>
#include <string>

#include "trace/trace_record.h"

namespace moelab {

// Calls `visit` for each record of `layer` (all layers when layer < 0) until it returns
// false or `max_records` (0 = no limit) were visited. A line that does not parse, a token
// with a different number of experts, or a negative id is a UserError naming file, line and
// field.
void read_placement_jsonl(const std::string& path, int64_t layer, int64_t max_records,
                          const std::function<bool(TraceRecord&&)>& visit);

// One record as a JSONL line (with its newline), in Python's json.dumps layout.
std::string placement_jsonl_line(const TraceRecord& record);
void write_placement_jsonl(std::ostream& out, const TraceRecord& record);

}  // namespace moelab
