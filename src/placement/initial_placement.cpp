#include "placement/initial_placement.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <random>

#include "util/error.h"
#include "util/strings.h"

namespace moelab::placement {
namespace {

// Mesh occupancy while a placement is being built, seen along rows or columns ("lines").
class Builder {
 public:
  Builder(const SystemConfig& system, const Replication& replication, std::vector<double> instance_load)
      : system_(system), replication_(replication), load_(std::move(instance_load)),
        device_used_(system.devices(), 0), device_load_(system.devices(), 0.0) {
    placement_.device.assign(replication.num_instances(), -1);
  }

  int64_t lines(bool rows) const { return rows ? system_.rows : system_.cols; }
  int64_t line_of(int32_t device, bool rows) const { return rows ? device / system_.cols : device % system_.cols; }
  std::vector<int32_t> devices_of(int64_t line, bool rows) const {
    std::vector<int32_t> out;
    if (rows)
      for (int64_t c = 0; c < system_.cols; ++c) out.push_back(static_cast<int32_t>(line * system_.cols + c));
    else
      for (int64_t r = 0; r < system_.rows; ++r) out.push_back(static_cast<int32_t>(r * system_.cols + line));
    return out;
  }
  bool has_room(int32_t device) const { return device_used_[device] < system_.max_per_device(); }
  bool line_has_room(int64_t line, bool rows) const {
    for (int32_t d : devices_of(line, rows))
      if (has_room(d)) return true;
    return false;
  }
  double line_load(int64_t line, bool rows) const {
    double sum = 0;
    for (int32_t d : devices_of(line, rows)) sum += device_load_[d];
    return sum;
  }
  bool line_holds(int64_t line, bool rows, int32_t expert) const {
    for (size_t i = 0; i < placement_.device.size(); ++i)
      if (placement_.device[i] >= 0 && replication_.instance_expert[i] == expert && line_of(placement_.device[i], rows) == line)
        return true;
    return false;
  }
  // Distance from `line` to the nearest line holding another replica of `expert` (ring for
  // rows, the mesh's ring direction; linear for columns); max() when there is none.
  int64_t distance_to_replicas(int64_t line, bool rows, int32_t expert) const {
    int64_t best = std::numeric_limits<int64_t>::max();
    for (int32_t inst : replication_.instances[expert]) {
      int32_t d = placement_.device[inst];
      if (d < 0) continue;
      int64_t linear = std::abs(line_of(d, rows) - line);
      best = std::min(best, rows ? std::min(linear, system_.rows - linear) : linear);
    }
    return best;
  }
  void put(int32_t instance, int32_t device) {
    placement_.device[instance] = device;
    ++device_used_[device];
    device_load_[device] += load_[instance];
  }
  // The least-loaded device with room in `line` (ties: lower id).
  int32_t least_loaded_device(int64_t line, bool rows) const {
    int32_t best = -1;
    for (int32_t d : devices_of(line, rows))
      if (has_room(d) && (best < 0 || device_load_[d] < device_load_[best])) best = d;
    return best;
  }
  // balance: least-loaded line with room; ties to the line farthest from the expert's replicas.
  int64_t balance_line(int32_t instance, bool rows) const {
    const int32_t expert = replication_.instance_expert[instance];
    int64_t best = -1;
    double best_load = 0;
    int64_t best_distance = 0;
    for (int64_t l = 0; l < lines(rows); ++l) {
      if (!line_has_room(l, rows)) continue;
      double load = line_load(l, rows);
      int64_t distance = distance_to_replicas(l, rows, expert);
      if (best < 0 || load < best_load || (load == best_load && distance > best_distance)) {
        best = l;
        best_load = load;
        best_distance = distance;
      }
    }
    return best;
  }
  void place_balanced(int32_t instance, bool rows) {
    int64_t line = balance_line(instance, rows);
    if (line < 0) throw UserError("placement: the mesh has no free slot left (slots exceed rows * cols * max_per_device?)");
    put(instance, least_loaded_device(line, rows));
  }
  double load(int32_t instance) const { return load_[instance]; }
  double device_load(int32_t d) const { return device_load_[d]; }
  const Placement& placement() const { return placement_; }
  const Replication& replication() const { return replication_; }

 private:
  const SystemConfig& system_;
  const Replication& replication_;
  std::vector<double> load_;
  std::vector<int64_t> device_used_;
  std::vector<double> device_load_;
  Placement placement_;
};

std::vector<int32_t> by_decreasing_load(const Builder& b, const std::vector<int32_t>& instances) {
  std::vector<int32_t> order = instances;
  std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return b.load(x) > b.load(y); });
  return order;
}

std::vector<int32_t> hottest_experts(const SystemConfig& system, const std::vector<int64_t>& frequency, int64_t n) {
  std::vector<int32_t> order(system.experts);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return frequency[a] > frequency[b]; });
  order.resize(std::min<int64_t>(n, system.experts));
  return order;
}

}  // namespace

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
  if (system.slots > system.devices() * system.max_per_device())
    throw UserError("placement: slots exceed rows * cols * max_per_device");
  if (initial.placement_strategy == "random") {
    uint64_t state = seed;
    return random_placement(system, replication, state);
  }
  std::vector<double> load(replication.num_instances());
  for (int64_t i = 0; i < replication.num_instances(); ++i) {
    int32_t e = replication.instance_expert[i];
    load[i] = static_cast<double>(frequency[e]) / static_cast<double>(replication.replicas[e]);
  }
  Builder b(system, replication, load);
  const bool rows = initial.placement_axis == "row";

  std::vector<int32_t> rest;
  int64_t shared_index = 0;
  for (int64_t i = 0; i < replication.num_instances(); ++i) {
    bool shared = replication.instance_expert[i] >= system.experts;
    if (shared && initial.replica_spread_by_distance) {
      int32_t d = static_cast<int32_t>((shared_index % system.rows) * system.cols + shared_index % system.cols);
      ++shared_index;
      if (b.has_room(d)) {
        b.put(static_cast<int32_t>(i), d);
        continue;
      }
    }
    rest.push_back(static_cast<int32_t>(i));
  }
  std::vector<int32_t> order = by_decreasing_load(b, rest);

  if (initial.placement_strategy == "balance") {
    for (int32_t inst : order) b.place_balanced(inst, rows);
  } else if (initial.placement_strategy == "hot-tier") {
    std::vector<int32_t> hot = hottest_experts(system, frequency, initial.top_n);
    auto is_hot = [&](int32_t inst) {
      return std::find(hot.begin(), hot.end(), replication.instance_expert[inst]) != hot.end();
    };
    const bool hot_rows = initial.hot_tier_axis == "row";
    for (int32_t inst : order)
      if (is_hot(inst)) b.place_balanced(inst, hot_rows);
    for (int32_t inst : order)
      if (!is_hot(inst)) b.place_balanced(inst, rows);
  } else if (initial.placement_strategy == "balance_load_coactivation") {
    std::vector<int32_t> hot = hottest_experts(system, frequency, initial.top_n);
    for (int32_t inst : order) {
      const int32_t expert = replication.instance_expert[inst];
      if (expert >= system.experts || std::find(hot.begin(), hot.end(), expert) != hot.end()) {
        b.place_balanced(inst, rows);
        continue;
      }
      int64_t best = -1;
      double best_score = 0;
      bool best_holds = true;
      for (int64_t l = 0; l < b.lines(rows); ++l) {
        if (!b.line_has_room(l, rows)) continue;
        double affinity = 0;
        for (int32_t d : b.devices_of(l, rows))
          for (size_t other = 0; other < b.placement().device.size(); ++other)
            if (b.placement().device[other] == d && replication.instance_expert[other] < system.experts)
              affinity += static_cast<double>(coactivation.at(expert, replication.instance_expert[other]));
        double score = affinity - 0.1 * b.line_load(l, rows);
        bool holds = b.line_holds(l, rows, expert);  // a second replica in the same line is wasted
        if (best < 0 || (best_holds && !holds) || (holds == best_holds && score > best_score)) {
          best = l;
          best_score = score;
          best_holds = holds;
        }
      }
      if (best < 0) throw UserError("placement: the mesh has no free slot left");
      b.put(inst, b.least_loaded_device(best, rows));
    }
  } else {  // eplb
    for (int32_t inst : order) {
      const int32_t expert = replication.instance_expert[inst];
      int32_t best = -1;
      bool best_holds = true;
      for (int32_t d = 0; d < system.devices(); ++d) {
        if (!b.has_room(d)) continue;
        bool holds = false;
        for (int32_t other : replication.instances[expert]) holds |= b.placement().device[other] == d;
        if (best < 0 || (best_holds && !holds) || (holds == best_holds && b.device_load(d) < b.device_load(best))) {
          best = d;
          best_holds = holds;
        }
      }
      if (best < 0) throw UserError("placement: the mesh has no free slot left");
      b.put(inst, best);
    }
  }
  return b.placement();
}

}  // namespace moelab::placement
