#pragma once
// Gate networks: x [T, d] -> logits [T, E]. Every Linear has a bias (a linear gate at d 256,
// E 8 has 2056 parameters), so that the router-parameter counts compare with the research
// scripts' gates.
#include <memory>
#include <string>

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

namespace moelab {

class GateNetwork : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
};

// linear: W ~ N(0, d^-1/2), bias 0.
class LinearGate : public GateNetwork {
 public:
  LinearGate(int64_t dim, int64_t experts);
  torch::Tensor forward(const torch::Tensor& x) override;

 private:
  torch::nn::Linear proj_{nullptr};
};

// mlp: Linear(d, max(64, d/2)) -> GELU -> Linear(., E).
class MlpGate : public GateNetwork {
 public:
  MlpGate(int64_t dim, int64_t experts);
  torch::Tensor forward(const torch::Tensor& x) override;

 private:
  torch::nn::Linear hidden_{nullptr}, out_{nullptr};
};

// mlp_hadamard: out(MLP(x) * x), MLP = Linear(d, d) -> GELU -> Linear(d, d), out = Linear(d, E).
class MlpHadamardGate : public GateNetwork {
 public:
  MlpHadamardGate(int64_t dim, int64_t experts);
  torch::Tensor forward(const torch::Tensor& x) override;

 private:
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr}, out_{nullptr};
};

std::shared_ptr<GateNetwork> make_gate_network(const std::string& name, int64_t dim, int64_t experts);
void validate_gate_name(const std::string& name);  // UserError listing the known names

}  // namespace moelab
