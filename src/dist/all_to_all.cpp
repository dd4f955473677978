#include "dist/all_to_all.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/torch.h>

namespace moelab {
namespace {

struct AllToAllBackward : torch::autograd::Node {
  std::shared_ptr<Communicator> group;
  std::vector<int64_t> send_rows, recv_rows;  // of the forward exchange

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    torch::Tensor grad = grads[0];
    // Every rank must take part even when this output's gradient is undefined (unused).
    if (!grad.defined()) {
      int64_t rows = 0;
      for (int64_t n : recv_rows) rows += n;
      grad = torch::zeros({rows, row_width}, options);
    }
    return {group->all_to_all(grad.contiguous(), recv_rows, send_rows)};
  }
  int64_t row_width = 0;
  torch::TensorOptions options;
};

}  // namespace

torch::Tensor differentiable_all_to_all(const std::shared_ptr<Communicator>& group, const torch::Tensor& input,
                                        const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows) {
  TORCH_CHECK(input.dim() == 2, "differentiable_all_to_all: expected rows [n, d]");
  torch::Tensor output = group->all_to_all(input.detach(), send_rows, recv_rows);
  if (torch::autograd::compute_requires_grad(input)) {
    auto node = std::shared_ptr<AllToAllBackward>(new AllToAllBackward(), torch::autograd::deleteNode);
    node->group = group;
    node->send_rows = send_rows;
    node->recv_rows = recv_rows;
    node->row_width = input.size(1);
    node->options = input.options();
    node->set_next_edges(torch::autograd::collect_next_edges(input));
    torch::autograd::set_history(output, node);
  }
  return output;
}

}  // namespace moelab
