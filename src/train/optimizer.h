#pragma once
// AdamW with nanoGPT's decay groups (matrices decayed; biases, LayerNorm gains and expert
// bias vectors not). On CUDA a step is moelab's multi-tensor AdamW kernel (kernels/adamw.h),
// with the step count and the learning rate held on the device: one launch per 48
// parameters, and nothing baked into a captured CUDA graph that must change between steps.
// Elsewhere libtorch's AdamW takes the step. Either way the state (exp_avg, exp_avg_sq,
// step) lives in libtorch's AdamW, which is what checkpoints hold.
#include <vector>

#include <torch/optim/adamw.h>

#include "kernels/adamw.h"

namespace moelab {

struct TrainConfig;

class TrainingOptimizer {
 public:
  TrainingOptimizer(const std::vector<torch::Tensor>& parameters, const TrainConfig& train);

  static bool fused_available();
  bool fused() const { return fused_; }
  void set_learning_rate(double lr);
  void zero_grad();  // drops the gradients (set to none), as libtorch's zero_grad does
  // One step with every gradient multiplied by grad_scale (global-norm clipping; undefined:
  // 1). A non-finite grad_scale skips the step: parameters, moments and step count stay as
  // they are (decided on the device on the fused path). Every parameter must have a gradient
  // on the fused path.
  void step(const torch::Tensor& grad_scale);
  // For checkpoints: libtorch's AdamW holding the state, its step counts brought up to the
  // device's (reads them back: call at checkpoints, not every step).
  torch::optim::AdamW& state();

 private:
  void prepare_fused();

  torch::optim::AdamW adamw_;
  bool fused_ = false;
  double beta1_ = 0.9, beta2_, eps_ = 1e-8;
  kernels::AdamWState fused_state_;
  torch::Tensor lr_, step_;  // [] float32 on the device
};

}  // namespace moelab
