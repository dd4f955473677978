#pragma once
// Seed 003's expert-parallel benchmark, run on every rank of a torchrun/mpirun job: one MoE
// layer forward with E experts sharded over the ranks, T tokens per rank.
//   T_route     router matmul + gate (softmax top-k, or Sinkhorn-balanced selection) + pack
//   T_comm      the exchange: counts all-to-all (and its host read), rows out, outputs back
//   T_comp      this rank's experts on the rows they received
//   load skew   max/mean and CV of the tokens per expert (all ranks) and per rank
//   sequential  route -> exchange -> experts -> exchange back -> combine
//   overlapped  a pipeline over groups of this rank's experts: one group's rows travel in
//               (async all-to-all, NCCL's own stream on GPUs) while the previous group
//               computes, and its outputs travel back while the next one computes
//   eta_overlap sequential / overlapped
// Times are the slowest rank's mean over `iters` after warm-up, ranks aligned by a barrier.
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moelab {

struct EpBenchOptions {
  int64_t tokens = 4096, hidden = 4096, experts = 64, top_k = 2, expand = 4, iters = 20;
  double capacity_factor = 0;  // 0 = dropless
  std::string strategy = "topk";  // topk | sinkhorn
  int64_t overlap_chunks = 4;  // expert groups of the overlapped pipeline
  int64_t skew_experts = 0;
  double skew_bias = 0;
  std::string dtype = "bf16";  // CPU runs fp32
  uint64_t seed = 17;
};

// Every rank returns the same row (rank 0 prints it).
nlohmann::json run_ep_bench(const EpBenchOptions& options);

}  // namespace moelab
