#include "models/adapters.h"

#include <cmath>

#include <torch/torch.h>

#include "models/kernel_modules.h"

namespace moelab {

RouterConfig adapter_router_config(const FinetuneConfig& finetune) {
  RouterConfig router;
  router.strategy = finetune.strategy;
  router.gate = finetune.gate;
  router.num_experts = finetune.experts;
  router.top_k = finetune.top_k;
  router.capacity_factor = finetune.capacity_factor;
  router.lb_coef = finetune.lb_coef;
  router.z_coef = 0.0;
  router.bias_rate = 0.0;
  return router;
}

bool is_adapter_tensor(const std::string& name) {
  return name.rfind("adapter", 0) == 0 || name.find(".adapter") != std::string::npos;
}

LowRankUpdate::LowRankUpdate(int64_t in, int64_t out, int64_t rank, int64_t batch, bool layout_out_in)
    : layout_out_in_(layout_out_in) {
  std::vector<int64_t> a_shape = {in, rank}, b_shape = {rank, out};
  if (batch > 0) {
    a_shape.insert(a_shape.begin(), batch);
    b_shape.insert(b_shape.begin(), batch);
  }
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  a = register_parameter("a", torch::empty(a_shape).uniform_(-bound, bound));
  b = register_parameter("b", torch::zeros(b_shape));
}

torch::Tensor LowRankUpdate::merged(const torch::Tensor& weight) const {
  torch::Tensor delta = torch::matmul(a, b);  // [..., in, out]
  return weight + (layout_out_in_ ? delta.transpose(-2, -1) : delta);
}

LowRankFfn::LowRankFfn(int64_t dim, int64_t rank) {
  down_ = register_module("down", torch::nn::Linear(dim, rank));
  up_ = register_module("up", torch::nn::Linear(rank, dim));
  torch::NoGradGuard no_grad;
  up_->weight.zero_();
  up_->bias.zero_();
}

torch::Tensor LowRankFfn::forward(const torch::Tensor& x) { return apply_linear(up_, torch::gelu(apply_linear(down_, x))); }

}  // namespace moelab
