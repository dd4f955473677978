#include "dist/communicator.h"

#include <unistd.h>

#include <chrono>
#include <cstdlib>

#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef MOELAB_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef MOELAB_HAVE_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/torch.h>

#include "util/error.h"
#include "util/strings.h"

namespace moelab {
namespace {
// libtorch 2 split the collectives' interface (Backend) from the ProcessGroup that routes
// between backends; 1.13's backends are ProcessGroups themselves. Both have the same methods.
#if TORCH_VERSION_MAJOR >= 2
using Backend = c10d::Backend;
#else
using Backend = c10d::ProcessGroup;
#endif

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

// c10d's messages go on with a C++ backtrace; the first line says what happened.
std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

int env_int(const char* name, int fallback) {
  const std::string v = env_or(name, "");
  if (v.empty()) return fallback;
  char* end = nullptr;
  const long n = std::strtol(v.c_str(), &end, 10);
  if (*end != '\0' || n < 0) throw UserError(strf("environment variable %s='%s': expected a non-negative integer", name, v.c_str()));
  return static_cast<int>(n);
}
}  // namespace

struct Communicator::Impl {
  c10::intrusive_ptr<Backend> backend;
  int global_rank = 0;
  std::string name;  // "world", "expert group 0", ...

  [[noreturn]] void fail(const char* op, const std::exception& e) const {
    throw DistributedError(strf("rank %d: %s on the %s failed: %s (another rank probably failed or was killed; see its log)",
                                global_rank, op, name.c_str(), first_line(e.what()).c_str()));
  }
  template <class F>
  void run(const char* op, F&& launch_and_wait) const {
    try {
      launch_and_wait();
    } catch (const DistributedError&) {
      throw;
    } catch (const std::exception& e) {
      fail(op, e);
    }
  }
};

struct Communicator::Pending::State {
  c10::intrusive_ptr<c10d::Work> work;
  std::shared_ptr<Communicator::Impl> group;
  const char* op = "";
};

Communicator::Pending::Pending(std::shared_ptr<State> state) : state_(std::move(state)) {}

void Communicator::Pending::wait() {
  if (!state_ || !state_->work) return;
  state_->group->run(state_->op, [&] { state_->work->wait(); });
  state_->work.reset();
}

Communicator::Communicator(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
int Communicator::rank() const { return impl_->backend->getRank(); }
int Communicator::size() const { return impl_->backend->getSize(); }

Communicator::Pending Communicator::all_reduce_sum_async(torch::Tensor& tensor) {
  auto state = std::make_shared<Pending::State>();
  state->group = impl_;
  state->op = "all-reduce";
  impl_->run("all-reduce", [&] {
    std::vector<torch::Tensor> tensors{tensor};
    state->work = impl_->backend->allreduce(tensors);
  });
  return Pending(state);
}

void Communicator::all_reduce_sum(torch::Tensor& tensor) { all_reduce_sum_async(tensor).wait(); }

Communicator::Pending Communicator::all_to_all_async(const torch::Tensor& input, torch::Tensor& output,
                                                     const std::vector<int64_t>& send_rows,
                                                     const std::vector<int64_t>& recv_rows) {
  auto state = std::make_shared<Pending::State>();
  state->group = impl_;
  state->op = "all-to-all";
  impl_->run("all-to-all", [&] {
    // c10d takes the split vectors by reference and moves them out: hand it copies.
    std::vector<int64_t> out_splits = recv_rows, in_splits = send_rows;
    torch::Tensor in = input.contiguous();
    state->work = impl_->backend->alltoall_base(output, in, out_splits, in_splits);
  });
  return Pending(state);
}

torch::Tensor Communicator::all_to_all(const torch::Tensor& input, const std::vector<int64_t>& send_rows,
                                       const std::vector<int64_t>& recv_rows) {
  int64_t received = 0;
  for (int64_t n : recv_rows) received += n;
  std::vector<int64_t> shape = input.sizes().vec();
  shape[0] = received;
  torch::Tensor output = torch::empty(shape, input.options());
  all_to_all_async(input, output, send_rows, recv_rows).wait();
  return output;
}

void Communicator::broadcast(torch::Tensor& tensor, int root) {
  impl_->run("broadcast", [&] {
    std::vector<torch::Tensor> tensors{tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    impl_->backend->broadcast(tensors, options)->wait();
  });
}

torch::Tensor Communicator::all_gather(const torch::Tensor& tensor) {
  std::vector<std::vector<torch::Tensor>> outputs(1);
  for (int r = 0; r < size(); ++r) outputs[0].push_back(torch::empty_like(tensor));
  impl_->run("all-gather", [&] {
    std::vector<torch::Tensor> inputs{tensor.contiguous()};
    impl_->backend->allgather(outputs, inputs)->wait();
  });
  return torch::stack(outputs[0]);
}

void Communicator::barrier() {
  impl_->run("barrier", [&] { impl_->backend->barrier()->wait(); });
}

void finish_distributed(const DistributedContext& dist, bool cuda) {
  if (!dist.world_group) return;
  if (cuda) torch::cuda::synchronize();
  dist.world_group->barrier();
  if (cuda) torch::cuda::synchronize();
}

bool gloo_available() {
#ifdef MOELAB_HAVE_GLOO
  return true;
#else
  return false;
#endif
}

bool nccl_available() {
#ifdef MOELAB_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

LaunchEnvironment read_launch_environment() {
  LaunchEnvironment env;
  if (!env_or("WORLD_SIZE", "").empty()) {
    env.launcher = "torchrun";
    env.rank = env_int("RANK", 0);
    env.world = env_int("WORLD_SIZE", 1);
    env.local_rank = env_int("LOCAL_RANK", env.rank);
  } else if (!env_or("OMPI_COMM_WORLD_SIZE", "").empty()) {
    env.launcher = "mpirun";
    env.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
    env.world = env_int("OMPI_COMM_WORLD_SIZE", 1);
    env.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", env.rank);
  }
  if (env.world < 1 || env.rank >= env.world)
    throw UserError(strf("launcher environment: rank %d is not below the world size %d", env.rank, env.world));
  env.master_addr = env_or("MASTER_ADDR", env.master_addr);
  env.master_port = env_int("MASTER_PORT", env.master_port);
  if (env.master_port < 1 || env.master_port > 65535)
    throw UserError(strf("MASTER_PORT=%d: expected a TCP port (1-65535)", env.master_port));
  return env;
}

namespace {
std::shared_ptr<Communicator> make_group(const c10::intrusive_ptr<c10d::Store>& store, const std::string& prefix,
                                         const std::string& name, int group_rank, int group_size, int global_rank,
                                         const std::string& master_addr, std::chrono::milliseconds timeout, bool cuda) {
  auto impl = std::make_shared<Communicator::Impl>();
  impl->global_rank = global_rank;
  impl->name = name;
  auto group_store = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
  try {
    if (cuda) {
#ifdef MOELAB_HAVE_NCCL
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      impl->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(group_store, group_rank, group_size, options);
#else
      throw UserError("distributed training on CUDA needs NCCL, and this build has none (configure with -DMOELAB_CUDA=ON against a libtorch with NCCL)");
#endif
    } else {
#ifdef MOELAB_HAVE_GLOO
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      // Python reads GLOO_SOCKET_IFNAME for itself; the C++ library does not.
      const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
      if (interface && *interface) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
      } else {
        const bool loopback = master_addr == "localhost" || master_addr.rfind("127.", 0) == 0;
        char host[256] = "127.0.0.1";
        if (!loopback) gethostname(host, sizeof host);
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
      }
      impl->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(group_store, group_rank, group_size, options);
#else
      throw UserError("distributed training on CPU needs Gloo, and this build has none (install libgloo-dev and reconfigure)");
#endif
    }
  } catch (const UserError&) {
    throw;
  } catch (const std::exception& e) {
    throw DistributedError(strf("rank %d: rendezvous of the %s (%d ranks) failed within %.0f s: %s", global_rank, name.c_str(),
                                group_size, static_cast<double>(timeout.count()) / 1000.0, first_line(e.what()).c_str()));
  }
  return std::make_shared<Communicator>(impl);
}
}  // namespace

std::shared_ptr<Communicator> single_process_group(bool cuda) {
  return make_group(c10::make_intrusive<c10d::HashStore>(), "single", "single-process group", 0, 1, 0, "127.0.0.1",
                    std::chrono::milliseconds(60000), cuda);
}

DistributedContext init_distributed(const LaunchEnvironment& env, const ParallelConfig& parallel, bool cuda) {
  DistributedContext ctx;
  ctx.rank = env.rank;
  ctx.world = env.world;
  ctx.local_rank = env.local_rank;
  ctx.expert_parallel = static_cast<int>(parallel.expert_parallel);
  if (env.world % ctx.expert_parallel != 0)
    throw UserError(strf("parallel.expert_parallel = %d must divide the number of ranks, %d (launch a multiple of %d: "
                         "torchrun --no-python --nproc-per-node %d moelab ...)",
                         ctx.expert_parallel, env.world, ctx.expert_parallel, ctx.expert_parallel));
  if (env.world == 1) return ctx;
#ifdef MOELAB_HAVE_NCCL
  if (cuda) c10::cuda::set_device(static_cast<c10::DeviceIndex>(env.local_rank));
#endif

  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(parallel.timeout_s * 1000));
  c10::intrusive_ptr<c10d::Store> store;
  try {
    c10d::TCPStoreOptions options;
    options.port = static_cast<uint16_t>(env.master_port);
    // torchrun's agent already serves a store at MASTER_PORT; then rank 0 is a client too.
    options.isServer = env.rank == 0 && env_or("TORCHELASTIC_USE_AGENT_STORE", "") != "True";
    options.numWorkers = static_cast<size_t>(env.world);
    options.waitWorkers = true;
    options.timeout = timeout;
    store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, options);
  } catch (const std::exception& e) {
    throw DistributedError(strf("rank %d: rendezvous of %d ranks at %s:%d failed within %.0f s: %s", env.rank, env.world,
                                env.master_addr.c_str(), env.master_port, parallel.timeout_s, first_line(e.what()).c_str()));
  }
  ctx.world_group = make_group(store, "world", "world group", env.rank, env.world, env.rank, env.master_addr, timeout, cuda);
  const int ep = ctx.expert_parallel;
  if (ep > 1) {
    const int g = env.rank / ep;
    ctx.expert_group = make_group(store, strf("ep%d", g), strf("expert group %d", g), env.rank % ep, ep, env.rank,
                                  env.master_addr, timeout, cuda);
  }
  if (ep > 1 && ep < env.world) {
    const int i = env.rank % ep;
    ctx.expert_data_group = make_group(store, strf("edp%d", i), strf("expert-data group %d", i), env.rank / ep,
                                       env.world / ep, env.rank, env.master_addr, timeout, cuda);
  }
  return ctx;
}

}  // namespace moelab
