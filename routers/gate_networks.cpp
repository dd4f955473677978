#include "routers/gate_networks.h"

#include <cmath>

#include <torch/torch.h>

#include "kernels/linear.h"
#include "util/error.h"

namespace moelab {
namespace {
// Through kernels::linear: under bf16 autocast its backward writes fp32 gradients directly.
torch::Tensor linear_layer(const torch::nn::Linear& layer, const torch::Tensor& x) {
  return kernels::linear(x, layer->weight, layer->bias);
}
}  // namespace

LinearGate::LinearGate(int64_t dim, int64_t experts) {
  proj_ = register_module("proj", torch::nn::Linear(dim, experts));
  torch::NoGradGuard no_grad;
  proj_->weight.normal_(0.0, 1.0 / std::sqrt(static_cast<double>(dim)));
  proj_->bias.zero_();
}
torch::Tensor LinearGate::forward(const torch::Tensor& x) { return linear_layer(proj_, x); }

MlpGate::MlpGate(int64_t dim, int64_t experts) {
  int64_t hidden = std::max<int64_t>(64, dim / 2);
  hidden_ = register_module("hidden", torch::nn::Linear(dim, hidden));
  out_ = register_module("out", torch::nn::Linear(hidden, experts));
}
torch::Tensor MlpGate::forward(const torch::Tensor& x) { return linear_layer(out_, torch::gelu(linear_layer(hidden_, x))); }

MlpHadamardGate::MlpHadamardGate(int64_t dim, int64_t experts) {
  fc1_ = register_module("fc1", torch::nn::Linear(dim, dim));
  fc2_ = register_module("fc2", torch::nn::Linear(dim, dim));
  out_ = register_module("out", torch::nn::Linear(dim, experts));
}
torch::Tensor MlpHadamardGate::forward(const torch::Tensor& x) { return linear_layer(out_, linear_layer(fc2_, torch::gelu(linear_layer(fc1_, x))) * x); }

void validate_gate_name(const std::string& name) {
  if (name != "linear" && name != "mlp" && name != "mlp_hadamard")
    throw UserError("router.gate must be one of linear|mlp|mlp_hadamard, got '" + name + "'");
}

std::shared_ptr<GateNetwork> make_gate_network(const std::string& name, int64_t dim, int64_t experts) {
  validate_gate_name(name);
  if (name == "mlp") return std::make_shared<MlpGate>(dim, experts);
  if (name == "mlp_hadamard") return std::make_shared<MlpHadamardGate>(dim, experts);
  return std::make_shared<LinearGate>(dim, experts);
}

}  // namespace moelab
