#include "placement/placement.h"

#include <algorithm>
#include <map>
#include <numeric>

#include <nlohmann/json.hpp>

#include "config/run_config.h"
#include "util/error.h"
#include "util/files.h"
#include "util/strings.h"

namespace moelab::placement {
using nlohmann::json;

Replication replication_from_counts(const std::vector<int64_t>& replicas) {
  Replication r;
  r.replicas = replicas;
  r.instances.resize(replicas.size());
  for (size_t e = 0; e < replicas.size(); ++e)
    for (int64_t i = 0; i < replicas[e]; ++i) {
      r.instances[e].push_back(static_cast<int32_t>(r.instance_expert.size()));
      r.instance_expert.push_back(static_cast<int32_t>(e));
    }
  return r;
}

Replication replicate(const SystemConfig& system, const std::vector<int64_t>& frequency) {
  const int64_t total = system.experts + system.num_shared_experts;
  std::vector<int64_t> replicas(total, 1);
  for (int64_t s = 0; s < system.num_shared_experts; ++s) replicas[system.experts + s] = kSharedExpertReplicas;
  int64_t remaining = system.slots - std::accumulate(replicas.begin(), replicas.end(), int64_t{0});
  std::vector<int64_t> order(system.experts);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return frequency[a] > frequency[b]; });
  for (int64_t i = 0; remaining > 0; ++i, --remaining) ++replicas[order[i % system.experts]];
  return replication_from_counts(replicas);
}

void check_placement(const SystemConfig& system, const Replication& replication, const Placement& placement,
                     const std::string& origin) {
  if (static_cast<int64_t>(placement.device.size()) != replication.num_instances())
    throw UserError(origin + ": placement covers " + std::to_string(placement.device.size()) + " instances, expected " +
                    std::to_string(replication.num_instances()));
  std::vector<int64_t> load(system.devices(), 0);
  for (size_t i = 0; i < placement.device.size(); ++i) {
    int32_t d = placement.device[i];
    if (d < 0 || d >= system.devices())
      throw UserError(strf("%s: expert %d is on device %d, outside the %lld x %lld mesh", origin.c_str(),
                           replication.instance_expert[i], d, (long long)system.rows, (long long)system.cols));
    if (++load[d] > system.max_per_device())
      throw UserError(strf("%s: device %d holds more than max_per_device = ceil(slots / devices) = %lld instances",
                           origin.c_str(), d, (long long)system.max_per_device()));
  }
}

std::string placement_to_json(const SystemConfig& system, const Replication& replication, const Placement& placement) {
  // Experts in id order and no final newline: json.dump(..., indent=2) of the reference's dict.
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  std::vector<int64_t> slot(system.devices(), 0);
  for (size_t e = 0; e < replication.instances.size(); ++e) {
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    for (int32_t inst : replication.instances[e]) {
      int32_t d = placement.device[inst];
      list.push_back({{"device", d}, {"row", d / system.cols}, {"col", d % system.cols}, {"slot", slot[d]++}});
    }
    out[std::to_string(e)] = list;
  }
  return out.dump(2);
}

void read_placement_json(const std::string& path, const SystemConfig& system, Replication& replication,
                         Placement& placement) {
  const json in = parse_jsonc_text(read_text_file(path), path);
  if (!in.is_object()) throw UserError(path + ": expected an object from expert id to a list of placements");
  const int64_t total = system.experts + system.num_shared_experts;
  std::vector<std::vector<int32_t>> devices(total);
  for (auto it = in.begin(); it != in.end(); ++it) {
    int64_t expert = -1;
    try {
      size_t used = 0;
      expert = std::stoll(it.key(), &used);
      if (used != it.key().size()) expert = -1;
    } catch (...) {
    }
    if (expert < 0 || expert >= total)
      throw UserError(strf("%s: key '%s' is not an expert id in [0, %lld)", path.c_str(), it.key().c_str(), (long long)total));
    if (!it.value().is_array() || it.value().empty())
      throw UserError(path + ": expert " + it.key() + " must map to a non-empty list of {device, row, col, slot}");
    for (const json& p : it.value()) {
      if (!p.is_object() || !p.contains("device") || !p["device"].is_number_integer())
        throw UserError(path + ": expert " + it.key() + ": each placement needs an integer 'device'");
      int64_t d = p["device"].get<int64_t>();
      if (p.contains("row") && p.contains("col") && (p["row"] != d / system.cols || p["col"] != d % system.cols))
        throw UserError(strf("%s: expert %s: device %lld is not at the row/col given for a %lld-column mesh", path.c_str(),
                             it.key().c_str(), (long long)d, (long long)system.cols));
      devices[expert].push_back(static_cast<int32_t>(d));
    }
  }
  std::vector<int64_t> replicas(total);
  for (int64_t e = 0; e < total; ++e) {
    if (devices[e].empty()) throw UserError(strf("%s: expert %lld has no instance", path.c_str(), (long long)e));
    replicas[e] = static_cast<int64_t>(devices[e].size());
  }
  replication = replication_from_counts(replicas);
  placement.device.clear();
  for (const auto& list : devices) placement.device.insert(placement.device.end(), list.begin(), list.end());
  check_placement(system, replication, placement, path);
}

std::string placement_grid_csv(const SystemConfig& system, const Replication& replication, const Placement& placement) {
  std::vector<std::string> cells(system.devices());
  for (size_t i = 0; i < placement.device.size(); ++i) {
    std::string& cell = cells[placement.device[i]];
    cell += (cell.empty() ? "" : ";") + std::to_string(replication.instance_expert[i]);
  }
  std::string csv = "row";
  for (int64_t c = 0; c < system.cols; ++c) csv += ",col" + std::to_string(c);
  csv += "\n";
  for (int64_t r = 0; r < system.rows; ++r) {
    csv += std::to_string(r);
    for (int64_t c = 0; c < system.cols; ++c) csv += "," + cells[r * system.cols + c];
    csv += "\n";
  }
  return csv;
}

}  // namespace moelab::placement
