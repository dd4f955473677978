#pragma once
// Checkpoints: model parameters and buffers, optimizer state, RNG state, the data sampler's
// state and the step, in one file written atomically (a kill at any moment leaves the last
// good checkpoint). RUN/checkpoints/latest.pt.
#include <functional>
#include <string>

#include <torch/optim/optimizer.h>

#include "models/tiny_moe.h"

namespace moelab {

struct TrainingState {
  int64_t step = 0;  // steps completed
  int64_t tokens_seen = 0;
  double train_seconds = 0;  // wall time spent training (evaluation excluded)
  std::string sampler_state;
  int64_t world_size = 1;  // ranks of the run that wrote it: a resume must use as many
  // The log interval in progress (a stop off a multiple of train.log_interval), so that the
  // resumed run logs the same interval loss as an uninterrupted one.
  double interval_loss_sum = 0, interval_seconds = 0;
  int64_t interval_steps = 0;
  // A fine-tuning run's: the checksum of the base checkpoint it adapts, so that its adapters
  // are never loaded onto other base weights. Empty otherwise.
  std::string base_checksum;
  // load_checkpoint: the checksum of the file read (16 hex digits); not written.
  std::string file_checksum;
};

// Which of a model's parameters and buffers (by their named_parameters() names) a checkpoint
// holds: every one when empty (a training run), a fine-tuning run's adapters otherwise.
using TensorSelection = std::function<bool(const std::string& name)>;

std::string checkpoint_path(const std::string& run_dir);
// With expert parallelism each expert shard is its own file, written by the ranks of the
// first expert group (the other groups hold copies): RUN/checkpoints/latest.ep<i>of<n>.pt.
std::string expert_shard_checkpoint_path(const std::string& run_dir, int shard, int shards);

void save_checkpoint(const std::string& path, TinyMoE& model, torch::optim::Optimizer& optimizer,
                     const TrainingState& state, const TensorSelection& selection = {});

// Loads into `model` (and `optimizer` if given, and the global RNG when restoring training)
// the tensors `selection` picks, which the file must hold. A file that is not a moelab
// checkpoint, or one of another model shape, is a UserError.
TrainingState load_checkpoint(const std::string& path, TinyMoE& model, torch::optim::Optimizer* optimizer,
                              const torch::Device& device, const TensorSelection& selection = {});


}  // namespace moelab
