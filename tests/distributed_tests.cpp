// Scale-out on c10d with Gloo: two (or four) real processes on loopback. The spawning tests
// start ranks of `moelab train`, or of this test binary running one DistributedWorker test.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "dist/communicator.h"
#include "dist/gradient_sync.h"
#include "models/moe_layer.h"
#include "routers/strategy.h"
#include "test_support.h"
#include "train/autocast.h"
#include "train/cuda_graph.h"
#include "util/process.h"

namespace moelab {
namespace {

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// One rank: argv with torchrun's variables (or mpirun's, OMPI_COMM_WORLD_*) added to this
// process's environment, output to `log`.
pid_t spawn_rank(const std::vector<std::string>& argv, int rank, int world, int port, const std::string& log,
                 std::vector<std::string> env = {}, bool mpirun = false) {
  const std::string prefix = mpirun ? "OMPI_COMM_WORLD_" : "";
  env.push_back(prefix + "RANK=" + std::to_string(rank));
  env.push_back(prefix + "LOCAL_RANK=" + std::to_string(rank));
  env.push_back((mpirun ? "OMPI_COMM_WORLD_SIZE=" : "WORLD_SIZE=") + std::to_string(world));
  env.push_back("MASTER_ADDR=127.0.0.1");
  env.push_back("MASTER_PORT=" + std::to_string(port));
  return spawn_logged(argv, log, env);
}

// Exit status of `pid`, or -1 if it is still running after `seconds` (then it is killed).
int wait_exit(pid_t pid, double seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return -1;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs `moelab train` on `world` ranks (world 1: one plain process); true when all exit 0.
bool train_ranks(int world, const std::vector<std::string>& args, const std::string& log_prefix, bool mpirun = false) {
  std::vector<std::string> argv = {MOELAB_BINARY, "train"};
  argv.insert(argv.end(), args.begin(), args.end());
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r)
    pids.push_back(spawn_rank(argv, r, world, port, log_prefix + std::to_string(r) + ".log", {}, mpirun));
  bool ok = true;
  for (int r = 0; r < world; ++r) {
    const int code = wait_exit(pids[r], 300);
    if (code != 0) {
      ADD_FAILURE() << "rank " << r << " exited with " << code << ":\n" << read_text(log_prefix + std::to_string(r) + ".log");
      ok = false;
    }
  }
  return ok;
}

std::vector<double> train_losses(const std::string& run_dir) {
  std::vector<double> losses;
  std::ifstream in(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto row = nlohmann::json::parse(line);
    if (row["kind"] == "train") losses.push_back(row["loss"].get<double>());
  }
  return losses;
}

const char* kTinyConfig = R"({ "seed": 3, "data": {"builtin_stories": 300},
  "model": {"layers": 2, "dim": 32, "heads": 2, "seq_len": 32, "dropout": 0.0},
  "router": {"num_experts": 4, "top_k": 2, "capacity_factor": 0, "lb_coef": 0},
  "train": {"batch_size": 4, "max_steps": 6, "eval_interval": 0, "eval_windows": 8, "log_interval": 1,
            "checkpoint_interval": 0, "threads": 1, "warmup_steps": 2},
  "parallel": {"timeout_s": 60} })";

// The same loss curve within `relative` (fp32 on CPU ranks: 1e-5; bf16 on GPUs: looser).
void expect_same_curve(const std::vector<double>& a, const std::vector<double>& b, const std::string& what,
                       double relative = 1e-5) {
  ASSERT_EQ(a.size(), b.size()) << what;
  ASSERT_FALSE(a.empty()) << what;
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], relative * std::abs(b[i])) << what << ", step " << i + 1;
}

// Dropless routing and no balancing loss: capacity and the Switch loss count a rank's own
// tokens (as in Megatron-Core), so only then is a 2-rank step exactly a 1-process step on the
// concatenated batch. Replicas are compared bit for bit by the trainer at every log step.
TEST(DistributedTraining, DataAndExpertParallelMatchOneProcessOnTheConcatenatedBatch) {
  if (!gloo_available()) GTEST_SKIP() << "this libtorch build has no Gloo";
  testing::TempDir dir;
  { std::ofstream(dir / "tiny.jsonc") << kTinyConfig; }
  const std::string config = dir / "tiny.jsonc";
  ASSERT_TRUE(train_ranks(1, {"--config", config, "--out", dir / "one", "--set", "train.batch_size=8", "--sample", "0"}, dir / "one"));
  ASSERT_TRUE(train_ranks(2, {"--config", config, "--out", dir / "dp", "--sample", "0"}, dir / "dp"));
  ASSERT_TRUE(train_ranks(2, {"--config", config, "--out", dir / "ep", "--set", "parallel.expert_parallel=2", "--sample", "0"},
                          dir / "ep", /*mpirun=*/true));
  ASSERT_TRUE(train_ranks(4, {"--config", config, "--out", dir / "dpep", "--set", "parallel.expert_parallel=2", "--set",
                              "train.batch_size=2", "--sample", "0"},
                          dir / "dpep"));
  const std::vector<double> one = train_losses(dir / "one");
  expect_same_curve(train_losses(dir / "dp"), one, "data parallel, 2 ranks");
  expect_same_curve(train_losses(dir / "ep"), one, "expert parallel 2 (mpirun's variables)");
  expect_same_curve(train_losses(dir / "dpep"), one, "4 ranks, expert parallel 2");
  EXPECT_TRUE(std::filesystem::exists(dir / "ep/checkpoints/latest.ep0of2.pt"));
  EXPECT_TRUE(std::filesystem::exists(dir / "ep/checkpoints/latest.ep1of2.pt"));
  EXPECT_TRUE(std::filesystem::exists(dir / "ep/checkpoints/latest.pt"));  // gathered, for eval and generate
  EXPECT_FALSE(std::filesystem::exists(dir / "dp/checkpoints/latest.ep0of2.pt"));
}

// With a capacity every rank routes its own tokens under its own capacity whether the experts
// are replicated or sharded, so expert parallelism (the capacity-padded exchange) must train
// what data parallelism trains.
TEST(DistributedTraining, ExpertParallelWithCapacityMatchesDataParallel) {
  if (!gloo_available()) GTEST_SKIP() << "this libtorch build has no Gloo";
  testing::TempDir dir;
  { std::ofstream(dir / "tiny.jsonc") << kTinyConfig; }
  const std::vector<std::string> common = {"--config", dir / "tiny.jsonc", "--sample", "0", "--set", "router.capacity_factor=1.0",
                                           "--set", "router.lb_coef=0.01", "--set", "router.strategy=topk_hard"};
  std::vector<std::string> dp = common, ep = common;
  dp.insert(dp.end(), {"--out", dir / "dp"});
  ep.insert(ep.end(), {"--out", dir / "ep", "--set", "parallel.expert_parallel=2"});
  ASSERT_TRUE(train_ranks(2, dp, dir / "dp"));
  ASSERT_TRUE(train_ranks(2, ep, dir / "ep"));
  const std::vector<double> dp_losses = train_losses(dir / "dp");
  expect_same_curve(train_losses(dir / "ep"), dp_losses, "expert parallel 2 with capacity, against data parallel");
  std::ifstream summary(dir / "ep/summary.json");
  EXPECT_GT(nlohmann::json::parse(summary)["routing"]["drop_rate"].get<double>(), 0.0) << "capacity 1.0 should drop some";
}

TEST(DistributedTraining, ResumeOnTheSameWorldReproducesTheRun) {
  if (!gloo_available()) GTEST_SKIP() << "this libtorch build has no Gloo";
  testing::TempDir dir;
  { std::ofstream(dir / "tiny.jsonc") << kTinyConfig; }
  const std::vector<std::string> base = {"--config", dir / "tiny.jsonc", "--set", "parallel.expert_parallel=2", "--sample", "0"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  ASSERT_TRUE(train_ranks(2, with({"--out", dir / "whole"}), dir / "whole"));
  ASSERT_TRUE(train_ranks(2, with({"--out", dir / "parts", "--stop-after", "3"}), dir / "first"));
  ASSERT_TRUE(train_ranks(2, {"--resume", dir / "parts", "--sample", "0"}, dir / "second"));
  expect_same_curve(train_losses(dir / "parts"), train_losses(dir / "whole"), "stopped at 3 and resumed");
}

TEST(DistributedTraining, AKilledRankEndsTheJobWithAnError) {
  if (!gloo_available()) GTEST_SKIP() << "this libtorch build has no Gloo";
  testing::TempDir dir;
  { std::ofstream(dir / "tiny.jsonc") << kTinyConfig; }
  const std::vector<std::string> argv = {MOELAB_BINARY, "train", "--config", dir / "tiny.jsonc", "--out", dir / "run",
                                         "--set", "train.max_steps=100000", "--set", "parallel.expert_parallel=2"};
  const int port = free_port();
  pid_t rank0 = spawn_rank(argv, 0, 2, port, dir / "rank0.log");
  pid_t rank1 = spawn_rank(argv, 1, 2, port, dir / "rank1.log");
  // Kill rank 1 once training is under way.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (read_text(dir / "run/metrics.jsonl").empty() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ::kill(rank1, SIGKILL);
  ::waitpid(rank1, nullptr, 0);
  const auto killed = std::chrono::steady_clock::now();
  const int code = wait_exit(rank0, 30);
  ASSERT_NE(code, -1) << "rank 0 hung after rank 1 was killed";
  std::printf("rank 0 exited %.2f s after rank 1 was killed\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count());
  EXPECT_EQ(code, 1);
  const std::string log = read_text(dir / "rank0.log");
  EXPECT_NE(log.find("rank 0:"), std::string::npos) << log;
  EXPECT_NE(log.find("failed"), std::string::npos) << log;
}

TEST(DistributedTraining, AMissingRankFailsTheRendezvousWithinTheTimeout) {
  if (!gloo_available()) GTEST_SKIP() << "this libtorch build has no Gloo";
  testing::TempDir dir;
  { std::ofstream(dir / "tiny.jsonc") << kTinyConfig; }
  pid_t rank0 = spawn_rank({MOELAB_BINARY, "train", "--config", dir / "tiny.jsonc", "--out", dir / "run", "--set",
                            "parallel.timeout_s=2"},
                           0, 2, free_port(), dir / "rank0.log");
  const int code = wait_exit(rank0, 60);
  ASSERT_NE(code, -1) << "rank 0 waited for ever for its peer";
  EXPECT_EQ(code, 1);
  EXPECT_NE(read_text(dir / "rank0.log").find("rendezvous of"), std::string::npos) << read_text(dir / "rank0.log");
}

TEST(ExpertParallelBench, TwoRanksPrintTheSeedMetricsAndTheOverlappedLayerEqualsTheSequentialOne) {
  if (!gloo_available()) GTEST_SKIP() << "this libtorch build has no Gloo";
  testing::TempDir dir;
  const std::vector<std::string> argv = {MOELAB_BINARY, "bench", "ep", "--tokens", "256", "--hidden", "32", "--experts", "6",
                                         "--iters", "2", "--skew-experts", "2", "--skew-bias", "2", "--out", dir / "ep.jsonl"};
  const int port = free_port();
  std::vector<pid_t> pids = {spawn_rank(argv, 0, 2, port, dir / "rank0.log"), spawn_rank(argv, 1, 2, port, dir / "rank1.log")};
  for (int r = 0; r < 2; ++r)
    ASSERT_EQ(wait_exit(pids[r], 120), 0) << read_text(dir / ("rank" + std::to_string(r) + ".log"));
  auto row = nlohmann::json::parse(read_text(dir / "ep.jsonl"));
  for (const char* key : {"T_route_ms", "T_comm_ms", "T_comp_ms", "load_skew", "load_cv", "sequential_ms", "overlapped_ms", "eta_overlap"})
    EXPECT_GT(row[key].get<double>(), 0.0) << key;
  EXPECT_GT(row["load_skew"].get<double>(), 1.5);  // two of six experts favoured by +2 logits
  EXPECT_LT(row["overlap_max_abs_diff"].get<double>(), 1e-5);
  // The most any overlap can gain: (T_comm + T_comp) / max(T_comm, T_comp), in [1, 2].
  const double comm = row["T_comm_ms"].get<double>(), comp = row["T_comp_ms"].get<double>();
  EXPECT_NEAR(row["eta_overlap_bound"].get<double>(), (comm + comp) / std::max(comm, comp), 1e-9);
  EXPECT_NE(read_text(dir / "rank0.log").find("overlap: at most eta"), std::string::npos);
}

// ---- the replica check -------------------------------------------------------------------

// Runs as a rank spawned by ReplicaCheck.*: replicas whose bytes differ stop every rank with
// one line, even where a sum of the values (what the check once compared) is equal.
TEST(DistributedWorker, ReplicaCheckRank) {
  if (!std::getenv("MOELAB_TEST_WORKER")) GTEST_SKIP() << "runs only as a rank started by ReplicaCheck.*";
  const LaunchEnvironment env = read_launch_environment();
  ParallelConfig parallel;
  parallel.timeout_s = 60;
  const DistributedContext dist = init_distributed(env, parallel, false);
  const bool odd = dist.rank % 2 == 1;
  auto diverges = [&](const std::vector<torch::Tensor>& mine) {
    try {
      check_replicas(mine, *dist.world_group, "replicated parameters", 7);
    } catch (const DistributedError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("step 7: the replicated parameters differ between ranks"), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
      return true;
    }
    return false;
  };
  const torch::Tensor same = torch::arange(10, torch::kFloat32) / 3;
  EXPECT_FALSE(diverges({same, same * 2}));
  // The same values in another order: equal sums, other bytes.
  EXPECT_TRUE(diverges({same, odd ? torch::tensor({2.0f, 1.0f}) : torch::tensor({1.0f, 2.0f})}));
  // One bit of one value.
  torch::Tensor flipped = torch::tensor({1e8f, 0.0f});
  if (odd) flipped.view(torch::kInt32)[0] += 1;
  EXPECT_TRUE(diverges({same, flipped}));
  finish_distributed(dist, false);
}

TEST(ReplicaCheck, ADivergedByteStopsEveryRank) {
  if (!gloo_available()) GTEST_SKIP() << "this libtorch build has no Gloo";
  testing::TempDir dir;
  char self[4096] = {0};
  ASSERT_GT(::readlink("/proc/self/exe", self, sizeof self - 1), 0);
  const std::vector<std::string> argv = {self, "--gtest_filter=DistributedWorker.ReplicaCheckRank"};
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int r = 0; r < 2; ++r)
    pids.push_back(spawn_rank(argv, r, 2, port, dir / ("rank" + std::to_string(r) + ".log"), {"MOELAB_TEST_WORKER=1"}));
  for (int r = 0; r < 2; ++r)
    EXPECT_EQ(wait_exit(pids[r], 120), 0) << "rank " << r << ":\n" << read_text(dir / ("rank" + std::to_string(r) + ".log"));
}

// ---- the expert-parallel layer against the single-process layer ----------------------------

// Runs as a rank spawned by ExpertParallelLayer.*: for every router strategy and capacity
// policy, the sharded layer's output and gradients must equal the whole layer's on this
// rank's tokens; expert gradients are compared with the whole layer's summed over the ranks.
// Plans with capacity slots take the capacity-padded exchange (static shapes, nothing read
// back), the others (dropless, expert choice) the counted one.
TEST(DistributedWorker, ExpertParallelLayerRank) {
  if (!std::getenv("MOELAB_TEST_WORKER")) GTEST_SKIP() << "runs only as a rank started by ExpertParallelLayer.*";
  torch::set_num_threads(1);
  const LaunchEnvironment env = read_launch_environment();
  ParallelConfig parallel;
  parallel.expert_parallel = env.world;
  parallel.timeout_s = 60;
  const DistributedContext dist = init_distributed(env, parallel, false);
  const int64_t experts = 6, dim = 16, tokens = 40;  // E not a power of two; 3 experts per rank
  struct Case {
    std::string strategy;
    double capacity_factor;
    std::string drop_policy;
  };
  std::vector<Case> cases;
  for (const std::string& s : strategy_names())
    for (auto [cf, policy] : std::vector<std::pair<double, std::string>>{{1.0, "position"}, {1.25, "probs"}, {0.0, "position"}})
      if (!(s == "expert_choice" && cf == 0.0)) cases.push_back({s, cf, policy});  // EC has no dropless form
  for (const Case& c : cases) {
    SCOPED_TRACE(c.strategy + " CF " + std::to_string(c.capacity_factor) + " " + c.drop_policy);
    RouterConfig rc = testing::routing_config(c.strategy, experts, 2, c.capacity_factor);
    rc.drop_policy = c.drop_policy;
    rc.lb_coef = 0.01;
    torch::manual_seed(11);
    auto whole = std::make_shared<MoeLayer>(rc, dim, 24, false);
    auto sharded = std::make_shared<MoeLayer>(rc, dim, 24, false);
    {
      torch::NoGradGuard no_grad;
      for (const auto& item : whole->named_parameters()) sharded->named_parameters()[item.key()].copy_(item.value());
    }
    sharded->shard_experts(dist.expert_group);
    EXPECT_EQ(sharded->dispatcher().host_sync_free(), c.capacity_factor > 0 && c.strategy != "expert_choice");
    torch::manual_seed(100 + env.rank);  // each rank its own tokens
    torch::Tensor x = torch::randn({tokens, dim});
    torch::Tensor ids = torch::randint(0, 50, {tokens}, torch::kLong);
    torch::Tensor upstream = torch::randn({tokens, dim});

    torch::Tensor x1 = x.clone().requires_grad_(true), x2 = x.clone().requires_grad_(true);
    torch::Tensor y1 = whole->forward(x1, ids), y2 = sharded->forward(x2, ids);
    ((y1 * upstream).sum() + whole->last_plan().lb_loss).backward();
    ((y2 * upstream).sum() + sharded->last_plan().lb_loss).backward();
    EXPECT_TRUE(torch::allclose(y1, y2, 1e-5, 1e-6)) << (y1 - y2).abs().max().item<double>();
    EXPECT_TRUE(torch::allclose(x1.grad(), x2.grad(), 1e-5, 1e-6)) << (x1.grad() - x2.grad()).abs().max().item<double>();
    for (const auto& item : whole->router().named_parameters()) {
      const torch::Tensor& g1 = item.value().grad();
      const torch::Tensor& g2 = sharded->router().named_parameters()[item.key()].grad();
      ASSERT_EQ(g1.defined(), g2.defined()) << item.key();
      if (g1.defined()) EXPECT_TRUE(torch::allclose(g1, g2, 1e-5, 1e-6)) << item.key();
    }
    const int64_t per = experts / env.world;
    for (const auto& item : whole->experts().named_parameters()) {
      torch::Tensor summed = item.value().grad().clone();
      dist.world_group->all_reduce_sum(summed);
      torch::Tensor mine = summed.narrow(0, env.rank * per, per);
      torch::Tensor g2 = sharded->experts().named_parameters()[item.key()].grad();
      if (!g2.defined()) g2 = torch::zeros_like(mine);  // no token reached this rank's experts
      EXPECT_TRUE(torch::allclose(mine, g2, 1e-4, 1e-5)) << item.key() << " " << (mine - g2).abs().max().item<double>();
    }
  }
}

TEST(ExpertParallelLayer, OutputAndGradientsEqualTheSingleProcessLayerOnTwoRanks) {
  if (!gloo_available()) GTEST_SKIP() << "this libtorch build has no Gloo";
  testing::TempDir dir;
  char self[4096] = {0};
  ASSERT_GT(::readlink("/proc/self/exe", self, sizeof self - 1), 0);
  const std::vector<std::string> argv = {self, "--gtest_filter=DistributedWorker.ExpertParallelLayerRank"};
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int r = 0; r < 2; ++r)
    pids.push_back(spawn_rank(argv, r, 2, port, dir / ("rank" + std::to_string(r) + ".log"), {"MOELAB_TEST_WORKER=1"}));
  for (int r = 0; r < 2; ++r) {
    const std::string log = read_text(dir / ("rank" + std::to_string(r) + ".log"));
    const int code = wait_exit(pids[r], 120);
    EXPECT_EQ(code, 0) << "rank " << r << ":\n" << read_text(dir / ("rank" + std::to_string(r) + ".log"));
  }
}

}  // namespace
}  // namespace moelab

namespace moelab {

// The data-parallel step inside a CUDA graph: the bucketed all-reduces launched from
// backward's hooks and waited for in finish() are recorded at the capture and replayed. One
// device here, so the group is this process alone on NCCL (the backend's real path, the
// all-reduce of one rank being the identity); world_size 2 makes the averaging visible.
TEST(DistributedOnGpu, BucketedAllReducesAreCapturedAndReplayed) {
  if (!torch::cuda::is_available() || !nccl_available() || !CudaGraph::available())
    GTEST_SKIP() << "no CUDA device, NCCL or CUDA graphs in this build";
  torch::manual_seed(5);
  torch::nn::Sequential model(torch::nn::Linear(64, 256), torch::nn::GELU(), torch::nn::Linear(256, 64));
  model->to(torch::kCUDA);
  const std::vector<torch::Tensor> params = model->parameters();
  GradientSynchronizer sync(params, single_process_group(true), {}, nullptr, /*world_size=*/2, /*bucket_mb=*/0.05);
  ASSERT_GE(sync.bucket_count(), 3);
  torch::Tensor x = torch::empty({32, 64}, torch::kCUDA);
  const torch::Tensor x1 = torch::randn({32, 64}, torch::kCUDA), x2 = torch::randn({32, 64}, torch::kCUDA);
  auto clear = [&] {
    for (auto p : params) p.mutable_grad() = torch::Tensor();
  };
  auto raw_gradients = [&](const torch::Tensor& input) {  // hooks not armed: plain backward
    clear();
    x.copy_(input);
    model->forward(x).square().sum().backward();
    std::vector<torch::Tensor> g;
    for (const auto& p : params) g.push_back(p.grad().clone());
    return g;
  };
  auto step = [&] {
    sync.begin_backward();
    model->forward(x).square().sum().backward();
    sync.finish();
  };
  auto expect_halved = [&](const std::vector<torch::Tensor>& raw, const char* what) {
    for (size_t i = 0; i < params.size(); ++i)
      EXPECT_TRUE(torch::allclose(params[i].grad(), 0.5 * raw[i], 1e-5, 1e-6)) << what << ", parameter " << i;
  };
  const std::vector<torch::Tensor> raw1 = raw_gradients(x1), raw2 = raw_gradients(x2);

  clear();
  x.copy_(x1);
  step();
  expect_halved(raw1, "eager");

  {
    CudaSideStream side(0);
    CudaGraph graph;
    clear();  // the captured backward allocates the gradients in the graph's memory
    graph.capture(step);
    x.copy_(x2);
    graph.replay();
    torch::cuda::synchronize();
    expect_halved(raw2, "replayed with new inputs");
    x.copy_(x1);
    graph.replay();
    torch::cuda::synchronize();
    expect_halved(raw1, "replayed again");
  }
}

// Expert parallelism's capacity-padded exchange on CUDA, inside a CUDA graph: the layer sharded
// over a one-process NCCL group (its all-to-alls the backend's real path) and captured
// forward and backward, replayed on new tokens, gives the whole layer's output and gradients
// (bf16 autocast in both; the same rows reach the same kernels in the same order).
TEST(DistributedOnGpu, CapacityPaddedExchangeIsCapturedAndEqualsTheWholeLayer) {
  if (!torch::cuda::is_available() || !nccl_available() || !CudaGraph::available())
    GTEST_SKIP() << "no CUDA device, NCCL or CUDA graphs in this build";
  const int64_t experts = 8, dim = 64, hidden = 256, tokens = 512;
  RouterConfig rc = testing::routing_config("topk_hard", experts, 2, 1.0);
  torch::manual_seed(9);
  auto whole = std::make_shared<MoeLayer>(rc, dim, hidden, false);
  auto sharded = std::make_shared<MoeLayer>(rc, dim, hidden, false);
  {
    torch::NoGradGuard no_grad;
    for (const auto& item : whole->named_parameters()) sharded->named_parameters()[item.key()].copy_(item.value());
  }
  whole->to(torch::kCUDA);
  sharded->to(torch::kCUDA);
  sharded->shard_experts(single_process_group(true));
  ASSERT_TRUE(sharded->dispatcher().host_sync_free());
  ASSERT_TRUE(sharded->host_sync_free(/*bf16=*/true));
  // Everything on one side stream, the eager warm-up included, as in training: autograd
  // remembers the stream each leaf's gradient was first accumulated on.
  CudaSideStream side(0);

  const auto cuda = torch::TensorOptions().device(torch::kCUDA);
  const torch::Tensor ids = torch::randint(0, 50, {tokens}, cuda.dtype(torch::kLong));
  const torch::Tensor upstream = torch::randn({tokens, dim}, cuda);
  auto run = [&](MoeLayer& layer, const torch::Tensor& input) {
    CudaAutocast autocast(true);
    torch::Tensor out = layer.forward(input, ids);
    ((out.to(torch::kFloat32) * upstream).sum() + layer.last_plan().lb_loss).backward();
    return out;
  };
  auto clear = [](MoeLayer& layer) {
    for (auto p : layer.parameters()) p.mutable_grad() = torch::Tensor();
  };
  // Within 1% of the largest magnitude of the whole layer's tensor.
  auto expect_close = [](const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
    const double err = (got.to(torch::kFloat32) - want.to(torch::kFloat32)).abs().max().item<double>();
    EXPECT_LE(err, 1e-2 * want.abs().max().item<double>() + 1e-6) << what;
  };
  // The sharded layer's output `out`, its input's gradient and its experts' gradients against
  // the whole layer run eagerly on `values`.
  auto expect_whole_layer = [&](const torch::Tensor& out, const torch::Tensor& input_grad, const torch::Tensor& values,
                                const std::string& what) {
    clear(*whole);
    torch::Tensor xw = values.clone().requires_grad_(true);
    const torch::Tensor yw = run(*whole, xw);
    expect_close(out, yw, what + ": output");
    expect_close(input_grad, xw.grad(), what + ": input gradient");
    for (const auto& item : whole->experts().named_parameters())
      expect_close(sharded->experts().named_parameters()[item.key()].grad(), item.value().grad(), what + ": " + item.key());
  };
  const torch::Tensor x1 = torch::randn({tokens, dim}, cuda), x2 = torch::randn({tokens, dim}, cuda);
  torch::Tensor x = torch::zeros({tokens, dim}, cuda).requires_grad_(true);
  auto set_input = [&](const torch::Tensor& values) {  // x's storage stays: a graph reads it
    torch::NoGradGuard no_grad;
    x.copy_(values);
  };

  set_input(x1);
  clear(*sharded);
  torch::Tensor out = run(*sharded, x);  // eager, also the warm-up before the capture
  expect_whole_layer(out, x.grad(), x1, "eager");

  CudaGraph graph;
  set_input(x1);
  clear(*sharded);
  x.mutable_grad() = torch::Tensor();  // the captured backward allocates it in the graph's memory
  graph.capture([&] { out = run(*sharded, x); });
  set_input(x2);
  graph.replay();
  torch::cuda::synchronize();
  expect_whole_layer(out, x.grad(), x2, "captured, replayed on new tokens");
}

// Two GPUs, NCCL, captured steps: data and expert parallelism train what one GPU trains on
// the concatenated batch (dropless, no balancing loss), expert parallelism with a capacity
// (the padded exchange) what data parallelism trains, and a resume after --stop-after the
// uninterrupted run. bf16 autocast, so within bf16's rounding, not bit for bit.
TEST(DistributedOnGpu, TwoGpusTrainWhatOneGpuTrains) {
  if (torch::cuda::device_count() < 2 || !nccl_available() || !CudaGraph::available())
    GTEST_SKIP() << "needs two CUDA devices, NCCL and CUDA graphs";
  testing::TempDir dir;
  { std::ofstream(dir / "tiny.jsonc") << kTinyConfig; }
  auto args = [&](const std::string& out, std::vector<std::string> extra) {
    std::vector<std::string> a = {"--config", dir / "tiny.jsonc", "--out", dir / out, "--sample", "0", "--set", "train.device=\"cuda\"",
                                  "--set", "train.dtype=\"bf16\"", "--set", "train.max_steps=12", "--set", "train.checkpoint_interval=6"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  const std::vector<std::string> capacity = {"--set", "router.capacity_factor=1.0", "--set", "router.lb_coef=0.01"};
  std::vector<std::string> ep_capacity = capacity;
  ep_capacity.insert(ep_capacity.end(), {"--set", "parallel.expert_parallel=2"});
  ASSERT_TRUE(train_ranks(1, args("one", {"--set", "train.batch_size=8"}), dir / "one"));
  ASSERT_TRUE(train_ranks(2, args("dp", {}), dir / "dp"));
  ASSERT_TRUE(train_ranks(2, args("ep", {"--set", "parallel.expert_parallel=2"}), dir / "ep"));
  ASSERT_TRUE(train_ranks(2, args("dp-cap", capacity), dir / "dp-cap"));
  ASSERT_TRUE(train_ranks(2, args("ep-cap", ep_capacity), dir / "ep-cap"));
  ASSERT_TRUE(train_ranks(2, args("resumed", {"--stop-after", "6"}), dir / "resumed"));
  ASSERT_TRUE(train_ranks(2, {"--resume", dir / "resumed"}, dir / "resume"));

  const std::vector<double> one = train_losses(dir / "one");
  ASSERT_EQ(one.size(), 12u);
  expect_same_curve(train_losses(dir / "dp"), one, "2 GPUs data parallel against 1 GPU", 1e-2);
  expect_same_curve(train_losses(dir / "ep"), one, "2 GPUs expert parallel (dropless) against 1 GPU", 1e-2);
  expect_same_curve(train_losses(dir / "ep-cap"), train_losses(dir / "dp-cap"), "expert parallel with capacity against data parallel",
                    1e-2);
  expect_same_curve(train_losses(dir / "resumed"), train_losses(dir / "dp"), "2 GPUs resumed after step 6", 1e-3);
  for (const char* run : {"one", "dp", "dp-cap", "ep-cap"})
    EXPECT_NE(read_text(dir / (std::string(run) + "0.log")).find("captured as a CUDA graph"), std::string::npos) << run;
  EXPECT_NE(read_text(dir / "ep0.log").find("training step: eager"), std::string::npos);  // dropless EP reads counts back
}

}  // namespace moelab
