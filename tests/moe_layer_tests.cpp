// The dispatcher and the MoE layer against plain definitions.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <torch/torch.h>

#include "kernels/column_sum.h"
#include "kernels/layer_norm.h"
#include "kernels/routing_kernels.h"
#include "models/moe_layer.h"
#include "models/tiny_moe.h"
#include "config/run_config.h"
#include "routers/capacity.h"
#include "routers/strategy.h"
#include "test_support.h"

using namespace moelab;

namespace {

// One expert's FFN from its weights, in plain torch ops: act(x W1_e + b1_e) W2_e + b2_e.
torch::Tensor expert_ffn(Experts& experts, int64_t e, const torch::Tensor& x, bool swiglu) {
  torch::Tensor h = torch::matmul(x, experts.w1[e]) + experts.b1[e];
  if (swiglu) {
    const int64_t half = h.size(-1) / 2;
    h = torch::silu(h.narrow(-1, 0, half)) * h.narrow(-1, half, half);
  } else {
    h = 0.5 * h * (1.0 + torch::erf(h / std::sqrt(2.0)));  // exact GELU
  }
  return torch::matmul(h, experts.w2[e]) + experts.b2[e];
}

// The MoE layer by its definition: for each token, the gate-weighted sum of its kept experts
// applied to it one at a time. The plan is an input (the router has its own tests).
torch::Tensor per_token_reference(MoeLayer& layer, const torch::Tensor& x, const RoutingPlan& plan, bool swiglu = false) {
  std::vector<torch::Tensor> rows;
  for (int64_t t = 0; t < x.size(0); ++t) {
    torch::Tensor acc = torch::zeros({x.size(1)});
    for (int64_t j = 0; j < plan.expert_ids.size(1); ++j) {
      if (!plan.kept[t][j].item<bool>()) continue;
      int64_t e = plan.expert_ids[t][j].item<int64_t>();
      acc = acc + plan.gates[t][j] * expert_ffn(layer.experts(), e, x[t], swiglu);
    }
    rows.push_back(acc);
  }
  return torch::stack(rows);
}

}  // namespace

TEST(Dispatcher, PacksByExpertInFlatOrderAndCombines) {
  RoutingPlan plan;
  plan.num_experts = 3;
  plan.top_k = 2;
  plan.expert_ids = torch::tensor({2, 0, 0, 1, 2, 0}, torch::kLong).view({3, 2});
  plan.kept = torch::tensor({true, true, true, false, true, true}).view({3, 2});
  plan.gates = torch::tensor({0.5, 0.25, 1.0, 0.0, 2.0, 3.0}).view({3, 2});
  torch::Tensor x = torch::tensor({1.0, 10.0, 100.0}).view({3, 1});
  PackedTokens d = pack_tokens(x, plan);
  // expert 0: entries 1 (t0), 2 (t1), 5 (t2); expert 1: none kept; expert 2: entries 0 (t0), 4 (t2)
  EXPECT_TRUE(torch::equal(d.expert_rows, torch::tensor({3, 0, 2}, torch::kLong)));
  // Kept rows first (the dropped entry t1 j1 comes last, unused), expert-major.
  EXPECT_TRUE(torch::equal(d.token_index, torch::tensor({0, 1, 2, 0, 2, 1}, torch::kLong)));
  EXPECT_TRUE(torch::equal(d.packed.squeeze(1), torch::tensor({1.0, 10.0, 100.0, 1.0, 100.0, 10.0})));
  EXPECT_TRUE(torch::equal(d.row_of_entry, torch::tensor({3, 0, 1, -1, 4, 2}, torch::kLong).view({3, 2})));
  // Pretend expert e multiplies by (e + 1): outputs 1, 10, 100, 3, 300 (and an unused row).
  torch::Tensor y = torch::tensor({1.0, 10.0, 100.0, 3.0, 300.0, -7.0}).view({6, 1});
  torch::Tensor out = combine_packed(y, d);
  // t0: 0.25*1 + 0.5*3 = 1.75; t1: 1.0*10 = 10; t2: 3*100 + 2*300 = 900
  EXPECT_TRUE(torch::allclose(out.squeeze(1), torch::tensor({1.75, 10.0, 900.0})));
}

TEST(Dispatcher, PacksByCapacitySlotsAsBySorting) {
  // Capacity 2 over the plan above's selections (all selected): expert 0 queues entries 1, 2,
  // 5 and keeps 1 and 2; expert 2 keeps 0 and 4; expert 1 keeps 3. Slots are queue places.
  torch::Tensor ids = torch::tensor({2, 0, 0, 1, 2, 0}, torch::kLong).view({3, 2});
  kernels::CapacitySlots slots = assign_capacity(ids, torch::ones({3, 2}, torch::kBool), torch::Tensor(), 3, 2, "position");
  EXPECT_TRUE(torch::equal(slots.kept, torch::tensor({true, true, true, true, true, false}).view({3, 2})));
  EXPECT_TRUE(torch::equal(slots.slot, torch::tensor({0, 0, 1, 0, 1, -1}, torch::kLong).view({3, 2})));
  EXPECT_TRUE(torch::equal(slots.kept_counts, torch::tensor({2, 1, 2}, torch::kLong)));
  // The dispatcher packs by the slots (no sort) exactly as it packs by sorting the kept.
  RoutingPlan plan;
  plan.num_experts = 3;
  plan.top_k = 2;
  plan.capacity = 2;
  plan.expert_ids = ids;
  plan.kept = slots.kept;
  plan.gates = torch::rand({3, 2}) * slots.kept;
  torch::Tensor x = torch::randn({3, 4});
  PackedTokens sorted = pack_tokens(x, plan);
  plan.slot = slots.slot;
  plan.kept_counts = slots.kept_counts;
  PackedTokens by_slots = pack_tokens(x, plan);
  EXPECT_TRUE(torch::equal(by_slots.row_of_entry, sorted.row_of_entry));
  EXPECT_TRUE(torch::equal(by_slots.row_of_entry, torch::tensor({3, 0, 1, 2, 4, -1}, torch::kLong).view({3, 2})));
  EXPECT_TRUE(torch::equal(by_slots.expert_rows, sorted.expert_rows));
  EXPECT_TRUE(torch::equal(by_slots.token_index.narrow(0, 0, 5), sorted.token_index.narrow(0, 0, 5)));
  EXPECT_EQ(by_slots.token_index.size(0), 6);
  EXPECT_EQ(by_slots.token_index[5].item<int64_t>(), 0);  // past the kept rows: token 0, never computed on
  torch::Tensor y = torch::randn({6, 4});
  EXPECT_TRUE(torch::allclose(combine_packed(y, by_slots), combine_packed(y, sorted)));
}

TEST(Kernels, StableSortByKeyCountsAndPositions) {
  // Keys 2 0 2 1 0 2 in 3 buckets: sorted 0(i1) 0(i4) 1(i3) 2(i0) 2(i2) 2(i5).
  kernels::KeySort s = kernels::stable_sort_by_key(torch::tensor({2, 0, 2, 1, 0, 2}, torch::kLong), 3);
  EXPECT_TRUE(torch::equal(s.position, torch::tensor({3, 0, 4, 2, 1, 5}, torch::kLong)));
  EXPECT_TRUE(torch::equal(s.counts, torch::tensor({2, 1, 3}, torch::kLong)));
  EXPECT_TRUE(torch::equal(s.order, torch::tensor({1, 4, 3, 0, 2, 5}, torch::kLong)));
  EXPECT_TRUE(torch::equal(s.within_key, torch::tensor({0, 0, 1, 0, 1, 2}, torch::kLong)));
  // Random keys, with empty buckets, against libtorch's stable sort: the one-hot running count
  // (n * buckets <= 2^20) and the sort it falls back to past that.
  torch::manual_seed(4);
  for (auto [n, buckets] : {std::pair<int64_t, int64_t>{1000, 9}, {3000, 257}, {5000, 513}, {70000, 300}}) {
    torch::Tensor keys = torch::randint(0, buckets - 1, {n}, torch::kLong);  // the last bucket stays empty
    kernels::KeySort r = kernels::stable_sort_by_key(keys, buckets);
    torch::Tensor order = std::get<1>(keys.sort(/*stable=*/true, 0, false));
    EXPECT_TRUE(torch::equal(r.position, torch::empty_like(order).index_put_({order}, torch::arange(n)))) << n << " x " << buckets;
    EXPECT_TRUE(torch::equal(r.counts, torch::bincount(keys, {}, buckets))) << n << " x " << buckets;
  }
}

TEST(Kernels, ExpertBiasActivationReference) {
  // 5 packed rows: expert 0 rows 0-1, expert 1 none, expert 2 rows 2-3; row 4 is padding.
  torch::Tensor h = torch::tensor({1.0, -2.0, 0.5, 3.0, 0.0, 1.0, -1.0, 2.0, 9.0, 9.0}).view({5, 2});
  torch::Tensor bias = torch::tensor({0.5, 0.5, 7.0, 7.0, -1.0, 1.0}).view({3, 2});
  torch::Tensor offsets = torch::tensor({2, 2, 4}, torch::kInt32);
  torch::Tensor out = kernels::reference::expert_bias_activation(h, bias, offsets, kernels::kNoActivation);
  EXPECT_TRUE(torch::allclose(out.narrow(0, 0, 4), torch::tensor({1.5, -1.5, 1.0, 3.5, -1.0, 2.0, -2.0, 3.0}).view({4, 2})));
  torch::Tensor gelu = kernels::reference::expert_bias_activation(h, bias, offsets, kernels::kGelu);
  EXPECT_TRUE(torch::allclose(gelu.narrow(0, 0, 4), torch::gelu(out.narrow(0, 0, 4))));
  // SwiGLU over the halves: silu(h0 + b0) * (h1 + b1).
  torch::Tensor swiglu = kernels::reference::expert_bias_activation(h, bias, offsets, kernels::kSwiGLU);
  EXPECT_NEAR(swiglu[2][0].item<double>(), (torch::silu(torch::tensor(-1.0)) * 2.0).item<double>(), 1e-6);
  // The padding row, even holding NaN (a grouped GEMM leaves it unwritten), adds nothing to
  // the last expert's bias gradient: that is the sum over rows 2-3 only.
  torch::Tensor padded = h.clone();
  padded[4][0] = NAN;
  torch::Tensor b = bias.clone().requires_grad_(true);
  torch::Tensor y = kernels::reference::expert_bias_activation(padded, b, offsets, kernels::kGelu);
  y.sum().backward();
  torch::Tensor routed = out.narrow(0, 2, 2).clone().requires_grad_(true);
  torch::gelu(routed).sum().backward();
  EXPECT_TRUE(torch::allclose(b.grad()[2], routed.grad().sum(0)));
}

// The references behind GPU-only kernels, against libtorch's own ops on the CPU (fp32:
// 1e-5 relative), values and every gradient.
TEST(Kernels, LayerNormReferencesAreLibtorchs) {
  torch::manual_seed(8);
  torch::Tensor x = torch::randn({6, 16}, torch::requires_grad()), branch = torch::randn({6, 16}, torch::requires_grad());
  torch::Tensor gamma = torch::randn({16}, torch::requires_grad()), beta = torch::randn({16}, torch::requires_grad());
  torch::Tensor upstream = torch::randn({6, 16}), sum_upstream = torch::randn({6, 16});
  auto grads = [&](const torch::Tensor& loss) { return torch::autograd::grad({loss}, {x, branch, gamma, beta}, {}, false, false, true); };
  auto expect_same = [](const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b, const char* what) {
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_EQ(a[i].defined(), b[i].defined()) << what << " gradient " << i;
      if (a[i].defined()) EXPECT_TRUE(torch::allclose(a[i], b[i], 1e-5, 1e-5)) << what << " gradient " << i;
    }
  };
  torch::Tensor ours = kernels::reference::layer_norm(x, gamma, beta, 1e-5, torch::kFloat32);
  torch::Tensor theirs = torch::layer_norm(x, {16}, gamma, beta, 1e-5);
  EXPECT_TRUE(torch::allclose(ours, theirs, 1e-5, 1e-5));
  expect_same(grads((ours * upstream).sum()), grads((theirs * upstream).sum()), "layer_norm");

  kernels::ResidualNorm fused = kernels::reference::add_layer_norm(x, branch, gamma, beta, 1e-5, torch::kFloat32);
  torch::Tensor sum = x + branch, normed = torch::layer_norm(sum, {16}, gamma, beta, 1e-5);
  EXPECT_TRUE(torch::allclose(fused.sum, sum, 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(fused.normed, normed, 1e-5, 1e-5));
  expect_same(grads((fused.normed * upstream).sum() + (fused.sum * sum_upstream).sum()),
              grads((normed * upstream).sum() + (sum * sum_upstream).sum()), "add_layer_norm");
}

TEST(Kernels, ColumnSumReferenceIsLibtorchs) {
  torch::manual_seed(9);
  torch::Tensor x = torch::randn({37, 24});
  EXPECT_TRUE(torch::allclose(kernels::reference::column_sum(x), x.sum(0), 1e-5, 1e-5));
  EXPECT_EQ(kernels::reference::column_sum(x).scalar_type(), torch::kFloat32);
}

TEST(Kernels, ExpertFfnReferenceIsThePerExpertDefinition) {
  torch::manual_seed(10);
  for (bool swiglu : {false, true}) {
    Experts experts(4, 8, 12, swiglu);
    torch::Tensor rows = torch::tensor({3, 0, 5, 2}, torch::kLong);
    torch::Tensor x = torch::randn({10, 8});
    torch::Tensor y = kernels::reference::expert_ffn(x, rows, experts.w1, experts.b1, experts.w2, experts.b2,
                                                     swiglu ? kernels::kSwiGLU : kernels::kGelu);
    const int64_t expert_of_row[] = {0, 0, 0, 2, 2, 2, 2, 2, 3, 3};
    for (int64_t r = 0; r < 10; ++r)
      EXPECT_TRUE(torch::allclose(y[r], expert_ffn(experts, expert_of_row[r], x[r], swiglu), 1e-5, 1e-6)) << r;
  }
}

TEST(Kernels, UnpermuteValuesAndGradients) {
  torch::manual_seed(2);
  torch::Tensor y = torch::randn({5, 4}, torch::requires_grad());
  torch::Tensor rows = torch::tensor({0, 4, 1, 2, 3, -1}, torch::kLong).view({3, 2});
  torch::Tensor gates = torch::rand({3, 2}, torch::requires_grad());
  torch::Tensor out = kernels::unpermute(y, rows, gates);
  torch::Tensor yd = y.detach(), gd = gates.detach();
  EXPECT_TRUE(torch::allclose(out[0], gd[0][0] * yd[0] + gd[0][1] * yd[4]));
  EXPECT_TRUE(torch::allclose(out[2], gd[2][0] * yd[3]));
  torch::Tensor upstream = torch::randn({3, 4});
  (out * upstream).sum().backward();
  // d out[t] / d y[rows[t, j]] = gates[t, j]; d / d gates[t, j] = <y[rows[t, j]], upstream[t]>
  EXPECT_TRUE(torch::allclose(y.grad()[4], gd[0][1] * upstream[0]));
  EXPECT_TRUE(torch::allclose(y.grad()[3], gd[2][0] * upstream[2]));
  EXPECT_NEAR(gates.grad()[1][1].item<double>(), (yd[2] * upstream[1]).sum().item<double>(), 1e-6);
  EXPECT_EQ(gates.grad()[2][1].item<double>(), 0.0);
}

// Packed rows past the kept ones copy token 0 (packed_rows gives them token index 0) and
// must send it no gradient: the grouped GEMM after them leaves their gradient unwritten, so
// it may hold anything, NaN included.
TEST(Kernels, PermutePaddingRowsGiveNoGradient) {
  torch::Tensor x = torch::arange(12, torch::kFloat32).view({3, 4}).requires_grad_(true);
  // Tokens 0-2, two choices each; token 1's second is dropped. Kept entries fill rows 0-4 of 7.
  torch::Tensor row_of_entry = torch::tensor({0, 3, 1, -1, 2, 4}, torch::kLong).view({3, 2});
  torch::Tensor token_index = torch::tensor({0, 1, 2, 0, 2, 0, 0}, torch::kLong);
  torch::Tensor packed = kernels::permute(x, token_index, row_of_entry);
  EXPECT_TRUE(torch::equal(packed, x.detach().index_select(0, token_index)));
  torch::Tensor upstream = torch::ones({7, 4});
  upstream[5].fill_(std::nan(""));
  upstream[6].fill_(1000.0);
  (packed * upstream).sum().backward();
  // Token 0 is in rows 0 and 3, token 1 in row 1, token 2 in rows 2 and 4.
  EXPECT_TRUE(torch::equal(x.grad(), torch::tensor({2.0f, 1.0f, 2.0f}).view({3, 1}).expand({3, 4})));
}

class MoeLayerMatchesPerTokenLoop : public ::testing::TestWithParam<std::tuple<std::string, double>> {};

TEST_P(MoeLayerMatchesPerTokenLoop, OnRandomInputs) {
  auto [strategy, cf] = GetParam();
  torch::manual_seed(11);
  MoeLayer layer(moelab::testing::routing_config(strategy, 6, 2, cf), 16, 24, /*swiglu=*/false);
  torch::Tensor x = torch::randn({37, 16});
  torch::Tensor tokens = torch::randint(0, 50, {37}, torch::kLong);
  torch::Tensor out = layer.forward(x, tokens);
  const RoutingPlan plan = layer.router().forward(x, tokens);
  torch::Tensor expected = per_token_reference(layer, x, plan);
  EXPECT_TRUE(torch::allclose(out, expected, 1e-5, 1e-5)) << (out - expected).abs().max().item<double>();
  if (cf > 0 && strategy != "expert_choice") {
    EXPECT_LE(plan.kept.sum().item<int64_t>(), plan.capacity * 6);
  }
}

// Every registered strategy at CF 1 and 1.25, and softk dropless and at a CF that drops many.
std::vector<std::tuple<std::string, double>> layer_cases() {
  std::vector<std::tuple<std::string, double>> cases = {{"softk", 0.0}, {"softk", 0.6}};
  for (const std::string& name : strategy_names())
    for (double cf : {1.0, 1.25}) cases.emplace_back(name, cf);
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Strategies, MoeLayerMatchesPerTokenLoop, ::testing::ValuesIn(layer_cases()));

// Expert choice's fallback routes the tokens no expert picked on top of the experts' C: more
// kept assignments than E * C, which the packed buffer must still hold.
TEST(MoeLayer, ExpertChoiceFallbackBeyondCapacityMatchesThePerTokenLoop) {
  torch::manual_seed(12);
  RouterConfig c = moelab::testing::routing_config("expert_choice", 4, 2, 0.5);
  c.ec_fallback = "topk";
  MoeLayer layer(c, 16, 24, /*swiglu=*/false);
  torch::Tensor x = torch::randn({40, 16}), tokens = torch::zeros({40}, torch::kLong);
  torch::Tensor out = layer.forward(x, tokens);
  const RoutingPlan plan = layer.router().forward(x, tokens);
  EXPECT_GT(plan.kept.sum().item<int64_t>(), 4 * plan.capacity);  // the case itself
  EXPECT_TRUE(torch::allclose(out, per_token_reference(layer, x, plan), 1e-5, 1e-5));
}

TEST(MoeLayer, MaskedMatmulDispatcherComputesTheSameLayer) {
  for (const char* strategy : {"softk", "expert_choice", "hash"}) {
    torch::manual_seed(6);
    MoeLayer sparse(moelab::testing::routing_config(strategy, 5, 2, 0.8), 12, 20, false);
    torch::manual_seed(6);
    MoeLayer masked(moelab::testing::routing_config(strategy, 5, 2, 0.8), 12, 20, false, "masked_matmul");
    torch::Tensor x = torch::randn({31, 12}, torch::requires_grad());
    torch::Tensor ids = torch::randint(0, 9, {31}, torch::kLong);
    torch::Tensor a = sparse.forward(x, ids), b = masked.forward(x, ids);
    EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-6)) << strategy;
    torch::Tensor ga = torch::autograd::grad({a.sum()}, {x})[0], gb = torch::autograd::grad({b.sum()}, {x})[0];
    EXPECT_TRUE(torch::allclose(ga, gb, 1e-5, 1e-6)) << strategy;
  }
}

// softk with hand-set gate weights, dropless: the whole layer written out in plain torch ops
// (logits, top-2, softmax over the two, SwiGLU experts from the weights), every gradient
// compared: the input's, each expert tensor's and the gate's.
TEST(MoeLayer, GradientsMatchThePlainDefinition) {
  torch::manual_seed(4);
  const int64_t T = 20, d = 8, E = 4;
  MoeLayer layer(moelab::testing::routing_config("softk", E, 2, 0.0), d, 16, /*swiglu=*/true);
  auto params = layer.named_parameters();
  {
    torch::NoGradGuard no_grad;
    params["router.gate.proj.weight"].copy_(torch::randn({E, d}));
    params["router.gate.proj.bias"].copy_(torch::tensor({0.5, -0.5, 0.25, 0.0}));
  }
  torch::Tensor x = torch::randn({T, d}, torch::requires_grad());
  torch::Tensor tokens = torch::zeros({T}, torch::kLong);
  torch::Tensor upstream = torch::randn({T, d});
  (layer.forward(x, tokens) * upstream).sum().backward();
  std::map<std::string, torch::Tensor> fast = {{"x", x.grad().clone()}};
  for (const auto& item : params) fast[item.key()] = item.value().grad().clone();
  x.grad().zero_();
  layer.zero_grad();

  torch::Tensor logits = torch::matmul(x, params["router.gate.proj.weight"].t()) + params["router.gate.proj.bias"];
  auto [top, ids] = logits.topk(2);
  torch::Tensor gates = torch::softmax(top, -1);
  std::vector<torch::Tensor> rows;
  for (int64_t t = 0; t < T; ++t) {
    torch::Tensor acc = torch::zeros({d});
    for (int64_t j = 0; j < 2; ++j)
      acc = acc + gates[t][j] * expert_ffn(layer.experts(), ids[t][j].item<int64_t>(), x[t], /*swiglu=*/true);
    rows.push_back(acc);
  }
  (torch::stack(rows) * upstream).sum().backward();
  EXPECT_TRUE(torch::allclose(fast["x"], x.grad(), 1e-5, 1e-6));
  for (const auto& item : params) {
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    EXPECT_TRUE(torch::allclose(fast[item.key()], item.value().grad(), 1e-5, 1e-6)) << item.key();
  }
}

TEST(TinyMoE, ShapesParameterCountsAndDenseBaseline) {
  ModelConfig m;
  m.layers = 2;
  m.dim = 32;
  m.heads = 4;
  m.seq_len = 16;
  m.vocab_size = 50;
  RouterConfig r = moelab::testing::routing_config("softk", 4, 2, 1.25);
  TinyMoE moe(m, r);
  torch::Tensor tokens = torch::randint(0, 50, {3, 16}, torch::kLong);
  ModelOutput out = moe.forward(tokens);
  EXPECT_EQ(out.logits.sizes(), (std::vector<int64_t>{3, 16, 50}));
  EXPECT_GT(out.aux_loss.item<double>(), 0.0);
  EXPECT_EQ(moe.moe_layers().size(), 2u);
  m.dense = true;
  TinyMoE dense(m, r);
  EXPECT_TRUE(dense.moe_layers().empty());
  // Equal active parameters: k experts of width m*d against one FFN of width k*m*d, apart from
  // the router's gate and the k - 1 extra output biases, in each of the 2 layers.
  const int64_t gate = 32 * 4 + 4, extra_bias = (2 - 1) * 32;
  EXPECT_EQ(moe.active_parameter_count() - 2 * (gate + extra_bias), dense.active_parameter_count());
  // model.dense_width: 2.5 experts' widths (expert choice's c * k at c = 1.25) instead of k = 2:
  // half an expert more per layer, each hidden unit with 32 + 1 up and 32 down parameters.
  m.dense_width = 2.5;
  TinyMoE wider(m, r);
  const int64_t half_expert = m.ffn_mult * 32 / 2;
  EXPECT_EQ(wider.active_parameter_count() - dense.active_parameter_count(), 2 * half_expert * (32 + 1 + 32));
  m.dense_width = 0;
  m.dense = false;
  m.moe_every = 2;
  m.position = "rope";
  m.tie_embeddings = true;
  TinyMoE interleaved(m, r);
  EXPECT_EQ(interleaved.moe_layers().size(), 1u);
  EXPECT_EQ(interleaved.forward(tokens).logits.sizes(), (std::vector<int64_t>{3, 16, 50}));
}

// FLOPs per token count the experts each strategy computes: one for top1 whatever
// router.top_k says, k for the other token-choice strategies, CF*k for expert choice.
TEST(TinyMoE, FlopsCountTheExpertsEachStrategyComputes) {
  ModelConfig m;
  m.layers = 2;
  m.dim = 32;
  m.heads = 4;
  m.seq_len = 16;
  m.vocab_size = 50;
  const int64_t E = 4, k = 2, hidden = m.ffn_mult * m.dim;
  const int64_t per_expert = m.dim * hidden + hidden + hidden * m.dim + m.dim;  // w1, b1, w2, b2
  const int64_t attention = 12 * m.layers * m.dim * m.seq_len;
  for (const std::string& strategy : strategy_names()) {
    const double cf = 1.25;
    RouterConfig r = moelab::testing::routing_config(strategy, E, k, cf);
    TinyMoE model(m, r);
    int64_t shared = 0;  // everything but embeddings and experts, counted from the parameters
    for (const auto& item : model.named_parameters())
      if (item.key().find(".experts.") == std::string::npos && item.key().find("_emb") == std::string::npos)
        shared += item.value().numel();
    const double passes = strategy == "top1" ? 1.0 : strategy == "expert_choice" ? cf * k : static_cast<double>(k);
    const int64_t routed = strategy == "top1" ? 1 : k;
    EXPECT_EQ(model.active_parameter_count(), shared + m.layers * routed * per_expert) << strategy;
    EXPECT_DOUBLE_EQ(model.flops_per_token(), 6.0 * (shared + m.layers * passes * per_expert) + attention) << strategy;
    // Assignments capacity dropped skip their expert: 30% dropped, 70% of the experts' FLOPs.
    EXPECT_DOUBLE_EQ(model.flops_per_token(0.7), 6.0 * (shared + m.layers * passes * 0.7 * per_expert) + attention)
        << strategy;
  }
}

// experiments/medium.jsonc is the scale-out model: over a billion parameters, d >= 1024,
// E >= 32, k >= 2, seq 1024, in bf16.
TEST(TinyMoE, TheMediumConfigHasOverABillionParameters) {
  RunConfig c = load_run_config(std::string(MOELAB_SOURCE_DIR) + "/experiments/medium.jsonc", {});
  c.model.vocab_size = 128;
  EXPECT_GE(c.model.dim, 1024);
  EXPECT_GE(c.router.num_experts, 32);
  EXPECT_GE(c.router.top_k, 2);
  EXPECT_EQ(c.model.seq_len, 1024);
  EXPECT_EQ(c.train.dtype, "bf16");
  TinyMoE model(c.model, c.router);
  EXPECT_GE(model.parameter_count(), 1000000000);
  EXPECT_LT(model.active_parameter_count(), model.parameter_count() / 10);
}

TEST(TinyMoE, AttentionIsCausal) {
  ModelConfig m;
  m.layers = 2;
  m.dim = 32;
  m.heads = 2;
  m.seq_len = 12;
  m.vocab_size = 30;
  m.dropout = 0.0;
  RouterConfig r = moelab::testing::routing_config("hash", 4, 1, 0.0);  // token-local routing: no batch coupling
  TinyMoE model(m, r);
  model.eval();
  torch::Tensor a = torch::randint(0, 30, {1, 12}, torch::kLong);
  torch::Tensor b = a.clone();
  b[0][8] = (a[0][8].item<int64_t>() + 1) % 30;
  torch::Tensor la = model.forward(a).logits, lb = model.forward(b).logits;
  EXPECT_TRUE(torch::allclose(la.narrow(1, 0, 8), lb.narrow(1, 0, 8), 1e-5, 1e-6));
  EXPECT_FALSE(torch::allclose(la.narrow(1, 8, 1), lb.narrow(1, 8, 1)));
}

// model.init "seed": the seed's Python model as PyTorch initialises it.
TEST(TinyMoE, SeedInitIsTheSeedModelsUnderPytorch) {
  ModelConfig m;
  m.layers = 2;
  m.dim = 64;
  m.heads = 4;
  m.seq_len = 16;
  m.vocab_size = 50;
  m.init = "seed";
  RouterConfig r = moelab::testing::routing_config("softk", 4, 2, 1.25);
  torch::manual_seed(3);
  TinyMoE model(m, r);
  auto params = model.named_parameters();
  for (const char* zero : {"pos_emb.weight", "block0.attn.qkv.bias", "block1.attn.proj.bias", "block0.moe.experts.b1",
                           "block1.moe.experts.b2", "block0.moe.router.gate.proj.bias"})
    EXPECT_EQ(params[zero].abs().max().item<double>(), 0.0) << zero;
  EXPECT_NEAR(params["tok_emb.weight"].std().item<double>(), 1.0, 0.05);  // nn.Embedding: N(0, 1)
  // U(-b, b): the largest draw is close to b, the std is b/sqrt(3).
  auto check_uniform = [&](const std::string& name, double bound) {
    torch::Tensor p = params[name];
    EXPECT_LE(p.abs().max().item<double>(), bound) << name;
    EXPECT_GT(p.abs().max().item<double>(), 0.9 * bound) << name;
    if (p.numel() > 1000) EXPECT_NEAR(p.std().item<double>(), bound / std::sqrt(3.0), 0.05 * bound) << name;
  };
  // nn.Linear's default: 1/sqrt(fan_in), weight and bias.
  check_uniform("block0.attn.proj.weight", 1.0 / 8);
  check_uniform("head.weight", 1.0 / 8);
  // nn.MultiheadAttention's in-projection: Xavier over [3d, d], sqrt(6 / (d + 3d)).
  check_uniform("block0.attn.qkv.weight", std::sqrt(6.0 / (64 + 3 * 64)));
  // The stacked experts: Xavier with PyTorch's fans of a 3-D tensor [E, a, b]: fan_in = a*b,
  // fan_out = E*b. At E 4, d 64, h 256: w1 sqrt(6 / (64*256 + 4*256)), w2 sqrt(6 / (256*64 + 4*64)).
  check_uniform("block0.moe.experts.w1", std::sqrt(6.0 / (64 * 256 + 4 * 256)));
  check_uniform("block1.moe.experts.w2", std::sqrt(6.0 / (256 * 64 + 4 * 64)));
  // The seed's linear gate: N(0, 1/d), as moelab's own.
  EXPECT_NEAR(params["block0.moe.router.gate.proj.weight"].std().item<double>(), 1.0 / 8, 0.015);
  // The default stays nanoGPT's N(0, 0.02).
  m.init = "normal";
  TinyMoE normal(m, r);
  EXPECT_NEAR(normal.named_parameters()["block0.attn.qkv.weight"].std().item<double>(), 0.02, 0.002);
}
