#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <fstream>
#include <thread>

#include <torch/torch.h>

#include "data/batch_sampler.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "dist/communicator.h"
#include "dist/gradient_sync.h"
#include "models/tiny_moe.h"
#include "routers/routing_metrics.h"
#include "routers/strategy.h"
#include "train/autocast.h"
#include "train/checkpoint.h"
#include "train/cuda_graph.h"
#include "train/evaluate.h"
#include "train/lr_schedule.h"
#include "train/metrics_log.h"
#include "train/optimizer.h"
#include "train/step_profiler.h"
#include "train/train_batches.h"
#include "trace/placement_jsonl.h"
#include "trace/recorder.h"
#include "util/error.h"
#include "util/files.h"
#include "util/log.h"
#include "util/strings.h"

namespace moelab {
namespace {
using Clock = std::chrono::steady_clock;
using nlohmann::json;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::vector<torch::Tensor> gradients(const std::vector<torch::Tensor>& parameters) {
  std::vector<torch::Tensor> grads;
  for (const auto& p : parameters)
    if (p.grad().defined()) grads.push_back(p.grad().detach());
  return grads;
}

// Multi-tensor kernels where libtorch has them (2.x): a few launches instead of one per tensor.
torch::Tensor squared_norm(const std::vector<torch::Tensor>& grads) {
  if (grads.empty()) return torch::zeros({1});
#if TORCH_VERSION_MAJOR >= 2
  std::vector<torch::Tensor> norms = torch::_foreach_norm(grads, 2);
#else
  std::vector<torch::Tensor> norms;
  for (const auto& g : grads) norms.push_back(g.norm(2));
#endif
  return torch::stack(norms).to(torch::kFloat32).square().sum().reshape({1});
}

// The global gradient norm and clipping's scale, min(1, max_norm / norm) (1 when max_norm
// <= 0), both on the device: nothing is read back to the host (libtorch's clip_grad_norm_
// returns a double), and the optimizer applies the scale as it reads the gradients. A
// non-finite norm makes the scale NaN, which the optimizer takes as "skip this step". With
// expert parallelism the norm adds up the shards of the whole expert group.
struct GradientNorm {
  torch::Tensor norm, clip_scale;
};
GradientNorm gradient_norm(const std::vector<torch::Tensor>& replicated, const std::vector<torch::Tensor>& shards,
                           const DistributedContext& dist, double max_norm) {
  torch::Tensor squared = squared_norm(gradients(replicated));
  if (!shards.empty()) {
    torch::Tensor shard_squared = squared_norm(gradients(shards)).to(squared.device());
    dist.expert_group->all_reduce_sum(shard_squared);
    squared = squared + shard_squared;
  }
  GradientNorm out;
  out.norm = squared.sqrt().squeeze(0);
  torch::Tensor scale = max_norm > 0 ? (max_norm / (out.norm + 1e-6)).clamp_max(1.0) : torch::ones_like(out.norm);
  out.clip_scale = torch::where(torch::isfinite(out.norm), scale, torch::full_like(scale, std::nan("")));
  return out;
}

// Data parallelism must keep the replicas identical: a per-tensor checksum gathered from every
// rank of `group` and compared bit for bit. Cheap enough for every log step.
void check_replicas(const std::vector<torch::Tensor>& parameters, Communicator& group, const char* what, int64_t step) {
  if (parameters.empty()) return;
  std::vector<torch::Tensor> sums;
  for (const auto& p : parameters) sums.push_back(p.detach().to(torch::kFloat64).sum());
  torch::Tensor all = group.all_gather(torch::stack(sums)).cpu();
  for (int64_t r = 1; r < all.size(0); ++r)
    if (!torch::equal(all[r], all[0]))
      throw DistributedError(strf("step %lld: the %s differ between ranks (rank %d of the %s group holds other values than "
                                  "its rank 0); data-parallel replicas diverged",
                                  (long long)step, what, (int)r, what));
}

// Expert parallelism: RUN/checkpoints/latest.pt still holds the whole model, for eval,
// generate and traces in one process: the first expert group gathers each sharded tensor to
// its rank 0, which writes it with the step (no optimizer state: training resumes from the
// shard files). Every rank of the first expert group must call this.
void save_gathered_model(const std::string& path, TinyMoE& model, const std::vector<torch::Tensor>& shards,
                         const RunConfig& config, const DistributedContext& dist, const TrainingState& state) {
  const bool writer = dist.is_main();
  std::unique_ptr<TinyMoE> whole;
  if (writer) {
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    const torch::Tensor rng = generator.get_state();  // building a model draws initial weights
    whole = std::make_unique<TinyMoE>(config.model, config.router);
    generator.set_state(rng);
  }
  torch::NoGradGuard no_grad;
  torch::OrderedDict<std::string, torch::Tensor> whole_parameters;
  if (writer) whole_parameters = whole->named_parameters();
  for (const auto& item : model.named_parameters()) {
    torch::Tensor value = item.value().detach();
    bool sharded = false;
    for (const auto& s : shards) sharded = sharded || s.is_same(item.value());
    if (sharded) {
      std::vector<int64_t> shape = value.sizes().vec();
      shape[0] *= dist.expert_group->size();
      value = dist.expert_group->all_gather(value).reshape(shape);
    }
    if (writer) whole_parameters[item.key()].copy_(value);
  }
  if (!writer) return;
  auto whole_buffers = whole->named_buffers();
  for (const auto& item : model.named_buffers()) whole_buffers[item.key()].copy_(item.value());
  torch::optim::AdamW no_state(whole->parameters());
  save_checkpoint(path, *whole, no_state, state);
}

// What one training step leaves on the device, read only at log steps. With a captured
// CUDA graph these are the graph's own tensors, rewritten by every replay.
struct StepOutputs {
  torch::Tensor lm_loss, aux_loss, grad_norm;
  std::vector<RoutingPlan> plans;  // each MoE layer's routing of the step's batch
};

// Eager steps before the capture: they run libtorch's lazy set-ups (cuBLAS handles and
// workspaces, the autograd device thread) that a capture must not contain.
constexpr int64_t kStepsBeforeCapture = 3;
// train.profile_steps profiles from this step of the run's process on: past the capture.
constexpr int64_t kFirstProfiledStep = kStepsBeforeCapture + 3;
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
  const bool resuming = !options.resume_dir.empty();
  if (resuming) config = load_run_config_from(options.resume_dir);
  const std::string run_dir = resuming ? options.resume_dir : config.out;
  validate_router_config(config.router, "config");
  const std::string ckpt = checkpoint_path(run_dir);
  if (!resuming && file_exists(ckpt))
    throw UserError(run_dir + ": already holds a run; pass --resume " + run_dir + " or choose another --out");
  // An attempt that stopped before its first checkpoint left metrics and no checkpoint: it
  // has nothing to resume, so it starts again (its rows are dropped).
  const bool restarting = !resuming && file_exists(run_dir + "/metrics.jsonl");

  const TrainConfig& tc = config.train;
  torch::set_num_threads(tc.threads > 0 ? static_cast<int>(tc.threads)
                                        : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  const LaunchEnvironment launch = read_launch_environment();
  torch::Device device(resolve_device(tc.device));
  if (device.is_cuda() && launch.world > 1) device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(launch.local_rank));
  // The checks above ran on every rank before the rendezvous: nobody writes before all pass.
  const DistributedContext dist = init_distributed(launch, config.parallel, device.is_cuda());
  const int ep = dist.expert_parallel;
  const bool main_rank = dist.is_main();
  if (!main_rank) log::set_quiet(true);
  if (dist.distributed())
    log::info(strf("distributed (%s): %d ranks, expert parallel %d, %s", launch.launcher.c_str(), dist.world, ep,
                   device.is_cuda() ? "NCCL" : "Gloo"));
  // Expert shards are written by the first expert group's ranks, each its own file.
  const std::string rank_ckpt = ep > 1 ? expert_shard_checkpoint_path(run_dir, dist.rank % ep, ep) : ckpt;
  const bool writes_checkpoint = ep > 1 ? dist.rank < ep : main_rank;
  if (resuming && !file_exists(rank_ckpt))
    throw UserError(rank_ckpt + ": no checkpoint to resume from" +
                    (ep > 1 ? strf(" (resume an expert-parallel run with the same parallel.expert_parallel = %d)", ep)
                            : " (the run stopped before its first checkpoint: start it again with --config " + run_dir +
                                  "/config.json --out " + run_dir + ")"));
  if (tc.dtype == "bf16" && !device.is_cuda()) throw UserError("train.dtype bf16 needs a CUDA device (CPU training is fp32)");
  const bool bf16 = device.is_cuda() && tc.dtype != "fp32";  // SPEC: bf16 autocast on GPU, fp32 on CPU
  // Rank 0 prepares the data; the others then find it prepared.
  if (main_rank) {
    ensure_directory(run_dir + "/checkpoints");
    // Temporary files of writes that a crash interrupted.
    const int stale = remove_stale_temp_files(run_dir + "/checkpoints") + remove_stale_temp_files(run_dir + "/data");
    if (stale > 0) log::info(strf("%s: removed %d temporary file(s) left by an interrupted run", run_dir.c_str(), stale));
  }
  std::unique_ptr<PreparedData> prepared;
  if (main_rank) prepared = std::make_unique<PreparedData>(prepare_data(config.data, config.seed, run_dir));
  if (dist.world_group) dist.world_group->barrier();
  if (!main_rank) prepared = std::make_unique<PreparedData>(prepare_data(config.data, config.seed, run_dir));
  PreparedData& data = *prepared;
  config.model.vocab_size = data.tokenizer->vocab_size();
  if (!resuming && main_rank) write_file_atomic(run_dir + "/config.json", run_config_to_json(config).dump(2) + "\n");
  TokenFile train_tokens(data.train_tokens), valid_tokens(data.valid_tokens);
  // What evaluation needs, checked before the first step rather than after training.
  if (valid_tokens.size() < config.model.seq_len + 1)
    throw UserError(strf("%s: the validation split has %lld tokens, fewer than one window of model.seq_len + 1 = %lld "
                         "(a longer data.valid, or a larger data.val_fraction)",
                         (config.data.valid ? *config.data.valid : config.data.train + " (its last data.val_fraction)").c_str(),
                         (long long)valid_tokens.size(), (long long)config.model.seq_len + 1));
  const double chars_per_token = static_cast<double>(data.valid_chars) / static_cast<double>(data.valid_token_count);

  torch::manual_seed(static_cast<uint64_t>(config.seed));
  TinyMoE model(config.model, config.router);
  model.to(device);
  if (ep > 1) model.shard_experts(dist.expert_group);
  // Sharded experts (expert parallelism) and everything else, which every rank holds alike.
  const std::vector<torch::Tensor> replicated = model.replicated_parameters(), expert_shards = model.expert_shard_parameters();
  TrainingOptimizer optimizer(model.parameters(), tc);
  // Every rank draws the same global batch of batch_size x world windows and trains on its
  // own rows of it: the step equals one process training on the whole global batch.
  const int64_t global_batch = tc.batch_size * dist.world;
  BatchSampler sampler(train_tokens, global_batch, config.model.seq_len, static_cast<uint64_t>(config.seed) + 1);

  TrainingState state;
  state.world_size = dist.world;
  if (resuming) {
    state = load_checkpoint(rank_ckpt, model, &optimizer.state(), device);
    if (state.world_size != dist.world)
      throw UserError(strf("%s: written by a run of %lld ranks; resume it with %lld ranks, not %d", rank_ckpt.c_str(),
                           (long long)state.world_size, (long long)state.world_size, dist.world));
    if (state.step >= tc.max_steps)
      throw UserError(strf("%s: finished at step %lld = train.max_steps; nothing to resume", run_dir.c_str(), (long long)state.step));
    sampler.restore(state.sampler_state);
    log::info(strf("resuming %s at step %lld", run_dir.c_str(), (long long)state.step));
  }
  std::unique_ptr<GradientSynchronizer> gradient_sync;
  if (dist.distributed())
    gradient_sync = std::make_unique<GradientSynchronizer>(replicated, dist.world_group, expert_shards, dist.expert_data_group,
                                                           dist.world, config.parallel.bucket_mb);
  std::unique_ptr<MetricsLog> metrics;
  if (restarting) log::info(run_dir + " held no checkpoint (an attempt that stopped before its first one): starting again");
  if (main_rank) metrics = std::make_unique<MetricsLog>(run_dir + "/metrics.jsonl", resuming || restarting ? state.step : -1);
  const double flops_per_token = model.flops_per_token();
  log::info(strf("model: %s parameters, %s active per token, %s FLOPs per token; %s on %s",
                 human_count(model.parameter_count()).c_str(), human_count(model.active_parameter_count()).c_str(),
                 human_count(flops_per_token).c_str(), config.router.strategy.c_str(), device.str().c_str()));

  const int64_t tokens_per_step = global_batch * config.model.seq_len;
  TrainBatches batches(train_tokens, sampler, global_batch, config.model.seq_len, dist.rank * tc.batch_size, tc.batch_size,
                       device);
  // One CUDA device: the step is captured as a CUDA graph after a few eager steps and replayed
  // (the data-parallel paths keep eager steps: their collectives run from autograd hooks; an
  // fp32 MoE step reads expert sizes back to the host, which a capture cannot contain).
  const bool use_graph = tc.cuda_graph && device.is_cuda() && !dist.distributed() && CudaGraph::available() &&
                         optimizer.fused() && model.host_sync_free(bf16);
  if (device.is_cuda())
    log::info(use_graph ? "training step: captured as a CUDA graph after " + std::to_string(kStepsBeforeCapture) + " eager steps"
                        : "training step: eager (no CUDA graph: " +
                              std::string(!tc.cuda_graph ? "train.cuda_graph is false"
                                          : dist.distributed() ? "distributed"
                                          : !CudaGraph::available() || !optimizer.fused() ? "not in this libtorch"
                                          : "fp32 experts read their sizes back to the host") + ")");
  std::unique_ptr<CudaSideStream> side_stream;
  if (use_graph) side_stream = std::make_unique<CudaSideStream>(device.index() < 0 ? 0 : device.index());
  std::unique_ptr<CudaGraph> graph;
  StepOutputs captured;
  int64_t steps_in_process = 0;
  StepProfiler profiler;
  bool profiling = false;
  const bool profile = tc.profile_steps > 0 && device.is_cuda() && StepProfiler::available();
  if (tc.profile_steps > 0 && !profile)
    log::warn("train.profile_steps: the step profiler needs a CUDA device and a CUDA build of libtorch 2.x; not profiling");
  auto finish_profile = [&] {
    profiling = false;
    torch::cuda::synchronize();
    const int64_t profiled = std::min(tc.profile_steps, steps_in_process - kFirstProfiledStep + 1);
    const std::string table = profiler.stop(run_dir, profiled);
    if (main_rank) log::info("profile of " + std::to_string(profiled) + " steps (" + run_dir + "/profile.json):\n" + table);
  };
  json last_routing = json::object();
  EvalResult last_eval;
  bool evaluated = false;
  // The log interval's LM losses add up on the device: a read-back each step would stall a
  // GPU's queue.
  torch::Tensor interval_loss_sum =
      torch::full({}, state.interval_loss_sum, torch::TensorOptions().device(device).dtype(torch::kFloat32));
  // Steps whose gradient was not finite, counted on the device: the optimizer skipped them.
  torch::Tensor skipped_updates = torch::zeros({}, torch::TensorOptions().device(device).dtype(torch::kInt32));
  int64_t last_checked_step = state.step;
  double interval_seconds = state.interval_seconds;
  int64_t interval_steps = state.interval_steps;

  // Forward, backward, clipping, the optimizer and the expert-bias update: everything a
  // step does on the device, so that it can be captured whole.
  auto training_step = [&] {
    StepOutputs o;
    batches.gather();
    torch::Tensor loss;
    {
      CudaAutocast autocast(bf16);
      ModelOutput out = model.forward(batches.inputs());
      o.lm_loss = torch::nn::functional::cross_entropy(out.logits.reshape({-1, out.logits.size(-1)}).to(torch::kFloat32),
                                                       batches.targets().reshape(-1));
      o.aux_loss = out.aux_loss.detach();
      loss = o.lm_loss + out.aux_loss;
    }
    optimizer.zero_grad();
    if (gradient_sync) gradient_sync->begin_backward();
    loss.backward();
    if (gradient_sync) gradient_sync->finish();
    GradientNorm norm = gradient_norm(replicated, expert_shards, dist, tc.grad_clip);
    o.grad_norm = norm.norm;
    optimizer.step(norm.clip_scale);
    skipped_updates.add_(torch::isnan(norm.clip_scale).to(torch::kInt32));
    if (dist.world_group && config.router.bias_rate > 0)
      for (const auto& layer : model.moe_layers()) dist.world_group->all_reduce_sum(layer->router().pending_load());
    model.update_expert_biases();
    interval_loss_sum.add_(o.lm_loss.detach());
    for (const auto& layer : model.moe_layers()) o.plans.push_back(layer->last_plan());
    return o;
  };

  auto save = [&] {  // on every rank: the interval's loss is averaged over them first
    state.sampler_state = sampler.state();
    if (dist.distributed()) {
      torch::Tensor summed = interval_loss_sum.reshape({1}).clone();
      dist.world_group->all_reduce_sum(summed);
      interval_loss_sum.copy_(summed.squeeze(0) / static_cast<double>(dist.world));
    }
    state.interval_loss_sum = interval_loss_sum.item<double>();
    state.interval_seconds = interval_seconds;
    state.interval_steps = interval_steps;
    if (writes_checkpoint) save_checkpoint(rank_ckpt, model, optimizer.state(), state);
    if (ep > 1 && dist.rank < ep) save_gathered_model(ckpt, model, expert_shards, config, dist, state);
  };
  auto run_eval = [&](int64_t step) {
    CudaAutocast autocast(bf16);
    last_eval = evaluate(model, valid_tokens, config.model.seq_len, tc.batch_size, tc.eval_windows, chars_per_token, device, dist);
    evaluated = true;
    if (metrics) metrics->write({{"kind", "eval"}, {"step", step}, {"val_loss", last_eval.loss}, {"val_ppl", last_eval.ppl},
                   {"bits_per_token", last_eval.bits_per_token}, {"bits_per_char", last_eval.bits_per_char},
                   {"eval_tokens", last_eval.tokens}});
    log::info(strf("step %lld | val loss %.4f | ppl %.3f | %.3f bits/char", (long long)step, last_eval.loss,
                   last_eval.ppl, last_eval.bits_per_char));
  };

  model.train();
  const int64_t last_step = options.stop_after > 0 ? std::min(options.stop_after, tc.max_steps) : tc.max_steps;
  while (state.step < last_step) {
    const int64_t step = state.step + 1;  // 1-based: the step being taken
    const bool log_step = step % tc.log_interval == 0 || step == tc.max_steps;
    Clock::time_point step_start = Clock::now();
    const double lr = learning_rate(step - 1, tc.lr, tc.warmup_steps, tc.max_steps);
    optimizer.set_learning_rate(lr);
    ++steps_in_process;
    if (profile && steps_in_process == kFirstProfiledStep) {
      torch::cuda::synchronize();
      profiler.start();
      profiling = true;
    }
    batches.draw();
    StepOutputs out;
    if (graph) {
      graph->replay();
      out = captured;
    } else if (use_graph && steps_in_process > kStepsBeforeCapture) {
      optimizer.zero_grad();  // the captured backward allocates the gradients in the graph's memory
      graph = std::make_unique<CudaGraph>();
      graph->capture([&] { captured = training_step(); });
      graph->replay();
      out = captured;
    } else {
      out = training_step();
    }

    if (profiling && steps_in_process == kFirstProfiledStep + tc.profile_steps - 1) finish_profile();

    // The CPU checks the loss every step, a GPU at log steps and before every checkpoint.
    const bool checkpoint_step = (tc.checkpoint_interval > 0 && step % tc.checkpoint_interval == 0) || step == last_step;
    if (!device.is_cuda() || log_step || checkpoint_step) {
      const double total = (interval_loss_sum + out.aux_loss).item<double>();
      const int64_t skipped = skipped_updates.item<int64_t>();
      auto last_good = [&] {
        return file_exists(rank_ckpt) ? "The last good checkpoint is " + rank_ckpt
                                      : "No checkpoint was written yet; start again with --out " + run_dir;
      };
      if (!std::isfinite(total))
        throw UserError(strf("step %lld: the training loss is %s; stopped, no update from it applied. %s", (long long)step,
                             std::isnan(total) ? "NaN" : "not finite", last_good().c_str()));
      if (skipped > 0) {
        const std::string when = last_checked_step + 1 == step
                                     ? strf("step %lld: the gradient was not finite", (long long)step)
                                     : strf("steps %lld-%lld: the gradient was not finite in %lld of them",
                                            (long long)last_checked_step + 1, (long long)step, (long long)skipped);
        throw UserError(when + " (no update applied from it); stopped. " + last_good());
      }
      last_checked_step = step;
    }
    state.step = step;
    state.tokens_seen += tokens_per_step;
    if (device.is_cuda() && log_step) torch::cuda::synchronize();  // the interval's wall time includes its GPU work
    const double step_seconds = seconds_since(step_start);
    state.train_seconds += step_seconds;
    interval_seconds += step_seconds;
    ++interval_steps;
    if (main_rank && tc.trace_interval > 0 && step % tc.trace_interval == 0) {
      // The routing this step's batch took, for the run's own analysis (moelab place, coact).
      ensure_directory(run_dir + "/traces");
      std::ofstream trace(run_dir + "/traces/train_routing.jsonl", std::ios::app);
      const auto layers = model.moe_layers();
      const auto ids = model.moe_layer_ids();
      for (size_t l = 0; l < layers.size(); ++l) {
        TraceRecord record = plan_to_record(out.plans[l], ids[l], out.plans[l].top_k);
        record.batch_id = step;
        write_placement_jsonl(trace, record);
      }
    }
    if (log_step && dist.distributed()) {
      check_replicas(replicated, *dist.world_group, "replicated parameters", step);
      if (dist.expert_data_group) check_replicas(expert_shards, *dist.expert_data_group, "expert shards", step);
      // The logged loss is the mean over the ranks' batches; routing metrics stay rank 0's.
      torch::Tensor summed = interval_loss_sum.reshape({1}).clone();
      dist.world_group->all_reduce_sum(summed);
      interval_loss_sum.copy_(summed.squeeze(0) / static_cast<double>(dist.world));
    }
    if (log_step) {
      // Routing metrics of this step's plans: read back only at log steps.
      std::vector<RoutingMetrics> layers;
      for (const RoutingPlan& plan : out.plans) layers.push_back(compute_routing_metrics(plan));
      json routing = json::object();
      if (!layers.empty()) {
        routing = average_metrics(layers).to_json();
        routing["layers"] = json::array();
        for (const RoutingMetrics& m : layers) routing["layers"].push_back(m.to_json());
      }
      last_routing = routing;
      const double tokens_per_s = static_cast<double>(interval_steps * tokens_per_step) / interval_seconds;
      const double interval_loss = interval_loss_sum.item<double>();
      json row = {{"kind", "train"},       {"step", step},
                  {"lr", lr},              {"loss", interval_loss / static_cast<double>(interval_steps)},
                  {"step_loss", out.lm_loss.item<double>()}, {"aux_loss", out.aux_loss.item<double>()},
                  {"grad_norm", out.grad_norm.item<double>()}, {"tokens_per_s", tokens_per_s},
                  {"step_ms", 1000.0 * interval_seconds / static_cast<double>(interval_steps)},
                  {"tflops", tokens_per_s * flops_per_token / 1e12}, {"routing", routing}};
      if (tc.peak_tflops > 0) row["mfu"] = tokens_per_s * flops_per_token / (tc.peak_tflops * 1e12);
      if (metrics) metrics->write(row);
      std::string route_line = layers.empty() ? "" : strf(" | drop %.3f cv %.3f ent %.2f", routing["drop_rate"].get<double>(),
                                                          routing["load_cv"].get<double>(), routing["gate_entropy"].get<double>());
      const double eta = (tc.max_steps - step) * state.train_seconds / static_cast<double>(step);
      log::info(strf("step %lld/%lld | loss %.4f | lr %.2e | %s tok/s%s | eta %s", (long long)step, (long long)tc.max_steps,
                     interval_loss / static_cast<double>(interval_steps), lr, human_count(tokens_per_s).c_str(),
                     route_line.c_str(), human_duration(eta).c_str()));
      interval_loss_sum.zero_();
      interval_seconds = 0;
      interval_steps = 0;
    }
    if ((tc.eval_interval > 0 && step % tc.eval_interval == 0) || step == tc.max_steps) run_eval(step);
    if (checkpoint_step) save();
  }

  if (profiling) finish_profile();
  if (state.step < tc.max_steps) {
    log::info(strf("stopped after step %lld as asked; resume with --resume %s", (long long)state.step, run_dir.c_str()));
    finish_distributed(dist, device.is_cuda());
    return json{{"steps", state.step}, {"stopped_early", true}, {"rank", dist.rank}};
  }
  if (!evaluated) run_eval(state.step);
  json summary = {{"steps", state.step},
                  {"final_val_loss", last_eval.loss},
                  {"final_ppl", last_eval.ppl},
                  {"bits_per_token", last_eval.bits_per_token},
                  {"bits_per_char", last_eval.bits_per_char},
                  {"tokens_per_s", static_cast<double>(state.tokens_seen) / state.train_seconds},
                  {"train_seconds", state.train_seconds},
                  {"tokens_seen", state.tokens_seen},
                  {"unigram_entropy", data.unigram_entropy},
                  {"parameters", model.parameter_count()},
                  {"active_parameters", model.active_parameter_count()},
                  {"flops_per_token", flops_per_token},
                  {"strategy", config.model.dense ? std::string("dense") : config.router.strategy},
                  {"gate", config.router.gate},
                  {"capacity_factor", config.router.capacity_factor},
                  {"num_experts", config.router.num_experts},
                  {"top_k", config.router.top_k},
                  {"router_parameters", model.moe_layers().empty() ? 0 : model.moe_layers()[0]->router().gate_parameter_count()},
                  {"device", device.str()},
                  {"dtype", bf16 ? "bf16" : "fp32"},
                  {"routing", last_routing}};
  if (tc.peak_tflops > 0)
    summary["mfu"] = summary["tokens_per_s"].get<double>() * flops_per_token / (tc.peak_tflops * 1e12);
  summary["world_size"] = dist.world;
  summary["expert_parallel"] = ep;
  if (main_rank) write_file_atomic(run_dir + "/summary.json", summary.dump(2) + "\n");
  summary["rank"] = dist.rank;
  finish_distributed(dist, device.is_cuda());
  return summary;
}

}  // namespace moelab
