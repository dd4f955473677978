#include <map>
#include <numeric>

#include "routers/gate_networks.h"
#include "routers/strategy.h"
#include "util/error.h"
#include "util/strings.h"

namespace moelab {

// One line per strategy: its name in configs and its factory (defined in routers/<name>.cpp).
#define MOELAB_STRATEGIES(X) \
  X(top1)                    \
  X(topk_hard)               \
  X(softk)                   \
  X(hash)                    \
  X(expert_choice)           \
  X(sinkhorn)

#define DECLARE_FACTORY(name) std::unique_ptr<RoutingStrategy> make_##name##_strategy(const RouterConfig&);
MOELAB_STRATEGIES(DECLARE_FACTORY)
#undef DECLARE_FACTORY

static const std::map<std::string, StrategyFactory>& registry() {
#define REGISTER(name) {#name, make_##name##_strategy},
  static const std::map<std::string, StrategyFactory> factories = {MOELAB_STRATEGIES(REGISTER)};
#undef REGISTER
  return factories;
}

std::vector<std::string> strategy_names() {
  std::vector<std::string> names;
  for (const auto& [name, factory] : registry()) names.push_back(name);
  return names;
}

std::unique_ptr<RoutingStrategy> make_strategy(const RouterConfig& config) {
  auto it = registry().find(config.strategy);
  if (it == registry().end()) {
    std::string known;
    for (const std::string& n : strategy_names()) known += (known.empty() ? "" : "|") + n;
    throw UserError("router.strategy must be one of " + known + ", got '" + config.strategy + "'");
  }
  return it->second(config);
}

void validate_router_config(const RouterConfig& config, const std::string& origin) {
  try {
    make_strategy(config);
    validate_gate_name(config.gate);
  } catch (const UserError& e) {
    throw UserError(origin + ": " + e.what());
  }
  if (config.strategy == "hash") {
    // Expert j of a token is (base + 97 j) mod E: the k must be distinct.
    for (int64_t a = 0; a < config.top_k; ++a)
      for (int64_t b = a + 1; b < config.top_k; ++b)
        if ((97 * a) % config.num_experts == (97 * b) % config.num_experts)
          throw UserError(strf("%s: 'router.top_k' = %lld gives repeated hash experts with router.num_experts = %lld",
                               origin.c_str(), (long long)config.top_k, (long long)config.num_experts));
  }
  if (config.strategy == "expert_choice" && config.capacity_factor <= 0)
    throw UserError(origin + ": 'router.capacity_factor' must be > 0 for expert_choice (each expert takes "
                             "ceil(CF*T*k/E) tokens; there is no dropless expert choice)");
}

}  // namespace moelab
