#pragma once
// Initial placements: where each instance goes before any search.
//   balance                    instances by decreasing load to the least-loaded line (row or
//                              column), ties to the line farthest from the expert's other
//                              replicas; inside a line the least-loaded device
//   balance_load_coactivation  the top_n hottest experts as in balance, then each next one to
//                              the line maximising co-activation with the experts already
//                              there minus 0.1 x line load
//   hot-tier                   the top_n hottest spread over hot_tier_axis lines, the rest by balance
//   eplb                       DeepSeek EPLB's greedy packing: by decreasing load, each
//                              instance to the least-loaded device with a free slot
//   random                     uniformly random slots (seeded)
// An instance's load is its expert's trace frequency divided by the expert's replicas.
// Shared-expert instances go first, at (i % rows, i % cols), when replica_spread_by_distance.
#include <cstdint>
#include <vector>

#include "placement/placement.h"
#include "placement/placement_config.h"
#include "trace/coactivation.h"

namespace moelab::placement {

Placement initial_placement(const SystemConfig& system, const InitialPlacementConfig& initial,
                            const Replication& replication, const std::vector<int64_t>& expert_frequency,
                            const CoactivationMatrix& coactivation, uint64_t seed);

Placement random_placement(const SystemConfig& system, const Replication& replication, uint64_t& rng_state);

}  // namespace moelab::placement
