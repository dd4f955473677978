#pragma once
// Expert instances and where they live. Instance ids are fixed by the replication: experts
// in id order (gated 0..E-1, then shared E..E+S-1), replicas in order. A placement maps each
// instance to a device (device = row * cols + col); searches move instances, never renumber
// them, so token-to-instance routing does not change while a search runs.
#include <cstdint>
#include <string>
#include <vector>

#include "placement/placement_config.h"

namespace moelab::placement {

struct Replication {
  std::vector<int64_t> replicas;               // per expert (gated then shared)
  std::vector<int32_t> instance_expert;        // per instance
  std::vector<std::vector<int32_t>> instances; // per expert: its instance ids in replica order
  int64_t num_instances() const { return static_cast<int64_t>(instance_expert.size()); }
};

// The reference's replication: every expert one instance, each shared expert
// kSharedExpertReplicas whatever the mesh, the remaining slots to gated experts in descending
// frequency, round-robin (ties: lower id first).
constexpr int64_t kSharedExpertReplicas = 16;
Replication replicate(const SystemConfig& system, const std::vector<int64_t>& expert_frequency);
Replication replication_from_counts(const std::vector<int64_t>& replicas);

struct Placement {
  std::vector<int32_t> device;  // per instance
};

// Checks: every instance on a device of the mesh, at most max_per_device per device.
void check_placement(const SystemConfig& system, const Replication& replication, const Placement& placement,
                     const std::string& origin);

// The seed's placement.json: {"<expert>": [{"device", "row", "col", "slot"}, ...]}.
std::string placement_to_json(const SystemConfig& system, const Replication& replication, const Placement& placement);
void read_placement_json(const std::string& path, const SystemConfig& system, Replication& replication,
                         Placement& placement);
// rows x cols grid; each cell lists its experts ("12;40;256").
std::string placement_grid_csv(const SystemConfig& system, const Replication& replication, const Placement& placement);

}  // namespace moelab::placement
