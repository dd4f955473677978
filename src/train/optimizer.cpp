#include "train/optimizer.h"

#include <cmath>
#include <sstream>
#include <string>
#include <type_traits>

#include <torch/torch.h>

#include "config/run_config.h"
#include "kernels/adamw.h"
#include "kernels/routing_kernels.h"

namespace moelab {
namespace {

std::vector<torch::optim::OptimizerParamGroup> decay_groups(const std::vector<torch::Tensor>& parameters,
                                                            const torch::optim::AdamWOptions& options) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& p : parameters) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(options));
  auto plain = options;
  plain.weight_decay(0.0);
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(plain));
  return groups;
}

// libtorch keys optimizer state by the parameter's TensorImpl: printed as a string in 1.x,
// the pointer itself in later versions.
template <typename StateMap>
typename StateMap::key_type state_key(const StateMap&, const torch::Tensor& p) {
  if constexpr (std::is_same_v<typename StateMap::key_type, std::string>) {
    std::ostringstream key;
    key << p.unsafeGetTensorImpl();
    return key.str();
  } else {
    return static_cast<typename StateMap::key_type>(p.unsafeGetTensorImpl());
  }
}

torch::optim::AdamWParamState& adamw_state(torch::optim::AdamW& adamw, const torch::Tensor& p) {
  return static_cast<torch::optim::AdamWParamState&>(*adamw.state()[state_key(adamw.state(), p)]);
}

torch::optim::AdamWOptions adamw_options(const TrainConfig& train) {
  return torch::optim::AdamWOptions(train.lr).betas({0.9, train.adam_beta2}).weight_decay(train.weight_decay);
}

}  // namespace

TrainingOptimizer::TrainingOptimizer(const std::vector<torch::Tensor>& parameters, const TrainConfig& train)
    : adamw_(decay_groups(parameters, adamw_options(train)), adamw_options(train)), beta2_(train.adam_beta2) {
  fused_ = fused_available() && !parameters.empty() && parameters.front().is_cuda();
  if (fused_) lr_ = torch::full({}, train.lr, parameters.front().options().dtype(torch::kFloat32));
}

bool TrainingOptimizer::fused_available() { return kernels::cuda_kernels_built(); }

void TrainingOptimizer::set_learning_rate(double lr) {
  for (auto& group : adamw_.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  if (fused_) lr_.fill_(lr);
}

void TrainingOptimizer::zero_grad() { adamw_.zero_grad(); }

// The fused path keeps its tensors in libtorch's state objects (created here on the first
// step, or taken from a loaded checkpoint), with one device copy of the step count: every
// parameter steps together.
void TrainingOptimizer::prepare_fused() {
  int64_t step = -1;
  for (auto& group : adamw_.param_groups()) {
    const double weight_decay = static_cast<torch::optim::AdamWOptions&>(group.options()).weight_decay();
    for (auto& p : group.params()) {
      auto& slot = adamw_.state()[state_key(adamw_.state(), p)];
      if (!slot) {
        auto fresh = std::make_unique<torch::optim::AdamWParamState>();
        fresh->step(0);
        fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
        fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
        slot = std::move(fresh);
      }
      auto& s = static_cast<torch::optim::AdamWParamState&>(*slot);
      TORCH_CHECK(step < 0 || s.step() == step, "fused AdamW: the parameters' step counts differ");
      step = s.step();
      fused_state_.params.push_back(p);
      fused_state_.exp_avgs.push_back(s.exp_avg());
      fused_state_.exp_avg_sqs.push_back(s.exp_avg_sq());
      fused_state_.weight_decays.push_back(weight_decay);
    }
  }
  step_ = torch::full({}, static_cast<double>(std::max<int64_t>(step, 0)), lr_.options());
}

void TrainingOptimizer::step(const torch::Tensor& grad_scale) {
  torch::NoGradGuard no_grad;
  if (!fused_) {
    const double scale = grad_scale.defined() ? grad_scale.item<double>() : 1.0;
    if (!std::isfinite(scale)) return;
    if (scale != 1.0)
      for (auto& group : adamw_.param_groups())
        for (auto& p : group.params())
          if (p.grad().defined()) p.grad().mul_(scale);
    adamw_.step();
    return;
  }
  if (fused_state_.params.empty()) prepare_fused();  // the fused path has parameters, so this runs once
  fused_state_.grads.clear();
  for (const auto& p : fused_state_.params) {
    TORCH_CHECK(p.grad().defined(), "fused AdamW: a parameter has no gradient");
    fused_state_.grads.push_back(p.grad());
  }
  // The step count advances only when the update is applied (a finite scale).
  if (grad_scale.defined()) step_.add_(torch::isfinite(grad_scale).to(step_.scalar_type()));
  else step_.add_(1.0);
  kernels::adamw_step(fused_state_, lr_, step_, grad_scale, beta1_, beta2_, eps_);
}

torch::optim::AdamW& TrainingOptimizer::state() {
  if (step_.defined()) {
    const auto step = static_cast<int64_t>(step_.item<float>());
    for (const auto& p : fused_state_.params) adamw_state(adamw_, p).step(step);
  }
  return adamw_;
}

}  // namespace moelab
