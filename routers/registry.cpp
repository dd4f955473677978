#include <map>

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
    make_strategy(config)->validate(config);
    validate_gate_name(config.gate);
  } catch (const UserError& e) {
    throw UserError(origin + ": " + e.what());
  }
}

}  // namespace moelab
