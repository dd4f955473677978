// ONNX export against ONNX Runtime (onnxruntime-node, installed by scripts/setup.sh into
// .node/) and Debian's ONNX checker: the exported graph computes moelab's own eval-mode,
// dropless logits, and greedy generation from it writes what moelab writes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "config/run_config.h"
#include "export/onnx_export.h"
#include "routers/strategy.h"
#include "test_support.h"
#include "train/generate.h"
#include "train/run.h"
#include "train/trainer.h"
#include "util/files.h"
#include "util/log.h"
#include "util/process.h"

using namespace moelab;
using moelab::testing::TempDir;

namespace {

// The node executable on PATH, or "".
std::string node_path() {
  std::string path;
  if (FILE* pipe = ::popen("command -v node", "r")) {
    char line[4096];
    if (std::fgets(line, sizeof line, pipe)) path = line;
    ::pclose(pipe);
  }
  while (!path.empty() && (path.back() == '\n' || path.back() == '\r')) path.pop_back();
  return path;
}

// Why the round trip cannot run here, or "" when it can.
std::string missing_tools() {
  if (!onnx_export_available()) return "this build has no ONNX export (libonnx-dev)";
  if (node_path().empty()) return "node is not on PATH";
  if (!std::filesystem::exists(std::string(MOELAB_NODE_MODULES) + "/onnxruntime-node"))
    return std::string("onnxruntime-node is not installed in ") + MOELAB_NODE_MODULES + " (bash scripts/setup.sh)";
  return "";
}

bool node_run(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> argv = {node_path(), std::string(MOELAB_SOURCE_DIR) + "/tests/onnx_run.js"};
  argv.insert(argv.end(), args.begin(), args.end());
  const pid_t pid = spawn_logged(argv, log, {std::string("NODE_PATH=") + MOELAB_NODE_MODULES});
  return pid > 0 && wait_for(pid).second;
}

RunConfig small_config(const std::string& out) {
  RunConfig c = load_run_config("", {});
  c.out = out;
  c.data.builtin_stories = 200;
  c.model.layers = 2;
  c.model.dim = 32;
  c.model.heads = 4;
  c.model.seq_len = 16;
  c.router.num_experts = 4;
  c.router.capacity_factor = 0;
  c.train.batch_size = 4;
  c.train.max_steps = 3;
  c.train.eval_windows = 4;
  c.train.threads = 2;
  c.train.device = "cpu";
  return c;
}

// Exports `c`'s trained run, runs its logits and a greedy continuation in ONNX Runtime, and
// compares them with moelab's.
// `weights`: the storage dtype asked of the export; moelab's side then computes with its
// weights rounded to it, which is what the exported graph holds.
void expect_round_trip(RunConfig c, const TempDir& dir, const std::string& name, bool external_data = false,
                       const std::string& weights = "float32") {
  SCOPED_TRACE(name);
  const std::string run = dir / name;
  c.out = run;
  train(c, {});
  const std::string model_path = dir / (name + ".onnx");
  std::vector<std::string> args = {MOELAB_BINARY, "export", "--run", run, "--out", model_path};
  if (external_data) args.push_back("--external-data");
  args.insert(args.end(), {"--dtype", weights});
  ASSERT_TRUE(wait_for(spawn_logged(args, dir / (name + "-export.log"))).second) << read_text_file(dir / (name + "-export.log"));
  // With external data the weights are in MODEL.data and the graph file holds almost none.
  if (external_data) EXPECT_GT(file_size(model_path + ".data"), 10 * file_size(model_path));
  if (std::system("/usr/bin/python3 -c 'import onnx' > /dev/null 2>&1") == 0) {
    // The full check, and the blocks as local functions block0, block1, ... in order.
    const std::string check = "/usr/bin/python3 -c 'import onnx, sys; onnx.checker.check_model(sys.argv[1], full_check=True); "
                              "names = [f.name for f in onnx.load(sys.argv[1]).functions]; "
                              "assert names == [\"block%d\" % i for i in range(int(sys.argv[2]))], names' " +
                              model_path + " " + std::to_string(c.model.layers) + " > " + (dir / (name + "-check.log")) + " 2>&1";
    EXPECT_EQ(std::system(check.c_str()), 0) << read_text_file(dir / (name + "-check.log"));
  }

  LoadedRun loaded = load_run(run, "cpu");
  if (weights != "float32") {
    torch::NoGradGuard no_grad;
    const auto dtype = weights == "float16" ? torch::kHalf : torch::kBFloat16;
    for (auto& p : loaded.model->parameters()) p.copy_(p.to(dtype).to(torch::kFloat32));
    for (auto& b : loaded.model->named_buffers())  // the buffers the graph reads
      if (b.key().find("expert_bias") != std::string::npos) b.value().copy_(b.value().to(dtype).to(torch::kFloat32));
  }
  torch::manual_seed(5);
  const int64_t batch = 3, seq = c.model.seq_len;
  torch::Tensor tokens = torch::randint(1, loaded.config.model.vocab_size, {batch, seq}, torch::kLong);
  torch::Tensor ours;
  {
    torch::NoGradGuard no_grad;
    for (const auto& layer : loaded.model->moe_layers()) layer->router().set_dropless(true);
    ours = loaded.model->forward(tokens).logits.contiguous();
  }
  nlohmann::json request = {{"shape", {batch, seq}},
                            {"data", std::vector<int64_t>(tokens.data_ptr<int64_t>(), tokens.data_ptr<int64_t>() + tokens.numel())}};
  write_file_atomic(dir / (name + "-tokens.json"), request.dump());
  ASSERT_TRUE(node_run({"logits", model_path, dir / (name + "-tokens.json"), dir / (name + "-logits.json")}, dir / (name + "-ort.log")))
      << read_text_file(dir / (name + "-ort.log"));
  nlohmann::json theirs = nlohmann::json::parse(read_text_file(dir / (name + "-logits.json")));
  ASSERT_EQ(theirs["shape"], nlohmann::json(ours.sizes().vec()));
  std::vector<float> values = theirs["data"].get<std::vector<float>>();
  torch::Tensor ort = torch::from_blob(values.data(), ours.sizes(), torch::kFloat32).clone();
  EXPECT_LE((ort - ours).abs().max().item<double>(), 1e-4);

  // Greedy generation: the same ids from the same prompt.
  SamplingOptions greedy;
  greedy.temperature = 0;
  greedy.tokens = 24;  // past the window: the context slides as in moelab generate
  greedy.stop_at_end_of_text = false;
  std::vector<uint32_t> prompt = loaded.tokenizer->encode("Once upon a time");
  if (!prompt.empty() && prompt.back() == loaded.tokenizer->eot_id()) prompt.pop_back();
  std::vector<uint32_t> expected = sample_tokens(*loaded.model, prompt, loaded.tokenizer->eot_id(), greedy, loaded.device);
  write_file_atomic(dir / (name + "-prompt.json"),
                    nlohmann::json({{"prompt", prompt}, {"tokens", greedy.tokens}, {"window", seq}}).dump());
  ASSERT_TRUE(node_run({"greedy", model_path, dir / (name + "-prompt.json"), dir / (name + "-greedy.json")}, dir / (name + "-greedy.log")))
      << read_text_file(dir / (name + "-greedy.log"));
  EXPECT_EQ(nlohmann::json::parse(read_text_file(dir / (name + "-greedy.json")))["ids"].get<std::vector<uint32_t>>(), expected);
}

}  // namespace

TEST(Export, OnnxRuntimeComputesMoelabsLogitsForEveryStrategy) {
  const std::string missing = missing_tools();
  if (!missing.empty()) GTEST_SKIP() << missing;
  moelab::testing::Quiet quiet;
  TempDir dir;
  for (const std::string& strategy : strategy_names()) {
    RunConfig c = small_config("");
    c.router.strategy = strategy;
    if (strategy == "expert_choice") c.router.capacity_factor = 1.25;  // no dropless expert choice
    expect_round_trip(c, dir, strategy);
  }
}

// The other shapes a config can give the graph: MLP gates, SwiGLU, RoPE, interleaved dense
// blocks, tied embeddings, an expert bias, hash by position, expert choice's fallback; and the
// export's forms: external data, float16 and bfloat16 weights.
TEST(Export, OnnxRuntimeComputesMoelabsLogitsForOtherModelShapes) {
  const std::string missing = missing_tools();
  if (!missing.empty()) GTEST_SKIP() << missing;
  moelab::testing::Quiet quiet;
  TempDir dir;
  RunConfig a = small_config("");
  a.router.gate = "mlp";
  a.model.activation = "swiglu";
  a.model.position = "rope";
  a.router.bias_rate = 0.01;
  expect_round_trip(a, dir, "mlp-swiglu-rope-bias");
  RunConfig b = small_config("");
  b.router.gate = "mlp_hadamard";
  b.model.layers = 3;
  b.model.moe_every = 2;
  b.model.tie_embeddings = true;
  b.router.strategy = "top1";
  expect_round_trip(b, dir, "hadamard-interleaved-tied-top1");
  RunConfig h = small_config("");
  h.router.strategy = "hash";
  h.router.hash_key = "position";
  h.router.top_k = 3;
  expect_round_trip(h, dir, "hash-position");
  RunConfig e = small_config("");
  e.router.strategy = "expert_choice";
  e.router.capacity_factor = 0.5;
  e.router.ec_fallback = "topk";
  expect_round_trip(e, dir, "expert-choice-fallback");
  expect_round_trip(small_config(""), dir, "external-data", /*external_data=*/true);
  expect_round_trip(small_config(""), dir, "float16-weights", false, "float16");
  expect_round_trip(small_config(""), dir, "bfloat16-weights", false, "bfloat16");
}
