#pragma once
// Data-parallel gradient averaging, as DDP does it: parameters are grouped into buckets of
// about parallel.bucket_mb (in reverse registration order, roughly the order backward
// produces them); a hook on each parameter copies its gradient into the bucket, and a bucket
// is all-reduced the moment it is complete, while backward goes on with earlier layers.
// Buckets are launched in a fixed order, the same on every rank, whatever order the hooks
// fire in. Parameters that got no gradient this step count as zeros.
//
// Expert shards (expert parallelism) are reduced over the expert-data group instead (ranks
// holding the same shard; none when EP = world) and scaled alike: every rank's loss is a mean
// over its own tokens and the step's loss is the mean over ranks, so each gradient is divided
// by the world size.
#include <cstdint>
#include <memory>
#include <vector>

#include <torch/types.h>

#include "dist/communicator.h"

namespace moelab {

class GradientSynchronizer {
 public:
  GradientSynchronizer(const std::vector<torch::Tensor>& replicated, const std::shared_ptr<Communicator>& world,
                       const std::vector<torch::Tensor>& expert_shards,
                       const std::shared_ptr<Communicator>& expert_data_group, int world_size, double bucket_mb);
  ~GradientSynchronizer();
  GradientSynchronizer(const GradientSynchronizer&) = delete;
  GradientSynchronizer& operator=(const GradientSynchronizer&) = delete;

  void begin_backward();  // arms the hooks for one backward pass
  void finish();          // after backward: launches what is left, waits, writes the averages to .grad

  int64_t bucket_count() const;

 private:
  struct Group;
  std::vector<std::unique_ptr<Group>> groups_;
};

// Data parallelism must keep the replicas identical: checksums of every tensor's bytes gathered
// from every rank of `group` and compared; DistributedError naming the step and `what` when a
// rank's bytes differ. Cheap enough for every log step.
void check_replicas(const std::vector<torch::Tensor>& parameters, Communicator& group, const char* what, int64_t step);

}  // namespace moelab
