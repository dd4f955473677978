#include "train/training_step.h"

#include <cmath>

#include <torch/torch.h>

#include "train/autocast.h"
#include "util/error.h"
#include "util/log.h"
#include "util/strings.h"

namespace moelab {
namespace {

// Eager steps before the capture: they run libtorch's lazy set-ups (cuBLAS handles and
// workspaces, the autograd device thread) that a capture must not contain.
constexpr int64_t kStepsBeforeCapture = 3;
// train.profile_steps profiles from this step of the run's process on: past the capture.
constexpr int64_t kFirstProfiledStep = kStepsBeforeCapture + 3;

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
GradientNorm gradient_norm(const TrainingRun& run, double max_norm) {
  torch::Tensor squared = squared_norm(gradients(run.replicated));
  if (!run.expert_shards.empty()) {
    torch::Tensor shard_squared = squared_norm(gradients(run.expert_shards)).to(squared.device());
    run.dist.expert_group->all_reduce_sum(shard_squared);
    squared = squared + shard_squared;
  }
  GradientNorm out;
  out.norm = squared.sqrt().squeeze(0);
  torch::Tensor scale = max_norm > 0 ? (max_norm / (out.norm + 1e-6)).clamp_max(1.0) : torch::ones_like(out.norm);
  out.clip_scale = torch::where(torch::isfinite(out.norm), scale, torch::full_like(scale, std::nan("")));
  return out;
}

}  // namespace

TrainingStep::TrainingStep(TrainingRun& run) : run_(run), last_checked_step_(run.state.step) {
  const TrainConfig& tc = run.config.train;
  // Distributed on CUDA the collectives are NCCL's, which a capture records like any kernel
  // (the bucketed all-reduces launched from backward's hooks included; the hooks' host logic
  // runs once, at the capture, and fixes the launch order). What cannot be captured is a read
  // back to the host: an fp32 MoE step reads expert sizes, and expert parallelism's counted
  // exchange (dropless) reads its row counts.
  use_graph_ = tc.cuda_graph && tc.cuda_kernels && run.device.is_cuda() && CudaGraph::available() && run.optimizer->fused() &&
               run.model->host_sync_free(run.bf16);
  if (use_graph_) side_stream_ = std::make_unique<CudaSideStream>(run.device.index() < 0 ? 0 : run.device.index());
  profile_ = tc.profile_steps > 0 && run.device.is_cuda() && StepProfiler::available();
  if (tc.profile_steps > 0 && !profile_)
    log::warn("train.profile_steps: the step profiler needs a CUDA device and a CUDA build of libtorch 2.x; not profiling");
  const auto on_device = torch::TensorOptions().device(run.device);
  interval_loss_sum_ = torch::full({}, run.state.interval_loss_sum, on_device.dtype(torch::kFloat32));
  skipped_updates_ = torch::zeros({}, on_device.dtype(torch::kInt32));
}

TrainingStep::~TrainingStep() = default;

std::string TrainingStep::describe() const {
  if (use_graph_) return "training step: captured as a CUDA graph after " + std::to_string(kStepsBeforeCapture) + " eager steps";
  const TrainConfig& tc = run_.config.train;
  return "training step: eager (no CUDA graph: " +
         std::string(!tc.cuda_graph                                        ? "train.cuda_graph is false"
                     : !tc.cuda_kernels                                    ? "train.cuda_kernels is false; the libtorch "
                                                                             "references are not checked for capture"
                     : !CudaGraph::available() || !run_.optimizer->fused() ? "not in this libtorch"
                     : !run_.bf16                                          ? "fp32 experts read their sizes back to the host"
                                  : "expert parallelism without a capacity (dropless, or expert choice) reads its "
                                    "exchange's row counts back to the host") +
         ")";
}

// Everything a step does on the device, so that it can be captured whole.
StepOutputs TrainingStep::step_on_device() {
  TrainingRun& r = run_;
  StepOutputs o;
  r.batches->gather();
  torch::Tensor loss;
  {
    CudaAutocast autocast(r.bf16);
    ModelOutput out = r.model->forward(r.batches->inputs());
    o.lm_loss = torch::nn::functional::cross_entropy(out.logits.reshape({-1, out.logits.size(-1)}).to(torch::kFloat32),
                                                     r.batches->targets().reshape(-1));
    o.aux_loss = out.aux_loss.detach();
    loss = o.lm_loss + out.aux_loss;
  }
  r.optimizer->zero_grad();
  if (r.gradient_sync) r.gradient_sync->begin_backward();
  loss.backward();
  if (r.gradient_sync) r.gradient_sync->finish();
  GradientNorm norm = gradient_norm(r, r.config.train.grad_clip);
  o.grad_norm = norm.norm;
  r.optimizer->step(norm.clip_scale);
  skipped_updates_.add_(torch::isnan(norm.clip_scale).to(torch::kInt32));
  if (r.dist.world_group && r.config.router.bias_rate > 0)
    for (const auto& layer : r.model->moe_layers()) r.dist.world_group->all_reduce_sum(layer->router().pending_load());
  r.model->update_expert_biases();
  interval_loss_sum_.add_(o.lm_loss.detach());
  for (const auto& layer : r.model->moe_layers()) o.plans.push_back(layer->last_plan());
  for (const auto& adapter : r.model->routed_adapters()) o.adapter_plans.push_back(adapter->last_plan());
  return o;
}

StepOutputs TrainingStep::run() {
  ++steps_in_process_;
  if (profile_ && steps_in_process_ == kFirstProfiledStep) {
    torch::cuda::synchronize();
    profiler_.start();
    profiling_ = true;
  }
  StepOutputs out;
  if (graph_) {
    graph_->replay();
    out = captured_;
  } else if (use_graph_ && steps_in_process_ > kStepsBeforeCapture) {
    run_.optimizer->zero_grad();  // the captured backward allocates the gradients in the graph's memory
    graph_ = std::make_unique<CudaGraph>();
    graph_->capture([&] { captured_ = step_on_device(); });
    graph_->replay();
    out = captured_;
  } else {
    out = step_on_device();
  }
  if (profiling_ && steps_in_process_ == kFirstProfiledStep + run_.config.train.profile_steps - 1) finish_profile();
  return out;
}

void TrainingStep::check_finite(int64_t step, const StepOutputs& out) {
  const double total = (interval_loss_sum_ + out.aux_loss).item<double>();
  const int64_t skipped = skipped_updates_.item<int64_t>();
  if (!std::isfinite(total))
    throw UserError(strf("step %lld: the training loss is %s; stopped, no update from it applied. %s", (long long)step,
                         std::isnan(total) ? "NaN" : "not finite", run_.last_good_checkpoint().c_str()));
  if (skipped > 0) {
    const std::string when = last_checked_step_ + 1 == step
                                 ? strf("step %lld: the gradient was not finite", (long long)step)
                                 : strf("steps %lld-%lld: the gradient was not finite in %lld of them",
                                        (long long)last_checked_step_ + 1, (long long)step, (long long)skipped);
    throw UserError(when + " (no update applied from it); stopped. " + run_.last_good_checkpoint());
  }
  last_checked_step_ = step;
}

void TrainingStep::average_interval_loss_over_ranks() {
  if (!run_.dist.distributed()) return;
  torch::Tensor summed = interval_loss_sum_.reshape({1}).clone();
  run_.dist.world_group->all_reduce_sum(summed);
  interval_loss_sum_.copy_(summed.squeeze(0) / static_cast<double>(run_.dist.world));
}

void TrainingStep::finish_profile() {
  profiling_ = false;
  torch::cuda::synchronize();
  const int64_t profiled = std::min(run_.config.train.profile_steps, steps_in_process_ - kFirstProfiledStep + 1);
  const std::string table = profiler_.stop(run_.run_dir, profiled);
  if (run_.main_rank())
    log::info("profile of " + std::to_string(profiled) + " steps (" + run_.run_dir + "/profile.json):\n" + table);
}

void TrainingStep::finish() {
  if (profiling_) finish_profile();
}

}  // namespace moelab
