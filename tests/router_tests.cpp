// Each routing strategy, capacity policy, balancing term and metric on cases computed by hand.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "routers/balancing.h"
#include "routers/capacity.h"
#include "routers/router.h"
#include "routers/routing_metrics.h"
#include "kernels/routing_kernels.h"
#include "test_support.h"
#include "util/error.h"

using namespace moelab;

namespace {

// Balancing terms off unless a test turns them on.
RouterConfig router_config(const std::string& strategy, int64_t experts, int64_t k, double cf) {
  RouterConfig c = moelab::testing::routing_config(strategy, experts, k, cf);
  c.lb_coef = 0;
  return c;
}

// A router whose linear gate is replaced by fixed logits: x = I, W = logits^T, b = 0.
RoutingPlan route_logits(RouterConfig config, const torch::Tensor& logits, torch::Tensor token_ids = {}) {
  const int64_t tokens = logits.size(0), experts = logits.size(1);
  Router router(config, tokens);
  if (config.strategy != "hash") {
    torch::NoGradGuard no_grad;
    auto params = router.named_parameters();
    params["gate.proj.weight"].copy_(logits.t());
    params["gate.proj.bias"].zero_();
  }
  if (!token_ids.defined()) token_ids = torch::arange(tokens, torch::kLong);
  (void)experts;
  return router.forward(torch::eye(tokens), token_ids);
}

std::vector<int64_t> ints(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kLong).contiguous().reshape(-1);
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

}  // namespace

TEST(Capacity, SlotsPerExpert) {
  EXPECT_EQ(expert_capacity(8192, 2, 8, 1.25), 2560);
  EXPECT_EQ(expert_capacity(10, 2, 8, 1.0), 3);  // ceil(2.5)
  EXPECT_EQ(expert_capacity(16, 1, 4, 1.0), 4);  // exact: not bumped to 5
  EXPECT_EQ(expert_capacity(16, 1, 4, 0.0), 0);  // dropless
  EXPECT_EQ(expert_capacity(16, 1, 4, -1.0), 0);
}

TEST(Capacity, PositionPolicyKeepsEarlierEntries) {
  // 4 tokens, k = 2, flat order t*2+j; expert 0 is wanted by entries 0, 2, 4, 6; C = 2.
  torch::Tensor ids = torch::tensor({0, 1, 0, 1, 0, 2, 0, 1}, torch::kLong).view({4, 2});
  torch::Tensor selected = torch::ones({4, 2}, torch::kBool);
  torch::Tensor priority = torch::rand({4, 2});
  torch::Tensor kept = apply_capacity(ids, selected, priority, 3, 2, "position");
  EXPECT_EQ(ints(kept), (std::vector<int64_t>{1, 1, 1, 1, 0, 1, 0, 0}));
}

TEST(Capacity, ProbsPolicyKeepsHighestPriority) {
  torch::Tensor ids = torch::tensor({0, 1, 0, 1, 0, 2, 0, 1}, torch::kLong).view({4, 2});
  torch::Tensor selected = torch::ones({4, 2}, torch::kBool);
  torch::Tensor priority = torch::tensor({0.1, 0.9, 0.2, 0.5, 0.7, 0.3, 0.6, 0.5}).view({4, 2});
  torch::Tensor kept = apply_capacity(ids, selected, priority, 3, 2, "probs");
  // expert 0: priorities 0.1, 0.2, 0.7, 0.6 -> keeps entries 4 and 6;
  // expert 1: 0.9, 0.5, 0.5 -> keeps 1 and, of the tie, the earlier entry 3.
  EXPECT_EQ(ints(kept), (std::vector<int64_t>{0, 1, 0, 1, 1, 1, 1, 0}));
}

TEST(Capacity, UnselectedEntriesTakeNoSlot) {
  torch::Tensor ids = torch::tensor({0, 0, 0}, torch::kLong).view({3, 1});
  torch::Tensor selected = torch::tensor({false, true, true}).view({3, 1});
  torch::Tensor kept = apply_capacity(ids, selected, torch::ones({3, 1}), 1, 2, "position");
  EXPECT_EQ(ints(kept), (std::vector<int64_t>{0, 1, 1}));
}

TEST(Capacity, RenormalisationAfterDrop) {
  torch::Tensor gates = torch::tensor({0.6, 0.4, 0.7, 0.3, 0.5, 0.5}).view({3, 2});
  torch::Tensor selected = torch::ones({3, 2}, torch::kBool);
  torch::Tensor kept = torch::tensor({true, false, true, true, false, false}).view({3, 2});
  torch::Tensor out = kernels::kept_gates(gates, selected, kept, /*renormalize=*/true);
  EXPECT_TRUE(torch::allclose(out, torch::tensor({1.0, 0.0, 0.7, 0.3, 0.0, 0.0}).view({3, 2})));
  // Without renormalisation the dropped gates are zeroed and the rest kept as they are.
  EXPECT_TRUE(torch::allclose(kernels::kept_gates(gates, selected, kept, false),
                              torch::tensor({0.6, 0.0, 0.7, 0.3, 0.0, 0.0}).view({3, 2})));
}

TEST(Strategies, Top1TakesArgmaxWithProbabilityGate) {
  torch::Tensor logits = torch::tensor({{2.0, 1.0, 0.0}, {0.0, 3.0, 1.0}, {1.0, 1.0, 0.0}});
  RoutingPlan plan = route_logits(router_config("top1", 3, 1, 0), logits);
  EXPECT_EQ(ints(plan.expert_ids), (std::vector<int64_t>{0, 1, 0}));  // tie: lower id wins
  torch::Tensor expected = torch::softmax(logits, -1).gather(1, plan.expert_ids);
  EXPECT_TRUE(torch::allclose(plan.gates, expected));
  RouterConfig seed_style = router_config("top1", 3, 1, 0);
  seed_style.top1_gate = "none";
  EXPECT_TRUE(torch::equal(route_logits(seed_style, logits).gates, torch::ones({3, 1})));
}

TEST(Strategies, TopkHardEqualWeights) {
  torch::Tensor logits = torch::tensor({{0.5, 2.0, 1.0, -1.0}, {3.0, 0.0, 0.1, 2.0}});
  RouterConfig c = router_config("topk_hard", 4, 2, 0);
  RoutingPlan plan = route_logits(c, logits);
  EXPECT_EQ(ints(plan.expert_ids), (std::vector<int64_t>{1, 2, 0, 3}));
  EXPECT_TRUE(torch::equal(plan.gates, torch::ones({2, 2})));
  c.hard_weight = "mean";
  EXPECT_TRUE(torch::allclose(route_logits(c, logits).gates, torch::full({2, 2}, 0.5)));
}

TEST(Strategies, SoftkSoftmaxOverChosenLogits) {
  torch::Tensor logits = torch::tensor({{2.0, 1.0, 0.0, -1.0}, {0.0, 0.0, 5.0, 0.0}});
  RoutingPlan plan = route_logits(router_config("softk", 4, 2, 0), logits);
  EXPECT_EQ(ints(plan.expert_ids), (std::vector<int64_t>{0, 1, 2, 0}));
  double e = std::exp(1.0);
  torch::Tensor expected = torch::tensor({e / (e + 1), 1 / (e + 1), std::exp(5.0) / (std::exp(5.0) + 1), 1 / (std::exp(5.0) + 1)},
                                         torch::kFloat32).view({2, 2});
  EXPECT_TRUE(torch::allclose(plan.gates, expected, 1e-5, 1e-6));
  RouterConfig hot = router_config("softk", 4, 2, 0);
  hot.temperature = 2.0;
  torch::Tensor g = route_logits(hot, logits).gates;
  EXPECT_NEAR(g[0][0].item<double>(), std::exp(0.5) / (std::exp(0.5) + 1), 1e-6);
}

TEST(Strategies, SoftkWithCapacityDropsAndRenormalises) {
  // 4 tokens all prefer experts 0 then 1; E = 2, k = 2, CF = 0.5 -> C = 2 per expert.
  torch::Tensor logits = torch::tensor({{1.0, 0.0}, {1.0, 0.0}, {1.0, 0.0}, {0.0, 1.0}});
  RoutingPlan plan = route_logits(router_config("softk", 2, 2, 0.5), logits);
  EXPECT_EQ(plan.capacity, 2);
  // flat entries: t0:(0,1) t1:(0,1) t2:(0,1) t3:(1,0); expert 0 keeps t0,t1; expert 1 keeps t0,t1.
  EXPECT_EQ(ints(plan.kept), (std::vector<int64_t>{1, 1, 1, 1, 0, 0, 0, 0}));
  RoutingMetrics m = compute_routing_metrics(plan);
  EXPECT_DOUBLE_EQ(m.drop_rate, 0.5);
  EXPECT_DOUBLE_EQ(m.token_drop_rate, 0.5);
  EXPECT_DOUBLE_EQ(m.used_capacity, 1.0);
}

TEST(Strategies, HashByTokenIdAndByPosition) {
  RouterConfig c = router_config("hash", 8, 2, 0);
  torch::Tensor tokens = torch::tensor({0, 1, 5, 100}, torch::kLong);
  RoutingPlan plan = route_logits(c, torch::zeros({4, 8}), tokens);
  // base = (key * 1315423911 + 2654435761) mod 8; expert j = (base + 97 j) mod 8
  EXPECT_EQ(ints(plan.expert_ids), (std::vector<int64_t>{1, 2, 0, 1, 4, 5, 5, 6}));
  EXPECT_TRUE(torch::allclose(plan.gates, torch::full({4, 2}, 0.5)));
  EXPECT_FALSE(plan.logits.defined());

  RouterConfig e6 = router_config("hash", 6, 3, 0);
  EXPECT_EQ(ints(route_logits(e6, torch::zeros({1, 6}), torch::tensor({7}, torch::kLong)).expert_ids),
            (std::vector<int64_t>{4, 5, 0}));

  RouterConfig by_position = router_config("hash", 8, 1, 0);
  by_position.hash_key = "position";
  RoutingPlan balanced = route_logits(by_position, torch::zeros({64, 8}), torch::zeros({64}, torch::kLong));
  RoutingMetrics m = compute_routing_metrics(balanced);
  EXPECT_DOUBLE_EQ(m.load_cv, 0.0);  // uniform keys: perfectly balanced
  EXPECT_DOUBLE_EQ(m.dead_experts, 0.0);
}

TEST(Strategies, ExpertChoiceTakesExactlyCTokensPerExpert) {
  // T = 4, E = 2, k = 1, CF = 1 -> C = 2.
  torch::Tensor logits = torch::tensor({{3.0, 0.0}, {2.0, 0.0}, {0.0, 1.0}, {1.0, 1.0}});
  RoutingPlan plan = route_logits(router_config("expert_choice", 2, 1, 1.0), logits);
  EXPECT_EQ(plan.capacity, 2);
  // softmax columns: expert 0 scores .953 .881 .269 .5 -> tokens 0, 1; expert 1: .047 .119 .731 .5 -> 2, 3.
  EXPECT_EQ(ints(plan.kept), (std::vector<int64_t>{1, 0, 1, 0, 0, 1, 0, 1}));
  torch::Tensor s = torch::softmax(logits, -1);
  EXPECT_TRUE(torch::allclose(plan.gates, s * plan.kept));
  EXPECT_EQ(ints(plan.kept.sum(0)), (std::vector<int64_t>{2, 2}));

  // Random logits: every expert takes exactly C; orphans pass through with no expert.
  torch::manual_seed(3);
  torch::Tensor random = torch::randn({64, 8});
  RoutingPlan p = route_logits(router_config("expert_choice", 8, 2, 1.0), random);
  EXPECT_EQ(p.capacity, 16);
  for (int64_t count : ints(p.kept.sum(0))) EXPECT_EQ(count, 16);
}

TEST(Strategies, ExpertChoiceFallbackRoutesOrphansSoftk) {
  // Token 3 is nobody's favourite: with the fallback it goes to its top expert by softmax.
  torch::Tensor logits = torch::tensor({{3.0, 0.0}, {0.0, 3.0}, {2.0, 0.0}, {0.0, 0.0}});
  RouterConfig c = router_config("expert_choice", 2, 1, 0.5);  // C = 1
  RoutingPlan plain = route_logits(c, logits);
  EXPECT_EQ(ints(plain.kept.any(1)), (std::vector<int64_t>{1, 1, 0, 0}));
  c.ec_fallback = "topk";
  RoutingPlan fallback = route_logits(c, logits);
  EXPECT_EQ(ints(fallback.kept.any(1)), (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_NEAR(fallback.gates[3].sum().item<double>(), 1.0, 1e-6);
}

TEST(Strategies, SinkhornBalancesAndKeepsAGradient) {
  torch::manual_seed(5);
  torch::Tensor logits = torch::randn({128, 8}) * 2 + torch::tensor({3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0});
  torch::Tensor q = kernels::sinkhorn(logits, 50, 1.0);
  EXPECT_TRUE(torch::allclose(q.sum(0), torch::full({8}, 16.0), 1e-4, 1e-3));
  EXPECT_TRUE(torch::allclose(q.sum(1), torch::ones({128}), 1e-3, 1e-3));

  RouterConfig c = router_config("sinkhorn", 8, 2, 0);
  c.sinkhorn_iters = 50;
  RoutingPlan plan = route_logits(c, logits);
  RoutingMetrics balanced = compute_routing_metrics(plan);
  RoutingMetrics greedy = compute_routing_metrics(route_logits(router_config("softk", 8, 2, 0), logits));
  EXPECT_LT(balanced.load_cv, greedy.load_cv / 2);
  torch::Tensor expected = torch::softmax(logits.gather(1, plan.expert_ids), -1);
  EXPECT_TRUE(torch::allclose(plan.gates, expected, 1e-5, 1e-6));
  RouterConfig k1 = router_config("sinkhorn", 8, 1, 0);
  RoutingPlan single = route_logits(k1, logits);
  EXPECT_TRUE(torch::allclose(single.gates, torch::sigmoid(logits.gather(1, single.expert_ids))));
}

TEST(Balancing, LoadBalancingLossValueAndGradient) {
  torch::Tensor logits = torch::tensor({{1.0, 0.0}, {1.0, 0.0}, {0.0, 1.0}, {1.0, 0.0}}).requires_grad_(true);
  torch::Tensor ids = torch::tensor({0, 0, 1, 0}, torch::kLong).view({4, 1});
  torch::Tensor loss = load_balancing_loss(logits, ids, torch::ones({4, 1}, torch::kBool), 2);
  double p = std::exp(1.0) / (std::exp(1.0) + 1);  // P_0 = (3p + (1-p)) / 4
  double p0 = (3 * p + (1 - p)) / 4, p1 = 1 - p0;
  EXPECT_NEAR(loss.item<double>(), 2 * (0.75 * p0 + 0.25 * p1), 1e-6);
  loss.backward();
  EXPECT_GT(logits.grad().abs().sum().item<double>(), 0.0);

  // Through a real router: the gate weights get a gradient from the balancing loss alone.
  RouterConfig c = router_config("topk_hard", 4, 2, 0);  // constant gates: no LM-loss gradient
  c.lb_coef = 0.01;
  Router router(c, 16);
  torch::manual_seed(1);
  RoutingPlan plan = router.forward(torch::randn({32, 16}), torch::zeros({32}, torch::kLong));
  plan.lb_loss.backward();
  EXPECT_GT(router.named_parameters()["gate.proj.weight"].grad().abs().sum().item<double>(), 0.0);
}

TEST(Balancing, ZLossAndExpertBias) {
  torch::Tensor logits = torch::tensor({{0.0, 0.0}, {std::log(3.0), 0.0}});
  // logsumexp: log 2 and log 4 -> mean of squares
  EXPECT_NEAR(router_z_loss(logits).item<double>(), (std::pow(std::log(2.0), 2) + std::pow(std::log(4.0), 2)) / 2, 1e-6);
  torch::Tensor bias = torch::zeros({3});
  update_expert_bias(bias, torch::tensor({10, 2, 3}, torch::kLong), 0.1);
  EXPECT_TRUE(torch::allclose(bias, torch::tensor({-0.1, 0.1, 0.1})));

  // The bias steers selection, never the gate values.
  RouterConfig c = router_config("softk", 2, 1, 0);
  c.bias_rate = 1.0;
  Router router(c, 2);
  {
    torch::NoGradGuard no_grad;
    router.named_parameters()["gate.proj.weight"].copy_(torch::eye(2));
    router.named_parameters()["gate.proj.bias"].zero_();
    router.named_buffers()["expert_bias"].copy_(torch::tensor({0.0, 5.0}));
  }
  RoutingPlan plan = router.forward(torch::tensor({{1.0, 0.0}}), torch::zeros({1}, torch::kLong));
  EXPECT_EQ(plan.expert_ids.item<int64_t>(), 1);
  EXPECT_NEAR(plan.gates.item<double>(), 1.0, 1e-6);  // softmax over the one chosen logit
}

TEST(Metrics, KnownPlan) {
  RoutingPlan plan;
  plan.num_experts = 4;
  plan.top_k = 2;
  plan.capacity = 2;
  plan.expert_ids = torch::tensor({0, 1, 0, 2, 0, 1}, torch::kLong).view({3, 2});
  plan.selected = torch::ones({3, 2}, torch::kBool);
  plan.kept = torch::tensor({true, true, true, true, false, false}).view({3, 2});
  plan.gates = torch::tensor({0.5, 0.5, 0.75, 0.25, 0.0, 0.0}).view({3, 2});
  plan.logits = torch::zeros({3, 4});
  plan.lb_loss = torch::tensor(0.25);
  plan.z_loss = torch::tensor(0.0);
  RoutingMetrics m = compute_routing_metrics(plan);
  EXPECT_EQ(m.expert_load, (std::vector<int64_t>{2, 1, 1, 0}));
  double std = std::sqrt(((2 - 1.0) * (2 - 1.0) + 0 + 0 + 1) / 4);
  EXPECT_NEAR(m.load_cv, std / 1.0, 1e-12);
  EXPECT_DOUBLE_EQ(m.max_over_mean, 2.0);
  EXPECT_NEAR(m.drop_rate, 2.0 / 6.0, 1e-12);
  EXPECT_NEAR(m.token_drop_rate, 1.0 / 3.0, 1e-12);
  EXPECT_DOUBLE_EQ(m.used_capacity, 1.0);
  EXPECT_DOUBLE_EQ(m.dead_experts, 1.0);
  double h0 = std::log(2.0), h1 = -(0.75 * std::log(0.75) + 0.25 * std::log(0.25));
  EXPECT_NEAR(m.gate_entropy, (h0 + h1) / 2, 1e-9);
  EXPECT_NEAR(m.mean_topk_prob, (0.5 + 0.75) / 2, 1e-9);
  EXPECT_NEAR(m.router_entropy, std::log(4.0), 1e-9);
  EXPECT_NEAR(m.router_entropy_norm, 1.0, 1e-9);
  EXPECT_DOUBLE_EQ(m.lb_loss, 0.25);
}

TEST(GateNetworks, ParameterCountsMatchTheSpec) {
  EXPECT_EQ(Router(router_config("softk", 8, 2, 1.25), 256).gate_parameter_count(), 2056);
  RouterConfig mlp = router_config("softk", 8, 2, 1.25);
  mlp.gate = "mlp";
  EXPECT_EQ(Router(mlp, 256).gate_parameter_count(), 33928);
  mlp.gate = "mlp_hadamard";
  EXPECT_EQ(Router(mlp, 256).gate_parameter_count(), 133640);
  EXPECT_EQ(Router(router_config("hash", 8, 2, 1.25), 256).gate_parameter_count(), 0);
}

TEST(Registry, RefusesUnknownNamesAndImpossibleSettings) {
  auto message = [](RouterConfig c) {
    try {
      validate_router_config(c, "cfg.json");
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message(router_config("top3", 8, 2, 1)).find("router.strategy must be one of"), std::string::npos);
  RouterConfig bad_gate = router_config("softk", 8, 2, 1);
  bad_gate.gate = "transformer";
  EXPECT_NE(message(bad_gate).find("router.gate"), std::string::npos);
  EXPECT_NE(message(router_config("expert_choice", 8, 2, 0)).find("capacity_factor"), std::string::npos);
  EXPECT_NE(message(router_config("hash", 97, 2, 1)).find("repeated hash experts"), std::string::npos);
  EXPECT_EQ(message(router_config("sinkhorn", 8, 2, 1)), "");
}

TEST(Router, GenerationRoutesWithoutCapacityAndRestoresIt) {
  RouterConfig c = router_config("softk", 4, 2, 0.5);
  Router router(c, 8);
  torch::manual_seed(9);
  torch::Tensor x = torch::randn({16, 8});
  torch::Tensor ids = torch::zeros({16}, torch::kLong);
  EXPECT_EQ(router.forward(x, ids).capacity, 4);
  router.set_dropless(true);
  RoutingPlan dropless = router.forward(x, ids);
  EXPECT_EQ(dropless.capacity, 0);
  EXPECT_TRUE(torch::equal(dropless.kept, dropless.selected));
  router.set_dropless(false);
  EXPECT_EQ(router.forward(x, ids).capacity, 4);
  Router ec(router_config("expert_choice", 4, 2, 0.5), 8);
  ec.set_dropless(true);  // expert choice keeps its capacity: it is the definition
  EXPECT_EQ(ec.forward(x, ids).capacity, 4);
}

TEST(Strategies, Top1SizesCapacityForOneExpertPerToken) {
  // router.top_k = 2 in the config, but top1 routes each token once: C = ceil(1.0 * 8 * 1 / 2) = 4.
  torch::Tensor logits = torch::zeros({8, 2});
  logits.select(1, 0).fill_(1.0);  // everyone prefers expert 0
  RoutingPlan plan = route_logits(router_config("top1", 2, 2, 1.0), logits);
  EXPECT_EQ(plan.capacity, 4);
  EXPECT_EQ(plan.expert_ids.size(1), 1);
  EXPECT_EQ(plan.kept.sum().item<int64_t>(), 4);
  EXPECT_DOUBLE_EQ(compute_routing_metrics(plan).drop_rate, 0.5);
}

TEST(Metrics, ConstantGatesReadAsShares) {
  // topk_hard's gates are 1 each: two equal shares, entropy log 2, largest share 1/2.
  torch::Tensor logits = torch::tensor({{2.0, 1.0, 0.0}, {0.0, 1.0, 2.0}});
  RoutingMetrics m = compute_routing_metrics(route_logits(router_config("topk_hard", 3, 2, 0), logits));
  EXPECT_NEAR(m.gate_entropy, std::log(2.0), 1e-6);
  EXPECT_NEAR(m.mean_topk_prob, 0.5, 1e-6);
}

// Every registered strategy, on random logits with and without a capacity: what every plan
// must satisfy, then each strategy's own rules. A strategy added to the registry fails here
// until its rules are written down.
TEST(Strategies, EveryRegisteredStrategyKeepsItsRules) {
  const int64_t T = 24, E = 4, k = 2;
  for (const std::string& name : strategy_names()) {
    for (double cf : {0.0, 1.0}) {
      if (name == "expert_choice" && cf == 0.0) continue;  // no dropless expert choice
      SCOPED_TRACE(name + " CF " + std::to_string(cf));
      torch::manual_seed(21);
      torch::Tensor logits = torch::randn({T, E}) * 2;
      torch::Tensor token_ids = torch::randint(0, 1000, {T}, torch::kLong);
      RouterConfig c = router_config(name, E, k, cf);
      RoutingPlan p = route_logits(c, logits, token_ids);
      const int64_t K = p.expert_ids.size(1);
      // Every plan: ids in range, kept within selected, gates zero where not kept, no expert over capacity.
      EXPECT_TRUE(((p.expert_ids >= 0) & (p.expert_ids < E)).all().item<bool>());
      EXPECT_TRUE((p.kept & ~p.selected).any().item<bool>() == false);
      EXPECT_EQ(torch::where(p.kept, torch::zeros_like(p.gates), p.gates).abs().max().item<double>(), 0.0);
      EXPECT_GE(p.gates.min().item<double>(), 0.0);
      torch::Tensor load = torch::zeros({E}, torch::kLong).index_add_(0, p.expert_ids.reshape(-1), p.kept.reshape(-1).to(torch::kLong));
      if (cf > 0) EXPECT_LE(load.max().item<int64_t>(), p.capacity);
      else EXPECT_TRUE(torch::equal(p.kept, p.selected));  // dropless drops nothing
      torch::Tensor probs = torch::softmax(logits, -1);
      if (name == "top1") {
        // One expert per token, the arg-max, gated by its probability.
        ASSERT_EQ(K, 1);
        EXPECT_TRUE(torch::equal(p.expert_ids.squeeze(1), logits.argmax(1)));
        EXPECT_TRUE(torch::allclose(p.chosen_gates.squeeze(1), std::get<0>(probs.max(1)), 1e-5, 1e-6));
      } else if (name == "topk_hard") {
        // The k largest logits, each gated 1.
        ASSERT_EQ(K, k);
        EXPECT_TRUE(torch::equal(std::get<0>(p.expert_ids.sort(1)), std::get<0>(std::get<1>(logits.topk(k)).sort(1))));
        EXPECT_TRUE(torch::equal(p.chosen_gates, torch::ones({T, k})));
      } else if (name == "softk") {
        // The k largest logits; gates their probabilities renormalised to sum 1.
        ASSERT_EQ(K, k);
        torch::Tensor top = std::get<0>(probs.topk(k));
        EXPECT_TRUE(torch::allclose(std::get<0>(p.chosen_gates.sort(1, true)), top / top.sum(1, true), 1e-5, 1e-6));
      } else if (name == "hash") {
        // Fixed by the token id alone: k distinct experts (base + 97 j) mod E, gates 1/k.
        ASSERT_EQ(K, k);
        torch::Tensor base = (token_ids.remainder(E) * static_cast<int64_t>(1315423911LL % E) + static_cast<int64_t>(2654435761LL % E)).remainder(E);
        EXPECT_TRUE(torch::equal(p.expert_ids.select(1, 0), base));
        EXPECT_TRUE(torch::equal(p.expert_ids.select(1, 1), (base + 97).remainder(E)));
        EXPECT_TRUE(torch::allclose(p.chosen_gates, torch::full({T, k}, 0.5)));
      } else if (name == "expert_choice") {
        // E columns (column e is expert e); each expert takes exactly C tokens and loses none.
        ASSERT_EQ(K, E);
        EXPECT_TRUE(torch::equal(p.kept, p.selected));
        EXPECT_TRUE(torch::equal(load, torch::full({E}, p.capacity, torch::kLong)));
        EXPECT_TRUE(torch::allclose(p.gates, torch::where(p.selected, probs, torch::zeros_like(probs))));
      } else if (name == "sinkhorn") {
        // k distinct experts per token, gated by the softmax of their raw logits.
        ASSERT_EQ(K, k);
        EXPECT_TRUE((p.expert_ids.select(1, 0) != p.expert_ids.select(1, 1)).all().item<bool>());
        torch::Tensor chosen = logits.gather(1, p.expert_ids);
        EXPECT_TRUE(torch::allclose(p.chosen_gates, torch::softmax(chosen, -1), 1e-5, 1e-6));
      } else {
        ADD_FAILURE() << "strategy '" << name << "' has no rules in this test: write them down";
      }
    }
  }
}
