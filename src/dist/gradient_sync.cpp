#include "dist/gradient_sync.h"

#include <optional>

#include <torch/torch.h>

#include "util/strings.h"

namespace moelab {
namespace {

struct Bucket {
  torch::Tensor flat;  // every parameter's gradient, back to back
  std::vector<torch::Tensor> params;
  std::vector<int64_t> offsets;
  std::vector<bool> filled;
  size_t ready = 0;
  std::optional<Communicator::Pending> pending;
};

}  // namespace

struct GradientSynchronizer::Group {
  std::shared_ptr<Communicator> comm;  // null: nothing to reduce with, only the scale
  double scale = 1.0;
  std::vector<Bucket> buckets;
  std::vector<std::pair<torch::Tensor, unsigned>> hooks;
  size_t next_launch = 0;
  bool armed = false;

  Group(const std::vector<torch::Tensor>& params, std::shared_ptr<Communicator> c, double s, int64_t bucket_bytes)
      : comm(std::move(c)), scale(s) {
    // Reverse registration order: the output layers' gradients come first in backward.
    std::vector<torch::Tensor> order(params.rbegin(), params.rend());
    std::vector<std::vector<torch::Tensor>> grouped(1);
    int64_t bytes = 0;
    for (const torch::Tensor& p : order) {
      if (!grouped.back().empty() && bytes + p.nbytes() > static_cast<size_t>(bucket_bytes)) {
        grouped.emplace_back();
        bytes = 0;
      }
      grouped.back().push_back(p);
      bytes += static_cast<int64_t>(p.nbytes());
    }
    for (auto& members : grouped) {
      if (members.empty()) continue;
      Bucket b;
      int64_t numel = 0;
      for (const auto& p : members) {
        TORCH_CHECK(p.scalar_type() == members[0].scalar_type() && p.device() == members[0].device(),
                    "GradientSynchronizer: parameters of one dtype and device expected");
        b.offsets.push_back(numel);
        numel += p.numel();
      }
      b.flat = torch::zeros({numel}, members[0].options().requires_grad(false));
      b.params = members;
      b.filled.assign(members.size(), false);
      buckets.push_back(std::move(b));
    }
    for (size_t bi = 0; bi < buckets.size(); ++bi) {
      for (size_t i = 0; i < buckets[bi].params.size(); ++i) {
        torch::Tensor p = buckets[bi].params[i];
        unsigned id = p.register_hook([this, bi, i](torch::Tensor grad) {
          on_gradient(bi, i, grad);
          return torch::Tensor();  // keep the gradient as it is
        });
        hooks.emplace_back(p, id);
      }
    }
  }

  ~Group() {
    for (auto& [p, id] : hooks) p.remove_hook(id);
  }

  void on_gradient(size_t bi, size_t i, const torch::Tensor& grad) {
    if (!armed) return;
    Bucket& b = buckets[bi];
    b.flat.narrow(0, b.offsets[i], grad.numel()).copy_(grad.reshape(-1));
    if (!b.filled[i]) {
      b.filled[i] = true;
      ++b.ready;
    }
    launch_ready();
  }

  void launch_ready() {
    while (next_launch < buckets.size() && buckets[next_launch].ready == buckets[next_launch].params.size()) {
      Bucket& b = buckets[next_launch++];
      if (comm) b.pending = comm->all_reduce_sum_async(b.flat);
    }
  }

  void finish() {
    for (size_t bi = next_launch; bi < buckets.size(); ++bi) {
      Bucket& b = buckets[bi];
      for (size_t i = 0; i < b.params.size(); ++i) {
        if (b.filled[i]) continue;
        b.flat.narrow(0, b.offsets[i], b.params[i].numel()).zero_();
        b.filled[i] = true;
        ++b.ready;
      }
    }
    launch_ready();
    for (Bucket& b : buckets) {
      if (b.pending) b.pending->wait();
      b.pending.reset();
      b.flat.mul_(scale);
      for (size_t i = 0; i < b.params.size(); ++i) {
        torch::Tensor& p = b.params[i];
        torch::Tensor averaged = b.flat.narrow(0, b.offsets[i], p.numel()).view_as(p);
        if (p.grad().defined()) {
          p.mutable_grad().copy_(averaged);
        } else {
          p.mutable_grad() = averaged.clone();
        }
        b.filled[i] = false;
      }
      b.ready = 0;
    }
    next_launch = 0;
    armed = false;
  }
};

GradientSynchronizer::GradientSynchronizer(const std::vector<torch::Tensor>& replicated,
                                           const std::shared_ptr<Communicator>& world,
                                           const std::vector<torch::Tensor>& expert_shards,
                                           const std::shared_ptr<Communicator>& expert_data_group, int world_size,
                                           double bucket_mb) {
  const int64_t bucket_bytes = static_cast<int64_t>(bucket_mb * 1024 * 1024);
  const double scale = 1.0 / static_cast<double>(world_size);
  if (!replicated.empty()) groups_.push_back(std::make_unique<Group>(replicated, world, scale, bucket_bytes));
  if (!expert_shards.empty())
    groups_.push_back(std::make_unique<Group>(expert_shards, expert_data_group, scale, bucket_bytes));
}

GradientSynchronizer::~GradientSynchronizer() = default;

void GradientSynchronizer::begin_backward() {
  for (auto& g : groups_) g->armed = true;
}

void GradientSynchronizer::finish() {
  for (auto& g : groups_) g->finish();
}

int64_t GradientSynchronizer::bucket_count() const {
  int64_t n = 0;
  for (const auto& g : groups_) n += static_cast<int64_t>(g->buckets.size());
  return n;
}

void check_replicas(const std::vector<torch::Tensor>& parameters, Communicator& group, const char* what, int64_t step) {
  if (parameters.empty()) return;
  // Two checksums of each tensor's bytes, in int64 on its device: their plain sum and their
  // sum weighted by position. Any changed byte moves the first; bytes that trade places move
  // the second. (A float sum of the values would miss differences that cancel or round away.)
  std::vector<torch::Tensor> sums;
  for (const auto& p : parameters) {
    torch::Tensor bytes = p.detach().contiguous().view(-1).view(torch::kUInt8).to(torch::kLong);
    torch::Tensor weight = torch::arange(bytes.numel(), bytes.options()).remainder(65521) + 1;
    sums.push_back(torch::stack({bytes.sum(), (bytes * weight).sum()}));
  }
  torch::Tensor all = group.all_gather(torch::stack(sums).reshape({1, -1})).cpu();
  for (int64_t r = 1; r < all.size(0); ++r)
    if (!torch::equal(all[r], all[0]))
      throw DistributedError(strf("step %lld: the %s differ between ranks (rank %d of the %s group holds other bytes than "
                                  "its rank 0); data-parallel replicas diverged",
                                  (long long)step, what, (int)r, what));
}

}  // namespace moelab
