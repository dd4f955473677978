#include "train/training_run.h"

#include <thread>

#include <torch/torch.h>

#include "kernels/device.h"
#include "models/adapters.h"
#include "routers/strategy.h"
#include "train/autocast.h"
#include "train/run.h"
#include "util/error.h"
#include "util/files.h"
#include "util/log.h"
#include "util/strings.h"

namespace moelab {
namespace {

// Expert parallelism: RUN/checkpoints/latest.pt still holds the whole model, for eval,
// generate and traces in one process: the first expert group gathers each sharded tensor to
// its rank 0, which writes it with the step (no optimizer state: training resumes from the
// shard files). Every rank of the first expert group must call this.
void save_gathered_model(const TrainingRun& run) {
  const bool writer = run.dist.is_main();
  std::unique_ptr<TinyMoE> whole;
  if (writer) {
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    const torch::Tensor rng = generator.get_state();  // building a model draws initial weights
    whole = std::make_unique<TinyMoE>(run.config.model, run.config.router);
    generator.set_state(rng);
  }
  torch::NoGradGuard no_grad;
  torch::OrderedDict<std::string, torch::Tensor> whole_parameters;
  if (writer) whole_parameters = whole->named_parameters();
  for (const auto& item : run.model->named_parameters()) {
    torch::Tensor value = item.value().detach();
    bool sharded = false;
    for (const auto& s : run.expert_shards) sharded = sharded || s.is_same(item.value());
    if (sharded) {
      std::vector<int64_t> shape = value.sizes().vec();
      shape[0] *= run.dist.expert_group->size();
      value = run.dist.expert_group->all_gather(value).reshape(shape);
    }
    if (writer) whole_parameters[item.key()].copy_(value);
  }
  if (!writer) return;
  auto whole_buffers = whole->named_buffers();
  for (const auto& item : run.model->named_buffers()) whole_buffers[item.key()].copy_(item.value());
  torch::optim::AdamW no_state(whole->parameters());
  save_checkpoint(run.checkpoint, *whole, no_state, run.state);
}

// Where the run writes, after the checks that need no other rank: nobody writes before all pass.
void resolve_paths(TrainingRun& run, bool resuming) {
  const int ep = run.dist.expert_parallel;
  // Expert shards are written by the first expert group's ranks, each its own file.
  run.rank_checkpoint = ep > 1 ? expert_shard_checkpoint_path(run.run_dir, run.dist.rank % ep, ep) : run.checkpoint;
  run.writes_checkpoint = ep > 1 ? run.dist.rank < ep : run.main_rank();
  if (resuming && !file_exists(run.rank_checkpoint))
    throw UserError(run.rank_checkpoint + ": no checkpoint to resume from" +
                    (ep > 1 ? strf(" (resume an expert-parallel run with the same parallel.expert_parallel = %d)", ep)
                            : " (the run stopped before its first checkpoint: start it again with --config " + run.run_dir +
                                  "/config.json --out " + run.run_dir + ")"));
}

// Rank 0 prepares the data; the others then find it prepared. A fine-tuning run encodes its
// target corpus with its base's tokenizer.
void prepare_run_data(TrainingRun& run, bool resuming) {
  const std::string tokenizer_run = run.finetuning() ? *run.config.finetune.base : "";
  if (run.main_rank()) {
    ensure_directory(run.run_dir + "/checkpoints");
    // Temporary files of writes that a crash interrupted.
    const int stale = remove_stale_temp_files(run.run_dir + "/checkpoints") + remove_stale_temp_files(run.run_dir + "/data");
    if (stale > 0) log::info(strf("%s: removed %d temporary file(s) left by an interrupted run", run.run_dir.c_str(), stale));
    run.data = std::make_unique<PreparedData>(prepare_data(run.config.data, run.config.seed, run.run_dir, resuming, tokenizer_run));
  }
  if (run.dist.world_group) run.dist.world_group->barrier();
  if (!run.main_rank())
    run.data = std::make_unique<PreparedData>(prepare_data(run.config.data, run.config.seed, run.run_dir, resuming, tokenizer_run));
  run.config.model.vocab_size = run.data->tokenizer->vocab_size();
  if (!resuming && run.main_rank())
    write_file_atomic(run.run_dir + "/config.json", run_config_to_json(run.config).dump(2) + "\n");
  run.train_tokens = std::make_unique<TokenFile>(run.data->train_tokens);
  run.valid_tokens = std::make_unique<TokenFile>(run.data->valid_tokens);
  // What evaluation needs, checked before the first step rather than after training.
  const DataConfig& dc = run.config.data;
  if (run.valid_tokens->size() < run.config.model.seq_len + 1)
    throw UserError(strf("%s: the validation split has %lld tokens, fewer than one window of model.seq_len + 1 = %lld "
                         "(a longer data.valid, or a larger data.val_fraction)",
                         (dc.valid ? *dc.valid : dc.train + " (its last data.val_fraction)").c_str(),
                         (long long)run.valid_tokens->size(), (long long)run.config.model.seq_len + 1));
  run.chars_per_token = static_cast<double>(run.data->valid_chars) / static_cast<double>(run.data->valid_token_count);
  if (run.finetuning()) {
    const std::string& base = *run.config.finetune.base;
    const std::string info_path = base + "/data/info.json", tokens_path = base + "/data/valid.bin";
    const nlohmann::json info = nlohmann::json::parse(read_text_file(info_path), nullptr, /*allow_exceptions=*/false);
    if (!info.is_object() || !info.contains("valid_chars") || !info.contains("valid_tokens") || !file_exists(tokens_path))
      throw UserError(info_path + ": the base run's prepared data is missing or damaged (its validation split measures forgetting)");
    run.base_valid_tokens = std::make_unique<TokenFile>(tokens_path);
    run.base_chars_per_token = info["valid_chars"].get<double>() / info["valid_tokens"].get<double>();
  }
}

// finetune.base: the base run's model, router and tokenizer settings replace the config's
// (they are the base's by definition); checked before anything is written.
void adopt_base_run(RunConfig& config) {
  const std::string& base = *config.finetune.base;
  if (config.parallel.expert_parallel > 1)
    throw UserError("config: 'parallel.expert_parallel' must be 1 when fine-tuning (finetune.base set): adapters are not sharded");
  if (!file_exists(base + "/config.json"))
    throw UserError("config: 'finetune.base' = " + base + " is not a moelab run directory (no config.json)");
  const RunConfig base_config = load_run_config_from(base);
  if (base_config.finetune.base)
    throw UserError(base + ": a fine-tuning run itself; finetune.base must name a run trained from scratch");
  if (!file_exists(checkpoint_path(base))) throw UserError(base + ": no checkpoint to fine-tune (" + checkpoint_path(base) + ")");
  const std::string& method = config.finetune.method;
  if (base_config.model.dense && (method == "perft_r" || method == "perft_e" || method == "shared"))
    throw UserError("config: 'finetune.method' " + method + " adapts MoE layers, and " + base + " is a dense model (use lora or full)");
  config.model = base_config.model;
  config.router = base_config.router;
  config.data.tokenizer = base_config.data.tokenizer;
  config.data.bpe_vocab_size = base_config.data.bpe_vocab_size;
  if (config.finetune.method == "perft_r") validate_router_config(adapter_router_config(config.finetune), "finetune");
}

// A resumed fine-tuning run's step-0 scores, from the eval row its metrics.jsonl kept (a
// checkpoint does not hold them).
void restore_initial_eval(TrainingRun& run) {
  for (const std::string& line : split(read_text_file(run.run_dir + "/metrics.jsonl"), '\n')) {
    const nlohmann::json row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!row.is_object() || row.value("kind", "") != "eval" || row.value("step", -1) != 0) continue;
    run.initial_eval.loss = row.value("val_loss", 0.0);
    run.initial_eval.tokens = row.value("eval_tokens", int64_t{0});
    run.initial_base_domain_eval.loss = row.value("base_val_loss", 0.0);
  }
}

// The model on its device (this rank's experts only under expert parallelism), its optimizer
// and the batches; from the checkpoint when resuming.
void build_model(TrainingRun& run, bool resuming) {
  const TrainConfig& tc = run.config.train;
  torch::manual_seed(static_cast<uint64_t>(run.config.seed));
  run.model = std::make_unique<TinyMoE>(run.config.model, run.config.router);
  if (run.finetuning()) {
    // The base's weights, then the adapters (drawn from the seeded generator) beside them.
    run.state.base_checksum = adapt_base_model(*run.model, run.config.finetune);
    if (run.model->base_frozen()) run.checkpoint_selection = is_adapter_tensor;
  }
  run.model->to(run.device);
  if (run.dist.expert_parallel > 1) run.model->shard_experts(run.dist.expert_group);
  // A frozen base's parameters are neither updated nor synchronised.
  run.replicated = run.finetuning() ? run.model->trainable_parameters() : run.model->replicated_parameters();
  run.expert_shards = run.model->expert_shard_parameters();
  run.optimizer = std::make_unique<TrainingOptimizer>(run.model->trainable_parameters(), tc);
  // Every rank draws the same global batch of batch_size x world windows and trains on its
  // own rows of it: the step equals one process training on the whole global batch.
  const int64_t global_batch = tc.batch_size * run.dist.world;
  run.tokens_per_step = global_batch * run.config.model.seq_len;
  run.sampler = std::make_unique<BatchSampler>(*run.train_tokens, global_batch, run.config.model.seq_len,
                                               static_cast<uint64_t>(run.config.seed) + 1);
  run.state.world_size = run.dist.world;
  if (resuming) {
    const std::string base_checksum = run.state.base_checksum;
    run.state = load_checkpoint(run.rank_checkpoint, *run.model, &run.optimizer->state(), run.device, run.checkpoint_selection);
    if (run.state.base_checksum != base_checksum)
      throw UserError(run.rank_checkpoint + ": adapts another base checkpoint than " + checkpoint_path(*run.config.finetune.base) +
                      " holds now (the base run was changed or retrained); start the fine-tuning again");
    if (run.state.world_size != run.dist.world)
      throw UserError(strf("%s: written by a run of %lld ranks; resume it with %lld ranks, not %d", run.rank_checkpoint.c_str(),
                           (long long)run.state.world_size, (long long)run.state.world_size, run.dist.world));
    if (run.state.step >= tc.max_steps)
      throw UserError(strf("%s: finished at step %lld = train.max_steps; nothing to resume", run.run_dir.c_str(),
                           (long long)run.state.step));
    run.sampler->restore(run.state.sampler_state);
    log::info(strf("resuming %s at step %lld", run.run_dir.c_str(), (long long)run.state.step));
  }
  run.batches = std::make_unique<TrainBatches>(*run.train_tokens, *run.sampler, global_batch, run.config.model.seq_len,
                                               run.dist.rank * tc.batch_size, tc.batch_size, run.device);
  if (run.dist.distributed())
    run.gradient_sync = std::make_unique<GradientSynchronizer>(run.replicated, run.dist.world_group, run.expert_shards,
                                                               run.dist.expert_data_group, run.dist.world,
                                                               run.config.parallel.bucket_mb);
}

}  // namespace

std::unique_ptr<TrainingRun> start_training_run(RunConfig config, const TrainOptions& options) {
  auto run = std::make_unique<TrainingRun>();
  const bool resuming = !options.resume_dir.empty();
  if (resuming) config = load_run_config_from(options.resume_dir);
  run->config = std::move(config);
  run->run_dir = resuming ? options.resume_dir : run->config.out;
  if (run->finetuning()) adopt_base_run(run->config);
  validate_router_config(run->config.router, "config");
  run->checkpoint = checkpoint_path(run->run_dir);
  if (!resuming && file_exists(run->checkpoint))
    throw UserError(run->run_dir + ": already holds a run; pass --resume " + run->run_dir + " or choose another --out");
  // An attempt that stopped before its first checkpoint left metrics and no checkpoint: it
  // has nothing to resume, so it starts again (its rows are dropped).
  const bool restarting = !resuming && file_exists(run->run_dir + "/metrics.jsonl");

  const TrainConfig& tc = run->config.train;
  torch::set_num_threads(tc.threads > 0 ? static_cast<int>(tc.threads)
                                        : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  const LaunchEnvironment launch = read_launch_environment();
  run->device = torch::Device(resolve_device(tc.device));
  if (run->device.is_cuda() && launch.world > 1)
    run->device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(launch.local_rank));
  if (tc.dtype == "bf16" && !run->device.is_cuda()) throw UserError("train.dtype bf16 needs a CUDA device (CPU training is fp32)");
  run->bf16 = run->device.is_cuda() && tc.dtype != "fp32";
  kernels::set_cuda_kernels_enabled(tc.cuda_kernels);
  // The checks above ran on every rank before the rendezvous.
  run->dist = init_distributed(launch, run->config.parallel, run->device.is_cuda());
  if (!run->main_rank()) log::set_quiet(true);
  if (run->dist.distributed())
    log::info(strf("distributed (%s): %d ranks, expert parallel %d, %s", launch.launcher.c_str(), run->dist.world,
                   run->dist.expert_parallel, run->device.is_cuda() ? "NCCL" : "Gloo"));
  resolve_paths(*run, resuming);
  prepare_run_data(*run, resuming);
  build_model(*run, resuming);

  if (restarting) log::info(run->run_dir + " held no checkpoint (an attempt that stopped before its first one): starting again");
  if (run->main_rank())
    run->metrics = std::make_unique<MetricsLog>(run->run_dir + "/metrics.jsonl", resuming || restarting ? run->state.step : -1);
  if (resuming && run->finetuning() && run->main_rank()) restore_initial_eval(*run);
  run->flops_per_token = run->model->flops_per_token();
  if (run->finetuning())
    log::info(strf("fine-tuning %s with %s: %s of %s parameters train (%.3f%%)", run->config.finetune.base->c_str(),
                   run->config.finetune.method.c_str(), human_count(run->model->trainable_parameter_count()).c_str(),
                   human_count(run->model->parameter_count()).c_str(),
                   100.0 * run->model->trainable_parameter_count() / run->model->parameter_count()));
  log::info(strf("model: %s parameters, %s active per token, %s FLOPs per token; %s on %s",
                 human_count(run->model->parameter_count()).c_str(), human_count(run->model->active_parameter_count()).c_str(),
                 human_count(run->flops_per_token).c_str(), run->config.router.strategy.c_str(),
                 run->device.str().c_str()));
  return run;
}

std::string TrainingRun::last_good_checkpoint() const {
  return file_exists(rank_checkpoint) ? "The last good checkpoint is " + rank_checkpoint
                                      : "No checkpoint was written yet; start again with --out " + run_dir;
}

void TrainingRun::save() {
  state.sampler_state = sampler->state();
  if (writes_checkpoint) save_checkpoint(rank_checkpoint, *model, optimizer->state(), state, checkpoint_selection);
  if (dist.expert_parallel > 1 && dist.rank < dist.expert_parallel) save_gathered_model(*this);
}

EvalResult TrainingRun::evaluate(int64_t step) {
  const TrainConfig& tc = config.train;
  EvalResult result;
  {
    CudaAutocast autocast(bf16);
    result = moelab::evaluate(*model, *valid_tokens, config.model.seq_len, tc.batch_size, tc.eval_windows,
                              chars_per_token, device, dist);
  }
  nlohmann::json row = {{"kind", "eval"},
                        {"step", step},
                        {"val_loss", result.loss},
                        {"val_ppl", result.ppl},
                        {"bits_per_token", result.bits_per_token},
                        {"bits_per_char", result.bits_per_char},
                        {"eval_tokens", result.tokens}};
  std::string base_line;
  if (base_valid_tokens) {
    CudaAutocast autocast(bf16);
    base_domain_eval = moelab::evaluate(*model, *base_valid_tokens, config.model.seq_len, tc.batch_size, tc.eval_windows,
                                        base_chars_per_token, device, dist);
    row["base_val_loss"] = base_domain_eval.loss;
    row["base_val_ppl"] = base_domain_eval.ppl;
    base_line = strf(" | base domain: val loss %.4f", base_domain_eval.loss);
  }
  if (step == 0) {
    initial_eval = result;
    initial_base_domain_eval = base_domain_eval;
  }
  if (metrics) metrics->write(row);
  log::info(strf("step %lld | val loss %.4f | ppl %.3f | %.3f bits/char%s", (long long)step, result.loss, result.ppl,
                 result.bits_per_char, base_line.c_str()));
  return result;
}

}  // namespace moelab
