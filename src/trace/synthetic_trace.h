#pragma once
// Synthetic routing traces (seed 000's generate_trace): Zipf(s) expert popularity over a
// seeded random ranking of the experts, per-layer jitter U(0.9, 1.1) on each popularity,
// k distinct experts per token, a co-activation knob, uniform origin rows.
#include <cstdint>
#include <functional>

#include "trace/trace_record.h"

namespace moelab {

struct SyntheticTraceOptions {
  int64_t layers = 1, batches = 50, tokens_per_batch = 1024;
  int64_t rows = 16, experts = 256, k = 8;
  double zipf = 1.0;
  // Probability that each expert after a token's first comes from the first one's fixed
  // partner list (k - 1 experts drawn per expert at the start): co-activation structure.
  double coactivation = 0.0;
  uint64_t seed = 0;
};

// Records in (batch, layer) order.
void generate_synthetic_trace(const SyntheticTraceOptions& options, const std::function<void(const TraceRecord&)>& emit);

}  // namespace moelab
