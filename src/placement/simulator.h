#pragma once
// `moelab place`: load the configs and trace, replicate, place, search, write the results.
#include <string>

#include <nlohmann/json.hpp>

namespace moelab::placement {

struct PlaceOptions {
  std::string system_path, search_path, initial_path;
  std::string trace_override;      // --trace
  std::string placement_path;      // --placement: evaluate / start from this placement
  std::string out_dir;             // results; empty = print only
  uint64_t seed = 0;
};

// Returns the result JSON (also written to OUT/result.json).
nlohmann::json run_placement(const PlaceOptions& options);

}  // namespace moelab::placement
