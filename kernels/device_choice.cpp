// The one place that chooses, per op, between the CUDA kernel (kernels/<op>.cu, through the
// autograd wrappers of kernels/cuda_ops.cpp) and the reference (kernels/<op>_ref.cpp): CUDA
// tensors within the kernel's limits (kernels/kernel_limits.h and the *_supported checks) go
// to the kernel, everything else to the reference.
#include <torch/torch.h>

#include <ATen/autocast_mode.h>

#include "kernels/adamw.h"
#include "kernels/column_sum.h"
#include "kernels/grouped_mm_available.h"
#include "kernels/kernel_limits.h"
#include "kernels/layer_norm.h"
#include "kernels/linear.h"
#include "kernels/routing_kernels.h"
#ifdef MOELAB_CUDA
#include "kernels/cuda_ops.h"
#endif

namespace moelab::kernels {

namespace {
bool cuda_enabled = true;
}

void set_cuda_kernels_enabled(bool enabled) { cuda_enabled = enabled; }

bool cuda_kernels_built() {
#ifdef MOELAB_CUDA
  return true;
#else
  return false;
#endif
}

TopKGate softmax_topk(const torch::Tensor& logits, int64_t k, double temperature, bool renormalize) {
#ifdef MOELAB_CUDA
  if (cuda_enabled && logits.is_cuda() && logits.size(-1) <= kMaxRowExperts && k <= kMaxGateK) return cuda::softmax_topk(logits, k, temperature, renormalize);
#endif
  return reference::softmax_topk(logits, k, temperature, renormalize);
}

torch::Tensor topk_ids(const torch::Tensor& values, int64_t k) {
#ifdef MOELAB_CUDA
  if (cuda_enabled && values.is_cuda() && values.dim() == 2 && values.size(1) <= kMaxRowExperts && k <= kMaxGateK &&
      (values.scalar_type() == torch::kFloat32 || values.scalar_type() == torch::kBFloat16))
    return cuda::topk_ids(values, k);
#endif
  return reference::topk_ids(values, k);
}

torch::Tensor column_topk_mask(const torch::Tensor& scores, int64_t take) {
#ifdef MOELAB_CUDA
  if (cuda_enabled && scores.is_cuda() && scores.dim() == 2) return cuda::column_topk_mask(scores, take);
#endif
  return reference::column_topk_mask(scores, take);
}

KeySort stable_sort_by_key(const torch::Tensor& keys, int64_t buckets) {
#ifdef MOELAB_CUDA
  if (cuda_enabled && keys.is_cuda() && keys.scalar_type() == torch::kLong && cuda::counting_sort_supported(keys.size(0), buckets))
    return cuda::stable_sort_by_key(keys, buckets);
#endif
  return reference::stable_sort_by_key(keys, buckets);
}

CapacitySlots capacity_slots(const torch::Tensor& expert_ids, const torch::Tensor& selected, const torch::Tensor& order,
                             int64_t num_experts, int64_t capacity) {
#ifdef MOELAB_CUDA
  if (cuda_enabled && expert_ids.is_cuda() && !order.defined() && expert_ids.scalar_type() == torch::kLong &&
      selected.scalar_type() == torch::kBool && cuda::counting_sort_supported(expert_ids.size(0), num_experts + 1))
    return cuda::capacity_slots(expert_ids, selected, num_experts, capacity);
#endif
  return reference::capacity_slots(expert_ids, selected, order, num_experts, capacity);
}

PackedRows packed_rows(const torch::Tensor& expert_ids, const torch::Tensor& slot, const torch::Tensor& kept_counts, int64_t rows,
                       int64_t columns) {
#ifdef MOELAB_CUDA
  if (cuda_enabled && slot.is_cuda() && kept_counts.size(0) <= 1024)
    return cuda::packed_rows(expert_ids, slot, kept_counts, rows, columns);
#endif
  return reference::packed_rows(expert_ids, slot, kept_counts, rows, columns);
}

torch::Tensor kept_gates(const torch::Tensor& gates, const torch::Tensor& selected, const torch::Tensor& kept, bool renormalize) {
#ifdef MOELAB_CUDA
  if (cuda_enabled && gates.is_cuda() && gates.scalar_type() == torch::kFloat32 && gates.dim() == 2 &&
      selected.scalar_type() == torch::kBool && kept.scalar_type() == torch::kBool && cuda::kept_gates_supported(gates.size(1)))
    return cuda::kept_gates(gates, selected, kept, renormalize);
#endif
  return reference::kept_gates(gates, selected, kept, renormalize);
}

torch::Tensor load_balancing_loss(const torch::Tensor& logits, const torch::Tensor& expert_ids,
                                  const torch::Tensor& selected, int64_t experts) {
#ifdef MOELAB_CUDA
  if (cuda_enabled && logits.is_cuda() && logits.scalar_type() == torch::kFloat32 && logits.dim() == 2 &&
      logits.size(0) > 0 && logits.size(1) == experts && cuda::balancing_loss_supported(experts))
    return cuda::load_balancing_loss(logits, expert_ids, selected);
#endif
  return reference::load_balancing_loss(logits, expert_ids, selected, experts);
}

torch::Tensor permute(const torch::Tensor& x, const torch::Tensor& token_index, const torch::Tensor& row_of_entry) {
#ifdef MOELAB_CUDA
  if (cuda_enabled && x.is_cuda()) return cuda::permute(x, token_index, row_of_entry);
#endif
  (void)row_of_entry;
  return reference::permute(x, token_index);
}

torch::Tensor unpermute(const torch::Tensor& y, const torch::Tensor& row_of_entry, const torch::Tensor& gates) {
#ifdef MOELAB_CUDA
  if (cuda_enabled && y.is_cuda()) return cuda::unpermute(y, row_of_entry, gates);
#endif
  return reference::unpermute(y, row_of_entry, gates);
}

torch::Tensor expert_bias_activation(const torch::Tensor& h, const torch::Tensor& bias, const torch::Tensor& offsets,
                                     ExpertActivation activation) {
#ifdef MOELAB_CUDA
  const int64_t cols_out = activation == kSwiGLU ? h.size(1) / 2 : h.size(1);
  if (cuda_enabled && h.is_cuda() && h.scalar_type() == torch::kBFloat16 && cols_out % 8 == 0)
    return cuda::expert_bias_activation(h, bias, offsets, activation);
#endif
  return reference::expert_bias_activation(h, bias, offsets, activation);
}

bool fused_expert_ffn_available(const torch::Tensor& x, const torch::Tensor& w1) {
#ifdef MOELAB_CUDA
  return cuda_enabled && cuda::expert_ffn_gelu_supported(x, w1);
#else
  (void)x, (void)w1;
  return false;
#endif
}

torch::Tensor fused_expert_ffn(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& b1, const torch::Tensor& w2,
                               const torch::Tensor& b2, const torch::Tensor& offsets) {
  TORCH_CHECK(fused_expert_ffn_available(x, w1), "fused_expert_ffn: no fused kernel serves these tensors");
#ifdef MOELAB_CUDA
  return cuda::expert_ffn_gelu(x, w1, b1, w2, b2, offsets);
#else
  (void)b1, (void)w2, (void)b2, (void)offsets;
  return torch::Tensor();
#endif
}

torch::Tensor expert_ffn(const torch::Tensor& x, const torch::Tensor& expert_rows, const torch::Tensor& w1,
                         const torch::Tensor& b1, const torch::Tensor& w2, const torch::Tensor& b2,
                         ExpertActivation activation) {
#ifdef MOELAB_GROUPED_MM
  if (x.is_cuda() && (x.scalar_type() == torch::kBFloat16 || at::autocast::is_autocast_enabled(at::kCUDA))) {
    // at::_grouped_mm leaves rows past the last offset unwritten, its gradients ignore them,
    // and so does the fused bias and activation after each GEMM.
    const auto bf16 = torch::kBFloat16;
    torch::Tensor offsets = expert_rows.cumsum(0).to(torch::kInt32);
    if (activation == kGelu && fused_expert_ffn_available(x, w1))
      return fused_expert_ffn(x.to(bf16), bf16_operand(w1), b1, bf16_operand(w2), b2, offsets);
    torch::Tensor h = at::_grouped_mm(x.to(bf16), bf16_operand(w1), offsets);
    h = expert_bias_activation(h, b1, offsets, activation);
    return expert_bias_activation(at::_grouped_mm(h, bf16_operand(w2), offsets), b2, offsets, kNoActivation);
  }
#endif
  return reference::expert_ffn(x, expert_rows, w1, b1, w2, b2, activation);
}

#ifdef MOELAB_CUDA
namespace {
bool storable(torch::ScalarType t) { return t == torch::kFloat32 || t == torch::kBFloat16; }
}  // namespace
#endif

torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& gamma, const torch::Tensor& beta, double eps,
                         torch::ScalarType out_dtype) {
#ifdef MOELAB_CUDA
  if (cuda_enabled && x.is_cuda() && storable(x.scalar_type()) && storable(out_dtype) && cuda::layer_norm_supported(x.size(-1)))
    return cuda::layer_norm(x, gamma, beta, eps, out_dtype);
#endif
  return reference::layer_norm(x, gamma, beta, eps, out_dtype);
}

ResidualNorm add_layer_norm(const torch::Tensor& residual, const torch::Tensor& branch, const torch::Tensor& gamma,
                            const torch::Tensor& beta, double eps, torch::ScalarType out_dtype) {
#ifdef MOELAB_CUDA
  if (cuda_enabled && residual.is_cuda() && residual.sizes() == branch.sizes() && storable(residual.scalar_type()) &&
      storable(branch.scalar_type()) && storable(out_dtype) && cuda::layer_norm_supported(residual.size(-1)))
    return cuda::add_layer_norm(residual, branch, gamma, beta, eps, out_dtype);
#endif
  return reference::add_layer_norm(residual, branch, gamma, beta, eps, out_dtype);
}

torch::Tensor column_sum(const torch::Tensor& x) {
#ifdef MOELAB_CUDA
  if (cuda_enabled && x.is_cuda() && x.dim() == 2 && storable(x.scalar_type()) && x.size(1) % 8 == 0) {
    torch::Tensor out = torch::empty({x.size(1)}, x.options().dtype(torch::kFloat32));
    cuda::launch_column_sum(x.contiguous(), out);
    return out;
  }
#endif
  return reference::column_sum(x);
}

torch::Tensor sinkhorn(const torch::Tensor& logits, int64_t iters, double temperature) {
#ifdef MOELAB_CUDA
  if (cuda_enabled && logits.is_cuda() && logits.size(-1) <= kMaxRowExperts) return cuda::sinkhorn(logits, iters, temperature);
#endif
  return reference::sinkhorn(logits, iters, temperature);
}

void adamw_step(const AdamWState& state, const torch::Tensor& lr, const torch::Tensor& step, const torch::Tensor& grad_scale,
                double beta1, double beta2, double eps) {
#ifdef MOELAB_CUDA
  if (cuda_enabled && !state.params.empty() && state.params.front().is_cuda() && cuda::adamw_supported(state))
    return cuda::adamw_step(state, lr, step, grad_scale, beta1, beta2, eps);
#endif
  reference::adamw_step(state, lr, step, grad_scale, beta1, beta2, eps);
}

}  // namespace moelab::kernels
