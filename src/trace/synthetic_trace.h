#pragma once
// Synthetic routing traces, two generators:
//   moe-balance  seed 000's `sim/generate_trace.py` (johanna-rock/moe-balance), reproduced
//                draw for draw with a Python-compatible random generator, so that the same
//                arguments give its file byte for byte: Zipf(s) popularity in expert-id order
//                (expert 0 hottest), per-layer jitter U(0.9, 1.1), each token's origin row
//                uniform, then k distinct experts drawn by popularity ("coact": with that
//                probability one draw comes first, which changes the draws but not the
//                distribution). Records in (layer, batch) order.
//   partners     moelab's own: Zipf popularity over a seeded random ranking of the experts,
//                and real co-activation structure: with probability `coactivation` each
//                expert after a token's first comes from the first one's fixed partner list
//                (k - 1 experts drawn per expert at the start). Records in (batch, layer) order.
#include <cstdint>
#include <functional>
#include <string>

#include "trace/trace_record.h"

namespace moelab {

struct SyntheticTraceOptions {
  std::string generator = "moe-balance";  // moe-balance | partners
  // The defaults are generate_trace.py's.
  int64_t layers = 1, batches = 100, tokens_per_batch = 1024;
  int64_t rows = 16, experts = 256, k = 8;
  double zipf = 1.05;
  double coactivation = 0.25;
  uint64_t seed = 0;
};

void generate_synthetic_trace(const SyntheticTraceOptions& options, const std::function<void(const TraceRecord&)>& emit);

}  // namespace moelab
