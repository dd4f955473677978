#include "kernels/permute.h"

#include <torch/torch.h>

#include "kernels/device.h"

namespace moelab::kernels {

PackedRows packed_rows(const torch::Tensor& expert_ids, const torch::Tensor& slot, const torch::Tensor& kept_counts, int64_t rows,
                       int64_t columns) {
#ifdef MOELAB_CUDA
  if (cuda_kernels_enabled() && slot.is_cuda() && kept_counts.size(0) <= 1024)
    return cuda::packed_rows(expert_ids, slot, kept_counts, rows, columns);
#endif
  return reference::packed_rows(expert_ids, slot, kept_counts, rows, columns);
}

torch::Tensor permute(const torch::Tensor& x, const torch::Tensor& token_index, const torch::Tensor& row_of_entry) {
#ifdef MOELAB_CUDA
  if (cuda_kernels_enabled() && x.is_cuda()) return cuda::permute(x, token_index, row_of_entry);
#endif
  return reference::permute(x, token_index, row_of_entry);
}

torch::Tensor unpermute(const torch::Tensor& y, const torch::Tensor& row_of_entry, const torch::Tensor& gates) {
#ifdef MOELAB_CUDA
  if (cuda_kernels_enabled() && y.is_cuda()) return cuda::unpermute(y, row_of_entry, gates);
#endif
  return reference::unpermute(y, row_of_entry, gates);
}

#ifdef MOELAB_CUDA
namespace cuda {
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

torch::Tensor combine_forward(const torch::Tensor& y, const torch::Tensor& rows, const torch::Tensor& gates) {
  torch::Tensor out = torch::empty({rows.size(0), y.size(1)}, y.options());
  launch_combine(y.contiguous(), rows.contiguous(), gates.to(torch::kFloat32).contiguous(), out);
  return out;
}

struct Unpermute : public torch::autograd::Function<Unpermute> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& y, const torch::Tensor& rows, const torch::Tensor& gates) {
    ctx->save_for_backward({y, rows, gates});
    return combine_forward(y, rows, gates);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    torch::Tensor y = saved[0].contiguous(), rows = saved[1].contiguous(), gates = saved[2];
    torch::Tensor grad_out = grads[0].to(y.scalar_type());
    // A gradient broadcast over the tokens (a sum's, say) is read as its one row instead of
    // being materialised.
    const bool broadcast = grad_out.stride(0) == 0;
    grad_out = broadcast ? grad_out[0].contiguous() : grad_out.contiguous();
    torch::Tensor grad_y = torch::empty_like(y), grad_gates = torch::empty(rows.sizes(), y.options().dtype(torch::kFloat32));
    launch_combine_backward(y, rows, gates.to(torch::kFloat32).contiguous(), grad_out, broadcast ? 0 : y.size(1), grad_y, grad_gates);
    return {grad_y, torch::Tensor(), grad_gates.to(gates.scalar_type())};
  }
};

struct Permute : public torch::autograd::Function<Permute> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& index, const torch::Tensor& rows) {
    torch::Tensor input = x.contiguous();
    torch::Tensor out = torch::empty({index.size(0), input.size(1)}, input.options());
    launch_gather_rows(input, index.contiguous(), out);
    ctx->save_for_backward({rows});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    torch::Tensor rows = ctx->get_saved_variables()[0];
    torch::Tensor ones = torch::ones(rows.sizes(), rows.options().dtype(torch::kFloat32));
    return {combine_forward(grads[0].contiguous(), rows, ones), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor permute(const torch::Tensor& x, const torch::Tensor& token_index, const torch::Tensor& row_of_entry) {
  return Permute::apply(x, token_index, row_of_entry);
}

torch::Tensor unpermute(const torch::Tensor& y, const torch::Tensor& row_of_entry, const torch::Tensor& gates) {
  return Unpermute::apply(y, row_of_entry, gates);
}

}  // namespace cuda
#endif

}  // namespace moelab::kernels
