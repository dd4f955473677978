#pragma once
// The three JSONC configs of `moelab place`, field names as in the seed simulator
// (johanna-rock/moe-balance), so its configs load unchanged.
#include <string>
#include <vector>

namespace moelab::placement {

struct SystemConfig {
  std::string trace;
  int64_t layer = 0;
  int64_t rows = 16, cols = 8;
  int64_t experts = 256;
  int64_t num_shared_experts = 1;
  int64_t slots = 384;
  std::string routing_strategy = "balanced-replicas";
  double capacity_factor = 2.0;        // per-instance capacity = max(1, int(CF * batch*k/instances))
  std::string objective = "mean";      // mean | p95 | p99
  std::string origin_mode = "round-robin";  // round-robin | random | average-rows (records without origin rows)
  int64_t max_records = 0;             // 0 = all
  double fast_test_pct = 0.0;          // keep int(pct * T) tokens of each record, sampled as moe-balance does (0 = all)
  int64_t max_seq_len = 0;             // keep at most this many tokens per record (0 = all)

  int64_t devices() const { return rows * cols; }
  int64_t max_per_device() const { return (slots + devices() - 1) / devices(); }
};

struct SearchStep {
  std::string type;  // local | anneal | random
  int64_t iters = 0;
  double t0 = 1.0, t1 = 0.01;
};

struct SearchConfig {
  std::string search = "none";  // none | random | local | anneal | sequence
  int64_t iters = 50;           // random placements per restart
  int64_t restarts = 1;
  int64_t local_search_iters = 200;
  int64_t anneal_iters = 500;
  double anneal_t0 = 1.0, anneal_t1 = 0.01;
  std::vector<SearchStep> search_sequence;
  int64_t threads = 0;          // 0 = all cores
};

struct InitialPlacementConfig {
  std::string placement_strategy = "balance";  // balance | balance_load_coactivation | hot-tier | eplb | random
  std::string placement_axis = "row";           // row | col
  std::string hot_tier_axis = "col";            // the reference's default
  int64_t top_n = 32;                           // hot experts (balance_load_coactivation, hot-tier)
  // Accepted for the reference's configs, which carry it; at 700358b it changes nothing (its
  // shared-first placement is disabled: shared replicas are placed like any other).
  bool replica_spread_by_distance = true;
};

// Each loads a JSONC file (empty path = defaults): unknown keys, wrong types and impossible
// values are a UserError naming the file and key.
SystemConfig load_system_config(const std::string& path);
SearchConfig load_search_config(const std::string& path);
InitialPlacementConfig load_initial_config(const std::string& path);

}  // namespace moelab::placement
