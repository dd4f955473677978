// Queue positions for capacity, and the reference stable counting sort under them (CUDA
// tensors get kernels/counting_sort.cu through the dispatch). Laid out as
// [buckets, N], the entries matching each key in turn, one running count (a single 1-D scan)
// over the one-hot matrix reaches, at entry i of bucket k, the entries before bucket k plus
// those of bucket k up to i: exactly where a stable sort by key puts entry i, plus one. Work
// and memory O(N * buckets) in a few element-wise kernels and one cub scan, no sort: for
// routing (buckets = E + 1) far cheaper on a GPU than a stable radix sort of 64-bit keys
// (8 passes of several kernels). Past kOneHotLimit elements it falls back to that sort.
#include <torch/torch.h>

#include "kernels/counting_sort.h"

namespace moelab::kernels {
namespace {
constexpr int64_t kOneHotLimit = int64_t{1} << 20;  // past ~1M counts (E 128 at 8K tokens) the one-hot matrix costs more than a sort

// Each flat assignment's place in its expert's queue: assignments queue in `order` (undefined:
// flat order); those not valid take no place and get N.
torch::Tensor queue_places(const torch::Tensor& expert_ids, const torch::Tensor& valid, const torch::Tensor& order,
                           int64_t num_experts) {
  const int64_t n = expert_ids.size(0);
  torch::Tensor ids = order.defined() ? expert_ids.index_select(0, order) : expert_ids;
  torch::Tensor ok = order.defined() ? valid.index_select(0, order) : valid;
  // Entries that take no place queue behind every expert, in an extra bucket.
  torch::Tensor key = torch::where(ok, ids, torch::full_like(ids, num_experts));
  torch::Tensor queued = torch::where(ok, stable_sort_by_key(key, num_experts + 1).within_key, torch::full_like(ids, n));
  if (!order.defined()) return queued;
  return torch::empty_like(queued).index_put_({order}, queued);
}
}

KeySort reference::stable_sort_by_key(const torch::Tensor& keys, int64_t buckets) {
  const int64_t n = keys.size(0);
  KeySort out;
  if (n == 0) {
    out.position = torch::zeros_like(keys);
    out.counts = torch::zeros({buckets}, keys.options());
  } else if (n * buckets <= kOneHotLimit) {
    torch::Tensor one_hot = (torch::arange(buckets, keys.options()).unsqueeze(1) == keys.unsqueeze(0)).to(torch::kInt32);
    torch::Tensor running = one_hot.reshape(-1).cumsum(0, torch::kInt32).view({buckets, n});
    out.position = running.gather(0, keys.unsqueeze(0)).squeeze(0).to(torch::kLong) - 1;
    torch::Tensor through = running.select(1, n - 1).to(torch::kLong);  // entries with key <= k
    out.counts = torch::diff(through, 1, 0, torch::zeros({1}, through.options()));
  } else {
    torch::Tensor sorted = std::get<1>(keys.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
    out.position = torch::empty_like(keys).index_put_({sorted}, torch::arange(n, keys.options()));
    // index_add rather than bincount: bincount reads the maximum back to the host.
    out.counts = torch::zeros({buckets}, keys.options()).index_add_(0, keys, torch::ones_like(keys));
  }
  out.order = torch::empty_like(out.position).index_put_({out.position}, torch::arange(n, keys.options()));
  out.within_key = out.position - (out.counts.cumsum(0) - out.counts).index_select(0, keys);
  return out;
}

CapacitySlots reference::capacity_slots(const torch::Tensor& expert_ids, const torch::Tensor& selected, const torch::Tensor& order,
                                        int64_t num_experts, int64_t capacity) {
  torch::Tensor place = queue_places(expert_ids, selected, order, num_experts);
  CapacitySlots out;
  out.kept = selected & (place < capacity);
  out.slot = torch::where(out.kept, place, torch::full_like(place, -1));
  out.kept_counts = torch::zeros({num_experts}, expert_ids.options()).index_add_(0, expert_ids, out.kept.to(torch::kLong));
  return out;
}

}  // namespace moelab::kernels
