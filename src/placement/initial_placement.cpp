#include "placement/initial_placement.h"

#include <algorithm>
#include <numeric>
#include <random>
#include <tuple>

#include "util/error.h"
#include "util/strings.h"

namespace moelab::placement {
namespace {

int64_t ring_distance(int64_t a, int64_t b, int64_t length) {
  const int64_t delta = std::abs(a - b);
  return std::min(delta, length - delta);
}

// The nearest of `existing` along a ring of `length`; `length` when there is none.
int64_t nearest(int64_t target, const std::vector<int64_t>& existing, int64_t length) {
  int64_t best = length;
  for (int64_t e : existing) best = std::min(best, ring_distance(target, e, length));
  return best;
}

// Indices 0..n-1 by key, high to low; equal keys keep index order (Python's stable
// sorted(..., reverse=True)).
template <typename Key>
std::vector<int32_t> by_decreasing(int64_t n, Key key) {
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return key(a) > key(b); });
  return order;
}

// The mesh seen along one axis: lines are rows (axis "row") or columns ("col").
struct Axis {
  const SystemConfig& system;
  bool rows;
  int64_t lines() const { return rows ? system.rows : system.cols; }
  int64_t across() const { return rows ? system.cols : system.rows; }
  int64_t line_of(int64_t device) const { return rows ? device / system.cols : device % system.cols; }
  int64_t device(int64_t line, int64_t i) const { return rows ? line * system.cols + i : i * system.cols + line; }
};

// Step 1: the lines of every expert's replicas (the reference's replica_axis).
class LineAssignment {
 public:
  LineAssignment(const Axis& axis, const std::vector<int64_t>& frequency)
      : axis_(axis), frequency_(frequency), load_(axis.lines(), 0), used_(axis.lines(), 0),
        experts_in_(axis.lines()), lines_(frequency.size()) {}

  bool has_room(int64_t line) const { return used_[line] < axis_.system.max_per_device() * axis_.across(); }

  void put(int32_t expert, int64_t line) {
    experts_in_[line].push_back(expert);
    lines_[expert].push_back(line);
    load_[line] += frequency_[expert];
    ++used_[line];
  }
  // The least-loaded line with room, ties to the lowest index.
  int64_t least_loaded(const char* stage) const {
    int64_t best = -1;
    for (int64_t l = 0; l < axis_.lines(); ++l)
      if (has_room(l) && (best < 0 || load_[l] < load_[best])) best = l;
    if (best < 0) throw UserError(strf("placement: every line is full during %s (slots exceed the mesh?)", stage));
    return best;
  }
  // A further replica: least load, then farthest from the expert's lines, then lowest index.
  void put_replica(int32_t expert, const char* stage) {
    int64_t best = -1;
    std::tuple<int64_t, int64_t> best_key;
    for (int64_t l = 0; l < axis_.lines(); ++l) {
      if (!has_room(l)) continue;
      auto key = std::make_tuple(load_[l], -nearest(l, lines_[expert], axis_.lines()));
      if (best < 0 || key < best_key) {
        best = l;
        best_key = key;
      }
    }
    if (best < 0) throw UserError(strf("placement: every line is full during %s (slots exceed the mesh?)", stage));
    put(expert, best);
  }
  // The line with the most co-activation with its experts minus 0.1 x its load (first best),
  // or the least-loaded line with room when that one is full.
  int64_t most_affine(int32_t expert, const CoactivationMatrix& coactivation) const {
    int64_t best = 0;
    double best_score = 0;
    for (int64_t l = 0; l < axis_.lines(); ++l) {
      int64_t affinity = 0;
      for (int32_t other : experts_in_[l]) affinity += coactivation.at(expert, other);
      const double score = static_cast<double>(affinity) - 0.1 * static_cast<double>(load_[l]);
      if (l == 0 || score > best_score) {
        best = l;
        best_score = score;
      }
    }
    return has_room(best) ? best : least_loaded("co-activation placement");
  }
  const std::vector<std::vector<int64_t>>& lines() const { return lines_; }

 private:
  const Axis& axis_;
  const std::vector<int64_t>& frequency_;
  std::vector<int64_t> load_, used_;
  std::vector<std::vector<int32_t>> experts_in_;
  std::vector<std::vector<int64_t>> lines_;
};

LineAssignment balance_lines(const Axis& axis, const Replication& replication, const std::vector<int64_t>& frequency) {
  LineAssignment lines(axis, frequency);
  const int64_t n = static_cast<int64_t>(frequency.size());
  for (int32_t e : by_decreasing(n, [&](int32_t e) { return std::make_pair(replication.replicas[e], frequency[e]); }))
    for (int64_t r = 0; r < replication.replicas[e]; ++r) lines.put_replica(e, "balance placement");
  return lines;
}

LineAssignment coactivation_lines(const Axis& axis, const Replication& replication, const std::vector<int64_t>& frequency,
                                  const CoactivationMatrix& coactivation, int64_t top_n) {
  LineAssignment lines(axis, frequency);
  const int64_t n = static_cast<int64_t>(frequency.size());
  std::vector<int32_t> order = by_decreasing(n, [&](int32_t e) { return frequency[e]; });
  const size_t hot = static_cast<size_t>(std::clamp<int64_t>(top_n, 0, n));
  for (size_t i = 0; i < order.size(); ++i) {
    const int32_t e = order[i];
    lines.put(e, i < hot ? lines.least_loaded("hot-expert placement") : lines.most_affine(e, coactivation));
  }
  for (int32_t e : by_decreasing(n, [&](int32_t e) { return replication.replicas[e]; }))
    for (int64_t r = 1; r < replication.replicas[e]; ++r) lines.put_replica(e, "replica placement");
  return lines;
}

// Step 2: a device inside each assigned line (the reference's place_within_axis).
Placement place_within_lines(const Axis& axis, const Replication& replication, const std::vector<int64_t>& frequency,
                             const LineAssignment& assignment) {
  const SystemConfig& system = axis.system;
  const int64_t n = static_cast<int64_t>(frequency.size());
  std::vector<double> device_load(system.devices(), 0.0);
  std::vector<int64_t> device_used(system.devices(), 0);
  Placement placement;
  placement.device.assign(replication.num_instances(), -1);
  const auto& expert_lines = assignment.lines();
  auto has_room = [&](int64_t d) { return device_used[d] < system.max_per_device(); };
  for (int32_t e : by_decreasing(n, [&](int32_t e) {
         return std::make_pair(static_cast<int64_t>(expert_lines[e].size()), frequency[e]);
       })) {
    std::vector<int64_t> placed;  // devices of e's replicas so far
    for (int64_t line : expert_lines[e]) {
      bool line_has_room = false;
      for (int64_t i = 0; i < axis.across(); ++i) line_has_room |= has_room(axis.device(line, i));
      if (!line_has_room) {  // the least-loaded line with room instead
        int64_t best = -1;
        double best_load = 0;
        for (int64_t l = 0; l < axis.lines(); ++l) {
          double load = 0;
          bool room = false;
          for (int64_t i = 0; i < axis.across(); ++i) {
            load += device_load[axis.device(l, i)];
            room |= has_room(axis.device(l, i));
          }
          if (room && (best < 0 || load < best_load)) {
            best = l;
            best_load = load;
          }
        }
        if (best < 0) throw UserError("placement: every device is full (slots exceed rows * cols * max_per_device?)");
        line = best;
      }
      std::vector<int64_t> placed_lines, placed_rows, placed_cols;
      for (int64_t d : placed) {
        placed_lines.push_back(axis.line_of(d));
        placed_rows.push_back(d / system.cols);
        placed_cols.push_back(d % system.cols);
      }
      int64_t best = -1;
      std::tuple<double, int64_t, int64_t, int64_t, int64_t, int64_t> best_key;
      for (int64_t i = 0; i < axis.across(); ++i) {
        const int64_t d = axis.device(line, i);
        if (!has_room(d)) continue;
        auto key = std::make_tuple(device_load[d], device_used[d], -nearest(axis.line_of(d), placed_lines, axis.lines()),
                                   -nearest(d / system.cols, placed_rows, system.rows),
                                   -nearest(d % system.cols, placed_cols, system.cols), d);
        if (best < 0 || key < best_key) {
          best = d;
          best_key = key;
        }
      }
      placement.device[replication.instances[e][placed.size()]] = static_cast<int32_t>(best);
      placed.push_back(best);
      ++device_used[best];
      device_load[best] += static_cast<double>(frequency[e]);
    }
  }
  return placement;
}

// moelab's EPLB: greedy packing of instances by decreasing load onto the least-loaded device.
Placement eplb(const SystemConfig& system, const Replication& replication, const std::vector<int64_t>& frequency) {
  std::vector<double> load(replication.num_instances());
  for (int64_t i = 0; i < replication.num_instances(); ++i) {
    const int32_t e = replication.instance_expert[i];
    load[i] = static_cast<double>(frequency[e]) / static_cast<double>(replication.replicas[e]);
  }
  std::vector<int32_t> order = by_decreasing(replication.num_instances(), [&](int32_t i) { return load[i]; });
  std::vector<double> device_load(system.devices(), 0.0);
  std::vector<int64_t> device_used(system.devices(), 0);
  Placement p;
  p.device.assign(replication.num_instances(), -1);
  for (int32_t inst : order) {
    const int32_t expert = replication.instance_expert[inst];
    int32_t best = -1;
    bool best_holds = true;
    for (int32_t d = 0; d < system.devices(); ++d) {
      if (device_used[d] >= system.max_per_device()) continue;
      bool holds = false;
      for (int32_t other : replication.instances[expert]) holds |= p.device[other] == d;
      if (best < 0 || (best_holds && !holds) || (holds == best_holds && device_load[d] < device_load[best])) {
        best = d;
        best_holds = holds;
      }
    }
    if (best < 0) throw UserError("placement: the mesh has no free slot left");
    p.device[inst] = best;
    ++device_used[best];
    device_load[best] += load[inst];
  }
  return p;
}

}  // namespace

CoactivationMatrix coactivation_with_shared(const SystemConfig& system, const std::vector<TraceRecord>& records) {
  CoactivationMatrix m(system.experts + system.num_shared_experts);
  for (const TraceRecord& r : records) {
    if (system.num_shared_experts == 0) {
      m.add(r);
      continue;
    }
    TraceRecord with_shared;
    with_shared.k = r.k + static_cast<int>(system.num_shared_experts);
    with_shared.experts.reserve(r.tokens() * with_shared.k);
    for (int64_t t = 0; t < r.tokens(); ++t) {
      with_shared.experts.insert(with_shared.experts.end(), r.experts.begin() + t * r.k, r.experts.begin() + (t + 1) * r.k);
      for (int64_t s = 0; s < system.num_shared_experts; ++s) with_shared.experts.push_back(static_cast<int32_t>(system.experts + s));
    }
    m.add(with_shared);
  }
  return m;
}

Placement random_placement(const SystemConfig& system, const Replication& replication, uint64_t& rng_state) {
  std::mt19937_64 rng(rng_state);
  std::vector<int32_t> slots;
  for (int64_t d = 0; d < system.devices(); ++d)
    for (int64_t s = 0; s < system.max_per_device(); ++s) slots.push_back(static_cast<int32_t>(d));
  for (size_t i = slots.size() - 1; i > 0; --i) std::swap(slots[i], slots[rng() % (i + 1)]);
  rng_state = rng();
  Placement p;
  p.device.assign(slots.begin(), slots.begin() + replication.num_instances());
  return p;
}

Placement initial_placement(const SystemConfig& system, const InitialPlacementConfig& initial,
                            const Replication& replication, const std::vector<int64_t>& frequency,
                            const CoactivationMatrix& coactivation, uint64_t seed) {
  if (replication.num_instances() > system.devices() * system.max_per_device())
    throw UserError("placement: more instances than rows * cols * max_per_device slots");
  if (static_cast<int64_t>(frequency.size()) != static_cast<int64_t>(replication.replicas.size()) ||
      coactivation.experts() != static_cast<int64_t>(frequency.size()))
    throw std::logic_error("initial_placement: frequency, co-activation and replication cover different experts");
  const std::string& strategy = initial.placement_strategy;
  if (strategy == "random") {
    uint64_t state = seed;
    return random_placement(system, replication, state);
  }
  if (strategy == "eplb") return eplb(system, replication, frequency);
  const Axis axis{system, (strategy == "hot-tier" ? initial.hot_tier_axis : initial.placement_axis) == "row"};
  if (strategy == "balance") return place_within_lines(axis, replication, frequency, balance_lines(axis, replication, frequency));
  // balance_load_coactivation and hot-tier
  return place_within_lines(axis, replication, frequency,
                            coactivation_lines(axis, replication, frequency, coactivation, initial.top_n));
}

}  // namespace moelab::placement
