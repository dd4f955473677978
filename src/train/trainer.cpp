#include "train/trainer.h"

#include <chrono>

#include <torch/torch.h>

#include "dist/gradient_sync.h"
#include "train/lr_schedule.h"
#include "train/train_report.h"
#include "train/training_run.h"
#include "train/training_step.h"
#include "trace/recorder.h"
#include "util/error.h"
#include "util/files.h"
#include "util/log.h"
#include "util/strings.h"

namespace moelab {
namespace {
using Clock = std::chrono::steady_clock;
using nlohmann::json;
}  // namespace

std::string resolve_device(const std::string& device) {
  if (device == "auto") return torch::cuda::is_available() ? "cuda" : "cpu";
  if (device == "cuda" && !torch::cuda::is_available())
    throw UserError("train.device is cuda but no CUDA device is available to this build");
  return device;
}

RunConfig load_run_config_from(const std::string& run_dir) {
  std::string path = run_dir + "/config.json";
  if (!file_exists(path)) throw UserError(run_dir + ": not a moelab run directory (no config.json)");
  json config = default_config_json();
  merge_config(config, parse_jsonc_file(path), path);
  return run_config_from_json(config, path);
}

json train(RunConfig config, const TrainOptions& options) {
  std::unique_ptr<TrainingRun> run = start_training_run(std::move(config), options);
  TrainingRun& r = *run;
  const TrainConfig& tc = r.config.train;
  TrainingState& state = r.state;
  TrainingStep training_step(r);
  if (r.device.is_cuda()) log::info(training_step.describe());
  json last_routing = json::object();
  EvalResult last_eval;
  bool evaluated = false;

  // A fine-tuning run scores its base first: the loss on the target that adapting starts from.
  if (r.finetuning() && state.step == 0) r.evaluate(0);
  r.model->train();
  const int64_t last_step = options.stop_after > 0 ? std::min(options.stop_after, tc.max_steps) : tc.max_steps;
  while (state.step < last_step) {
    const int64_t step = state.step + 1;  // 1-based: the step being taken
    const bool log_step = step % tc.log_interval == 0 || step == tc.max_steps;
    const bool checkpoint_step = (tc.checkpoint_interval > 0 && step % tc.checkpoint_interval == 0) || step == last_step;
    const Clock::time_point step_start = Clock::now();
    const double lr = learning_rate(step - 1, tc.lr, tc.warmup_steps, tc.max_steps);
    r.optimizer->set_learning_rate(lr);
    r.batches->draw();
    const StepOutputs out = training_step.run();
    // The CPU checks every step; a GPU, whose queue a read-back stalls, at log and checkpoint steps.
    if (!r.device.is_cuda() || log_step || checkpoint_step) training_step.check_finite(step, out);

    state.step = step;
    state.tokens_seen += r.tokens_per_step;
    if (r.device.is_cuda() && log_step) torch::cuda::synchronize();  // the interval's wall time includes its GPU work
    const double step_seconds = std::chrono::duration<double>(Clock::now() - step_start).count();
    state.train_seconds += step_seconds;
    state.interval_seconds += step_seconds;
    ++state.interval_steps;

    if (r.main_rank() && tc.trace_interval > 0 && step % tc.trace_interval == 0)
      append_training_routing(r.run_dir + "/traces/train_routing.jsonl", out.plans, r.model->moe_layer_ids(), step);
    if (log_step) {
      if (r.dist.distributed()) {
        check_replicas(r.replicated, *r.dist.world_group, "replicated parameters", step);
        if (r.dist.expert_data_group) check_replicas(r.expert_shards, *r.dist.expert_data_group, "expert shards", step);
        training_step.average_interval_loss_over_ranks();  // the logged loss is the ranks' mean; routing stays rank 0's
      }
      last_routing = log_training_step(r, step, lr, training_step.interval_loss_sum().item<double>(), out);
      training_step.interval_loss_sum().zero_();
      state.interval_seconds = 0;
      state.interval_steps = 0;
    }
    if ((tc.eval_interval > 0 && step % tc.eval_interval == 0) || step == tc.max_steps) {
      last_eval = r.evaluate(step);
      evaluated = true;
    }
    if (checkpoint_step) {  // every rank: the interval's loss is averaged over them first
      training_step.average_interval_loss_over_ranks();
      state.interval_loss_sum = training_step.interval_loss_sum().item<double>();
      r.save();
    }
  }
  training_step.finish();

  if (state.step < tc.max_steps) {
    log::info(strf("stopped after step %lld as asked; resume with --resume %s", (long long)state.step, r.run_dir.c_str()));
    finish_distributed(r.dist, r.device.is_cuda());
    return json{{"steps", state.step}, {"stopped_early", true}, {"rank", r.dist.rank}};
  }
  if (!evaluated) last_eval = r.evaluate(state.step);
  json summary = training_summary(r, last_eval, last_routing);
  if (r.main_rank()) write_file_atomic(r.run_dir + "/summary.json", summary.dump(2) + "\n");
  summary["rank"] = r.dist.rank;
  finish_distributed(r.dist, r.device.is_cuda());
  return summary;
}

}  // namespace moelab
