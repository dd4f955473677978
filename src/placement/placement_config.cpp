#include "placement/placement_config.h"

#include <nlohmann/json.hpp>

#include "config/run_config.h"
#include "placement/placement.h"
#include "util/error.h"
#include "util/strings.h"

namespace moelab::placement {
using nlohmann::json;

namespace {

json load_over(json defaults, const std::string& path) {
  if (!path.empty()) merge_config(defaults, parse_jsonc_file(path), path);
  return defaults;
}

[[noreturn]] void refuse(const std::string& path, const std::string& key, const std::string& what) {
  throw UserError((path.empty() ? std::string("defaults") : path) + ": '" + key + "' " + what);
}

void positive(const std::string& path, const std::string& key, int64_t v) {
  if (v < 1) refuse(path, key, strf("must be >= 1, got %lld", (long long)v));
}

void one_of(const std::string& path, const std::string& key, const std::string& v, std::initializer_list<const char*> options) {
  std::string list;
  for (const char* o : options) {
    if (v == o) return;
    list += (list.empty() ? "" : "|") + std::string(o);
  }
  refuse(path, key, "must be one of " + list + ", got '" + printable(v) + "'");
}

}  // namespace

SystemConfig load_system_config(const std::string& path) {
  SystemConfig d;
  json j = load_over({{"trace", d.trace},
                      {"layer", d.layer},
                      {"rows", d.rows},
                      {"cols", d.cols},
                      {"experts", d.experts},
                      {"num_shared_experts", d.num_shared_experts},
                      {"slots", d.slots},
                      {"routing_strategy", d.routing_strategy},
                      {"capacity_factor", d.capacity_factor},
                      {"objective", d.objective},
                      {"origin_mode", d.origin_mode},
                      {"max_records", d.max_records},
                      {"fast_test_pct", d.fast_test_pct},
                      {"max_seq_len", d.max_seq_len}},
                     path);
  SystemConfig c;
  c.trace = j["trace"];
  c.layer = j["layer"];
  c.rows = j["rows"];
  c.cols = j["cols"];
  c.experts = j["experts"];
  c.num_shared_experts = j["num_shared_experts"];
  c.slots = j["slots"];
  c.routing_strategy = j["routing_strategy"];
  c.capacity_factor = j["capacity_factor"];
  c.objective = j["objective"];
  c.origin_mode = j["origin_mode"];
  c.max_records = j["max_records"];
  c.fast_test_pct = j["fast_test_pct"];
  c.max_seq_len = j["max_seq_len"];
  positive(path, "rows", c.rows);
  positive(path, "cols", c.cols);
  positive(path, "experts", c.experts);
  if (c.layer < 0) refuse(path, "layer", "must be >= 0");
  if (c.num_shared_experts < 0) refuse(path, "num_shared_experts", "must be >= 0");
  const int64_t needed = c.experts + c.num_shared_experts * kSharedExpertReplicas;
  if (c.slots < needed)
    refuse(path, "slots", strf("must be >= experts + %lld x num_shared_experts = %lld (every expert needs an instance and "
                               "each shared expert has %lld, as in moe-balance), got %lld", (long long)kSharedExpertReplicas,
                               (long long)needed, (long long)kSharedExpertReplicas, (long long)c.slots));
  one_of(path, "routing_strategy", c.routing_strategy, {"balanced-replicas"});
  if (!(c.capacity_factor > 0)) refuse(path, "capacity_factor", "must be > 0");
  one_of(path, "objective", c.objective, {"mean", "p95", "p99"});
  one_of(path, "origin_mode", c.origin_mode, {"round-robin", "random", "average-rows"});
  if (c.max_records < 0) refuse(path, "max_records", "must be >= 0");
  if (c.fast_test_pct < 0 || c.fast_test_pct > 1) refuse(path, "fast_test_pct", "must be in [0, 1]");
  if (c.max_seq_len < 0) refuse(path, "max_seq_len", "must be >= 0");
  return c;
}

SearchConfig load_search_config(const std::string& path) {
  SearchConfig d;
  json j = load_over({{"search", d.search},
                      {"iters", d.iters},
                      {"restarts", d.restarts},
                      {"local_search_iters", d.local_search_iters},
                      {"anneal_iters", d.anneal_iters},
                      {"anneal_t0", d.anneal_t0},
                      {"anneal_t1", d.anneal_t1},
                      {"search_sequence", json::array()},
                      {"threads", d.threads}},
                     path);
  SearchConfig c;
  c.search = j["search"];
  one_of(path, "search", c.search, {"none", "random", "local", "anneal", "sequence"});
  c.iters = j["iters"];
  c.restarts = j["restarts"];
  c.local_search_iters = j["local_search_iters"];
  c.anneal_iters = j["anneal_iters"];
  c.anneal_t0 = j["anneal_t0"];
  c.anneal_t1 = j["anneal_t1"];
  c.threads = j["threads"];
  positive(path, "restarts", c.restarts);
  if (c.iters < 0 || c.local_search_iters < 0 || c.anneal_iters < 0) refuse(path, "iters", "iteration counts must be >= 0");
  if (!(c.anneal_t0 > 0) || !(c.anneal_t1 > 0)) refuse(path, "anneal_t0", "temperatures must be > 0");
  const json& steps = j["search_sequence"];
  for (size_t i = 0; i < steps.size(); ++i) {
    std::string key = strf("search_sequence[%zu]", i);
    const json& s = steps[i];
    if (!s.is_object() || !s.contains("type") || !s["type"].is_string()) refuse(path, key, "must be {\"type\": ..., \"iters\": N}");
    SearchStep step;
    step.type = s["type"];
    one_of(path, key + ".type", step.type, {"local", "anneal", "random"});
    for (auto it = s.begin(); it != s.end(); ++it)
      if (it.key() != "type" && it.key() != "iters" && it.key() != "t0" && it.key() != "t1")
        refuse(path, key, "unknown key '" + printable(it.key()) + "' (expected type, iters, t0, t1)");
    step.iters = s.value("iters", int64_t{0});
    step.t0 = s.value("t0", c.anneal_t0);
    step.t1 = s.value("t1", c.anneal_t1);
    if (step.iters < 0 || !(step.t0 > 0) || !(step.t1 > 0)) refuse(path, key, "iters must be >= 0 and temperatures > 0");
    c.search_sequence.push_back(step);
  }
  if (c.search == "sequence" && c.search_sequence.empty()) refuse(path, "search_sequence", "must list the steps of a sequence search");
  return c;
}

InitialPlacementConfig load_initial_config(const std::string& path) {
  InitialPlacementConfig d;
  json j = load_over({{"placement_strategy", d.placement_strategy},
                      {"placement_axis", d.placement_axis},
                      {"hot_tier_axis", d.hot_tier_axis},
                      {"top_n", d.top_n},
                      {"replica_spread_by_distance", d.replica_spread_by_distance}},
                     path);
  InitialPlacementConfig c;
  c.placement_strategy = j["placement_strategy"];
  one_of(path, "placement_strategy", c.placement_strategy, {"balance", "balance_load_coactivation", "hot-tier", "eplb", "random"});
  c.placement_axis = j["placement_axis"];
  one_of(path, "placement_axis", c.placement_axis, {"row", "col"});
  c.hot_tier_axis = j["hot_tier_axis"];
  one_of(path, "hot_tier_axis", c.hot_tier_axis, {"row", "col"});
  c.top_n = j["top_n"];
  if (c.top_n < 0) refuse(path, "top_n", "must be >= 0");
  c.replica_spread_by_distance = j["replica_spread_by_distance"];
  return c;
}

}  // namespace moelab::placement
