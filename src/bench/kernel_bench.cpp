#include "bench/kernel_bench.h"

#include <algorithm>
#include <filesystem>
#include <functional>

#include <torch/torch.h>
#ifdef MOELAB_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#endif

#include "kernels/routing_kernels.h"
#include "models/moe_layer.h"
#include "models/token_dispatcher.h"
#include "routers/router.h"
#include "train/autocast.h"
#include "train/step_profiler.h"
#include "util/error.h"

namespace moelab {
using nlohmann::json;

namespace {

// The median of `iters` runs after a warm-up, each timed between two CUDA events on the
// stream (host gaps inside a run count, as they do in training). A mean over the wall clock
// swung by up to 2x between identical invocations of the host-bound eager MoE layer: one
// stall of the host spoiled the whole mean.
double time_ms(const std::function<void()>& f, int64_t iters) {
#ifdef MOELAB_CUDA
  for (int i = 0; i < 3; ++i) f();
  std::vector<at::cuda::CUDAEvent> starts, ends;
  for (int64_t i = 0; i < iters; ++i) {
    starts.emplace_back(cudaEventDefault);
    ends.emplace_back(cudaEventDefault);
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t i = 0; i < iters; ++i) {
    starts[i].record(stream);
    f();
    ends[i].record(stream);
  }
  torch::cuda::synchronize();
  std::vector<double> ms;
  for (int64_t i = 0; i < iters; ++i) ms.push_back(starts[i].elapsed_time(ends[i]));
  std::nth_element(ms.begin(), ms.begin() + static_cast<int64_t>(ms.size()) / 2, ms.end());
  return ms[ms.size() / 2];
#else
  (void)f;
  (void)iters;
  throw UserError("moelab bench: kernel timing needs a build with MOELAB_CUDA=ON");
#endif
}

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

}  // namespace

std::vector<json> run_kernel_bench(const KernelBenchOptions& o) {
  if (!torch::cuda::is_available() || !kernels::cuda_kernels_built())
    throw UserError("moelab bench " + o.op + ": needs a CUDA device and a build with MOELAB_CUDA=ON");
  torch::NoGradGuard no_grad;
  torch::manual_seed(o.seed);
  const auto dtype = o.dtype == "fp32" ? torch::kFloat32 : torch::kBFloat16;
  const auto cuda = torch::TensorOptions().device(torch::kCUDA);
  const int64_t T = o.tokens, d = o.hidden, E = o.experts, k = o.top_k;
  const double bytes = o.dtype == "fp32" ? 4.0 : 2.0;
  json base = {{"bench", o.op}, {"tokens", T}, {"hidden", d}, {"experts", E}, {"top_k", k}, {"dtype", o.dtype},
               {"seed", o.seed}, {"skew_experts", o.skew_experts}, {"skew_bias", o.skew_bias}};
  torch::Tensor logits = torch::randn({T, E}, cuda);
  if (o.skew_experts > 0) logits.narrow(1, 0, std::min(o.skew_experts, E)).add_(o.skew_bias);

  // Device copy bandwidth: a D2D copy of the same number of bytes as pack + combine move.
  torch::Tensor copy_src = torch::randn({T * (1 + k), d}, cuda.dtype(dtype)), copy_dst = torch::empty_like(copy_src);
  const double copy_ms = time_ms([&] { copy_dst.copy_(copy_src); }, o.iters);
  const double copy_gibps = 2.0 * copy_src.numel() * bytes / (copy_ms / 1e3) / kGiB;
  base["copy_GiBps"] = copy_gibps;

  auto routing = kernels::softmax_topk(logits, k, 1.0, true);
  torch::Tensor x = torch::randn({T, d}, cuda.dtype(dtype));
  torch::Tensor flat = routing.ids.reshape(-1);
  torch::Tensor order = std::get<1>(flat.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  torch::Tensor token_index = order.div(k, "floor");
  torch::Tensor rows = torch::empty_like(flat).index_put_({order}, torch::arange(flat.size(0), flat.options())).view({T, k});

  std::vector<json> out;
  auto row = [&](json extra) {
    json r = base;
    for (auto it = extra.begin(); it != extra.end(); ++it) r[it.key()] = it.value();
    out.push_back(r);
  };
  if (o.op == "topk") {
    const double fused = time_ms([&] { kernels::softmax_topk(logits, k, 1.0, true); }, o.iters);
    const double torch_ms = time_ms([&] { kernels::reference::softmax_topk(logits, k, 1.0, true); }, o.iters);
    row({{"impl", "fused"}, {"ms", fused}, {"torch_ms", torch_ms}, {"speedup", torch_ms / fused},
         {"tokens_per_s", T / (fused / 1e3)}});
  } else if (o.op == "sinkhorn") {
    const int64_t iters = 3;
    const double fused = time_ms([&] { kernels::sinkhorn(logits, iters, 1.0); }, o.iters);
    const double torch_ms = time_ms([&] { kernels::reference::sinkhorn(logits, iters, 1.0); }, o.iters);
    row({{"impl", "fused"}, {"sinkhorn_iters", iters}, {"ms", fused}, {"torch_ms", torch_ms}, {"speedup", torch_ms / fused}});
  } else if (o.op == "pack" || o.op == "combine") {
    const double moved = (1.0 + k) * d * bytes * T;  // (1 + k) d bytes per token
    double kernel_ms, torch_ms;
    if (o.op == "pack") {
      torch::Tensor packed;
      kernel_ms = time_ms([&] { packed = kernels::permute(x, token_index, rows); }, o.iters);
      torch_ms = time_ms([&] { packed = x.index_select(0, token_index); }, o.iters);
    } else {
      torch::Tensor y = torch::randn({T * k, d}, cuda.dtype(dtype)), gates = routing.gates;
      kernel_ms = time_ms([&] { kernels::unpermute(y, rows, gates); }, o.iters);
      torch_ms = time_ms([&] { kernels::reference::unpermute(y, rows, gates); }, o.iters);
    }
    const double gibps = moved / (kernel_ms / 1e3) / kGiB;
    row({{"impl", "kernel"}, {"ms", kernel_ms}, {"torch_ms", torch_ms}, {"speedup", torch_ms / kernel_ms},
         {"bw_GiBps_strict", gibps}, {"bytes_per_token_strict", (1.0 + k) * d * bytes}, {"fraction_of_copy", gibps / copy_gibps},
         {"tokens_per_s", T / (kernel_ms / 1e3)}});
  } else if (o.op == "routing") {
    // The training path's own Router (linear gate, softk, capacity, kept gates) and packing:
    // what a layer spends before its experts.
    RouterConfig r;
    r.strategy = "softk";
    r.num_experts = E;
    r.top_k = k;
    r.capacity_factor = o.capacity_factor;
    r.lb_coef = 0;  // the bench times routing, not the balancing term
    Router router(r, d);
    router.to(torch::kCUDA);  // fp32 parameters under bf16 autocast, as in training
    CudaAutocast autocast(dtype == torch::kBFloat16);
    if (o.skew_experts > 0) router.named_parameters()["gate.proj.bias"].narrow(0, 0, std::min(o.skew_experts, E)).add_(o.skew_bias);
    torch::Tensor ids = torch::zeros({T}, cuda.dtype(torch::kLong));
    RoutingPlan plan;
    const double t_router = time_ms([&] { plan = router.forward(x, ids); }, o.iters);
    const double t_pack = time_ms([&] { pack_tokens(x, plan); }, o.iters);
    const double drop = 1.0 - plan.kept.to(torch::kFloat32).mean().item<double>();
    row({{"impl", "kernel"}, {"T_router_ms", t_router}, {"T_pack_ms", t_pack}, {"T_route_ms", t_router + t_pack},
         {"drop_rate", drop}, {"capacity_factor", o.capacity_factor}, {"tokens_per_s", T / ((t_router + t_pack) / 1e3)}});
  } else if (o.op == "moe-layer") {
    RouterConfig r;
    r.strategy = "softk";
    r.num_experts = E;
    r.top_k = k;
    r.capacity_factor = o.capacity_factor;
    MoeLayer layer(r, d, o.expand * d, false);
    layer.to(torch::kCUDA, dtype);
    torch::Tensor input = torch::randn({T, d}, cuda.dtype(dtype));
    torch::Tensor ids = torch::zeros({T}, cuda.dtype(torch::kLong));
    // A training step's layer work: gradients start unset (zero_grad(set_to_none)), so the
    // backward writes them instead of adding into last step's.
    auto step = [&] {
      torch::AutoGradMode grad(true);
      for (auto& p : layer.parameters()) p.mutable_grad() = torch::Tensor();
      torch::Tensor xin = input.detach().requires_grad_(true);
      layer.forward(xin, ids).sum().backward();
    };
    // Device time per step by kernel, of each path: PROFILE/kernels and PROFILE/torch.
    auto profile = [&](const std::string& path) {
      if (o.profile_dir.empty()) return;
      if (!StepProfiler::available()) throw UserError("moelab bench --profile: this libtorch build has no Kineto CUDA profiler");
      std::filesystem::create_directories(o.profile_dir + "/" + path);
      StepProfiler profiler;
      profiler.start();
      for (int64_t i = 0; i < o.iters; ++i) step();
      torch::cuda::synchronize();
      profiler.stop(o.profile_dir + "/" + path, o.iters);
    };
    kernels::set_cuda_kernels_enabled(true);
    const double kernel_ms = time_ms(step, o.iters);
    profile("kernels");
    kernels::set_cuda_kernels_enabled(false);
    const double torch_ms = time_ms(step, o.iters);
    profile("torch");
    kernels::set_cuda_kernels_enabled(true);
    // Experts alone: grouped GEMM over the packed rows vs one dense GEMM of the same size.
    torch::Tensor packed = torch::randn({T * k, d}, cuda.dtype(dtype));
    torch::Tensor per_expert = torch::full({E}, T * k / E, cuda.dtype(torch::kLong));
    per_expert[0] += T * k - (T * k / E) * E;
    const double grouped_ms = time_ms([&] { layer.experts().forward({packed, per_expert}); }, o.iters);
    torch::Tensor w1 = torch::randn({d, o.expand * d}, cuda.dtype(dtype)), w2 = torch::randn({o.expand * d, d}, cuda.dtype(dtype));
    const double dense_ms = time_ms([&] { torch::matmul(torch::gelu(torch::matmul(packed, w1)), w2); }, o.iters);
    const double flops = 2.0 * 2.0 * (T * k) * d * (o.expand * d);
    row({{"impl", "kernel"}, {"fwd_bwd_ms", kernel_ms}, {"torch_fwd_bwd_ms", torch_ms}, {"speedup", torch_ms / kernel_ms},
         {"tokens_per_s", T / (kernel_ms / 1e3)}, {"grouped_gemm_ms", grouped_ms}, {"dense_gemm_ms", dense_ms},
         {"grouped_vs_dense", dense_ms / grouped_ms}, {"grouped_tflops", flops / (grouped_ms / 1e3) / 1e12},
         {"expand", o.expand}, {"capacity_factor", o.capacity_factor}});
  } else {
    throw UserError("moelab bench: unknown op '" + o.op + "' (topk|pack|combine|routing|moe-layer|capacity)");
  }
  return out;
}

}  // namespace moelab
