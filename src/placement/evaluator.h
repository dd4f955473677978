#pragma once
// Replaying a trace on a placement. The trace is prepared once: shared experts appended,
// every (token, expert) routed to an instance (capacity-limited, never dropped) and origin
// rows fixed. Because instances keep their ids while a search moves them, the routing stays
// valid and a swap of two instances only changes the tokens that use them and the two
// devices involved: SwapEvaluator re-costs just those.
#include <cstdint>
#include <string>
#include <vector>

#include "placement/cost_model.h"
#include "placement/placement.h"
#include "placement/placement_config.h"
#include "trace/trace_record.h"

namespace moelab::placement {

struct PreparedRecord {
  int64_t tokens = 0;
  int kk = 0;                                      // experts per token, shared included
  std::vector<int32_t> instance;                   // [tokens * kk]
  std::vector<std::vector<int32_t>> origin_views;  // one origin-row vector per view (average-rows: one per row)
  std::vector<int32_t> instance_tokens;            // tokens routed to each instance [num_instances]
  std::vector<int32_t> users_offset, users;        // CSR: instance -> tokens that use it
};

struct PreparedTrace {
  std::vector<PreparedRecord> records;
  std::vector<int64_t> expert_frequency;  // (token, expert) pairs per expert, shared included
  int64_t tokens = 0;
};

// Reads the system's trace (layer, max_records, then max_seq_len and fast_test_pct as
// moe-balance applies them; `seed` is the search seed its subsample draws from).
std::vector<TraceRecord> load_layer_records(const SystemConfig& system, uint64_t seed = 0);
std::vector<int64_t> count_expert_frequency(const SystemConfig& system, const std::vector<TraceRecord>& records);

// Routes every record on `replication`; seed feeds the random origin mode.
PreparedTrace prepare_trace(const SystemConfig& system, const std::vector<TraceRecord>& records,
                            const Replication& replication, uint64_t seed);

struct RecordCost {
  double max_dispatch = 0, max_compute = 0, max_combine = 0, latency = 0;
};

struct Evaluation {
  double mean = 0, p95 = 0, p99 = 0;
  double dispatch_mean = 0, compute_mean = 0, combine_mean = 0;  // means of the per-record maxima
  double objective(const std::string& name) const { return name == "p95" ? p95 : name == "p99" ? p99 : mean; }
};

Evaluation aggregate(const std::vector<RecordCost>& costs);

class Evaluator {
 public:
  Evaluator(const SystemConfig& system, const PreparedTrace& trace, int threads);
  // Full evaluation of a placement, records spread over threads.
  Evaluation evaluate(const Placement& placement) const;
  std::vector<RecordCost> record_costs(const Placement& placement) const;
  const SystemConfig& system() const { return system_; }
  const Coefficients& coefficients() const { return coefficients_; }

 private:
  friend class SwapEvaluator;
  RecordCost cost_record(size_t r, const Placement& placement) const;
  const SystemConfig& system_;
  const PreparedTrace& trace_;
  Coefficients coefficients_;
  int threads_;
};

// Incremental evaluation for swap searches.
class SwapEvaluator {
 public:
  SwapEvaluator(const Evaluator& evaluator, Placement placement);
  double objective() const;
  Evaluation evaluation() const;
  // Exchanges the devices of instances a and b and returns the new objective; undo() reverts.
  double swap(int32_t a, int32_t b);
  void undo();
  const Placement& placement() const { return placement_; }

 private:
  struct ViewState {
    std::vector<double> dispatch, combine;
    double max_dispatch = 0, max_combine = 0;
  };
  struct RecordState {
    std::vector<ViewState> views;
    std::vector<double> device_compute;
    double max_compute = 0;
    RecordCost cost;
  };
  void recost_token(size_t r, int64_t t);
  void refresh_record(size_t r);
  const Evaluator& evaluator_;
  Placement placement_;
  std::vector<RecordState> state_;
  // Undo log of the last swap: what it changed, value by value.
  struct RecordUndo {
    size_t record;
    RecordCost cost;
    double max_compute, compute_a, compute_b;
    std::vector<std::pair<double, double>> view_maxima;
  };
  struct TokenUndo {
    size_t record;
    int64_t token;
    std::vector<std::pair<double, double>> values;  // (dispatch, combine) per view
  };
  std::vector<RecordUndo> record_undo_;
  std::vector<TokenUndo> token_undo_;
  int32_t device_a_ = -1, device_b_ = -1;
  int32_t last_a_ = -1, last_b_ = -1;
};

}  // namespace moelab::placement
