#pragma once
// Recording routing from a trained model. The recorder runs the model in eval mode and reads
// each MoE layer's routing plan after the forward pass: it never changes what the model
// computes. For each token it records the k experts the router chose with either their gates
// as the model used them (0 where capacity dropped the assignment: the placement JSONL, which
// so keeps what capacity dropped) or the gates the router chose before capacity (the
// NeuPIMs-MoE CSV, whose rows must each hold k scores). Expert choice, whose tokens have any
// number of experts, is recorded as each token's k highest-gated experts, and only as used.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/token_file.h"
#include "models/tiny_moe.h"
#include "trace/trace_record.h"

namespace moelab {

struct RecordOptions {
  std::string mode = "prefill";      // prefill: every token; decode: the given positions
  std::vector<int64_t> positions;    // 1-based token positions (decode)
  int64_t batch_size = 8;            // sequences per forward pass
  int64_t rows = 16;                 // mesh rows for origin rows
  std::string origin = "round-robin";  // round-robin (by sequence) | random
  int64_t max_sequences = 0;         // 0 = every seq_len window of the file
  uint64_t seed = 0;
  bool gates_before_capacity = false;  // the router's choice, not what capacity left of it
};

// The plan of one MoE layer as k experts and gates per token ([T, k] row-major). With
// `before_capacity`, the gates are the router's choice (an error for expert choice, whose
// tokens have no fixed k).
TraceRecord plan_to_record(const RoutingPlan& plan, int64_t layer, int64_t k, bool before_capacity = false);

// position = -1 for prefill records, else the 1-based position the record holds.
using RecordSink = std::function<void(const TraceRecord& record, int64_t batch, int64_t position)>;

// The routing a training step's batch took (each MoE layer's plan, as used: after capacity),
// appended to a placement JSONL file with batch_id = step: a run's own traces for moelab
// place and coact (train.trace_interval).
void append_training_routing(const std::string& path, const std::vector<RoutingPlan>& plans,
                             const std::vector<int64_t>& layer_ids, int64_t step);

// Returns the number of tokens whose routing was recorded (per layer). `replicas` are copies of
// one model (the same weights): with more than one, consecutive batches run on them at once,
// one thread each (on a CPU of few cores a small model's ops are too short to share cores
// well); the sink still sees every batch in order. On a GPU pass one.
int64_t record_routing(const std::vector<TinyMoE*>& replicas, const TokenFile& tokens, const RecordOptions& options,
                       const torch::Device& device, const RecordSink& sink);

}  // namespace moelab
