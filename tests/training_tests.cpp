// End-to-end training: loss falls on real text, resume reproduces, bad inputs are refused
// without damage.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include "config/run_config.h"
#include "data/batch_sampler.h"
#include "data/token_file.h"
#include "kernels/adamw.h"
#include "routers/strategy.h"
#include "test_support.h"
#include "train/checkpoint.h"
#include "train/generate.h"
#include "train/run.h"
#include "train/train_batches.h"
#include "train/trainer.h"
#include "train/optimizer.h"
#include "util/error.h"
#include "util/files.h"
#include "util/log.h"

using namespace moelab;
using moelab::testing::Quiet;
using moelab::testing::TempDir;

namespace {

RunConfig tiny_config(const std::string& out, const std::string& train_path = "builtin") {
  RunConfig c = load_run_config("", {});
  c.out = out;
  c.data.train = train_path;
  c.data.builtin_stories = 400;
  c.model.layers = 2;
  c.model.dim = 48;
  c.model.heads = 4;
  c.model.seq_len = 32;
  c.model.dropout = 0.1;
  c.router.num_experts = 4;
  c.train.batch_size = 8;
  c.train.max_steps = 12;
  c.train.lr = 3e-3;
  c.train.warmup_steps = 3;
  c.train.eval_interval = 6;
  c.train.eval_windows = 16;
  c.train.log_interval = 1;
  c.train.checkpoint_interval = 4;
  c.train.threads = 2;
  c.train.device = "cpu";  // bit-exact comparisons: a GPU's atomics add in no fixed order
  return c;
}

std::vector<nlohmann::json> rows(const std::string& run_dir, const std::string& kind) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line)) {
    auto row = nlohmann::json::parse(line);
    if (row["kind"] == kind) out.push_back(row);
  }
  return out;
}

// Trains `config` into `out` for `stop_after` steps, then resumes it to the end: what a run
// that was interrupted and resumed does.
void train_interrupted(RunConfig config, const std::string& out, int64_t stop_after) {
  config.out = out;
  TrainOptions first;
  first.stop_after = stop_after;
  train(config, first);
  TrainOptions rest;
  rest.resume_dir = out;
  train(RunConfig{}, rest);
}

}  // namespace

TEST(Training, LossFallsOnRealTinyStories) {
  MOELAB_REQUIRE_SHARED("data/tinystories/train.txt");
  Quiet quiet;
  TempDir dir;
  RunConfig c = tiny_config(dir / "run", moelab::testing::shared_path("data/tinystories/train.txt"));
  c.train.max_steps = 80;
  c.train.eval_interval = 0;
  c.train.log_interval = 20;
  c.train.checkpoint_interval = 0;
  c.model.dim = 64;
  c.model.seq_len = 64;
  c.train.batch_size = 16;
  nlohmann::json summary = train(c, {});
  auto train_rows = rows(dir / "run", "train");
  ASSERT_EQ(train_rows.size(), 4u);
  // Uniform guessing over the 81 ids is ln 81 = 4.39 nats; the unigram entropy of the text is
  // about 2.9 nats. 80 steps must clearly beat unigram statistics.
  EXPECT_LT(summary["final_val_loss"].get<double>(), 2.6);
  EXPECT_LT(train_rows.back()["loss"].get<double>(), train_rows.front()["loss"].get<double>() - 0.8);
  EXPECT_GT(summary["tokens_per_s"].get<double>(), 0.0);
  for (const char* key : {"final_val_loss", "final_ppl", "tokens_per_s", "steps", "routing"})
    EXPECT_TRUE(summary.contains(key)) << key;
  EXPECT_TRUE(summary["routing"].contains("drop_rate"));
  EXPECT_EQ(summary["routing"]["layers"].size(), 2u);
}

TEST(Training, DeviceBatchesAreTheSamplersWindows) {
  // The trainer gathers windows from the resident corpus by the sampler's starts; they must be
  // exactly the windows BatchSampler::next copies out, for this rank's rows of the global batch.
  TempDir dir;
  std::vector<uint32_t> ids(5000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<uint32_t>((i * 7919) % 97);
  write_token_file(dir / "tokens.bin", ids, 97);
  TokenFile tokens(dir / "tokens.bin");
  BatchSampler on_host(tokens, 6, 16, 42), for_device(tokens, 6, 16, 42);
  TrainBatches batches(tokens, for_device, 6, 16, /*first_row=*/2, /*rows=*/3, torch::kCPU);
  torch::Tensor inputs = torch::empty({6, 16}, torch::kLong), targets = torch::empty({6, 16}, torch::kLong);
  for (int step = 0; step < 3; ++step) {
    on_host.next(inputs.data_ptr<int64_t>(), targets.data_ptr<int64_t>());
    batches.draw();
    batches.gather();
    EXPECT_TRUE(torch::equal(batches.inputs(), inputs.narrow(0, 2, 3))) << "step " << step;
    EXPECT_TRUE(torch::equal(batches.targets(), targets.narrow(0, 2, 3))) << "step " << step;
  }
  EXPECT_EQ(on_host.state(), for_device.state());
}

TEST(Training, ResumeReproducesTheUninterruptedRun) {
  Quiet quiet;
  TempDir dir;
  train(tiny_config(dir / "straight"), {});
  TrainOptions first_half;
  first_half.stop_after = 5;  // not on a checkpoint interval: the stop writes its own
  train(tiny_config(dir / "resumed"), first_half);
  EXPECT_FALSE(file_exists(dir / "resumed/summary.json"));
  TrainOptions second_half;
  second_half.resume_dir = dir / "resumed";
  train(RunConfig{}, second_half);

  auto a = rows(dir / "straight", "train"), b = rows(dir / "resumed", "train");
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(b.size(), 12u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["step"], b[i]["step"]);
    EXPECT_EQ(a[i]["step_loss"].get<double>(), b[i]["step_loss"].get<double>()) << "step " << a[i]["step"];
    EXPECT_EQ(a[i]["routing"]["expert_load"], b[i]["routing"]["expert_load"]);
  }
  auto ea = rows(dir / "straight", "eval"), eb = rows(dir / "resumed", "eval");
  ASSERT_EQ(ea.size(), eb.size());
  for (size_t i = 0; i < ea.size(); ++i) EXPECT_EQ(ea[i]["val_loss"].get<double>(), eb[i]["val_loss"].get<double>());
}

// A stop off a multiple of train.log_interval: the interval in progress is checkpointed, so
// the resumed run logs the same interval losses.
TEST(Training, ResumeOffTheLogIntervalLogsTheSameLosses) {
  Quiet quiet;
  TempDir dir;
  RunConfig c = tiny_config(dir / "straight");
  c.train.log_interval = 3;
  train(c, {});
  train_interrupted(c, dir / "resumed", 5);
  auto a = rows(dir / "straight", "train"), b = rows(dir / "resumed", "train");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << a[i]["step"];
}

TEST(Training, ResumeWithExpertBiasAndExpertChoice) {
  Quiet quiet;
  TempDir dir;
  RunConfig c = tiny_config(dir / "a");
  c.router.strategy = "expert_choice";
  c.router.bias_rate = 0.01;  // buffers must round-trip too
  c.train.max_steps = 8;
  train(c, {});
  train_interrupted(c, dir / "b", 3);
  auto a = rows(dir / "a", "train"), b = rows(dir / "b", "train");
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(a.back()["step_loss"].get<double>(), b.back()["step_loss"].get<double>());
}

TEST(Training, RefusesToOverwriteARunAndKeepsCorruptCheckpointsIntact) {
  Quiet quiet;
  TempDir dir;
  RunConfig c = tiny_config(dir / "run");
  c.train.max_steps = 4;
  train(c, {});
  std::string metrics_before = read_text_file(dir / "run/metrics.jsonl");
  try {
    train(c, {});
    FAIL() << "a second run into the same directory must be refused";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("already holds a run"), std::string::npos);
  }
  EXPECT_EQ(read_text_file(dir / "run/metrics.jsonl"), metrics_before);

  const std::string ckpt = checkpoint_path(dir / "run");
  std::string bytes = read_text_file(ckpt);
  std::string corrupt = bytes.substr(0, bytes.size() / 2);
  write_file_atomic(ckpt, corrupt);
  TrainOptions resume;
  resume.resume_dir = dir / "run";
  try {
    train(RunConfig{}, resume);
    FAIL() << "a truncated checkpoint must be refused";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("latest.pt"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_text_file(ckpt), corrupt);  // refused, not rewritten
  EXPECT_EQ(read_text_file(dir / "run/metrics.jsonl"), metrics_before);

  write_file_atomic(ckpt, "not a checkpoint at all");
  EXPECT_THROW(load_run(dir / "run"), UserError);
}

// A checkpoint of another model shape is refused with the first difference, not loaded.
TEST(Checkpoints, AnotherModelsCheckpointIsRefusedNamingTheTensor) {
  Quiet quiet;
  TempDir dir;
  RunConfig wide = tiny_config(dir / "wide");
  wide.model.dim = 64;
  wide.train.max_steps = 2;
  train(wide, {});
  RunConfig narrow = tiny_config(dir / "narrow");
  narrow.train.max_steps = 2;
  train(narrow, {});
  const std::string narrow_ckpt = read_text_file(checkpoint_path(dir / "narrow"));
  write_file_atomic(checkpoint_path(dir / "narrow"), read_text_file(checkpoint_path(dir / "wide")));
  const std::string message = moelab::testing::error_of([&] { load_run(dir / "narrow"); });
  // The first difference, named: the token embedding is [vocab, 64] there, [vocab, 48] here.
  EXPECT_NE(message.find("latest.pt: a checkpoint of another model: tensor 'tok_emb.weight' is Float ["), std::string::npos) << message;
  EXPECT_NE(message.find(", 64] there, this run's config.json makes it Float ["), std::string::npos) << message;
  TrainOptions resume;
  resume.resume_dir = dir / "narrow";
  EXPECT_NE(moelab::testing::error_of([&] { train(RunConfig{}, resume); }).find("a checkpoint of another model"), std::string::npos);
  // Other experts: the router's gate differs first.
  RunConfig more = tiny_config(dir / "more");
  more.router.num_experts = 8;
  more.train.max_steps = 2;
  train(more, {});
  write_file_atomic(checkpoint_path(dir / "narrow"), read_text_file(checkpoint_path(dir / "more")));
  EXPECT_NE(moelab::testing::error_of([&] { load_run(dir / "narrow"); }).find("a checkpoint of another model: tensor 'block0."),
            std::string::npos);
  write_file_atomic(checkpoint_path(dir / "narrow"), narrow_ckpt);
  EXPECT_NO_THROW(load_run(dir / "narrow"));
}



// A full disk (here a file-size limit, which fails writes the same way) while a checkpoint is
// written: one error naming the file and the reason, the previous checkpoint intact, no
// temporary file left.
TEST(Checkpoints, AFailedWriteKeepsThePreviousCheckpointAndLeavesNoTempFile) {
  Quiet quiet;
  TempDir dir;
  RunConfig c = tiny_config(dir / "run");
  c.train.max_steps = 2;
  train(c, {});
  LoadedRun run = load_run(dir / "run");
  const std::string ckpt = checkpoint_path(dir / "run");
  const std::string before = read_text_file(ckpt);
  torch::optim::AdamW optimizer(run.model->parameters());
  TrainingState state;
  state.step = 99;
  ::signal(SIGXFSZ, SIG_IGN);  // a write past the limit then fails with EFBIG instead of killing
  rlimit old{};
  ::getrlimit(RLIMIT_FSIZE, &old);
  rlimit small = old;
  small.rlim_cur = 16 * 1024;  // the checkpoint is larger
  ::setrlimit(RLIMIT_FSIZE, &small);
  const std::string message = moelab::testing::error_of([&] { save_checkpoint(ckpt, *run.model, optimizer, state); });
  ::setrlimit(RLIMIT_FSIZE, &old);
  ::signal(SIGXFSZ, SIG_DFL);
  EXPECT_NE(message.find("latest.pt: not written (File too large); any earlier version of it is kept"), std::string::npos)
      << message;
  EXPECT_TRUE(read_text_file(ckpt) == before);
  for (const auto& entry : std::filesystem::directory_iterator(dir / "run/checkpoints"))
    EXPECT_EQ(entry.path().filename(), "latest.pt") << "left behind: " << entry.path();
}

// AdamW by hand, two steps of different gradients, with train.adam_beta2 = 0.999 (the seed's):
// decoupled decay on the matrix, bias-corrected moments, eps 1e-8.
TEST(Optimizer, StepsAreAdamWWithTheConfiguredBeta2) {
  torch::manual_seed(2);
  TrainConfig tc;
  tc.lr = 0.1;
  tc.weight_decay = 0.5;
  tc.adam_beta2 = 0.999;
  torch::Tensor w = torch::randn({3, 2}, torch::dtype(torch::kDouble).requires_grad(true));
  torch::Tensor expected = w.detach().clone(), m = torch::zeros_like(expected), v = torch::zeros_like(expected);
  TrainingOptimizer optimizer({w}, tc);
  for (int t = 1; t <= 2; ++t) {
    torch::Tensor g = torch::randn({3, 2}, torch::kDouble);
    w.mutable_grad() = g;
    optimizer.step(torch::ones({}, torch::kDouble));
    expected = expected * (1 - tc.lr * tc.weight_decay);
    m = 0.9 * m + 0.1 * g;
    v = 0.999 * v + 0.001 * g * g;
    expected = expected - tc.lr * (m / (1 - std::pow(0.9, t))) / ((v / (1 - std::pow(0.999, t))).sqrt() + 1e-8);
    EXPECT_TRUE(torch::allclose(w.detach(), expected, 1e-12, 1e-12)) << "step " << t << "\n" << w << "\n" << expected;
  }
}

// Non-finite gradients: the optimizer skips the update (parameters, moments and step count
// untouched) and the trainer stops naming the steps; no checkpoint holds non-finite weights.
TEST(Checkpoints, NonFiniteGradientsAreNeverAppliedNorSaved) {
  torch::manual_seed(0);
  torch::Tensor w = torch::randn({4, 3}, torch::requires_grad());
  TrainConfig tc;
  TrainingOptimizer optimizer({w}, tc);
  w.mutable_grad() = torch::ones({4, 3});
  optimizer.step(torch::ones({}));
  const torch::Tensor after_one = w.detach().clone();
  w.mutable_grad() = torch::full({4, 3}, std::nan(""));
  optimizer.step(torch::full({}, std::nan("")));
  EXPECT_TRUE(torch::equal(w.detach(), after_one));
  w.mutable_grad() = torch::ones({4, 3});
  optimizer.step(torch::ones({}));
  EXPECT_TRUE(w.detach().isfinite().all().item<bool>());
  EXPECT_EQ(static_cast<const torch::optim::AdamWParamState&>(*optimizer.state().state().begin()->second).step(), 2);

  // The recipe for a NaN gradient under a finite loss.
  Quiet quiet;
  TempDir dir;
  RunConfig c = tiny_config(dir / "run");
  c.router.z_coef = 1000;
  c.train.lr = 10;
  c.train.grad_clip = 0;
  c.train.warmup_steps = 0;
  c.train.max_steps = 30;
  c.train.checkpoint_interval = 1;
  const std::string message = moelab::testing::error_of([&] { train(c, {}); });
  ASSERT_FALSE(message.empty()) << "expected the run to stop on a non-finite loss or gradient";
  EXPECT_TRUE(message.find("the gradient was not finite") != std::string::npos ||
              message.find("the training loss is") != std::string::npos)
      << message;
  if (file_exists(checkpoint_path(dir / "run"))) {
    LoadedRun run = load_run(dir / "run");
    for (const auto& p : run.model->parameters()) EXPECT_TRUE(p.isfinite().all().item<bool>());
    EXPECT_NE(message.find("The last good checkpoint is"), std::string::npos) << message;
  } else {
    EXPECT_NE(message.find("No checkpoint was written yet"), std::string::npos) << message;
  }
}

// A run that stopped before its first checkpoint starts again with --out; a validation split
// shorter than one window is refused before step 1.
TEST(Training, ARunWithoutACheckpointRestartsAndShortValidationIsRefusedFirst) {
  Quiet quiet;
  TempDir dir;
  RunConfig c = tiny_config(dir / "run");
  c.train.max_steps = 3;
  ensure_directory(dir / "run");
  write_file_atomic(dir / "run/metrics.jsonl", "{\"kind\": \"train\", \"step\": 1, \"loss\": 9.0}\n");
  TrainOptions resume;
  resume.resume_dir = dir / "run";
  write_file_atomic(dir / "run/config.json", run_config_to_json(c).dump());
  EXPECT_NE(moelab::testing::error_of([&] { train(RunConfig{}, resume); }).find("start it again with --config"), std::string::npos);
  train(c, {});
  EXPECT_EQ(rows(dir / "run", "train").front()["step"], 1);
  EXPECT_NE(rows(dir / "run", "train").front()["loss"], 9.0);

  RunConfig short_valid = tiny_config(dir / "short");
  short_valid.data.val_fraction = 1e-4;
  EXPECT_NE(moelab::testing::error_of([&] { train(short_valid, {}); }).find("fewer than one window of model.seq_len + 1"),
            std::string::npos);
  EXPECT_FALSE(file_exists(dir / "short/metrics.jsonl"));
}

TEST(Training, BpeRunEvaluatesAndGenerates) {
  Quiet quiet;
  moelab::testing::use_built_bpe_tool();
  TempDir dir;
  RunConfig c = tiny_config(dir / "bpe");
  c.data.tokenizer = "bpe";
  c.data.bpe_vocab_size = 400;
  c.train.max_steps = 6;
  nlohmann::json summary = train(c, {});
  EXPECT_TRUE(std::isfinite(summary["final_val_loss"].get<double>()));
  EXPECT_GT(summary["bits_per_char"].get<double>(), 0.0);
  LoadedRun run = load_run(dir / "bpe");
  EXPECT_EQ(run.tokenizer->kind(), "bpe");
  SamplingOptions s;
  s.tokens = 20;
  s.stop_at_end_of_text = false;
  std::string a = generate_text(*run.model, *run.tokenizer, "Once upon a time", s, run.device);
  std::string b = generate_text(*run.model, *run.tokenizer, "Once upon a time", s, run.device);
  EXPECT_EQ(a, b);  // seeded
  EXPECT_EQ(a.rfind("Once upon a time", 0), 0u);
  EXPECT_GT(a.size(), std::string("Once upon a time").size());
}

// Every registered strategy trains (the loss falls over 6 steps on the built-in stories) and
// reports what it routes: expert choice drops nothing, hash's k gates are equal (entropy
// log k where capacity dropped nothing), top1 has one gate per token and computes one expert
// per token, so fewer FLOPs than the others; hash has no gate to count.
TEST(Training, EveryStrategyTrains) {
  Quiet quiet;
  std::map<std::string, double> flops, gate_parameters;
  for (const std::string& strategy : strategy_names()) {
    TempDir dir;
    RunConfig c = tiny_config(dir / "run");
    c.router.strategy = strategy;
    c.router.z_coef = 1e-3;
    c.train.max_steps = 6;
    c.train.checkpoint_interval = 0;
    nlohmann::json summary = train(c, {});
    EXPECT_TRUE(std::isfinite(summary["final_val_loss"].get<double>())) << strategy;
    auto r = rows(dir / "run", "train");
    EXPECT_LT(r.back()["loss"].get<double>(), r.front()["loss"].get<double>()) << strategy;
    for (const auto& row : r) {
      const nlohmann::json& routing = row["routing"];
      int64_t load = 0;
      for (const auto& l : routing["expert_load"]) load += l.get<int64_t>();
      EXPECT_GT(load, 0) << strategy;
      if (strategy == "expert_choice") EXPECT_EQ(routing["drop_rate"].get<double>(), 0.0);
      if (strategy == "hash" && routing["drop_rate"].get<double>() == 0.0)
        EXPECT_NEAR(routing["gate_entropy"].get<double>(), std::log(2.0), 1e-6);
      if (strategy == "hash") EXPECT_LE(routing["gate_entropy"].get<double>(), std::log(2.0) + 1e-9);
      if (strategy == "top1") EXPECT_EQ(routing["gate_entropy"].get<double>(), 0.0);
    }
    flops[strategy] = summary["flops_per_token"].get<double>();
    gate_parameters[strategy] = summary["router_parameters"].get<double>();
  }
  EXPECT_LT(flops["top1"], flops["softk"]);
  EXPECT_EQ(flops["topk_hard"], flops["softk"]);
  EXPECT_EQ(flops["sinkhorn"], flops["softk"]);
  EXPECT_EQ(gate_parameters["hash"], 0.0);
  EXPECT_EQ(flops["hash"] + 6.0 * 2 * gate_parameters["softk"], flops["softk"]);  // 2 MoE layers' gates
}

#include "data/token_file.h"
#include "trace/placement_jsonl.h"
#include "trace/recorder.h"

TEST(Tracing, RecordedRoutingIsWhatTheModelUsedAndChangesNothing) {
  Quiet quiet;
  TempDir dir;
  RunConfig c = tiny_config(dir / "run");
  c.train.max_steps = 4;
  c.train.trace_interval = 2;
  train(c, {});
  // Training wrote the routing of steps 2 and 4, one line per MoE layer.
  int lines = 0;
  read_placement_jsonl(dir / "run/traces/train_routing.jsonl", -1, 0, [&](TraceRecord&& r) {
    EXPECT_EQ(r.tokens(), c.train.batch_size * c.model.seq_len);
    EXPECT_EQ(r.batch_id, lines < 2 ? 2 : 4);
    ++lines;
    return true;
  });
  EXPECT_EQ(lines, 4);

  LoadedRun run = load_run(dir / "run");
  TokenFile tokens(dir / "run/data/valid.bin");
  RecordOptions o;
  o.batch_size = 3;
  o.max_sequences = 6;
  o.rows = 4;
  std::vector<TraceRecord> prefill;
  record_routing({run.model.get()}, tokens, o, run.device, [&](const TraceRecord& r, int64_t, int64_t) { prefill.push_back(r); });
  ASSERT_EQ(prefill.size(), 4u);  // 2 batches x 2 MoE layers
  EXPECT_EQ(prefill[1].layer, 1);
  // Origin rows: round-robin by sequence.
  EXPECT_EQ(prefill[2].origin_rows[0], 3);
  EXPECT_EQ(prefill[2].origin_rows[32 * 2], 5 % 4);

  // The same batch through the model directly: the plan equals the recorded routing, and
  // the logits are those of a forward pass without any recording.
  torch::NoGradGuard no_grad;
  torch::Tensor input = torch::empty({3, 32}, torch::kLong);
  for (int r = 0; r < 3; ++r) tokens.copy_window(r * 32, 32, input.data_ptr<int64_t>() + r * 32);
  torch::Tensor logits = run.model->forward(input).logits;
  for (int l = 0; l < 2; ++l) {
    const RoutingPlan& plan = run.model->moe_layers()[l]->last_plan();
    torch::Tensor ids = torch::tensor(prefill[l].experts, torch::kInt32).view({-1, 2}).to(torch::kLong);
    torch::Tensor gates = torch::tensor(prefill[l].weights).view({-1, 2});
    EXPECT_TRUE(torch::equal(ids, plan.expert_ids));
    EXPECT_TRUE(torch::equal(gates, plan.gates));
  }
  record_routing({run.model.get()}, tokens, o, run.device, [](const TraceRecord&, int64_t, int64_t) {});
  EXPECT_TRUE(torch::equal(logits, run.model->forward(input).logits));

  // Decode: positions 1 and 5 of each sequence, as prefill recorded them.
  o.mode = "decode";
  o.positions = {1, 5};
  std::vector<std::pair<int64_t, TraceRecord>> decode;
  record_routing({run.model.get()}, tokens, o, run.device, [&](const TraceRecord& r, int64_t, int64_t p) { decode.emplace_back(p, r); });
  ASSERT_EQ(decode.size(), 8u);  // 2 batches x 2 layers x 2 positions
  const auto& [position, at] = decode[1];  // batch 0, layer 0, position 5
  EXPECT_EQ(position, 5);
  ASSERT_EQ(at.tokens(), 3);
  for (int r = 0; r < 3; ++r)
    for (int j = 0; j < 2; ++j) EXPECT_EQ(at.experts[r * 2 + j], prefill[0].experts[(r * 32 + 4) * 2 + j]);

  // Three replicas (7 sequences: batches of 3, 3 and 1 run at once, one per thread) record what
  // one model records, in the same order, and leave the intra-op thread count as it was.
  o.mode = "prefill";
  o.max_sequences = 7;
  o.origin = "random";
  std::vector<std::tuple<int64_t, int64_t, TraceRecord>> one, three;
  record_routing({run.model.get()}, tokens, o, run.device,
                 [&](const TraceRecord& r, int64_t batch, int64_t p) { one.emplace_back(batch, p, r); });
  LoadedRun second = load_run(dir / "run"), third = load_run(dir / "run");
  const int threads = at::get_num_threads();
  record_routing({run.model.get(), second.model.get(), third.model.get()}, tokens, o, run.device,
                 [&](const TraceRecord& r, int64_t batch, int64_t p) { three.emplace_back(batch, p, r); });
  EXPECT_EQ(at::get_num_threads(), threads);
  ASSERT_EQ(one.size(), 6u);  // 3 batches x 2 layers
  ASSERT_EQ(three.size(), one.size());
  for (size_t i = 0; i < one.size(); ++i) {
    const auto& [batch1, p1, r1] = one[i];
    const auto& [batch3, p3, r3] = three[i];
    EXPECT_EQ(batch1, batch3);
    EXPECT_EQ(batch1, static_cast<int64_t>(i / 2));
    EXPECT_EQ(p3, -1);
    EXPECT_EQ(r1.layer, r3.layer);
    EXPECT_EQ(r1.batch_id, r3.batch_id);
    EXPECT_EQ(r1.origin_rows, r3.origin_rows);
    EXPECT_EQ(r1.experts, r3.experts);
    ASSERT_EQ(r1.weights.size(), r3.weights.size());
    for (size_t j = 0; j < r1.weights.size(); ++j) EXPECT_NEAR(r1.weights[j], r3.weights[j], 1e-6);
  }
}

#include "trace/neupims_csv.h"
#include "util/process.h"

// Crash consistency: `moelab train` killed (SIGKILL) at random moments — in data preparation,
// mid-step, inside a checkpoint write or an evaluation — then resumed (or started again when
// it died before its first checkpoint), six times over: the run that finally finishes has
// logged exactly the losses of the uninterrupted one, step for step, and its evaluations.
TEST(Training, KilledAtRandomMomentsAndResumedEndsWithTheUninterruptedLosses) {
  TempDir dir;
  RunConfig c = tiny_config(dir / "unused");
  c.train.max_steps = 24;
  c.train.checkpoint_interval = 2;
  write_file_atomic(dir / "config.json", run_config_to_json(c).dump(2));
  auto start = [&](const std::string& run, const std::string& log) {
    std::vector<std::string> argv = {MOELAB_BINARY, "train", "--sample", "0"};
    if (file_exists(run + "/checkpoints/latest.pt")) argv.insert(argv.end(), {"--resume", run});
    else argv.insert(argv.end(), {"--config", dir / "config.json", "--out", run});
    return spawn_logged(argv, dir / log);
  };
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(wait_for(start(dir / "straight", "straight.log")).second) << read_text_file(dir / "straight.log");
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("kill times drawn with seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> moment(0.05 * wall, wall);
  int kills = 0;
  for (int attempt = 0; attempt < 40; ++attempt) {
    const std::string log = "attempt" + std::to_string(attempt) + ".log";
    const pid_t pid = start(dir / "killed", log);
    ASSERT_GT(pid, 0);
    if (kills == 6) {
      ASSERT_TRUE(wait_for(pid).second) << read_text_file(dir / log);
      break;
    }
    // Sleep to the drawn moment unless the attempt ends first.
    const auto kill_at = std::chrono::steady_clock::now() + std::chrono::duration<double>(moment(rng));
    int status = 0;
    bool exited = false;
    while (!exited && std::chrono::steady_clock::now() < kill_at) {
      exited = ::waitpid(pid, &status, WNOHANG) == pid;
      if (!exited) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (exited) {
      ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << read_text_file(dir / log);
      if (file_exists(dir / "killed/summary.json")) break;  // finished before the kill came
      continue;
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    ++kills;
  }
  ASSERT_TRUE(file_exists(dir / "killed/summary.json")) << "the killed run never finished";
  auto a = rows(dir / "straight", "train"), b = rows(dir / "killed", "train");
  ASSERT_EQ(a.size(), 24u);
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(b[i]["step"], a[i]["step"]);
    EXPECT_EQ(b[i]["loss"].get<double>(), a[i]["loss"].get<double>()) << "step " << a[i]["step"];
    EXPECT_EQ(b[i]["step_loss"].get<double>(), a[i]["step_loss"].get<double>()) << "step " << a[i]["step"];
  }
  auto ea = rows(dir / "straight", "eval"), eb = rows(dir / "killed", "eval");
  ASSERT_EQ(eb.size(), ea.size());
  for (size_t i = 0; i < ea.size(); ++i) EXPECT_EQ(eb[i]["val_loss"].get<double>(), ea[i]["val_loss"].get<double>());
}

// `moelab trace --format neupims` on a run whose capacity drops assignments: every row holds
// the router's k choices (exactly k non-zero scores, layer_id 0), so that moelab's own
// `trace stats` and `trace convert` read what it wrote; the JSONL of the same run keeps the
// drops as zero gates.
TEST(Tracing, NeupimsFilesHoldTheRoutersChoicesAndReadBack) {
  Quiet quiet;
  TempDir dir;
  RunConfig c = tiny_config(dir / "run");
  c.train.max_steps = 2;
  c.router.capacity_factor = 0.5;
  train(c, {});
  std::string text;
  for (int i = 0; i < 40; ++i) text += "Once upon a time a little fox found a red ball by the river. She was very happy.\n";
  write_file_atomic(dir / "stories.txt", text);
  auto moelab = [&](std::vector<std::string> args, const std::string& log) {
    args.insert(args.begin(), MOELAB_BINARY);
    return wait_for(spawn_logged(args, dir / log)).second;
  };
  ASSERT_TRUE(moelab({"trace", "--run", dir / "run", "--data", dir / "stories.txt", "--format", "neupims", "--out", dir / "np",
                      "--max-sequences", "16"},
                     "np.log"))
      << read_text_file(dir / "np.log");
  ASSERT_TRUE(moelab({"trace", "--run", dir / "run", "--data", dir / "stories.txt", "--format", "jsonl", "--out", dir / "t.jsonl",
                      "--max-sequences", "16"},
                     "jsonl.log"));
  int64_t dropped = 0;
  read_placement_jsonl(dir / "t.jsonl", -1, 0, [&](TraceRecord&& r) {
    for (float w : r.weights) dropped += w == 0.0f;
    return true;
  });
  EXPECT_GT(dropped, 0) << "capacity 0.5 should drop assignments";
  const std::string csv = dir / "np/Encoder_Batch_0/Layer_1/moelab_run_layer1_encoder_8seqs_256tokens.csv";
  ASSERT_TRUE(file_exists(csv));
  TraceRecord r = read_neupims_csv(csv);
  EXPECT_EQ(r.k, 2);
  EXPECT_EQ(r.layer, 0);
  EXPECT_EQ(r.tokens(), 256);
  for (float w : r.weights) EXPECT_GT(w, 0.0f);
  const std::string stats_before = read_text_file(dir / "np/Encoder_Batch_0/Layer_1/moelab_run_layer1_encoder_8seqs_256tokens_top2_stats.txt");
  EXPECT_NE(stats_before.find("(Layer 1 - ALL SEQUENCES)\n"), std::string::npos);
  EXPECT_NE(stats_before.find("Sequence length: 32\n"), std::string::npos);
  // moelab recomputes the same stats from its own CSV, and converts it.
  ASSERT_TRUE(moelab({"trace", "stats", "--in", csv, "--out-prefix", dir / "again"}, "stats.log")) << read_text_file(dir / "stats.log");
  EXPECT_EQ(read_text_file(dir / "again_top2_stats.txt"), stats_before);
  ASSERT_TRUE(moelab({"trace", "convert", "--in", csv, "--out", dir / "converted.jsonl"}, "convert.log"));
}

// ---- On the GPU (skipped without one): the captured CUDA-graph step against the eager step,
// and the fused AdamW against libtorch's AdamW. The step is captured in bf16 (an fp32 MoE
// step reads expert sizes back to the host and stays eager). Runs go through `moelab train`
// in a child process each, as users run them.

#include "models/attention.h"
#include "train/autocast.h"
#include "train/cuda_graph.h"
#include "train/optimizer.h"

#define REQUIRE_CUDA_GRAPHS()                                                                       \
  if (!torch::cuda::is_available() || !CudaGraph::available() || !TrainingOptimizer::fused_available()) \
  GTEST_SKIP() << "no CUDA device, or a build without CUDA graphs and fused AdamW: GPU training test skipped"

namespace {
// tiny_config's model on the GPU, 10 steps; `extra` is appended to the command line.
bool gpu_train(const std::string& out, const std::string& strategy, bool graph, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> argv = {MOELAB_BINARY, "train", "--sample", "0", "--out", out};
  for (const std::string setting :
       {"data.builtin_stories=400", "model.layers=2", "model.dim=48", "model.heads=4", "model.seq_len=32", "model.dropout=0.1",
        "router.num_experts=4", "router.capacity_factor=1.0",  // drops, so capacity runs inside the graph too
        "train.batch_size=8", "train.max_steps=10", "train.lr=3e-3", "train.warmup_steps=3", "train.eval_interval=6",
        "train.eval_windows=16", "train.log_interval=1", "train.checkpoint_interval=4", "train.device=\"cuda\"",
        "train.dtype=\"bf16\""}) {
    argv.push_back("--set");
    argv.push_back(setting);
  }
  for (const std::string setting : {"router.strategy=\"" + strategy + "\"", std::string("train.cuda_graph=") + (graph ? "true" : "false")}) {
    argv.push_back("--set");
    argv.push_back(setting);
  }
  argv.insert(argv.end(), extra.begin(), extra.end());
  return wait_for(spawn_logged(argv, out + ".log")).second;
}
}  // namespace

TEST(TrainingOnGpu, CapturedStepsReproduceEagerSteps) {
  REQUIRE_CUDA_GRAPHS();
  TempDir dir;
  for (const std::string& strategy : strategy_names()) {
    ASSERT_TRUE(gpu_train(dir / (strategy + "-eager"), strategy, false)) << read_text_file(dir / (strategy + "-eager.log"));
    ASSERT_TRUE(gpu_train(dir / (strategy + "-graph"), strategy, true)) << read_text_file(dir / (strategy + "-graph.log"));
    EXPECT_NE(read_text_file(dir / (strategy + "-graph.log")).find("captured as a CUDA graph"), std::string::npos);
    auto eager = rows(dir / (strategy + "-eager"), "train"), graph = rows(dir / (strategy + "-graph"), "train");
    ASSERT_EQ(eager.size(), 10u);
    ASSERT_EQ(graph.size(), 10u);
    // Steps 1-3 run eagerly in both; from step 4 on the graph replays the captured step. The
    // same kernels run in the same order on the same values, dropout included (its Philox
    // offsets advance alike), but the expert-bias gradients are sums of atomic float adds in
    // no fixed order, so two runs drift apart in the last bits: 1e-3 relative over 10 steps.
    for (size_t i = 0; i < eager.size(); ++i) {
      const double a = eager[i]["step_loss"].get<double>(), b = graph[i]["step_loss"].get<double>();
      EXPECT_NEAR(b, a, 1e-3 * std::abs(a)) << strategy << " step " << i + 1;
      EXPECT_NEAR(graph[i]["grad_norm"].get<double>(), eager[i]["grad_norm"].get<double>(),
                  1e-2 * eager[i]["grad_norm"].get<double>()) << strategy << " step " << i + 1;
    }
    EXPECT_EQ(graph[0]["routing"]["expert_load"], eager[0]["routing"]["expert_load"]) << strategy;  // before any drift
    EXPECT_LT(graph.back()["loss"].get<double>(), graph.front()["loss"].get<double>()) << strategy;
  }
}

// train.cuda_kernels=false runs every op moelab has a kernel for on its libtorch reference:
// the same training in other arithmetic. Dropout is off so that both draw nothing; bf16
// rounds differently in the two (where a sum is taken, in which dtype a bias is added), so
// the step losses agree to 5e-3 relative at the first step and 2e-2 over ten. The references
// run asks for the CUDA graph and must be refused it (both runs are then eager).
TEST(TrainingOnGpu, KernelsAndReferencesTrainAlike) {
  REQUIRE_CUDA_GRAPHS();
  TempDir dir;
  for (const std::string& strategy : strategy_names()) {
    const std::vector<std::string> no_dropout = {"--set", "model.dropout=0"};
    std::vector<std::string> references = no_dropout;
    references.insert(references.end(), {"--set", "train.cuda_kernels=false"});
    ASSERT_TRUE(gpu_train(dir / (strategy + "-kernels"), strategy, false, no_dropout)) << read_text_file(dir / (strategy + "-kernels.log"));
    ASSERT_TRUE(gpu_train(dir / (strategy + "-references"), strategy, true, references))
        << read_text_file(dir / (strategy + "-references.log"));
    EXPECT_NE(read_text_file(dir / (strategy + "-references.log")).find("train.cuda_kernels is false"), std::string::npos);
    auto kernels = rows(dir / (strategy + "-kernels"), "train"), references_rows = rows(dir / (strategy + "-references"), "train");
    ASSERT_EQ(kernels.size(), 10u);
    ASSERT_EQ(references_rows.size(), 10u);
    for (size_t i = 0; i < kernels.size(); ++i) {
      const double a = kernels[i]["step_loss"].get<double>(), b = references_rows[i]["step_loss"].get<double>();
      EXPECT_NEAR(b, a, (i == 0 ? 5e-3 : 2e-2) * std::abs(a)) << strategy << " step " << i + 1;
    }
  }
}

// Dropout on the attention probabilities happens inside libtorch's fused attention, inside
// the captured step: every replay must advance the generator's offset and draw a new mask, or
// each step would drop the same scores (a run with attention dropout would train on one fixed
// mask). Head size 64 and bf16, as the unified model trains, so that the fused kernels run.
TEST(TrainingOnGpu, AttentionDropoutDrawsANewMaskOnEveryReplay) {
  REQUIRE_CUDA_GRAPHS();
  torch::manual_seed(11);
  const auto cuda = torch::TensorOptions().device(torch::kCUDA);
  CausalSelfAttention attention(256, 4, 128, /*rope=*/false, /*dropout=*/0.1);
  attention.to(torch::kCUDA);
  attention.train();
  torch::Tensor x = torch::randn({4, 128, 256}, cuda), out = torch::zeros({4, 128, 256}, cuda);
  torch::Tensor without_dropout, first, second;
  {
    CudaSideStream side(0);
    CudaAutocast autocast(true);
    auto forward = [&] { out.copy_(attention.forward(x).detach()); };
    attention.eval();
    forward();
    without_dropout = out.clone();
    attention.train();
    for (int warmup = 0; warmup < 2; ++warmup) forward();
    CudaGraph graph;
    graph.capture(forward);
    graph.replay();
    torch::cuda::synchronize();
    first = out.clone();
    graph.replay();
    torch::cuda::synchronize();
    second = out.clone();
  }
  EXPECT_FALSE(torch::allclose(first, without_dropout)) << "the captured forward dropped nothing";
  EXPECT_FALSE(torch::allclose(second, first)) << "two replays drew the same attention dropout mask";
}

TEST(TrainingOnGpu, ResumeWithCapturedSteps) {
  REQUIRE_CUDA_GRAPHS();
  TempDir dir;
  ASSERT_TRUE(gpu_train(dir / "straight", "softk", true));
  // Eager 1-3, captured 4-6; the resumed run runs 7-9 eagerly and captures again at 10.
  ASSERT_TRUE(gpu_train(dir / "resumed", "softk", true, {"--stop-after", "6"})) << read_text_file(dir / "resumed.log");
  ASSERT_TRUE(wait_for(spawn_logged({MOELAB_BINARY, "train", "--sample", "0", "--resume", dir / "resumed"}, dir / "resume.log")).second)
      << read_text_file(dir / "resume.log");
  auto a = rows(dir / "straight", "train"), b = rows(dir / "resumed", "train");
  ASSERT_EQ(a.size(), 10u);
  ASSERT_EQ(b.size(), 10u);
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(b[i]["step_loss"].get<double>(), a[i]["step_loss"].get<double>(), 1e-3 * a[i]["step_loss"].get<double>())
        << "step " << i + 1;
}

// Fine-tuning runs the same captured step: each method's adapter step is captured and replays
// what its eager step computes (adapter-only optimizer, frozen base, perft_r's own router).
TEST(TrainingOnGpu, FinetuneStepsAreCapturedAndReproduceEagerSteps) {
  REQUIRE_CUDA_GRAPHS();
  TempDir dir;
  ASSERT_TRUE(gpu_train(dir / "base", "softk", true)) << read_text_file(dir / "base.log");
  for (const std::string method : {"perft_r", "perft_e", "shared", "lora"}) {
    const std::vector<std::string> finetune = {"--set", "finetune.base=\"" + dir / "base" + "\"", "--set",
                                               "finetune.method=\"" + method + "\"", "--set", "data.builtin_style=\"fables\""};
    ASSERT_TRUE(gpu_train(dir / (method + "-eager"), "softk", false, finetune)) << read_text_file(dir / (method + "-eager.log"));
    ASSERT_TRUE(gpu_train(dir / (method + "-graph"), "softk", true, finetune)) << read_text_file(dir / (method + "-graph.log"));
    EXPECT_NE(read_text_file(dir / (method + "-graph.log")).find("captured as a CUDA graph"), std::string::npos) << method;
    auto eager = rows(dir / (method + "-eager"), "train"), graph = rows(dir / (method + "-graph"), "train");
    ASSERT_EQ(eager.size(), 10u);
    ASSERT_EQ(graph.size(), 10u);
    for (size_t i = 0; i < eager.size(); ++i)
      EXPECT_NEAR(graph[i]["step_loss"].get<double>(), eager[i]["step_loss"].get<double>(),
                  1e-3 * eager[i]["step_loss"].get<double>()) << method << " step " << i + 1;
    EXPECT_LT(graph.back()["loss"].get<double>(), graph.front()["loss"].get<double>()) << method;
    if (method == "perft_r") EXPECT_TRUE(graph.back().contains("adapter_routing"));
  }
}

TEST(Optimizer, AdamWReferenceMatchesLibtorchAdamW) {
  // kernels::reference::adamw_step, the CUDA kernel's reference, against libtorch's AdamW over
  // three steps with weight decay on one tensor and not the other; gradients pre-scaled for
  // libtorch, scaled inside for the reference. fp32: 1e-6.
  torch::manual_seed(13);
  std::vector<torch::Tensor> ours = {torch::randn({9, 5}), torch::randn({7})};
  std::vector<torch::Tensor> theirs;
  for (const auto& p : ours) theirs.push_back(p.clone().requires_grad_());
  torch::optim::AdamW adamw({torch::optim::OptimizerParamGroup({theirs[0]}, std::make_unique<torch::optim::AdamWOptions>(
                                                                                torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).weight_decay(0.1))),
                             torch::optim::OptimizerParamGroup({theirs[1]}, std::make_unique<torch::optim::AdamWOptions>(
                                                                                torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).weight_decay(0.0)))});
  kernels::AdamWState state;
  state.params = ours;
  for (const auto& p : ours) {
    state.exp_avgs.push_back(torch::zeros_like(p));
    state.exp_avg_sqs.push_back(torch::zeros_like(p));
  }
  state.weight_decays = {0.1, 0.0};
  const torch::Tensor scale = torch::full({}, 0.5);
  for (int step = 1; step <= 3; ++step) {
    state.grads.clear();
    for (size_t i = 0; i < ours.size(); ++i) {
      torch::Tensor g = torch::randn(ours[i].sizes());
      state.grads.push_back(g);
      theirs[i].mutable_grad() = g * 0.5;
    }
    kernels::reference::adamw_step(state, torch::full({}, 0.01), torch::full({}, static_cast<double>(step)), scale, 0.9, 0.95, 1e-8);
    adamw.step();
    for (size_t i = 0; i < ours.size(); ++i)
      EXPECT_TRUE(torch::allclose(ours[i], theirs[i].detach(), 1e-6, 1e-7)) << "step " << step << " tensor " << i;
  }
}

TEST(TrainingOnGpu, FusedAdamWMatchesLibtorchAdamW) {
  REQUIRE_CUDA_GRAPHS();
  torch::manual_seed(5);
  TrainConfig t;
  t.lr = 1e-2;
  t.weight_decay = 0.1;
  t.adam_beta2 = 0.999;  // not the default: the fused kernel must take the configured one
  // A matrix (decayed) and a vector (not), as the model's groups are.
  std::vector<torch::Tensor> cpu = {torch::randn({33, 17}).requires_grad_(), torch::randn({17}).requires_grad_()};
  std::vector<torch::Tensor> gpu;
  for (const auto& p : cpu) gpu.push_back(p.detach().to(torch::kCUDA).requires_grad_());
  TrainingOptimizer fused(gpu, t), reference(cpu, t);
  ASSERT_TRUE(fused.fused());
  ASSERT_FALSE(reference.fused());
  for (int step = 0; step < 5; ++step) {
    const double lr = 1e-2 / (1 + step);  // a schedule: the device learning rate must follow it
    fused.set_learning_rate(lr);
    reference.set_learning_rate(lr);
    for (size_t i = 0; i < cpu.size(); ++i) {
      torch::Tensor g = torch::randn(cpu[i].sizes());
      cpu[i].mutable_grad() = g;
      gpu[i].mutable_grad() = g.to(torch::kCUDA);
    }
    // Clipping's scale, which the optimizer applies as it reads the gradients.
    const double scale = step % 2 ? 0.5 : 1.0;
    fused.step(torch::full({}, scale, torch::kCUDA));
    reference.step(torch::full({}, scale));
    for (size_t i = 0; i < cpu.size(); ++i)
      EXPECT_TRUE(torch::allclose(gpu[i].detach().cpu(), cpu[i].detach(), 1e-5, 1e-6)) << "step " << step << " tensor " << i;
  }
  // The step counts a checkpoint saves follow the device's.
  auto& states = fused.state().state();
  EXPECT_EQ(states.size(), 2u);
  for (const auto& item : states) EXPECT_EQ(static_cast<torch::optim::AdamWParamState&>(*item.second).step(), 5);
}
