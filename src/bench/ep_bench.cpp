#include "bench/ep_bench.h"

#include <array>
#include <chrono>
#include <cmath>
#include <functional>
#include <optional>

#include <torch/torch.h>

#include "dist/communicator.h"
#include "models/all_to_all_dispatcher.h"
#include "models/experts.h"
#include "routers/router.h"
#include "train/autocast.h"
#include "util/error.h"
#include "util/strings.h"

namespace moelab {
using nlohmann::json;

namespace {

struct Bench {
  const DistributedContext& dist;
  bool cuda;
  int64_t iters;

  void sync() const {
    if (cuda) torch::cuda::synchronize();
  }
  // The slowest rank's mean time of f, ranks starting together.
  double time_ms(const std::function<void()>& f) const {
    for (int i = 0; i < 3; ++i) f();
    sync();
    if (dist.world_group) dist.world_group->barrier();
    const auto start = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < iters; ++i) f();
    sync();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / iters;
    return slowest(ms);
  }
  double slowest(double value) const {
    if (!dist.world_group) return value;
    torch::Tensor all = dist.world_group->all_gather(torch::full({1}, value, torch::TensorOptions().dtype(torch::kFloat64).device(device())));
    return all.max().item<double>();
  }
  torch::Device device() const { return cuda ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(dist.local_rank)) : torch::kCPU; }
};

std::pair<double, double> skew_and_cv(torch::Tensor load) {
  load = load.to(torch::kFloat64).cpu();
  const double mean = load.mean().item<double>();
  if (mean <= 0) return {0.0, 0.0};
  return {load.max().item<double>() / mean, load.std(/*unbiased=*/false).item<double>() / mean};
}

}  // namespace

json run_ep_bench(const EpBenchOptions& o) {
  const LaunchEnvironment env = read_launch_environment();
  const bool cuda = torch::cuda::is_available();
  if (o.experts % env.world != 0)
    throw UserError(strf("moelab bench ep: --experts %lld is not divisible by the %d ranks", (long long)o.experts, env.world));
  if (o.strategy != "topk" && o.strategy != "sinkhorn") throw UserError("moelab bench ep: --strategy must be topk or sinkhorn");
  ParallelConfig parallel;
  parallel.expert_parallel = env.world;
  const DistributedContext dist = init_distributed(env, parallel, cuda);
  if (!dist.expert_group)
    throw UserError("moelab bench ep: needs at least 2 ranks (torchrun --no-python --nproc-per-node 2 moelab bench ep ...)");
  Bench bench{dist, cuda, o.iters};
  torch::NoGradGuard no_grad;
  const auto dtype = cuda && o.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  const auto options = torch::TensorOptions().device(bench.device()).dtype(dtype);
  const int64_t T = o.tokens, d = o.hidden, E = o.experts, k = o.top_k, ranks = dist.world, per = E / ranks;
  const int self = dist.expert_group->rank();

  // The same router on every rank (the training path's own: gate, strategy, capacity, kept
  // gates), each rank its shard of the experts and its own tokens.
  RouterConfig router_config;
  router_config.strategy = o.strategy == "topk" ? "softk" : "sinkhorn";
  router_config.num_experts = E;
  router_config.top_k = k;
  router_config.capacity_factor = o.capacity_factor;
  router_config.sinkhorn_iters = 3;
  router_config.lb_coef = 0;  // the bench times routing, not the balancing term
  torch::manual_seed(o.seed);
  Router router(router_config, d);
  router.to(bench.device());  // fp32 parameters under bf16 autocast, as in training
  if (o.skew_experts > 0) router.named_parameters()["gate.proj.bias"].narrow(0, 0, std::min(o.skew_experts, E)).add_(o.skew_bias);
  torch::manual_seed(o.seed + 1 + static_cast<uint64_t>(dist.rank));
  Experts experts(per, d, o.expand * d, false);
  experts.to(bench.device(), dtype);
  torch::Tensor x = torch::randn({T, d}, options);
  torch::Tensor token_ids = torch::zeros({T}, options.dtype(torch::kLong));
  AllToAllDispatcher dispatcher(dist.expert_group, E, /*capacity_padded=*/false);

  auto route = [&] {
    CudaAutocast autocast(dtype == torch::kBFloat16);
    return pack_tokens(x, router.forward(x, token_ids));
  };
  auto sequential = [&] {
    ExchangedTokens ex = dispatcher.exchange_counts(route());
    dispatcher.exchange_rows(ex);
    return dispatcher.combine_exchanged(experts.forward({ex.packed, ex.expert_rows}), ex);
  };
  // Overlapped: the local experts in `chunks` groups, a pipeline over them: group c+1's rows
  // travel in while group c computes, and group c's outputs travel back while c+1 computes.
  // Each expert's weights are still read once (splitting by source rank instead would read
  // them twice, which costs more than NVLink's all-to-all takes).
  const int64_t chunks = std::max<int64_t>(1, std::min(o.overlap_chunks, per));
  auto overlapped = [&] {
    ExchangedTokens ex = dispatcher.exchange_counts(route());
    const torch::Tensor& packed = ex.local.packed;
    auto send_c = ex.send_counts.accessor<int64_t, 2>(), recv_c = ex.recv_counts.accessor<int64_t, 2>();
    std::vector<int64_t> block_start(ranks, 0);  // first packed row for rank j
    for (int64_t j = 1; j < ranks; ++j) block_start[j] = block_start[j - 1] + ex.send_rows[j - 1];
    // Every chunk's row lists, orders and counts are built on the host first and go to the
    // device in one copy: a copy from pageable memory waits for the stream, and one inside
    // the pipeline would stall it.
    struct Chunk {
      torch::Tensor rows, order, expert_rows, received, returned;
      std::vector<int64_t> send, recv;
      std::optional<Communicator::Pending> pending;
    };
    std::vector<Chunk> pipeline(chunks);
    std::vector<int64_t> host;  // per chunk: rows, order, expert_rows
    std::vector<std::array<int64_t, 3>> sizes(chunks);
    for (int64_t c = 0; c < chunks; ++c) {
      Chunk& ch = pipeline[c];
      const int64_t first = c * per / chunks, last = (c + 1) * per / chunks;
      ch.send.assign(ranks, 0);
      ch.recv.assign(ranks, 0);
      const size_t start = host.size();
      for (int64_t j = 0; j < ranks; ++j) {
        int64_t offset = block_start[j];
        for (int64_t e = 0; e < first; ++e) offset += send_c[j][e];
        for (int64_t e = first; e < last; ++e) ch.send[j] += send_c[j][e];
        for (int64_t e = first; e < last; ++e) ch.recv[j] += recv_c[j][e];
        for (int64_t i = 0; i < ch.send[j]; ++i) host.push_back(offset + i);
      }
      torch::Tensor counts = torch::zeros({ranks, per}, torch::kLong);
      counts.narrow(1, first, last - first).copy_(ex.recv_counts.narrow(1, first, last - first));
      torch::Tensor order = AllToAllDispatcher::expert_major_order(counts), expert_rows = counts.sum(0);
      host.insert(host.end(), order.data_ptr<int64_t>(), order.data_ptr<int64_t>() + order.numel());
      host.insert(host.end(), expert_rows.data_ptr<int64_t>(), expert_rows.data_ptr<int64_t>() + per);
      sizes[c] = {static_cast<int64_t>(host.size() - start) - order.numel() - per, order.numel(), per};
    }
    torch::Tensor on_device = torch::tensor(host, torch::kLong).to(bench.device());
    int64_t at = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      pipeline[c].rows = on_device.narrow(0, at, sizes[c][0]);
      pipeline[c].order = on_device.narrow(0, at + sizes[c][0], sizes[c][1]);
      pipeline[c].expert_rows = on_device.narrow(0, at + sizes[c][0] + sizes[c][1], sizes[c][2]);
      at += sizes[c][0] + sizes[c][1] + sizes[c][2];
    }
    auto launch_in = [&](int64_t c) {
      Chunk& ch = pipeline[c];
      ch.received = torch::empty({ch.order.size(0), d}, packed.options());
      ch.pending = dist.expert_group->all_to_all_async(packed.index_select(0, ch.rows), ch.received, ch.send, ch.recv);
    };
    launch_in(0);
    for (int64_t c = 0; c < chunks; ++c) {
      if (c + 1 < chunks) launch_in(c + 1);
      Chunk& ch = pipeline[c];
      ch.pending->wait();
      torch::Tensor y_sorted = experts.forward({ch.received.index_select(0, ch.order), ch.expert_rows});
      torch::Tensor y = torch::empty_like(y_sorted).index_copy_(0, ch.order, y_sorted);
      ch.returned = torch::empty({ch.rows.size(0), d}, y.options());
      ch.pending = dist.expert_group->all_to_all_async(y, ch.returned, ch.recv, ch.send);
    }
    torch::Tensor all = packed.new_zeros({packed.size(0), d});
    for (Chunk& ch : pipeline) {
      ch.pending->wait();
      all.index_copy_(0, ch.rows, ch.returned);
    }
    return combine_packed(all, ex.local);
  };

  // Phases.
  PackedTokens routed;
  const double t_route = bench.time_ms([&] { routed = route(); });
  ExchangedTokens ex;
  const double t_counts = bench.time_ms([&] { ex = dispatcher.exchange_counts(routed); });
  torch::Tensor received;
  const double t_out = bench.time_ms(
      [&] { received = dist.expert_group->all_to_all(routed.packed.narrow(0, 0, ex.sent), ex.send_rows, ex.recv_rows); });
  dispatcher.exchange_rows(ex);
  torch::Tensor y;
  const double t_comp = bench.time_ms([&] { y = experts.forward({ex.packed, ex.expert_rows}); });
  const double t_back = bench.time_ms([&] { dist.expert_group->all_to_all(y, ex.recv_rows, ex.send_rows); });
  const double t_sequential = bench.time_ms([&] { sequential(); });
  const double t_overlapped = bench.time_ms([&] { overlapped(); });
  const double max_diff = (sequential().to(torch::kFloat32) - overlapped().to(torch::kFloat32)).abs().max().item<double>();

  // Load: tokens per expert over all ranks, rows per rank received.
  torch::Tensor expert_load = routed.expert_rows.clone();
  dist.world_group->all_reduce_sum(expert_load);
  int64_t received_rows = 0;
  for (int64_t n : ex.recv_rows) received_rows += n;
  torch::Tensor rank_load = dist.world_group->all_gather(torch::full({1}, received_rows, torch::TensorOptions().dtype(torch::kLong).device(bench.device())));
  auto [expert_skew, expert_cv] = skew_and_cv(expert_load);
  auto [rank_skew, rank_cv] = skew_and_cv(rank_load);
  int64_t remote_rows = 0;
  for (int j = 0; j < ranks; ++j) remote_rows += j == self ? 0 : ex.send_rows[j];
  const double bytes = dtype == torch::kBFloat16 ? 2.0 : 4.0;
  const double t_comm = t_counts + t_out + t_back;
  // Overlap hides the shorter of exchange and compute behind the longer at best: the
  // sequential layer over that ideal is the most any overlap can gain at this shape.
  const double eta_bound = (t_comm + t_comp) / std::max(t_comm, t_comp);
  return json{{"bench", "ep"},
              {"ranks", ranks},
              {"backend", cuda ? "nccl" : "gloo"},
              {"tokens_per_rank", T},
              {"hidden", d},
              {"experts", E},
              {"top_k", k},
              {"expand", o.expand},
              {"strategy", o.strategy},
              {"capacity_factor", o.capacity_factor},
              {"dtype", dtype == torch::kBFloat16 ? "bf16" : "fp32"},
              {"skew_experts", o.skew_experts},
              {"skew_bias", o.skew_bias},
              {"seed", o.seed},
              {"T_route_ms", t_route},
              {"T_counts_ms", t_counts},
              {"T_dispatch_comm_ms", t_out},
              {"T_combine_comm_ms", t_back},
              {"T_comm_ms", t_comm},
              {"T_comp_ms", t_comp},
              {"load_skew", expert_skew},
              {"load_cv", expert_cv},
              {"rank_load_skew", rank_skew},
              {"rank_load_cv", rank_cv},
              {"remote_fraction", static_cast<double>(remote_rows) / static_cast<double>(std::max<int64_t>(1, ex.sent))},
              {"comm_GiBps_rank0", 2.0 * static_cast<double>(remote_rows) * d * bytes / ((t_out + t_back) / 1e3) / (1024.0 * 1024 * 1024)},
              {"sequential_ms", t_sequential},
              {"overlapped_ms", t_overlapped},
              {"eta_overlap", t_sequential / t_overlapped},
              {"eta_overlap_bound", eta_bound},
              {"overlap_chunks", chunks},
              {"overlap_max_abs_diff", max_diff},
              {"rank", dist.rank}};
}

}  // namespace moelab
