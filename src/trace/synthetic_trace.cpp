#include "trace/synthetic_trace.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "util/error.h"
#include "util/python_random.h"

namespace moelab {
namespace {

// Uniform double in [0, 1) from 53 random bits (portable, unlike std::uniform_real_distribution).
double uniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// Index drawn proportionally to `weights` among entries not yet taken (linear scan: E is small).
int64_t draw(std::mt19937_64& rng, const std::vector<double>& weights, const std::vector<char>& taken) {
  double total = 0;
  for (size_t e = 0; e < weights.size(); ++e)
    if (!taken[e]) total += weights[e];
  double target = uniform(rng) * total;
  int64_t last = -1;
  for (size_t e = 0; e < weights.size(); ++e) {
    if (taken[e]) continue;
    last = static_cast<int64_t>(e);
    target -= weights[e];
    if (target < 0) return last;
  }
  return last;
}

// generate_trace.py, step by step. Its sums are Python's left-to-right float sums, and its
// draw `_sample_topk(probs, 1)` walks the running sum until it reaches r (drawing again if
// rounding leaves r above the total): the same running sums, searched by bisection.
void moe_balance_trace(const SyntheticTraceOptions& o, const std::function<void(const TraceRecord&)>& emit) {
  PythonRandom rng(o.seed);
  std::vector<double> base(o.experts);
  double total = 0;
  for (int64_t i = 0; i < o.experts; ++i) total += base[i] = 1.0 / std::pow(static_cast<double>(i + 1), o.zipf);
  for (double& p : base) p /= total;
  TraceRecord record;
  record.k = static_cast<int>(o.k);
  std::vector<double> running(o.experts);
  for (int64_t l = 0; l < o.layers; ++l) {
    std::vector<double> probs(o.experts);
    double sum = 0;
    for (int64_t i = 0; i < o.experts; ++i) sum += probs[i] = base[i] * rng.uniform(0.9, 1.1);
    double acc = 0;
    for (int64_t i = 0; i < o.experts; ++i) running[i] = acc += probs[i] / sum;
    auto draw = [&] {
      for (;;) {
        const double r = rng.random();
        auto it = std::lower_bound(running.begin(), running.end(), r);
        if (it != running.end()) return static_cast<int32_t>(it - running.begin());
      }
    };
    record.layer = l;
    for (int64_t b = 0; b < o.batches; ++b) {
      record.batch_id = b;
      record.experts.clear();
      record.origin_rows.clear();
      for (int64_t t = 0; t < o.tokens_per_batch; ++t) {
        record.origin_rows.push_back(static_cast<int32_t>(rng.randrange(o.rows)));
        const size_t first = record.experts.size();
        if (rng.random() < o.coactivation) record.experts.push_back(draw());
        while (static_cast<int64_t>(record.experts.size() - first) < o.k) {
          const int32_t pick = draw();
          if (std::find(record.experts.begin() + static_cast<std::ptrdiff_t>(first), record.experts.end(), pick) == record.experts.end())
            record.experts.push_back(pick);
        }
      }
      emit(record);
    }
  }
}

void partners_trace(const SyntheticTraceOptions& o, const std::function<void(const TraceRecord&)>& emit) {
  std::mt19937_64 rng(o.seed);
  std::vector<int64_t> ranking(o.experts);
  std::iota(ranking.begin(), ranking.end(), 0);
  for (int64_t i = o.experts - 1; i > 0; --i) std::swap(ranking[i], ranking[rng() % static_cast<uint64_t>(i + 1)]);
  std::vector<double> base(o.experts);
  for (int64_t r = 0; r < o.experts; ++r) base[ranking[r]] = 1.0 / std::pow(static_cast<double>(r + 1), o.zipf);
  std::vector<std::vector<double>> popularity(o.layers, base);
  for (auto& layer : popularity)
    for (double& p : layer) p *= 0.9 + 0.2 * uniform(rng);
  std::vector<std::vector<int64_t>> partners(o.experts);
  for (int64_t e = 0; e < o.experts; ++e) {
    std::vector<char> taken(o.experts, 0);
    taken[e] = 1;
    for (int64_t j = 1; j < o.k; ++j) {
      int64_t p = static_cast<int64_t>(rng() % static_cast<uint64_t>(o.experts));
      while (taken[p]) p = (p + 1) % o.experts;
      taken[p] = 1;
      partners[e].push_back(p);
    }
  }

  TraceRecord record;
  record.k = static_cast<int>(o.k);
  std::vector<char> taken(o.experts);
  for (int64_t b = 0; b < o.batches; ++b) {
    for (int64_t l = 0; l < o.layers; ++l) {
      record.layer = l;
      record.batch_id = b;
      record.experts.clear();
      record.origin_rows.clear();
      for (int64_t t = 0; t < o.tokens_per_batch; ++t) {
        std::fill(taken.begin(), taken.end(), 0);
        int64_t first = draw(rng, popularity[l], taken);
        taken[first] = 1;
        record.experts.push_back(static_cast<int32_t>(first));
        size_t next_partner = 0;
        for (int64_t j = 1; j < o.k; ++j) {
          int64_t e = -1;
          if (uniform(rng) < o.coactivation) {
            while (next_partner < partners[first].size() && taken[partners[first][next_partner]]) ++next_partner;
            if (next_partner < partners[first].size()) e = partners[first][next_partner];
          }
          if (e < 0) e = draw(rng, popularity[l], taken);
          taken[e] = 1;
          record.experts.push_back(static_cast<int32_t>(e));
        }
        record.origin_rows.push_back(static_cast<int32_t>(rng() % static_cast<uint64_t>(o.rows)));
      }
      emit(record);
    }
  }
}

}  // namespace

void generate_synthetic_trace(const SyntheticTraceOptions& o, const std::function<void(const TraceRecord&)>& emit) {
  if (o.k > o.experts) throw UserError("trace synth: --k must be <= --experts");
  if (o.layers < 1 || o.batches < 1 || o.tokens_per_batch < 1 || o.rows < 1 || o.experts < 1 || o.k < 1)
    throw UserError("trace synth: layers, batches, tokens-per-batch, rows, experts and k must be >= 1");
  if (o.coactivation < 0 || o.coactivation > 1) throw UserError("trace synth: --coact must be in [0, 1]");
  if (o.experts > (int64_t{1} << 31) - 1) throw UserError("trace synth: --experts must be < 2^31");
  if (o.generator == "moe-balance") return moe_balance_trace(o, emit);
  if (o.generator == "partners") return partners_trace(o, emit);
  throw UserError("trace synth: --generator must be moe-balance or partners, got '" + o.generator + "'");
}

}  // namespace moelab
