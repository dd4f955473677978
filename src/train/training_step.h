#pragma once
// One training step on the device: forward, backward, gradient synchronisation, clipping,
// the optimizer and the expert-bias update. On one CUDA device the step is captured as a CUDA
// graph after a few eager steps and replayed; the step profiler, when asked for, records a
// window of steps past the capture.
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "routers/routing_plan.h"
#include "train/cuda_graph.h"
#include "train/step_profiler.h"
#include "train/training_run.h"

namespace moelab {

// What one step leaves on the device, read only at log steps. With a captured CUDA graph
// these are the graph's own tensors, rewritten by every replay.
struct StepOutputs {
  torch::Tensor lm_loss, aux_loss, grad_norm;
  std::vector<RoutingPlan> plans;  // each MoE layer's routing of the step's batch
  std::vector<RoutingPlan> adapter_plans;  // each perft_r adapter router's
};

class TrainingStep {
 public:
  explicit TrainingStep(TrainingRun& run);
  ~TrainingStep();
  // Why the step runs as it does, for the log: captured, or eager and why.
  std::string describe() const;
  // One step on the batch run.batches drew.
  StepOutputs run();
  // Reads the loss and the skipped updates back (a GPU's queue stalls for it: the CPU checks
  // every step, a GPU at log and checkpoint steps) and stops the run with a UserError when
  // the loss is not finite or an update was skipped for a non-finite gradient.
  void check_finite(int64_t step, const StepOutputs& out);
  // The log interval's LM losses, summed on the device (a read-back per step would stall a
  // GPU). Distributed: average_over_ranks() makes it the mean over the ranks' batches.
  torch::Tensor& interval_loss_sum() { return interval_loss_sum_; }
  void average_interval_loss_over_ranks();
  // Ends a profile window still open when the run stops.
  void finish();

 private:
  StepOutputs step_on_device();
  void finish_profile();

  TrainingRun& run_;
  bool use_graph_ = false, profile_ = false, profiling_ = false;
  std::unique_ptr<CudaSideStream> side_stream_;
  std::unique_ptr<CudaGraph> graph_;
  StepOutputs captured_;
  int64_t steps_in_process_ = 0, last_checked_step_ = 0;
  StepProfiler profiler_;
  torch::Tensor interval_loss_sum_;
  torch::Tensor skipped_updates_;  // steps whose gradient was not finite: the optimizer skipped them
};

}  // namespace moelab
