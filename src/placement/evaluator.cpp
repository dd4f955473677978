#include "placement/evaluator.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <thread>

#include "trace/placement_jsonl.h"
#include "util/error.h"
#include "util/python_random.h"
#include "util/strings.h"

namespace moelab::placement {

std::vector<TraceRecord> load_layer_records(const SystemConfig& system, uint64_t seed) {
  if (system.trace.empty()) throw UserError("system config: 'trace' must name a trace file (or pass --trace)");
  std::vector<TraceRecord> records;
  read_placement_jsonl(system.trace, system.layer, system.max_records, [&](TraceRecord&& record) {
    if (system.max_seq_len > 0 && record.tokens() > system.max_seq_len) {
      const int64_t keep = system.max_seq_len;
      record.experts.resize(keep * record.k);
      if (!record.weights.empty()) record.weights.resize(keep * record.k);
      if (!record.origin_rows.empty()) record.origin_rows.resize(keep);
    }
    if (system.fast_test_pct > 0 && system.fast_test_pct < 1 && record.tokens() > 0) {
      // moe-balance's subsample: int(T * pct) tokens (at least one) drawn by
      // random.Random(seed + i).sample(range(T), n), i the record's 0-based line in the file,
      // kept in token order.
      const int64_t tokens = record.tokens();
      const int64_t n = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(tokens) * system.fast_test_pct));
      std::vector<int64_t> pick = PythonRandom(seed + static_cast<uint64_t>(record.source_line - 1)).sample(tokens, n);
      std::sort(pick.begin(), pick.end());
      std::vector<int32_t> experts, origin_rows;
      std::vector<float> weights;
      for (int64_t t : pick) {
        experts.insert(experts.end(), record.experts.begin() + t * record.k, record.experts.begin() + (t + 1) * record.k);
        if (!record.weights.empty())
          weights.insert(weights.end(), record.weights.begin() + t * record.k, record.weights.begin() + (t + 1) * record.k);
        if (!record.origin_rows.empty()) origin_rows.push_back(record.origin_rows[t]);
      }
      record.experts = std::move(experts);
      record.weights = std::move(weights);
      record.origin_rows = std::move(origin_rows);
    }
    records.push_back(std::move(record));
    return true;
  });
  if (records.empty())
    throw UserError(strf("%s: no records for layer %lld: the trace is empty or holds other layers", system.trace.c_str(),
                         (long long)system.layer));
  return records;
}

std::vector<int64_t> count_expert_frequency(const SystemConfig& system, const std::vector<TraceRecord>& records) {
  std::vector<int64_t> frequency(system.experts + system.num_shared_experts, 0);
  for (const TraceRecord& record : records) {
    for (int32_t e : record.experts) {
      if (e >= system.experts)
        throw UserError(strf("%s: layer %lld batch %lld: expert id %d is beyond the system's %lld experts",
                             system.trace.c_str(), (long long)record.layer, (long long)record.batch_id, e,
                             (long long)system.experts));
      ++frequency[e];
    }
    for (int64_t s = 0; s < system.num_shared_experts; ++s) frequency[system.experts + s] += record.tokens();
  }
  return frequency;
}

PreparedTrace prepare_trace(const SystemConfig& system, const std::vector<TraceRecord>& records,
                            const Replication& replication, uint64_t seed) {
  PreparedTrace out;
  out.expert_frequency = count_expert_frequency(system, records);
  std::mt19937_64 rng(seed);
  const int64_t instances = replication.num_instances();
  for (const TraceRecord& record : records) {
    PreparedRecord p;
    p.tokens = record.tokens();
    p.kk = record.k + static_cast<int>(system.num_shared_experts);
    out.tokens += p.tokens;
    // The seed's balanced-replicas routing: each (token, expert), in token order, takes the
    // first replica with spare capacity, else the next replica round-robin (never dropped).
    const double per_instance = static_cast<double>(p.tokens * p.kk) / static_cast<double>(std::max<int64_t>(1, instances));
    const int64_t capacity = std::max<int64_t>(1, static_cast<int64_t>(system.capacity_factor * per_instance));
    std::vector<int64_t> used(instances, 0), round_robin(replication.instances.size(), 0);
    p.instance.resize(p.tokens * p.kk);
    for (int64_t t = 0; t < p.tokens; ++t) {
      for (int j = 0; j < p.kk; ++j) {
        const int32_t expert = j < record.k ? record.experts[t * record.k + j] : static_cast<int32_t>(system.experts + (j - record.k));
        const auto& replicas = replication.instances[expert];
        int32_t chosen = -1;
        for (int32_t inst : replicas)
          if (used[inst] < capacity) {
            chosen = inst;
            break;
          }
        if (chosen < 0) chosen = replicas[round_robin[expert]++ % replicas.size()];
        ++used[chosen];
        p.instance[t * p.kk + j] = chosen;
      }
    }
    p.instance_tokens.assign(instances, 0);
    for (int32_t inst : p.instance) ++p.instance_tokens[inst];
    p.users_offset.assign(instances + 1, 0);
    for (int32_t inst : p.instance) ++p.users_offset[inst + 1];
    for (int64_t i = 0; i < instances; ++i) p.users_offset[i + 1] += p.users_offset[i];
    p.users.resize(p.instance.size());
    std::vector<int32_t> fill(p.users_offset.begin(), p.users_offset.end() - 1);
    for (int64_t t = 0; t < p.tokens; ++t)
      for (int j = 0; j < p.kk; ++j) p.users[fill[p.instance[t * p.kk + j]]++] = static_cast<int32_t>(t);

    if (!record.origin_rows.empty()) {
      for (int32_t r : record.origin_rows)
        if (r >= system.rows)
          throw UserError(strf("%s: layer %lld batch %lld: origin row %d is outside the mesh's %lld rows", system.trace.c_str(),
                               (long long)record.layer, (long long)record.batch_id, r, (long long)system.rows));
      p.origin_views.push_back(record.origin_rows);
    } else if (system.origin_mode == "average-rows") {
      for (int64_t r = 0; r < system.rows; ++r) p.origin_views.emplace_back(p.tokens, static_cast<int32_t>(r));
    } else {
      std::vector<int32_t> rows(p.tokens);
      for (int64_t t = 0; t < p.tokens; ++t)
        rows[t] = static_cast<int32_t>(system.origin_mode == "random" ? rng() % static_cast<uint64_t>(system.rows) : t % system.rows);
      p.origin_views.push_back(std::move(rows));
    }
    out.records.push_back(std::move(p));
  }
  return out;
}

Evaluation aggregate(const std::vector<RecordCost>& costs) {
  Evaluation e;
  if (costs.empty()) return e;
  std::vector<double> latency;
  for (const RecordCost& c : costs) {
    latency.push_back(c.latency);
    e.dispatch_mean += c.max_dispatch;
    e.compute_mean += c.max_compute;
    e.combine_mean += c.max_combine;
  }
  std::sort(latency.begin(), latency.end());
  const double n = static_cast<double>(latency.size());
  for (double l : latency) e.mean += l;
  e.mean /= n;
  e.dispatch_mean /= n;
  e.compute_mean /= n;
  e.combine_mean /= n;
  auto pct = [&](double p) {
    int64_t idx = std::min<int64_t>(latency.size() - 1, static_cast<int64_t>(std::ceil(p * n)) - 1);
    return latency[std::max<int64_t>(0, idx)];
  };
  e.p95 = pct(0.95);
  e.p99 = pct(0.99);
  return e;
}

namespace {

// Spread terms of one token: E_col (most instances in one column) and U (distinct devices).
void token_spread(const int32_t* instances, int kk, const Placement& placement, int64_t cols, int& e_col, int& distinct) {
  int32_t devices[64];
  e_col = 0;
  distinct = 0;
  for (int i = 0; i < kk; ++i) devices[i] = placement.device[instances[i]];
  for (int i = 0; i < kk; ++i) {
    int same_col = 0;
    bool seen = false;
    for (int j = 0; j < kk; ++j) {
      same_col += (devices[j] % cols) == (devices[i] % cols);
      if (j < i && devices[j] == devices[i]) seen = true;
    }
    e_col = std::max(e_col, same_col);
    distinct += !seen;
  }
}

void token_hops(const int32_t* instances, int kk, const Placement& placement, int64_t rows, int64_t cols, int32_t origin,
                double& avg_hop, double& max_hop) {
  double sum = 0, most = 0;
  for (int i = 0; i < kk; ++i) {
    int64_t linear = std::abs(placement.device[instances[i]] / cols - origin);
    double hop = static_cast<double>(std::min<int64_t>(linear, rows - linear));
    sum += hop;
    most = std::max(most, hop);
  }
  avg_hop = kk ? sum / kk : 0.0;
  max_hop = most;
}

}  // namespace

Evaluator::Evaluator(const SystemConfig& system, const PreparedTrace& trace, int threads)
    : system_(system), trace_(trace), coefficients_(fit_dispatch_coefficients(system.rows)),
      threads_(threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))) {
  for (const PreparedRecord& r : trace.records)
    if (r.kk > 64) throw UserError("placement: more than 64 experts per token are not supported");
}

RecordCost Evaluator::cost_record(size_t index, const Placement& placement) const {
  const PreparedRecord& r = trace_.records[index];
  std::vector<double> compute(system_.devices(), 0.0);
  for (size_t inst = 0; inst < r.instance_tokens.size(); ++inst)
    compute[placement.device[inst]] += instance_compute_us(r.instance_tokens[inst]);
  RecordCost cost;
  cost.max_compute = *std::max_element(compute.begin(), compute.end());
  std::vector<int> e_col(r.tokens), distinct(r.tokens);
  for (int64_t t = 0; t < r.tokens; ++t) token_spread(&r.instance[t * r.kk], r.kk, placement, system_.cols, e_col[t], distinct[t]);
  for (const auto& origin : r.origin_views) {
    double max_dispatch = 0, max_combine = 0;
    for (int64_t t = 0; t < r.tokens; ++t) {
      double avg_hop, max_hop;
      token_hops(&r.instance[t * r.kk], r.kk, placement, system_.rows, system_.cols, origin[t], avg_hop, max_hop);
      max_dispatch = std::max(max_dispatch, token_time(coefficients_, e_col[t], avg_hop, max_hop));
      max_combine = std::max(max_combine, token_time(coefficients_, distinct[t], avg_hop, max_hop));
    }
    cost.max_dispatch += max_dispatch;
    cost.max_combine += max_combine;
  }
  const double views = static_cast<double>(r.origin_views.size());
  cost.max_dispatch /= views;
  cost.max_combine /= views;
  cost.latency = cost.max_dispatch + cost.max_compute + cost.max_combine;
  return cost;
}

std::vector<RecordCost> Evaluator::record_costs(const Placement& placement) const {
  std::vector<RecordCost> costs(trace_.records.size());
  const size_t n = costs.size();
  const int workers = static_cast<int>(std::min<size_t>(threads_, n));
  if (workers <= 1) {
    for (size_t i = 0; i < n; ++i) costs[i] = cost_record(i, placement);
    return costs;
  }
  std::vector<std::thread> pool;
  for (int w = 0; w < workers; ++w)
    pool.emplace_back([&, w] {
      for (size_t i = w; i < n; i += workers) costs[i] = cost_record(i, placement);
    });
  for (auto& t : pool) t.join();
  return costs;
}

Evaluation Evaluator::evaluate(const Placement& placement) const { return aggregate(record_costs(placement)); }

// ---- incremental ----

SwapEvaluator::SwapEvaluator(const Evaluator& evaluator, Placement placement)
    : evaluator_(evaluator), placement_(std::move(placement)) {
  const auto& records = evaluator_.trace_.records;
  state_.resize(records.size());
  for (size_t r = 0; r < records.size(); ++r) {
    RecordState& s = state_[r];
    s.views.resize(records[r].origin_views.size());
    for (auto& v : s.views) {
      v.dispatch.assign(records[r].tokens, 0.0);
      v.combine.assign(records[r].tokens, 0.0);
    }
    s.device_compute.assign(evaluator_.system_.devices(), 0.0);
    for (size_t inst = 0; inst < records[r].instance_tokens.size(); ++inst)
      s.device_compute[placement_.device[inst]] += instance_compute_us(records[r].instance_tokens[inst]);
    for (int64_t t = 0; t < records[r].tokens; ++t) recost_token(r, t);
    refresh_record(r);
  }
}

void SwapEvaluator::recost_token(size_t r, int64_t t) {
  const PreparedRecord& rec = evaluator_.trace_.records[r];
  const SystemConfig& sys = evaluator_.system_;
  int e_col, distinct;
  const int32_t* instances = &rec.instance[t * rec.kk];
  token_spread(instances, rec.kk, placement_, sys.cols, e_col, distinct);
  for (size_t v = 0; v < rec.origin_views.size(); ++v) {
    double avg_hop, max_hop;
    token_hops(instances, rec.kk, placement_, sys.rows, sys.cols, rec.origin_views[v][t], avg_hop, max_hop);
    state_[r].views[v].dispatch[t] = token_time(evaluator_.coefficients_, e_col, avg_hop, max_hop);
    state_[r].views[v].combine[t] = token_time(evaluator_.coefficients_, distinct, avg_hop, max_hop);
  }
}

void SwapEvaluator::refresh_record(size_t r) {
  RecordState& s = state_[r];
  s.max_compute = *std::max_element(s.device_compute.begin(), s.device_compute.end());
  double dispatch = 0, combine = 0;
  for (ViewState& v : s.views) {
    v.max_dispatch = v.dispatch.empty() ? 0.0 : *std::max_element(v.dispatch.begin(), v.dispatch.end());
    v.max_combine = v.combine.empty() ? 0.0 : *std::max_element(v.combine.begin(), v.combine.end());
    dispatch += v.max_dispatch;
    combine += v.max_combine;
  }
  const double views = static_cast<double>(s.views.size());
  s.cost.max_dispatch = dispatch / views;
  s.cost.max_combine = combine / views;
  s.cost.max_compute = s.max_compute;
  s.cost.latency = s.cost.max_dispatch + s.cost.max_compute + s.cost.max_combine;
}

Evaluation SwapEvaluator::evaluation() const {
  std::vector<RecordCost> costs;
  for (const RecordState& s : state_) costs.push_back(s.cost);
  return aggregate(costs);
}

double SwapEvaluator::objective() const { return evaluation().objective(evaluator_.system_.objective); }

double SwapEvaluator::swap(int32_t a, int32_t b) {
  record_undo_.clear();
  token_undo_.clear();
  last_a_ = a;
  last_b_ = b;
  const int32_t da = placement_.device[a], db = placement_.device[b];
  device_a_ = da;
  device_b_ = db;
  placement_.device[a] = db;
  placement_.device[b] = da;
  const auto& records = evaluator_.trace_.records;
  for (size_t r = 0; r < records.size(); ++r) {
    const PreparedRecord& rec = records[r];
    const int32_t ta = rec.instance_tokens[a], tb = rec.instance_tokens[b];
    if (ta == 0 && tb == 0) continue;
    RecordState& s = state_[r];
    RecordUndo undo{r, s.cost, s.max_compute, s.device_compute[da], s.device_compute[db], {}};
    for (const ViewState& v : s.views) undo.view_maxima.emplace_back(v.max_dispatch, v.max_combine);
    record_undo_.push_back(std::move(undo));
    const double wa = instance_compute_us(ta), wb = instance_compute_us(tb);
    s.device_compute[da] += wb - wa;
    s.device_compute[db] += wa - wb;
    for (int32_t inst : {a, b})
      for (int32_t u = rec.users_offset[inst]; u < rec.users_offset[inst + 1]; ++u) {
        TokenUndo token{r, rec.users[u], {}};
        for (const ViewState& v : s.views) token.values.emplace_back(v.dispatch[token.token], v.combine[token.token]);
        token_undo_.push_back(std::move(token));
        recost_token(r, rec.users[u]);
      }
    refresh_record(r);
  }
  return objective();
}

void SwapEvaluator::undo() {
  if (last_a_ < 0) return;
  std::swap(placement_.device[last_a_], placement_.device[last_b_]);
  for (auto it = token_undo_.rbegin(); it != token_undo_.rend(); ++it)
    for (size_t v = 0; v < it->values.size(); ++v) {
      state_[it->record].views[v].dispatch[it->token] = it->values[v].first;
      state_[it->record].views[v].combine[it->token] = it->values[v].second;
    }
  for (const RecordUndo& u : record_undo_) {
    RecordState& s = state_[u.record];
    s.cost = u.cost;
    s.max_compute = u.max_compute;
    s.device_compute[device_a_] = u.compute_a;
    s.device_compute[device_b_] = u.compute_b;
    for (size_t v = 0; v < s.views.size(); ++v) {
      s.views[v].max_dispatch = u.view_maxima[v].first;
      s.views[v].max_combine = u.view_maxima[v].second;
    }
  }
  record_undo_.clear();
  token_undo_.clear();
  last_a_ = last_b_ = -1;
}

}  // namespace moelab::placement
