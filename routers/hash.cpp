// hash (Roller et al. 2021): no learned gate. key = token id (default) or the token's
// position in the batch (which balances loads whatever the text); base = (key * 1315423911 + 2654435761) mod E; expert j =
// (base + 97 j) mod E; gates 1/k. 1315423911 is odd, so for E a power of two the map from
// key to base is a bijection mod E and uniform keys give perfectly balanced loads.
#include <torch/torch.h>

#include "routers/strategy.h"
#include "util/error.h"
#include "util/strings.h"

namespace moelab {
namespace {

class HashStrategy : public RoutingStrategy {
 public:
  explicit HashStrategy(bool by_position) : by_position_(by_position) {}

  bool uses_gate() const override { return false; }

  // Expert j of a token is (base + 97 j) mod E: the k must be distinct.
  void validate(const RouterConfig& config) const override {
    for (int64_t a = 0; a < config.top_k; ++a)
      for (int64_t b = a + 1; b < config.top_k; ++b)
        if ((97 * a) % config.num_experts == (97 * b) % config.num_experts)
          throw UserError(strf("'router.top_k' = %lld gives repeated hash experts with router.num_experts = %lld",
                               (long long)config.top_k, (long long)config.num_experts));
  }

  StrategyChoice route(const StrategyInputs& in) const override {
    const int64_t tokens = in.token_ids.size(0), experts = in.num_experts;
    torch::Tensor keys = by_position_ ? torch::arange(tokens, in.token_ids.options()) : in.token_ids;
    // (key * 1315423911 + 2654435761) mod E, computed as ((key mod E)(a mod E) + b mod E) mod E
    // so that int64 never overflows whatever the key.
    torch::Tensor base = (keys.remainder(experts) * static_cast<int64_t>(1315423911LL % experts) +
                          static_cast<int64_t>(2654435761LL % experts))
                             .remainder(experts);
    torch::Tensor offsets = (torch::arange(in.top_k, in.token_ids.options()) * 97).remainder(experts);
    torch::Tensor ids = (base.unsqueeze(1) + offsets.unsqueeze(0)).remainder(experts);
    torch::Tensor gates = torch::full(ids.sizes(), 1.0 / static_cast<double>(in.top_k),
                                      in.token_ids.options().dtype(torch::kFloat32));
    return {ids, gates, torch::ones_like(ids, torch::kBool), gates};
  }

 private:
  bool by_position_;
};

}  // namespace

std::unique_ptr<RoutingStrategy> make_hash_strategy(const RouterConfig& config) {
  return std::make_unique<HashStrategy>(config.hash_key == "position");
}

}  // namespace moelab
