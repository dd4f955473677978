#pragma once
// A training run's state between steps, built once by start_training_run(): its directory
// and checkpoint files, the ranks, the prepared data, the model with its optimizer and batch
// sampler, and the progress a checkpoint restores. The step loop (train/trainer.cpp) reads
// it; nothing here runs a step.
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "config/run_config.h"
#include "data/batch_sampler.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "dist/communicator.h"
#include "dist/gradient_sync.h"
#include "models/tiny_moe.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/metrics_log.h"
#include "train/optimizer.h"
#include "train/train_batches.h"
#include "train/trainer.h"

namespace moelab {

struct TrainingRun {
  RunConfig config;   // as resolved: model.vocab_size from the tokenizer
  std::string run_dir;
  std::string checkpoint;       // RUN/checkpoints/latest.pt: the whole model
  std::string rank_checkpoint;  // what this rank writes and resumes from: its expert shard's file under EP
  bool writes_checkpoint = false;
  DistributedContext dist;
  torch::Device device{torch::kCPU};
  bool bf16 = false;  // SPEC: bf16 autocast on a GPU (train.dtype), fp32 on the CPU

  std::unique_ptr<PreparedData> data;
  std::unique_ptr<TokenFile> train_tokens, valid_tokens;
  double chars_per_token = 0;  // of the validation text, for bits per character
  // Fine-tuning (config.finetune.base set): the base run's validation split, scored beside the
  // target's to measure forgetting, and the tensors the run's checkpoint holds.
  std::unique_ptr<TokenFile> base_valid_tokens;
  double base_chars_per_token = 0;
  TensorSelection checkpoint_selection;
  bool finetuning() const { return config.finetune.base.has_value(); }
  std::unique_ptr<TinyMoE> model;
  // Expert shards (expert parallelism) and everything else, which every rank holds alike.
  std::vector<torch::Tensor> replicated, expert_shards;
  std::unique_ptr<TrainingOptimizer> optimizer;
  std::unique_ptr<BatchSampler> sampler;
  std::unique_ptr<TrainBatches> batches;
  std::unique_ptr<GradientSynchronizer> gradient_sync;  // distributed runs only
  std::unique_ptr<MetricsLog> metrics;                  // rank 0 only
  TrainingState state;
  int64_t tokens_per_step = 0;  // over all ranks
  double flops_per_token = 0;   // the model's (TinyMoE::flops_per_token) with nothing dropped
  // The FLOPs actually routed: at each log step the step's kept share of assignments; the
  // summary averages the logged steps' (this process's).
  double routed_flops_sum = 0;
  int64_t routed_flops_count = 0;
  double routed_flops_per_token() const {
    return routed_flops_count > 0 ? routed_flops_sum / static_cast<double>(routed_flops_count) : flops_per_token;
  }

  bool main_rank() const { return dist.is_main(); }
  // "The last good checkpoint is ..." or how to start again: for a message that stops the run.
  std::string last_good_checkpoint() const;
  // Writes the checkpoint(s) of the current state (every rank calls it; under expert
  // parallelism the first expert group also gathers the whole model into `checkpoint`).
  void save();
  // Scores the validation split (and a fine-tuning run's base-domain split, into
  // base_domain_eval), logs it and writes its metrics row.
  EvalResult evaluate(int64_t step);
  // A fine-tuning run's base-domain scores at its last evaluation, and both scores at step 0
  // (the base before adapting; restored from metrics.jsonl when resuming).
  EvalResult base_domain_eval, initial_eval, initial_base_domain_eval;
};

// Checks the config, joins the other ranks, prepares the data, builds the model and restores
// the checkpoint when resuming. UserError for a run that cannot start, before anything of an
// earlier run is changed.
std::unique_ptr<TrainingRun> start_training_run(RunConfig config, const TrainOptions& options);

}  // namespace moelab
