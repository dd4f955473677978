// Reference dispatch and combine. permute moves M*d elements (read + write); unpermute reads
// T*K*d and writes T*d, with T*K*d multiply-adds, summing each token's K rows in order, so
// it is deterministic. Autograd gives both backwards.
#include <torch/torch.h>

#include "kernels/permute.h"

namespace moelab::kernels::reference {

// Padding rows (no kept entry maps to them) copy token 0's row and give it no gradient: the
// grouped GEMM after them leaves their gradient unwritten, and whatever it holds must not
// reach token 0 (autograd's index_select backward would add it there).
torch::Tensor permute(const torch::Tensor& x, const torch::Tensor& token_index, const torch::Tensor& row_of_entry) {
  const int64_t rows = token_index.size(0);
  torch::Tensor target = torch::where(row_of_entry >= 0, row_of_entry, torch::full_like(row_of_entry, rows)).reshape(-1);
  torch::Tensor kept_row =
      torch::zeros({rows + 1}, token_index.options().dtype(torch::kBool)).scatter_(0, target, true).narrow(0, 0, rows);
  torch::Tensor packed = x.index_select(0, token_index);
  return torch::where(kept_row.unsqueeze(1), packed, packed.detach());
}

PackedRows packed_rows(const torch::Tensor& expert_ids, const torch::Tensor& slot, const torch::Tensor& kept_counts, int64_t rows,
                       int64_t columns) {
  torch::Tensor start = kept_counts.cumsum(0) - kept_counts;
  PackedRows out;
  out.row_of_entry = torch::where(slot >= 0, start.index_select(0, expert_ids) + slot, torch::full_like(slot, -1));
  // Entries not kept write into one extra row, cut off after.
  torch::Tensor target = torch::where(slot >= 0, out.row_of_entry, torch::full_like(slot, rows));
  torch::Tensor token = torch::arange(slot.size(0), slot.options()).div(columns, "floor");
  out.token_index = torch::zeros({rows + 1}, slot.options()).scatter_(0, target, token).narrow(0, 0, rows);
  return out;
}

torch::Tensor unpermute(const torch::Tensor& y, const torch::Tensor& row_of_entry, const torch::Tensor& gates) {
  const int64_t tokens = row_of_entry.size(0), columns = row_of_entry.size(1), rows = y.size(0);
  // Dropped entries read an appended zero row.
  torch::Tensor padded = torch::cat({y, torch::zeros({1, y.size(1)}, y.options())}, 0);
  torch::Tensor index = torch::where(row_of_entry >= 0, row_of_entry, torch::full_like(row_of_entry, rows)).reshape(-1);
  torch::Tensor gathered = padded.index_select(0, index).view({tokens, columns, y.size(1)});
  return (gathered * gates.to(y.scalar_type()).unsqueeze(-1)).sum(1);
}

}  // namespace moelab::kernels::reference
