#include "trace/recorder.h"

#include <filesystem>
#include <fstream>
#include <future>
#include <random>

#include <torch/torch.h>

#include "trace/placement_jsonl.h"
#include "util/error.h"
#include "util/files.h"
#include "util/strings.h"
#include "util/thread_pool.h"

namespace moelab {

TraceRecord plan_to_record(const RoutingPlan& plan, int64_t layer, int64_t k, bool before_capacity) {
  torch::NoGradGuard no_grad;
  torch::Tensor ids = plan.expert_ids.cpu();
  torch::Tensor gates = (before_capacity ? plan.chosen_gates : plan.gates).detach().to(torch::kFloat32).cpu();
  if (ids.size(1) != k) {  // expert choice: the k best-gated columns per token
    if (before_capacity)
      throw UserError("trace: expert choice gives a token any number of experts, but a NeuPIMs-MoE row holds exactly k; "
                      "use --format jsonl");
    torch::Tensor order = std::get<1>(gates.sort(/*stable=*/true, -1, /*descending=*/true)).narrow(1, 0, k);
    ids = ids.gather(1, order);
    gates = gates.gather(1, order);
  }
  ids = ids.to(torch::kInt32).contiguous();
  gates = gates.contiguous();
  TraceRecord r;
  r.layer = layer;
  r.k = static_cast<int>(k);
  r.experts.assign(ids.data_ptr<int32_t>(), ids.data_ptr<int32_t>() + ids.numel());
  r.weights.assign(gates.data_ptr<float>(), gates.data_ptr<float>() + gates.numel());
  return r;
}

void append_training_routing(const std::string& path, const std::vector<RoutingPlan>& plans,
                             const std::vector<int64_t>& layer_ids, int64_t step) {
  ensure_directory(std::filesystem::path(path).parent_path().string());
  std::ofstream out(path, std::ios::app);
  for (size_t l = 0; l < plans.size(); ++l) {
    TraceRecord record = plan_to_record(plans[l], layer_ids[l], plans[l].top_k);
    record.batch_id = step;
    write_placement_jsonl(out, record);
  }
}

namespace {
// One forward pass's worth of records, made on a worker and handed to the sink in order.
struct BatchRecords {
  struct Entry {
    TraceRecord record;
    int64_t position;
  };
  std::vector<Entry> entries;
};

// Routes one batch through `model` and turns each MoE layer's plan into the records `options`
// asks for (every token, or the given positions of each sequence).
BatchRecords route_batch(TinyMoE& model, const torch::Tensor& input, const std::vector<int32_t>& sequence_row, int64_t batch,
                         const RecordOptions& options, const torch::Device& device) {
  const int64_t rows = input.size(0), seq = input.size(1);
  model.route(input.to(device));
  const auto layers = model.moe_layers();
  const auto layer_ids = model.moe_layer_ids();
  BatchRecords out;
  for (size_t l = 0; l < layers.size(); ++l) {
    const RoutingPlan& plan = layers[l]->last_plan();
    TraceRecord all = plan_to_record(plan, layer_ids[l], plan.top_k, options.gates_before_capacity);
    all.batch_id = batch;
    if (options.mode == "prefill") {
      for (int64_t t = 0; t < rows * seq; ++t) all.origin_rows.push_back(sequence_row[t / seq]);
      out.entries.push_back({std::move(all), -1});
      continue;
    }
    for (int64_t p : options.positions) {
      TraceRecord at = all;
      at.experts.clear();
      at.weights.clear();
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t t = r * seq + (p - 1);
        at.experts.insert(at.experts.end(), all.experts.begin() + t * all.k, all.experts.begin() + (t + 1) * all.k);
        at.weights.insert(at.weights.end(), all.weights.begin() + t * all.k, all.weights.begin() + (t + 1) * all.k);
        at.origin_rows.push_back(sequence_row[r]);
      }
      at.request_id = strf("position-%lld", (long long)p);
      out.entries.push_back({std::move(at), p});
    }
  }
  return out;
}
}  // namespace

int64_t record_routing(const std::vector<TinyMoE*>& replicas, const TokenFile& tokens, const RecordOptions& options,
                       const torch::Device& device, const RecordSink& sink) {
  TinyMoE& model = *replicas.front();
  const int64_t seq = model.config().seq_len;
  int64_t sequences = (tokens.size() - 1) / seq;
  if (options.max_sequences > 0) sequences = std::min(sequences, options.max_sequences);
  if (sequences <= 0) throw UserError(tokens.path() + ": too few tokens for one sequence of model.seq_len");
  if (options.mode == "decode") {
    if (options.positions.empty()) throw UserError("trace: --mode decode needs --positions (1-based, e.g. 1,2,3)");
    for (int64_t p : options.positions)
      if (p < 1 || p > seq) throw UserError(strf("trace: position %lld is outside 1..seq_len = %lld", (long long)p, (long long)seq));
  }
  for (TinyMoE* replica : replicas) replica->eval();
  // With several replicas each worker runs one batch on one thread, so the intra-op pool is
  // set to one thread for the trace (on every worker: OpenMP's thread count is per thread).
  const bool parallel = replicas.size() > 1;
  struct RestoreIntraOpThreads {
    int threads = at::get_num_threads();
    ~RestoreIntraOpThreads() { at::set_num_threads(threads); }
  } restore;  // also when a worker or the sink throws
  if (parallel) at::set_num_threads(1);
  ThreadPool helpers(replicas.size() - 1);  // replica 0 runs on this thread
  std::mt19937_64 rng(options.seed);
  int64_t recorded = 0, batch = 0;
  const int64_t group = static_cast<int64_t>(replicas.size());
  for (int64_t first = 0; first < sequences;) {
    // Inputs and origin rows are drawn here, in batch order, whatever the number of workers.
    std::vector<torch::Tensor> inputs;
    std::vector<std::vector<int32_t>> sequence_rows;
    for (int64_t w = 0; w < group && first < sequences; ++w) {
      const int64_t rows = std::min(options.batch_size, sequences - first);
      torch::Tensor input = torch::empty({rows, seq}, torch::kLong);
      for (int64_t r = 0; r < rows; ++r) tokens.copy_window((first + r) * seq, seq, input.data_ptr<int64_t>() + r * seq);
      std::vector<int32_t> sequence_row(rows);
      for (int64_t r = 0; r < rows; ++r)
        sequence_row[r] = static_cast<int32_t>(options.origin == "random" ? rng() % static_cast<uint64_t>(options.rows)
                                                                           : (first + r) % options.rows);
      inputs.push_back(input);
      sequence_rows.push_back(std::move(sequence_row));
      first += rows;
    }
    std::vector<BatchRecords> results(inputs.size());
    std::vector<std::exception_ptr> errors(inputs.size());
    auto work = [&](size_t w) {
      try {
        c10::InferenceMode inference;
        if (parallel) at::set_num_threads(1);
        results[w] = route_batch(*replicas[w], inputs[w], sequence_rows[w], batch + static_cast<int64_t>(w), options, device);
      } catch (...) {
        errors[w] = std::current_exception();
      }
    };
    std::vector<std::future<void>> others;
    for (size_t w = 1; w < inputs.size(); ++w) others.push_back(helpers.submit([&work, w] { work(w); }));
    work(0);
    for (std::future<void>& f : others) f.get();
    for (size_t w = 0; w < inputs.size(); ++w) {
      if (errors[w]) std::rethrow_exception(errors[w]);
      for (const BatchRecords::Entry& e : results[w].entries) sink(e.record, batch, e.position);
      recorded += options.mode == "prefill" ? inputs[w].size(0) * seq
                                            : inputs[w].size(0) * static_cast<int64_t>(options.positions.size());
      ++batch;
    }
  }
  return recorded;
}

}  // namespace moelab
