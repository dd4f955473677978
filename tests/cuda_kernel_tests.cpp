// CUDA kernels against their CPU references on fresh random inputs. Skipped without a GPU
// (CI); run on the GPU machine by scripts/gpu.sh. Tolerances: fp32 1e-5 relative for the
// gate and 1e-6 absolute for copies; bf16 inputs are compared against the reference on the
// same bf16 values computed in fp32, so the difference is the kernel's one bf16 rounding of
// its output: 1e-2 relative.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kernels/adamw.h"
#include "kernels/column_sum.h"
#include "kernels/grouped_mm_available.h"
#include "kernels/layer_norm.h"
#include "kernels/linear.h"
#include "kernels/routing_kernels.h"
#include "models/experts.h"
#include "models/moe_layer.h"
#include "train/autocast.h"

using namespace moelab;

namespace {

bool have_cuda_kernels() { return torch::cuda::is_available() && kernels::cuda_kernels_built(); }

// The norm of the difference relative to the reference's norm: for sums over many rows,
// whose elementwise differences scale with the row count.
double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got - want).norm() / want.norm()).item<double>();
}

#define REQUIRE_CUDA() \
  if (!have_cuda_kernels()) GTEST_SKIP() << "no CUDA device or a CPU-only build: CUDA kernel test skipped"

// A routing of T tokens to E experts with k columns: rows of the packed buffer per entry.
struct Routing {
  torch::Tensor token_index, rows, gates;
  int64_t packed_rows;
};

Routing random_routing(int64_t tokens, int64_t k, double keep, torch::Device device) {
  torch::Tensor kept = torch::rand({tokens * k}) < keep;
  torch::Tensor entries = kept.nonzero().squeeze(1);
  // Shuffle the packed order as an expert-major sort would.
  torch::Tensor order = torch::randperm(entries.size(0), torch::kLong);
  entries = entries.index_select(0, order);
  torch::Tensor rows = torch::full({tokens * k}, -1, torch::kLong).index_put_({entries}, torch::arange(entries.size(0)));
  return {entries.div(k, "floor").to(device), rows.view({tokens, k}).to(device),
          (torch::rand({tokens, k}) * kept.view({tokens, k})).to(device), entries.size(0)};
}

}  // namespace

TEST(CudaKernels, SoftmaxTopKMatchesReference) {
  REQUIRE_CUDA();
  torch::manual_seed(21);
  for (int64_t experts : {2, 7, 8, 32, 33, 64, 100, 128, 384, 512})
    for (int64_t k : {1, 2, 4, 8}) {
      if (k > experts) continue;
      for (int64_t tokens : {1, 333, 4099}) {
        torch::Tensor logits = torch::randn({tokens, experts}, torch::kCUDA) * 3;
        auto fast = kernels::softmax_topk(logits, k, 1.0, true);
        auto ref = kernels::reference::softmax_topk(logits, k, 1.0, true);
        ASSERT_TRUE(torch::equal(fast.ids, ref.ids)) << experts << " " << k << " " << tokens;
        ASSERT_TRUE(torch::allclose(fast.gates, ref.gates, 1e-5, 1e-6)) << experts << " " << k;
        auto raw = kernels::softmax_topk(logits, k, 0.7, false);
        auto raw_ref = kernels::reference::softmax_topk(logits, k, 0.7, false);
        ASSERT_TRUE(torch::allclose(raw.gates, raw_ref.gates, 1e-5, 1e-6));
      }
    }
  // bf16 logits and ties: equal logits pick the lower expert id.
  torch::Tensor tied = torch::zeros({64, 16}, torch::kCUDA).to(torch::kBFloat16);
  auto t = kernels::softmax_topk(tied, 3, 1.0, true);
  EXPECT_TRUE(torch::equal(t.ids.cpu(), torch::tensor({0, 1, 2}, torch::kLong).expand({64, 3})));
  torch::Tensor skewed = (torch::randn({2048, 128}, torch::kCUDA) + torch::cat({torch::full({2048, 1}, 50.0, torch::kCUDA),
                                                                               torch::zeros({2048, 127}, torch::kCUDA)}, 1))
                             .to(torch::kBFloat16);
  auto fast = kernels::softmax_topk(skewed, 2, 1.0, true);
  auto ref = kernels::reference::softmax_topk(skewed, 2, 1.0, true);
  EXPECT_TRUE(torch::equal(fast.ids, ref.ids));
  EXPECT_TRUE(torch::allclose(fast.gates, ref.gates, 1e-2, 1e-3));
}

TEST(CudaKernels, SoftmaxTopKGradient) {
  REQUIRE_CUDA();
  torch::manual_seed(5);
  // The backward kernel against autograd through the reference: E of 8, 100 and 512, k of 1,
  // 2 and 4, temperatures 1 and 0.7, renormalised or the full softmax's probabilities; fp32
  // 1e-5 relative, bf16 logits (gradients rounded to bf16) 1e-2.
  for (int64_t experts : {8, 100, 512})
    for (int64_t k : {1, 2, 4})
      for (double temperature : {1.0, 0.7})
        for (bool renormalize : {true, false})
          for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
            torch::Tensor logits = (torch::randn({777, experts}, torch::kCUDA) * 2).to(dtype).requires_grad_(true);
            torch::Tensor upstream = torch::randn({777, k}, torch::kCUDA);
            (kernels::softmax_topk(logits, k, temperature, renormalize).gates * upstream).sum().backward();
            torch::Tensor fast = logits.grad().clone();
            logits.grad().zero_();
            (kernels::reference::softmax_topk(logits, k, temperature, renormalize).gates * upstream).sum().backward();
            const double tol = dtype == torch::kFloat32 ? 1e-5 : 1e-2;
            EXPECT_TRUE(torch::allclose(fast.to(torch::kFloat32), logits.grad().to(torch::kFloat32), tol, tol * 0.1))
                << experts << " experts, k " << k << ", t " << temperature << (renormalize ? ", renormalised" : "") << " "
                << c10::toString(dtype);
          }
}

TEST(CudaKernels, TopKIdsMatchReferenceWithTies) {
  REQUIRE_CUDA();
  torch::manual_seed(29);
  // Values drawn from a few integers tie often: the lower index must come first, as in the
  // reference's stable sort. E not a power of two, the thread-per-token (E <= 32) and the
  // warp-per-token kernels, k = 1 and 8, fp32 and bf16.
  for (int64_t experts : {8, 13, 32, 33, 512})
    for (int64_t k : {1, 2, 8})
      for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
        if (k > experts) continue;
        torch::Tensor tied = torch::randint(0, 4, {1001, experts}, torch::kCUDA).to(dtype);
        torch::Tensor spread = torch::randn({1001, experts}, torch::kCUDA).to(dtype);
        for (const torch::Tensor& values : {tied, spread})
          ASSERT_TRUE(torch::equal(kernels::topk_ids(values, k), kernels::reference::topk_ids(values, k)))
              << experts << " experts, k " << k << " " << c10::toString(dtype);
      }
}

TEST(CudaKernels, ColumnTopkMaskMatchesReference) {
  REQUIRE_CUDA();
  torch::manual_seed(31);
  // Softmax scores (expert choice's input) and values from a few integers (ties: the lower
  // token wins), T with the column in shared memory and past it (20000), E of 1, 8, 13 and
  // 128, take of 0, 1, the expert-choice capacity, T - 1 and T: exact equality.
  for (int64_t tokens : {1, 333, 8192, 20000})
    for (int64_t experts : {1, 8, 13, 128}) {
      torch::Tensor softmax = torch::softmax(torch::randn({tokens, experts}, torch::kCUDA) * 2, -1);
      torch::Tensor tied = torch::randint(0, 5, {tokens, experts}, torch::kCUDA).to(torch::kFloat32);
      const int64_t capacity = std::min<int64_t>(tokens, (tokens * 2 * 5 + experts * 4 - 1) / (experts * 4));
      for (int64_t take : {int64_t{0}, int64_t{1}, capacity, tokens - 1, tokens}) {
        for (const torch::Tensor& scores : {softmax, tied})
          ASSERT_TRUE(torch::equal(kernels::column_topk_mask(scores, take), kernels::reference::column_topk_mask(scores, take)))
              << tokens << " tokens, " << experts << " experts, take " << take;
      }
    }
}

TEST(CudaKernels, AdamWMatchesReference) {
  REQUIRE_CUDA();
  torch::manual_seed(37);
  // 60 tensors (two launches of at most 48), sizes with partial chunks and tails not a
  // multiple of 4 (1, 3, 4097, 20000) and whole chunks (8192); weight decay on some; with
  // and without a gradient scale; three steps. fp32, the same arithmetic in another order:
  // 1e-5 relative.
  const std::vector<int64_t> sizes = {1, 3, 4097, 8192, 20000};
  for (bool scaled : {false, true}) {
    kernels::AdamWState fast, ref;
    for (int i = 0; i < 60; ++i) {
      torch::Tensor p = torch::randn({sizes[i % sizes.size()]}, torch::kCUDA);
      torch::Tensor m = torch::randn_like(p) * 0.1, v = torch::rand_like(p) * 0.01;
      fast.params.push_back(p), fast.exp_avgs.push_back(m), fast.exp_avg_sqs.push_back(v);
      ref.params.push_back(p.clone()), ref.exp_avgs.push_back(m.clone()), ref.exp_avg_sqs.push_back(v.clone());
      fast.weight_decays.push_back(i % 3 ? 0.1 : 0.0);
    }
    ref.weight_decays = fast.weight_decays;
    const torch::Tensor lr = torch::full({}, 3e-3, torch::kCUDA);
    const torch::Tensor scale = scaled ? torch::full({}, 0.25, torch::kCUDA) : torch::Tensor();
    for (int step = 1; step <= 3; ++step) {
      fast.grads.clear();
      for (const auto& p : fast.params) fast.grads.push_back(torch::randn_like(p));
      ref.grads = fast.grads;
      const torch::Tensor count = torch::full({}, static_cast<double>(step), torch::kCUDA);
      kernels::adamw_step(fast, lr, count, scale, 0.9, 0.95, 1e-8);
      kernels::reference::adamw_step(ref, lr, count, scale, 0.9, 0.95, 1e-8);
    }
    for (size_t i = 0; i < fast.params.size(); ++i) {
      ASSERT_TRUE(torch::allclose(fast.params[i], ref.params[i], 1e-5, 1e-6)) << "tensor " << i << (scaled ? ", scaled" : "");
      ASSERT_TRUE(torch::allclose(fast.exp_avgs[i], ref.exp_avgs[i], 1e-5, 1e-7)) << "tensor " << i;
      ASSERT_TRUE(torch::allclose(fast.exp_avg_sqs[i], ref.exp_avg_sqs[i], 1e-5, 1e-9)) << "tensor " << i;
    }
  }
}

TEST(CudaKernels, PermuteAndUnpermuteMatchReferenceWithGradients) {
  REQUIRE_CUDA();
  torch::manual_seed(8);
  for (auto dtype : {torch::kFloat32, torch::kBFloat16})
    for (int64_t dim : {8, 256, 4096})
      for (int64_t k : {1, 2, 4}) {
        const int64_t tokens = 1001;
        Routing r = random_routing(tokens, k, 0.8, torch::kCUDA);
        torch::Tensor x = torch::randn({tokens, dim}, torch::kCUDA).to(dtype).requires_grad_(true);
        torch::Tensor packed = kernels::permute(x, r.token_index, r.rows);
        ASSERT_TRUE(torch::equal(packed, kernels::reference::permute(x, r.token_index, r.rows)));
        torch::Tensor y = torch::randn({r.packed_rows, dim}, torch::kCUDA).to(dtype).requires_grad_(true);
        torch::Tensor gates = r.gates.clone().requires_grad_(true);
        torch::Tensor out = kernels::unpermute(y, r.rows, gates);
        // The reference in fp32 on the same (bf16) values: the kernel accumulates in fp32 too.
        torch::Tensor y32 = y.to(torch::kFloat32);
        torch::Tensor ref = kernels::reference::unpermute(y32, r.rows, gates);
        const double tol = dtype == torch::kFloat32 ? 1e-5 : 1e-2;
        ASSERT_TRUE(torch::allclose(out.to(torch::kFloat32), ref.to(torch::kFloat32), tol, tol)) << dim << " " << k;
        torch::Tensor upstream = torch::randn({tokens, dim}, torch::kCUDA).to(dtype);
        auto fast = torch::autograd::grad({out}, {y, gates}, {upstream});
        auto slow = torch::autograd::grad({ref}, {y, gates}, {upstream.to(torch::kFloat32)});
        ASSERT_TRUE(torch::allclose(fast[0].to(torch::kFloat32), slow[0].to(torch::kFloat32), tol, tol));
        ASSERT_TRUE(torch::allclose(fast[1], slow[1].to(torch::kFloat32), tol * 10, tol * 10));
        // A gradient broadcast over the tokens (a sum's) is read as one row, not materialised.
        torch::Tensor row = torch::randn({dim}, torch::kCUDA).to(dtype), again = kernels::unpermute(y, r.rows, gates);
        auto broadcast = torch::autograd::grad({again}, {y, gates}, {row.expand({tokens, dim})}, /*retain_graph=*/true);
        auto dense = torch::autograd::grad({again}, {y, gates}, {row.expand({tokens, dim}).contiguous()});
        ASSERT_TRUE(torch::equal(broadcast[0], dense[0]) && torch::equal(broadcast[1], dense[1])) << dim << " " << k;
        torch::Tensor px = torch::autograd::grad({packed}, {x}, {torch::ones_like(packed)})[0];
        torch::Tensor counts = (r.rows >= 0).sum(1).to(dtype).unsqueeze(1).expand({tokens, dim});
        ASSERT_TRUE(torch::equal(px, counts));  // each row's gradient: the number of its kept copies
      }
}

TEST(CudaKernels, MoeLayerOnGpuMatchesCpu) {
  REQUIRE_CUDA();
  torch::manual_seed(13);
  RouterConfig r;
  r.strategy = "softk";
  r.num_experts = 7;  // not a power of two
  r.top_k = 2;
  r.capacity_factor = 0.9;  // overflow: some tokens are dropped
  MoeLayer cpu(r, 64, 128, false), gpu(r, 64, 128, false);
  {
    torch::NoGradGuard no_grad;
    auto source = cpu.named_parameters(), target = gpu.named_parameters();
    for (auto& p : source) target[p.key()].copy_(p.value());
  }
  gpu.to(torch::kCUDA);
  torch::Tensor x = torch::randn({513, 64});
  torch::Tensor ids = torch::zeros({513}, torch::kLong);
  torch::Tensor xc = x.clone().requires_grad_(true), xg = x.to(torch::kCUDA).requires_grad_(true);
  torch::Tensor a = cpu.forward(xc, ids), b = gpu.forward(xg, ids.to(torch::kCUDA));
  EXPECT_TRUE(torch::allclose(a, b.cpu(), 1e-4, 1e-5));
  a.sum().backward();
  b.sum().backward();
  EXPECT_TRUE(torch::allclose(xc.grad(), xg.grad().cpu(), 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(cpu.experts().w1.grad(), gpu.experts().w1.grad().cpu(), 1e-3, 1e-4));
}

TEST(CudaKernels, GroupedGemmExpertsMatchThePerExpertLoop) {
  REQUIRE_CUDA();
#ifndef MOELAB_GROUPED_MM
  GTEST_SKIP() << "this libtorch has no at::_grouped_mm";
#endif
  torch::manual_seed(31);
  Experts experts(5, 64, 128, false);
  experts.to(torch::kCUDA);
  torch::Tensor rows = torch::tensor({7, 0, 40, 1, 16}, torch::kLong).to(torch::kCUDA);  // an empty expert too
  // 64 routed rows, then 6 padding rows (dropped assignments) holding NaN: never computed
  // on, they must leave every gradient finite.
  torch::Tensor routed = torch::randn({64, 64}, torch::kCUDA).to(torch::kBFloat16);
  torch::Tensor packed = torch::cat({routed, torch::full({6, 64}, NAN, routed.options())}).requires_grad_(true);
  torch::Tensor grouped = experts.forward({packed, rows}).narrow(0, 0, 64);
  torch::Tensor loop = kernels::reference::expert_ffn(packed.detach().narrow(0, 0, 64).to(torch::kFloat32), rows, experts.w1,
                                                      experts.b1, experts.w2, experts.b2, kernels::kGelu);
  // bf16 operands, fp32 accumulation: 2e-2 relative.
  EXPECT_TRUE(torch::allclose(grouped.to(torch::kFloat32), loop, 2e-2, 2e-2));
  grouped.to(torch::kFloat32).sum().backward();
  EXPECT_TRUE(experts.w1.grad().defined());
  EXPECT_GT(experts.w1.grad().abs().sum().item<double>(), 0.0);
  EXPECT_EQ(experts.w1.grad()[1].abs().sum().item<double>(), 0.0);  // the empty expert gets no gradient
  for (const auto& p : experts.parameters()) EXPECT_TRUE(torch::isfinite(p.grad()).all().item<bool>());
}

// The fused GELU FFN (kernels/grouped_gemm.cu, H100 only) against the same experts composed
// of at::_grouped_mm and the reference bias + GELU ops, on ragged groups: an empty expert,
// a one-row expert, experts whose last 128-row tile is partial, E = 7; D = 128 and H = 512
// give two k-blocks and two column tiles. Padding rows after the last group hold NaN.
TEST(CudaKernels, FusedExpertFfnMatchesTheComposedOps) {
  REQUIRE_CUDA();
  torch::manual_seed(37);
  Experts experts(7, 256, 512, false);
  experts.to(torch::kCUDA);
  {
    torch::NoGradGuard no_grad;
    experts.b1.normal_(0.0, 0.5);
    experts.b2.normal_(0.0, 0.5);
  }
  // An empty and a one-row expert, partial row tiles, and a 3-row last expert, so that expert
  // 5's last 64-row step of the weight gradients (rows 686-749) runs past the last expert's
  // end (697) into the padding rows, whose input and upstream gradient are NaN here: none of
  // it may reach a gradient.
  torch::Tensor rows = torch::tensor({300, 0, 129, 1, 64, 200, 3}, torch::kLong).to(torch::kCUDA);
  const int64_t routed = 697;
  torch::Tensor probe = torch::randn({routed + 5, 256}, torch::kCUDA).to(torch::kBFloat16);
  if (!kernels::fused_expert_ffn_available(probe, experts.w1)) GTEST_SKIP() << "no fused expert FFN on this device (needs an H100)";
  torch::Tensor packed = torch::cat({probe.narrow(0, 0, routed), torch::full({5, 256}, NAN, probe.options())});
  torch::Tensor upstream = torch::cat({torch::randn({routed, 256}, torch::kCUDA), torch::full({5, 256}, NAN, torch::kCUDA)});
  struct Result {
    torch::Tensor y, dx;
    std::vector<torch::Tensor> grads;
  };
  auto run = [&](bool fused) {
    kernels::set_cuda_kernels_enabled(fused);
    for (auto& p : experts.parameters()) p.mutable_grad() = torch::Tensor();
    torch::Tensor x = packed.clone().requires_grad_(true);
    torch::Tensor y = experts.forward({x, rows}).to(torch::kFloat32);
    (y * upstream).sum().backward();
    kernels::set_cuda_kernels_enabled(true);
    Result r{y.detach().narrow(0, 0, routed), x.grad().narrow(0, 0, routed).to(torch::kFloat32), {}};
    for (const auto& p : experts.parameters()) r.grads.push_back(p.grad().to(torch::kFloat32));
    return r;
  };
  Result fused = run(true), composed = run(false);
  // Both round to bf16 at different points (the fused kernel stores pre and h from fp32
  // accumulators, the composed path rounds the GEMM output before the bias): 1e-2 relative.
  EXPECT_LT(relative_error(fused.y, composed.y), 1e-2);
  EXPECT_LT(relative_error(fused.dx, composed.dx), 1e-2);
  const char* names[] = {"w1", "b1", "w2", "b2"};
  for (size_t i = 0; i < fused.grads.size(); ++i) {
    EXPECT_TRUE(torch::isfinite(fused.grads[i]).all().item<bool>()) << names[i];
    EXPECT_TRUE(torch::isfinite(composed.grads[i]).all().item<bool>()) << names[i];
    EXPECT_LT(relative_error(fused.grads[i], composed.grads[i]), 1e-2) << names[i];
  }
  EXPECT_EQ(fused.grads[0][1].abs().sum().item<double>(), 0.0);  // the empty expert's w1
  // And the forward against the per-expert definition in fp32.
  torch::NoGradGuard no_grad;
  torch::Tensor loop = kernels::reference::expert_ffn(packed.narrow(0, 0, routed).to(torch::kFloat32), rows, experts.w1,
                                                      experts.b1, experts.w2, experts.b2, kernels::kGelu);
  EXPECT_LT(relative_error(fused.y, loop), 1e-2);
}

// An expert-parallel rank can receive no rows at all: an empty output, zero weight gradients.
// Frozen experts (fine-tuning): the fused backward skips the weight gradients and still gives
// the input gradient of the trainable case.
TEST(CudaKernels, FusedExpertFfnWithFrozenWeights) {
  REQUIRE_CUDA();
  torch::manual_seed(41);
  Experts experts(4, 256, 512, false);
  experts.to(torch::kCUDA);
  torch::Tensor rows = torch::tensor({100, 7, 0, 150}, torch::kLong).to(torch::kCUDA);
  torch::Tensor packed = torch::randn({257, 256}, torch::kCUDA).to(torch::kBFloat16);
  if (!kernels::fused_expert_ffn_available(packed, experts.w1)) GTEST_SKIP() << "no fused expert FFN on this device (needs an H100)";
  torch::Tensor upstream = torch::randn({257, 256}, torch::kCUDA);
  auto input_grad = [&]() {
    torch::Tensor x = packed.clone().requires_grad_(true);
    (experts.forward({x, rows}).to(torch::kFloat32) * upstream).sum().backward();
    return x.grad().to(torch::kFloat32);
  };
  const torch::Tensor trainable = input_grad();
  for (auto& p : experts.parameters()) {
    p.mutable_grad() = torch::Tensor();
    p.requires_grad_(false);
  }
  const torch::Tensor frozen = input_grad();
  EXPECT_TRUE(torch::equal(frozen, trainable));
  for (const auto& p : experts.parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST(CudaKernels, FusedExpertFfnWithNoRows) {
  REQUIRE_CUDA();
  Experts experts(4, 256, 512, false);
  experts.to(torch::kCUDA);
  torch::Tensor x = torch::randn({0, 256}, torch::kCUDA).to(torch::kBFloat16).requires_grad_(true);
  if (!kernels::fused_expert_ffn_available(x, experts.w1)) GTEST_SKIP() << "no fused expert FFN on this device (needs an H100)";
  torch::Tensor y = experts.forward({x, torch::zeros({4}, torch::kLong).to(torch::kCUDA)});
  ASSERT_EQ(y.sizes(), torch::IntArrayRef({0, 256}));
  y.to(torch::kFloat32).sum().backward();
  for (const auto& p : experts.parameters()) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_EQ(p.grad().abs().sum().item<double>(), 0.0);
  }
}

#include "models/tiny_moe.h"

TEST(CudaKernels, TrainingOnGpuFollowsTheCpuReferenceLossCurve) {
  REQUIRE_CUDA();
  ModelConfig m;
  m.layers = 2;
  m.dim = 64;
  m.heads = 4;
  m.seq_len = 32;
  m.vocab_size = 40;
  m.dropout = 0.0;  // CPU and GPU draw different random streams
  RouterConfig r;
  r.num_experts = 6;
  r.top_k = 2;
  r.capacity_factor = 1.0;  // some drops, so capacity handling is exercised on both paths
  auto losses = [&](torch::Device device) {
    torch::manual_seed(3);
    TinyMoE model(m, r);
    model.to(device);
    torch::optim::AdamW optimizer(model.parameters(), torch::optim::AdamWOptions(3e-3));
    // A learnable stream: each token is the previous one plus a per-sequence stride, mod 40.
    torch::Tensor starts = torch::randint(0, 40, {8, 8, 1}, torch::kLong), strides = torch::randint(1, 4, {8, 8, 1}, torch::kLong);
    torch::Tensor data = (starts + strides * torch::arange(33, torch::kLong)).remainder(40);
    std::vector<double> out;
    for (int step = 0; step < 8; ++step) {
      torch::Tensor batch = data[step].to(device);
      ModelOutput o = model.forward(batch.narrow(1, 0, 32));
      torch::Tensor loss = torch::nn::functional::cross_entropy(o.logits.reshape({-1, 40}), batch.narrow(1, 1, 32).reshape(-1)) + o.aux_loss;
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      out.push_back(loss.item<double>());
    }
    return out;
  };
  std::vector<double> cpu = losses(torch::kCPU), gpu = losses(torch::kCUDA);
  // fp32 on both; reductions run in other orders, so a step's loss may differ by ~1e-5 and
  // the difference grows slowly through training: 1e-3 relative over 8 steps.
  for (size_t i = 0; i < cpu.size(); ++i) EXPECT_NEAR(gpu[i], cpu[i], 1e-3 * std::abs(cpu[i])) << "step " << i;
  EXPECT_LT(gpu.back(), gpu.front());
}

TEST(CudaKernels, ExpertBiasActivationMatchesReferenceWithGradients) {
  REQUIRE_CUDA();
  torch::manual_seed(23);
  const torch::Device cuda(torch::kCUDA);
  // E not a power of two, an empty expert, all rows on one expert, padding rows, rows not a
  // multiple of the backward's 64-row tile, tiles inside one expert and across several. The
  // kernel takes bf16 and computes in fp32; the reference runs in fp32 on the same bf16
  // values, so outputs and input gradients differ by the kernel's bf16 rounding: 1e-2. (A
  // bf16 reference rounds the bias and h + bias first: near a cancellation that is off by
  // more than any fixed tolerance once there are millions of elements.)
  struct Case {
    std::vector<int> rows_per_expert;
    int64_t padding, cols;
  };
  for (const Case& c : {Case{{37, 0, 101, 5, 60}, 9, 64}, Case{{0, 300, 0}, 0, 1024}, Case{{1}, 3, 8}, Case{{70, 70, 70}, 13, 136},
                      Case{{1000, 1, 999}, 5, 1024}})
    for (auto act : {kernels::kNoActivation, kernels::kGelu, kernels::kSwiGLU}) {
      const int64_t experts = static_cast<int64_t>(c.rows_per_expert.size());
      std::vector<int> ends;
      int total = 0;
      for (int n : c.rows_per_expert) ends.push_back(total += n);
      const int64_t cols_in = act == kernels::kSwiGLU ? 2 * c.cols : c.cols;
      torch::Tensor offsets = torch::tensor(ends, torch::kInt32).to(cuda);
      torch::Tensor h = torch::randn({total + c.padding, cols_in}, cuda).to(torch::kBFloat16).requires_grad_(true);
      torch::Tensor bias = torch::randn({experts, cols_in}, cuda).requires_grad_(true);
      torch::Tensor href = h.detach().to(torch::kFloat32).requires_grad_(true), bref = bias.detach().clone().requires_grad_(true);
      torch::Tensor out = kernels::expert_bias_activation(h, bias, offsets, act).narrow(0, 0, total);
      torch::Tensor ref = kernels::reference::expert_bias_activation(href, bref, offsets, act).narrow(0, 0, total);
      const std::string what = "act " + std::to_string(act) + ", " + std::to_string(experts) + " experts, " + std::to_string(cols_in) + " cols";
      EXPECT_TRUE(torch::allclose(out.to(torch::kFloat32), ref, 1e-2, 1e-2)) << what;
      torch::Tensor upstream = torch::randn(out.sizes(), cuda);
      (out.to(torch::kFloat32) * upstream).sum().backward();
      (ref * upstream).sum().backward();
      if (total > 0)
        EXPECT_TRUE(torch::allclose(h.grad().narrow(0, 0, total).to(torch::kFloat32), href.grad().narrow(0, 0, total), 1e-2, 1e-2))
            << what;
      // A bias gradient sums up to 1000 rows, each term off by the bf16 rounding of the output
      // gradient the kernel receives, so elementwise bounds would scale with the row count:
      // the relative error of the whole gradient, 1e-2.
      EXPECT_LT(relative_error(bias.grad(), bref.grad()), 1e-2) << what;
    }
}

TEST(CudaKernels, LayerNormMatchesReferenceWithGradients) {
  REQUIRE_CUDA();
  torch::manual_seed(29);
  const torch::Device cuda(torch::kCUDA);
  // Rows not a multiple of the block's 8, one row, widths of one, two and four 256-column
  // chunks and between them, a 3-D input; the residual stream's fp32 -> bf16 (as in
  // training), fp32 -> fp32 and bf16 -> bf16. Tolerances: fp32 results differ from libtorch
  // only in summation order, 1e-4; a bf16 output or input gradient carries one rounding, 1e-2;
  // gamma and beta gradients sum every row, compared by relative norm, 1e-4 (fp32 inputs) and
  // 1e-2 (bf16).
  struct Case {
    std::vector<int64_t> shape;
    torch::ScalarType in, out;
  };
  const auto f32 = torch::kFloat32, bf16 = torch::kBFloat16;
  for (const Case& c : {Case{{1000, 256}, f32, bf16}, Case{{37, 8}, f32, f32}, Case{{1, 1024}, f32, bf16},
                        Case{{517, 136}, f32, f32}, Case{{2, 50, 520}, bf16, bf16}, Case{{3, 77, 256}, f32, f32},
                        Case{{4096, 768}, bf16, f32}})
    {
      const int64_t cols = c.shape.back();
      torch::Tensor x = (torch::randn(c.shape, cuda) * 3 + 1).to(c.in).requires_grad_(true);
      torch::Tensor gamma = (torch::randn({cols}, cuda) + 1).requires_grad_(true), beta = torch::randn({cols}, cuda).requires_grad_(true);
      torch::Tensor xr = x.detach().clone().requires_grad_(true), gr = gamma.detach().clone().requires_grad_(true),
                    br = beta.detach().clone().requires_grad_(true);
      torch::Tensor y = kernels::layer_norm(x, gamma, beta, 1e-5, c.out);
      torch::Tensor ref = kernels::reference::layer_norm(xr, gr, br, 1e-5, c.out);
      const std::string what = std::to_string(x.numel() / cols) + " x " + std::to_string(cols) + ", " +
                               std::string(c10::toString(c.in)) + " -> " + c10::toString(c.out);
      ASSERT_EQ(y.sizes(), x.sizes()) << what;
      ASSERT_EQ(y.scalar_type(), c.out) << what;
      const double out_tol = c.out == bf16 ? 1e-2 : 1e-4, in_tol = c.in == bf16 ? 1e-2 : 1e-4;
      EXPECT_TRUE(torch::allclose(y.to(f32), ref.to(f32), out_tol, out_tol)) << what;
      torch::Tensor upstream = torch::randn(y.sizes(), cuda);
      (y.to(f32) * upstream).sum().backward();
      (ref.to(f32) * upstream).sum().backward();
      EXPECT_EQ(x.grad().scalar_type(), c.in) << what;
      EXPECT_TRUE(torch::allclose(x.grad().to(f32), xr.grad().to(f32), in_tol, in_tol)) << what;
      for (auto [kernel, reference] : {std::pair{gamma, gr}, std::pair{beta, br}})
        EXPECT_LT(relative_error(kernel.grad(), reference.grad()), c.in == bf16 ? 1e-2 : 1e-4) << what;
    }
}

TEST(CudaKernels, AddLayerNormMatchesReferenceWithGradients) {
  REQUIRE_CUDA();
  torch::manual_seed(41);
  const torch::Device cuda(torch::kCUDA);
  // The pre-LN block's residual add fused with the LayerNorm: an fp32 stream plus a bf16
  // branch into bf16 (as in training), all fp32, and a bf16 stream; with and without the
  // sum's own gradient (the last block's sum feeds nothing but the final LayerNorm).
  // Tolerances as for the plain LayerNorm; the sum's gradient reaches both inputs.
  struct Case {
    std::vector<int64_t> shape;
    torch::ScalarType stream, branch, out;
    bool sum_used;
  };
  const auto f32 = torch::kFloat32, bf16 = torch::kBFloat16;
  for (const Case& c : {Case{{4, 77, 256}, f32, bf16, bf16, true}, Case{{301, 136}, f32, f32, f32, true},
                        Case{{64, 520}, bf16, bf16, bf16, true}, Case{{2, 33, 256}, f32, bf16, bf16, false}}) {
    const int64_t cols = c.shape.back();
    torch::Tensor x = (torch::randn(c.shape, cuda) * 2).to(c.stream).requires_grad_(true);
    torch::Tensor branch = torch::randn(c.shape, cuda).to(c.branch).requires_grad_(true);
    torch::Tensor gamma = (torch::randn({cols}, cuda) + 1).requires_grad_(true), beta = torch::randn({cols}, cuda).requires_grad_(true);
    torch::Tensor xr = x.detach().clone().requires_grad_(true), branchr = branch.detach().clone().requires_grad_(true);
    torch::Tensor gr = gamma.detach().clone().requires_grad_(true), br = beta.detach().clone().requires_grad_(true);
    kernels::ResidualNorm out = kernels::add_layer_norm(x, branch, gamma, beta, 1e-5, c.out);
    kernels::ResidualNorm ref = kernels::reference::add_layer_norm(xr, branchr, gr, br, 1e-5, c.out);
    const std::string what = std::to_string(x.numel() / cols) + " x " + std::to_string(cols) + " " + c10::toString(c.stream) +
                             " + " + c10::toString(c.branch) + (c.sum_used ? "" : ", sum unused");
    ASSERT_EQ(out.sum.scalar_type(), c.stream) << what;
    ASSERT_EQ(out.normed.scalar_type(), c.out) << what;
    const double stream_tol = c.stream == bf16 ? 1e-2 : 1e-5, out_tol = c.out == bf16 || c.stream == bf16 ? 1e-2 : 1e-4;
    EXPECT_TRUE(torch::allclose(out.sum.to(f32), ref.sum.to(f32), stream_tol, stream_tol)) << what;
    EXPECT_TRUE(torch::allclose(out.normed.to(f32), ref.normed.to(f32), out_tol, out_tol)) << what;
    torch::Tensor up_normed = torch::randn(c.shape, cuda), up_sum = torch::randn(c.shape, cuda);
    auto loss = [&](const kernels::ResidualNorm& r) {
      torch::Tensor l = (r.normed.to(f32) * up_normed).sum();
      return c.sum_used ? l + (r.sum.to(f32) * up_sum).sum() : l;
    };
    loss(out).backward();
    loss(ref).backward();
    const double grad_tol = c.stream == bf16 || c.branch == bf16 ? 1e-2 : 1e-4;
    EXPECT_EQ(branch.grad().scalar_type(), c.branch) << what;
    EXPECT_TRUE(torch::allclose(x.grad().to(f32), xr.grad().to(f32), grad_tol, grad_tol)) << what;
    EXPECT_TRUE(torch::allclose(branch.grad().to(f32), branchr.grad().to(f32), grad_tol, grad_tol)) << what;
    for (auto [kernel, reference] : {std::pair{gamma, gr}, std::pair{beta, br}})
      EXPECT_LT(relative_error(kernel.grad(), reference.grad()), c.stream == bf16 ? 1e-2 : 1e-4) << what;
  }
}

TEST(CudaKernels, CountingSortMatchesReference) {
  REQUIRE_CUDA();
  torch::manual_seed(43);
  // Sizes not a multiple of the 256-entry chunk, one entry, every key equal, empty buckets,
  // the most buckets the kernel takes (1024), and past the reference's one-hot limit; exact.
  struct Case {
    int64_t n, buckets;
    bool one_key;
  };
  for (const Case& c : {Case{16384, 9, false}, Case{1, 3, false}, Case{1000, 9, true}, Case{5000, 513, false},
                        Case{70000, 300, false}, Case{4099, 1024, false}, Case{300, 2, false}}) {
    torch::Tensor keys = c.one_key ? torch::full({c.n}, c.buckets - 1, torch::kLong)
                                   : torch::randint(0, std::max<int64_t>(c.buckets - 1, 1), {c.n}, torch::kLong);
    kernels::KeySort fast = kernels::stable_sort_by_key(keys.to(torch::kCUDA), c.buckets);
    kernels::KeySort ref = kernels::reference::stable_sort_by_key(keys, c.buckets);
    EXPECT_TRUE(torch::equal(fast.position.cpu(), ref.position)) << c.n << " x " << c.buckets;
    EXPECT_TRUE(torch::equal(fast.counts.cpu(), ref.counts)) << c.n << " x " << c.buckets;
    EXPECT_TRUE(torch::equal(fast.order.cpu(), ref.order)) << c.n << " x " << c.buckets;
    EXPECT_TRUE(torch::equal(fast.within_key.cpu(), ref.within_key)) << c.n << " x " << c.buckets;
  }
}

TEST(CudaKernels, CapacitySlotsAndPackedRowsMatchReference) {
  REQUIRE_CUDA();
  torch::manual_seed(43);
  // Random routings, some entries not selected, E not a power of two, all on one expert,
  // capacities that drop most, some or none; N not a multiple of the 256-entry chunk.
  for (int64_t experts : {1, 7, 64, 1000})
    for (int64_t n : {1, 1000, 20001})
      for (int64_t capacity : {int64_t{1}, n / experts + 1, n}) {
        torch::Tensor ids = torch::randint(0, experts, {n}, torch::kCUDA).to(torch::kLong);
        torch::Tensor selected = torch::rand({n}, torch::kCUDA) < 0.8;
        auto fast = kernels::capacity_slots(ids, selected, torch::Tensor(), experts, capacity);
        auto ref = kernels::reference::capacity_slots(ids, selected, torch::Tensor(), experts, capacity);
        const std::string what = std::to_string(experts) + " experts, " + std::to_string(n) + " entries, capacity " + std::to_string(capacity);
        ASSERT_TRUE(torch::equal(fast.kept, ref.kept)) << what;
        ASSERT_TRUE(torch::equal(fast.slot, ref.slot)) << what;
        ASSERT_TRUE(torch::equal(fast.kept_counts, ref.kept_counts)) << what;
        for (int64_t columns : {1, 4}) {
          if (n % columns) continue;
          const int64_t rows = std::min(n, experts * capacity);
          auto packed = kernels::packed_rows(ids, fast.slot, fast.kept_counts, rows, columns);
          auto packed_ref = kernels::reference::packed_rows(ids, ref.slot, ref.kept_counts, rows, columns);
          ASSERT_TRUE(torch::equal(packed.row_of_entry, packed_ref.row_of_entry)) << what;
          ASSERT_TRUE(torch::equal(packed.token_index, packed_ref.token_index)) << what;
        }
      }
}

TEST(CudaKernels, BalancingLossMatchesReferenceWithGradient) {
  REQUIRE_CUDA();
  torch::manual_seed(47);
  // E of 2, 7 (not a power of two), 8 and 32 (the kernel's most), k from 1 to 4, one token,
  // tokens not a multiple of the 256-thread block, every assignment on one expert, none
  // selected (f = 0, a zero loss and gradient); fp32 throughout, 1e-5 relative.
  struct Case {
    int64_t tokens, experts, k;
    double keep;
    bool one_expert;
  };
  for (const Case& c : {Case{8192, 8, 2, 0.9, false}, Case{1, 2, 1, 1.0, false}, Case{300, 7, 3, 0.5, false},
                        Case{4099, 32, 4, 1.0, false}, Case{1000, 8, 2, 1.0, true}, Case{500, 8, 2, 0.0, false}}) {
    torch::Tensor logits = (torch::randn({c.tokens, c.experts}, torch::kCUDA) * 2).requires_grad_(true);
    torch::Tensor ids = c.one_expert ? torch::zeros({c.tokens, c.k}, torch::kLong)
                                     : torch::randint(0, c.experts, {c.tokens, c.k}, torch::kLong);
    ids = ids.to(torch::kCUDA);
    torch::Tensor selected = (torch::rand({c.tokens, c.k}) < c.keep).to(torch::kCUDA);
    torch::Tensor ref_logits = logits.detach().clone().requires_grad_(true);
    torch::Tensor loss = kernels::load_balancing_loss(logits, ids, selected, c.experts);
    torch::Tensor ref = kernels::reference::load_balancing_loss(ref_logits, ids, selected, c.experts);
    const std::string what = std::to_string(c.tokens) + " x " + std::to_string(c.experts) + ", k " + std::to_string(c.k);
    EXPECT_NEAR(loss.item<double>(), ref.item<double>(), 1e-5 * std::max(1.0, std::abs(ref.item<double>()))) << what;
    (loss * 3.0).backward();
    (ref * 3.0).backward();
    EXPECT_TRUE(torch::allclose(logits.grad(), ref_logits.grad(), 1e-5, 1e-8)) << what;
  }
}

TEST(CudaKernels, KeptGatesMatchReferenceWithGradient) {
  REQUIRE_CUDA();
  torch::manual_seed(53);
  // k of 1, 2, 3 and 8; tokens that lost some, all or none of their selected assignments,
  // unselected ones; with and without renormalisation; fp32, 1e-5 relative.
  for (int64_t k : {1, 2, 3, 8})
    for (bool renormalize : {true, false}) {
      const int64_t tokens = 777;
      torch::Tensor gates = torch::softmax(torch::randn({tokens, k}), -1).to(torch::kCUDA).requires_grad_(true);
      torch::Tensor selected = (torch::rand({tokens, k}) < 0.9).to(torch::kCUDA);
      torch::Tensor kept = selected & (torch::rand({tokens, k}) < 0.7).to(torch::kCUDA);
      torch::Tensor ref_gates = gates.detach().clone().requires_grad_(true);
      torch::Tensor out = kernels::kept_gates(gates, selected, kept, renormalize);
      torch::Tensor ref = kernels::reference::kept_gates(ref_gates, selected, kept, renormalize);
      const std::string what = "k " + std::to_string(k) + (renormalize ? ", renormalised" : "");
      EXPECT_TRUE(torch::allclose(out, ref, 1e-5, 1e-7)) << what;
      torch::Tensor upstream = torch::randn({tokens, k}, torch::kCUDA);
      (out * upstream).sum().backward();
      (ref * upstream).sum().backward();
      EXPECT_TRUE(torch::allclose(gates.grad(), ref_gates.grad(), 1e-5, 1e-6)) << what;
    }
}

TEST(CudaKernels, ColumnSumMatchesReference) {
  REQUIRE_CUDA();
  torch::manual_seed(31);
  const torch::Device cuda(torch::kCUDA);
  // One row, rows fewer than a block's 8, columns a multiple of 8 but not of the block's 256,
  // a tall matrix (many row groups); bf16 and fp32 inputs, summed in fp32 both ways and
  // differing only in order: 1e-4 relative to the column's sum of magnitudes.
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 8}, {5, 264}, {8192, 768}, {1000, 2048}, {50000, 16}})
    for (auto dtype : {torch::kBFloat16, torch::kFloat32}) {
      torch::Tensor x = (torch::randn({rows, cols}, cuda) + 0.5).to(dtype);
      torch::Tensor sum = kernels::column_sum(x), ref = kernels::reference::column_sum(x);
      torch::Tensor scale = kernels::reference::column_sum(x.abs()) + 1;
      EXPECT_EQ(sum.scalar_type(), torch::kFloat32);
      EXPECT_LT(((sum - ref).abs() / scale).max().item<double>(), 1e-4) << rows << " x " << cols << " " << c10::toString(dtype);
    }
}

TEST(CudaKernels, LinearUnderAutocastMatchesAtenLinear) {
  REQUIRE_CUDA();
  torch::manual_seed(37);
  const torch::Device cuda(torch::kCUDA);
  // Under bf16 autocast, kernels::linear runs the same bf16 GEMM forward (equal outputs) and
  // writes fp32 weight and bias gradients where at::linear's are bf16 cast to fp32: 1e-2
  // relative norm for the input, weight and bias gradients; 3-D input, with and without bias.
  for (bool with_bias : {true, false}) {
    torch::Tensor x = torch::randn({4, 96, 256}, cuda).requires_grad_(true);
    torch::Tensor w = (torch::randn({768, 256}, cuda) * 0.05).requires_grad_(true);
    torch::Tensor b = with_bias ? torch::randn({768}, cuda).requires_grad_(true) : torch::Tensor();
    torch::Tensor xr = x.detach().clone().requires_grad_(true), wr = w.detach().clone().requires_grad_(true);
    torch::Tensor br = with_bias ? b.detach().clone().requires_grad_(true) : torch::Tensor();
    torch::Tensor y, ref;
    {
      CudaAutocast autocast(true);
      y = kernels::linear(x, w, b);
      ref = at::linear(xr, wr, br);
    }
    ASSERT_EQ(y.scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(torch::equal(y, ref));
    torch::Tensor upstream = torch::randn(y.sizes(), cuda);
    (y.to(torch::kFloat32) * upstream).sum().backward();
    (ref.to(torch::kFloat32) * upstream).sum().backward();
    EXPECT_LT(relative_error(x.grad(), xr.grad()), 1e-2);
    EXPECT_EQ(w.grad().scalar_type(), torch::kFloat32);
    EXPECT_LT(relative_error(w.grad(), wr.grad()), 1e-2);
    if (with_bias) EXPECT_LT(relative_error(b.grad(), br.grad()), 1e-2);
  }
}

TEST(CudaKernels, Bf16OperandGradientIsTheExactFp32Widening) {
  REQUIRE_CUDA();
  torch::manual_seed(41);
  // The gradient reaching the fp32 weight is the bf16 gradient widened, exactly (fp32 holds
  // every bf16 value): the vectorized kernel (numel a multiple of 8) and the fallback (not).
  for (int64_t cols : {1024, 13}) {
    torch::Tensor w = torch::randn({3, 7, cols}, torch::kCUDA).requires_grad_(true);
    torch::Tensor y = kernels::bf16_operand(w);
    ASSERT_EQ(y.scalar_type(), torch::kBFloat16);
    ASSERT_TRUE(torch::equal(y, w.detach().to(torch::kBFloat16)));
    torch::Tensor upstream = torch::randn(y.sizes(), torch::kCUDA).to(torch::kBFloat16);
    (y * upstream).sum().backward();
    ASSERT_EQ(w.grad().scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::equal(w.grad(), upstream.to(torch::kFloat32))) << cols << " columns";
  }
}

TEST(CudaKernels, SinkhornMatchesReference) {
  REQUIRE_CUDA();
  torch::manual_seed(17);
  // E up to 32 takes the thread-per-token kernels, above it a warp per token.
  for (int64_t experts : {8, 13, 32, 33, 128, 512})
    for (int64_t iters : {0, 1, 3, 20}) {
      torch::Tensor logits = torch::randn({3001, experts}, torch::kCUDA) * 2;
      torch::Tensor fast = kernels::sinkhorn(logits, iters, 0.8);
      torch::Tensor ref = kernels::reference::sinkhorn(logits, iters, 0.8);
      // fp32; the kernel keeps scaling vectors instead of rescaling the matrix each round.
      ASSERT_TRUE(torch::allclose(fast, ref, 1e-4, 1e-6)) << experts << " " << iters;
    }
}
