#include "train/optimizer.h"

#include <sstream>
#include <string>
#include <type_traits>

#include <torch/torch.h>

#include "config/run_config.h"

namespace moelab {
namespace {

// at::_fused_adamw_ with a tensor learning rate: PyTorch 2.2+, CUDA.
#if defined(MOELAB_CUDA) && (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 2))
#define MOELAB_FUSED_ADAMW 1
#endif

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
  return torch::optim::AdamWOptions(train.lr).betas({0.9, 0.95}).weight_decay(train.weight_decay);
}

}  // namespace

TrainingOptimizer::TrainingOptimizer(const std::vector<torch::Tensor>& parameters, const TrainConfig& train)
    : adamw_(decay_groups(parameters, adamw_options(train)), adamw_options(train)) {
  fused_ = fused_available() && !parameters.empty() && parameters.front().is_cuda();
  if (fused_) lr_ = torch::full({}, train.lr, parameters.front().options().dtype(torch::kFloat32));
}

bool TrainingOptimizer::fused_available() {
#ifdef MOELAB_FUSED_ADAMW
  return true;
#else
  return false;
#endif
}

void TrainingOptimizer::set_learning_rate(double lr) {
  for (auto& group : adamw_.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  if (fused_) lr_.fill_(lr);
}

void TrainingOptimizer::zero_grad() { adamw_.zero_grad(); }

// The fused path keeps its tensors in libtorch's state objects (created here on the first
// step, or taken from a loaded checkpoint), with a device copy of each step count.
void TrainingOptimizer::prepare_fused() {
  for (auto& group : adamw_.param_groups()) {
    Group g;
    g.weight_decay = static_cast<torch::optim::AdamWOptions&>(group.options()).weight_decay();
    for (auto& p : group.params()) {
      auto& slot = adamw_.state()[state_key(adamw_.state(), p)];
      if (!slot) {
        auto fresh = std::make_unique<torch::optim::AdamWParamState>();
        fresh->step(0);
        fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        slot = std::move(fresh);
      }
      auto& s = static_cast<torch::optim::AdamWParamState&>(*slot);
      g.params.push_back(p);
      g.exp_avgs.push_back(s.exp_avg());
      g.exp_avg_sqs.push_back(s.exp_avg_sq());
      g.steps.push_back(torch::full({}, static_cast<double>(s.step()), p.options().dtype(torch::kFloat32)));
    }
    if (!g.params.empty()) groups_.push_back(std::move(g));
  }
}

void TrainingOptimizer::step() {
  if (!fused_) {
    adamw_.step();
    return;
  }
#ifdef MOELAB_FUSED_ADAMW
  if (groups_.empty()) prepare_fused();  // the fused path has parameters, so this runs once
  torch::NoGradGuard no_grad;
  for (auto& g : groups_) {
    std::vector<torch::Tensor> grads;
    grads.reserve(g.params.size());
    for (const auto& p : g.params) {
      TORCH_CHECK(p.grad().defined(), "fused AdamW: a parameter has no gradient");
      grads.push_back(p.grad());
    }
    torch::_foreach_add_(g.steps, 1.0);
    at::_fused_adamw_(g.params, grads, g.exp_avgs, g.exp_avg_sqs, /*max_exp_avg_sqs=*/{}, g.steps, lr_, beta1_, beta2_,
                      g.weight_decay, eps_, /*amsgrad=*/false, /*maximize=*/false);
  }
#endif
}

torch::optim::AdamW& TrainingOptimizer::state() {
  for (auto& g : groups_) {
    torch::Tensor steps = torch::stack(g.steps).cpu();
    for (size_t i = 0; i < g.params.size(); ++i)
      adamw_state(adamw_, g.params[i]).step(static_cast<int64_t>(steps[static_cast<int64_t>(i)].item<float>()));
  }
  return adamw_;
}

}  // namespace moelab
