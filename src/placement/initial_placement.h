#pragma once
// Initial placements: where each instance goes before any search.
//
// moe-balance's own algorithms (sim/search.py at 700358b), reproduced step for step so that
// a config gives the same placement.json (the devices of every expert, in replica order):
//   balance                    experts by (replicas, load) high to low; each replica to the
//                              line (row or column, `placement_axis`) with the least load,
//                              then the farthest (ring distance) from the expert's other
//                              replicas, then the lowest index
//   balance_load_coactivation  the top_n hottest experts one each to the least-loaded line;
//                              the rest, hottest first, to the line maximising co-activation
//                              with the experts already there minus 0.1 x line load; then
//                              the extra replicas as in balance
//   hot-tier                   balance_load_coactivation along `hot_tier_axis`
// then, inside its line, every replica to the device with the least load, then fewest
// instances, then farthest from the expert's other replicas (line, row, column), then lowest
// id. A line's load counts an expert's whole frequency for each of its replicas, as the
// reference does; shared experts are placed like any other.
//
// moelab's own:
//   eplb                       DeepSeek EPLB's greedy packing: by decreasing load (frequency
//                              / replicas), each instance to the least-loaded device with a
//                              free slot, avoiding devices holding the same expert
//   random                     uniformly random slots (seeded)
#include <cstdint>
#include <vector>

#include "placement/placement.h"
#include "placement/placement_config.h"
#include "trace/coactivation.h"
#include "trace/trace_record.h"

namespace moelab::placement {

// Co-activation over gated and shared experts: every token's experts with the shared ones
// appended, as the reference counts it for placement.
CoactivationMatrix coactivation_with_shared(const SystemConfig& system, const std::vector<TraceRecord>& records);

// `frequency` and `coactivation` cover gated then shared experts.
Placement initial_placement(const SystemConfig& system, const InitialPlacementConfig& initial,
                            const Replication& replication, const std::vector<int64_t>& frequency,
                            const CoactivationMatrix& coactivation, uint64_t seed);

Placement random_placement(const SystemConfig& system, const Replication& replication, uint64_t& rng_state);

}  // namespace moelab::placement
