#pragma once
// A rank's handle on one c10d process group: Gloo for CPU tensors, NCCL for CUDA ones. Every
// collective moelab uses is here, waited on where it returns, and a failure inside c10d (a
// peer gone, a timeout) comes out as one DistributedError naming this rank and the operation.
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/types.h>

#include "config/run_config.h"

namespace moelab {

// Not the user's input at fault: the job's ranks lost each other. main() ends the process at
// once (a Gloo thread still blocked on a dead peer would hang the destructors).
struct DistributedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Communicator {
 public:
  struct Impl;
  explicit Communicator(std::shared_ptr<Impl> impl);
  int rank() const;  // within this group
  int size() const;

  // A collective in flight; wait() rethrows its failure as a DistributedError.
  class Pending {
   public:
    struct State;
    explicit Pending(std::shared_ptr<State> state);
    void wait();
   private:
    std::shared_ptr<State> state_;
  };

  void all_reduce_sum(torch::Tensor& tensor);
  Pending all_reduce_sum_async(torch::Tensor& tensor);
  // Rows [send_rows[0]) of `input` go to rank 0, the next send_rows[1] to rank 1, ...;
  // returns the rows received, recv_rows[j] of them from rank j, in rank order.
  torch::Tensor all_to_all(const torch::Tensor& input, const std::vector<int64_t>& send_rows,
                           const std::vector<int64_t>& recv_rows);
  Pending all_to_all_async(const torch::Tensor& input, torch::Tensor& output, const std::vector<int64_t>& send_rows,
                           const std::vector<int64_t>& recv_rows);
  void broadcast(torch::Tensor& tensor, int root);
  torch::Tensor all_gather(const torch::Tensor& tensor);  // [size, ...tensor's shape]
  void barrier();

 private:
  std::shared_ptr<Impl> impl_;
};

// The groups of one rank. With expert parallelism EP, ranks [g*EP, (g+1)*EP) share one copy of
// each MoE layer's experts (the expert group) and ranks with the same index in their expert
// groups hold the same shard (the expert-data group, all-reducing that shard's gradients).
struct DistributedContext {
  int rank = 0, world = 1, local_rank = 0, expert_parallel = 1;
  std::shared_ptr<Communicator> world_group;        // null when world = 1
  std::shared_ptr<Communicator> expert_group;       // null when expert_parallel = 1
  std::shared_ptr<Communicator> expert_data_group;  // null unless 1 < expert_parallel < world
  bool distributed() const { return world > 1; }
  bool is_main() const { return rank == 0; }
};

// The launcher's environment: torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT,
// or mpirun's OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK (with MASTER_ADDR/MASTER_PORT set). No
// variables: one process.
struct LaunchEnvironment {
  int rank = 0, world = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string launcher = "none";  // none | torchrun | mpirun
};
LaunchEnvironment read_launch_environment();

// Rendezvous through a c10d TCPStore at MASTER_ADDR:MASTER_PORT (rank 0 serves it), then the
// groups; `cuda` picks NCCL. Every wait is bounded by parallel.timeout_s.
DistributedContext init_distributed(const LaunchEnvironment& env, const ParallelConfig& parallel, bool cuda);

// A group of this process alone (an in-process store, no rendezvous): its collectives run
// the backend's real code path with no peers. For checking that path where only one device
// is at hand (a captured NCCL all-reduce, in the GPU tests).
std::shared_ptr<Communicator> single_process_group(bool cuda);

// Before a rank returns: NCCL's collectives are queued on the device, not finished, when they
// return; a rank that exits with one still queued leaves its peers waiting. Synchronise the
// device, then meet the others at a barrier.
void finish_distributed(const DistributedContext& dist, bool cuda);

// Whether this build has the backend: Gloo (CPU tensors) and NCCL (CUDA tensors).
bool gloo_available();
bool nccl_available();

}  // namespace moelab
