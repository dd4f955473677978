// Fine-tuning with adapters (models/adapters.h): adapters start as the identity, the base
// stays bit-identical while they train, adapter-only checkpoints round-trip and resume
// exactly, and each method's trainable parameters are what the formulas say.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "config/run_config.h"
#include "models/adapters.h"
#include "models/tiny_moe.h"
#include "test_support.h"
#include "data/token_file.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/generate.h"
#include "train/run.h"
#include "train/trainer.h"
#include "train/training_run.h"
#include "train/training_step.h"
#include "util/files.h"
#include "util/log.h"

using namespace moelab;
using moelab::testing::error_of;
using moelab::testing::Quiet;
using moelab::testing::TempDir;

namespace {

RunConfig base_config(const std::string& out) {
  RunConfig c = load_run_config("", {});
  c.out = out;
  c.data.builtin_stories = 300;
  c.model.layers = 2;
  c.model.dim = 48;
  c.model.heads = 4;
  c.model.seq_len = 32;
  c.model.vocab_size = 60;
  c.router.num_experts = 4;
  c.router.top_k = 2;
  c.train.batch_size = 8;
  c.train.max_steps = 10;
  c.train.lr = 3e-3;
  c.train.warmup_steps = 2;
  c.train.eval_interval = 0;
  c.train.eval_windows = 8;
  c.train.log_interval = 1;
  c.train.checkpoint_interval = 0;
  c.train.threads = 2;
  c.train.device = "cpu";  // bit-exact comparisons
  return c;
}

RunConfig finetune_config(const std::string& base, const std::string& out, const std::string& method) {
  RunConfig c = base_config(out);
  c.data.builtin_style = "fables";
  c.finetune.base = base;
  c.finetune.method = method;
  c.finetune.rank = 4;
  c.finetune.experts = 4;
  c.finetune.top_k = 2;
  c.train.max_steps = 8;
  return c;
}

std::vector<nlohmann::json> train_rows(const std::string& run_dir) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line)) {
    auto row = nlohmann::json::parse(line);
    if (row["kind"] == "train") out.push_back(row);
  }
  return out;
}

const std::vector<std::string> kAdapterMethods = {"perft_r", "perft_e", "shared", "lora"};

}  // namespace

// Every adapter's output side starts at zero: the adapted model's logits are the base's, bit
// for bit, dense FFN blocks (moe_every 2) and SwiGLU experts included.
TEST(Finetune, AdaptersStartAsTheBaseModel) {
  for (const std::string activation : {"gelu", "swiglu"})
    for (const std::string& method : kAdapterMethods) {
      RunConfig c = base_config("unused");
      c.model.moe_every = 2;
      c.model.activation = activation;
      c.finetune.method = method;
      c.finetune.rank = 4;
      torch::manual_seed(3);
      TinyMoE base(c.model, c.router);
      torch::manual_seed(3);
      TinyMoE adapted(c.model, c.router);
      adapted.attach_adapters(c.finetune);
      base.eval();
      adapted.eval();
      torch::Tensor tokens = torch::randint(0, c.model.vocab_size, {3, c.model.seq_len}, torch::kLong);
      torch::NoGradGuard no_grad;
      EXPECT_TRUE(torch::equal(base.forward(tokens).logits, adapted.forward(tokens).logits)) << method << " " << activation;
      EXPECT_GT(adapted.parameter_count(), base.parameter_count()) << method;
    }
}

// Trainable parameters per method, counted by hand: d = 48, h = 4d = 192, E = 4 experts
// (k = 2), 2 MoE layers, rank r = 4, perft_r with N = 4 adapter experts.
TEST(Finetune, EachMethodsTrainableParametersByHand) {
  const int64_t d = 48, h = 192, E = 4, layers = 2, r = 4, N = 4;
  const int64_t adapter_ffn = d * r + r + r * d + d;  // down [d, r] + bias, up [r, d] + bias
  const std::map<std::string, int64_t> expected = {
      {"perft_r", layers * ((d * N + N) + N * adapter_ffn)},  // linear gate with bias, N adapter experts
      {"perft_e", layers * E * adapter_ffn},
      {"shared", layers * adapter_ffn},
      // qkv [3d, d], proj [d, d], experts' w1 [d, h] and w2 [h, d]: A [in, r] + B [r, out] each
      {"lora", layers * ((d * r + r * 3 * d) + (d * r + r * d) + E * (d * r + r * h) + E * (h * r + r * d))}};
  RunConfig c = base_config("unused");
  torch::manual_seed(1);
  const int64_t base_parameters = TinyMoE(c.model, c.router).parameter_count();
  for (const auto& [method, count] : expected) {
    c.finetune.method = method;
    c.finetune.rank = r;
    c.finetune.experts = N;
    TinyMoE model(c.model, c.router);
    model.attach_adapters(c.finetune);
    EXPECT_EQ(model.trainable_parameter_count(), count) << method;
    EXPECT_EQ(model.parameter_count(), base_parameters + count) << method;
    for (const auto& item : model.named_parameters())
      EXPECT_EQ(item.value().requires_grad(), is_adapter_tensor(item.key())) << method << " " << item.key();
  }
  c.finetune.method = "full";
  TinyMoE full(c.model, c.router);
  full.attach_adapters(c.finetune);
  EXPECT_EQ(full.trainable_parameter_count(), base_parameters);
}

// Training steps of the real loop move the adapters and nothing of the base: every base
// parameter and buffer (the expert bias of an aux-loss-free base included) stays bit-identical.
TEST(Finetune, TrainingLeavesTheBaseBitIdentical) {
  Quiet quiet;
  TempDir dir;
  RunConfig base = base_config(dir / "base");
  base.router.bias_rate = 0.01;
  train(base, {});
  for (const std::string& method : kAdapterMethods) {
    std::unique_ptr<TrainingRun> run = start_training_run(finetune_config(dir / "base", dir / ("ft-" + method), method), {});
    TrainingStep step(*run);
    run->model->train();
    for (int i = 0; i < 4; ++i) {
      run->batches->draw();
      step.run();
    }
    LoadedRun original = load_run(dir / "base", "cpu");
    auto base_tensors = original.model->named_parameters();
    for (const auto& item : original.model->named_buffers()) base_tensors.insert(item.key(), item.value());
    auto adapted = run->model->named_parameters();
    for (const auto& item : run->model->named_buffers()) adapted.insert(item.key(), item.value());
    int64_t moved = 0;
    for (const auto& item : adapted) {
      const std::string& key = item.key();
      if (is_adapter_tensor(key)) {  // the output sides, which started at zero
        const auto ends = [&](const std::string& s) { return key.size() > s.size() && key.compare(key.size() - s.size(), s.size(), s) == 0; };
        if (ends(".b") || ends(".w2") || ends("up.weight")) moved += item.value().abs().sum().item<double>() > 0;
        continue;
      }
      ASSERT_TRUE(base_tensors.contains(item.key())) << item.key();
      EXPECT_TRUE(torch::equal(item.value(), base_tensors[item.key()])) << method << ": " << item.key() << " moved";
    }
    EXPECT_GT(moved, 0) << method << ": no adapter output projection left zero";
  }
}

// The run directory holds the adapters only; an interrupted and resumed fine-tuning run logs
// the losses of the uninterrupted one; eval and generate load base + adapters.
TEST(Finetune, AdapterCheckpointsRoundTripAndResumeExactly) {
  Quiet quiet;
  TempDir dir;
  train(base_config(dir / "base"), {});
  const RunConfig ft = finetune_config(dir / "base", dir / "straight", "perft_r");
  const nlohmann::json summary = train(ft, {});
  RunConfig interrupted = ft;
  interrupted.out = dir / "resumed";
  TrainOptions first;
  first.stop_after = 3;
  train(interrupted, first);
  TrainOptions rest;
  rest.resume_dir = dir / "resumed";
  const nlohmann::json resumed_summary = train(RunConfig{}, rest);

  auto a = train_rows(dir / "straight"), b = train_rows(dir / "resumed");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["step_loss"].get<double>(), b[i]["step_loss"].get<double>()) << "step " << a[i]["step"];
    EXPECT_EQ(a[i]["adapter_routing"]["expert_load"], b[i]["adapter_routing"]["expert_load"]);
  }
  EXPECT_EQ(summary["final_val_loss"].get<double>(), resumed_summary["final_val_loss"].get<double>());
  EXPECT_EQ(summary["finetune"]["initial_val_loss"], resumed_summary["finetune"]["initial_val_loss"]);

  // Adapters and optimizer state only: a small fraction of the base's checkpoint.
  EXPECT_LT(file_size(checkpoint_path(dir / "straight")) * 4, file_size(checkpoint_path(dir / "base")));
  LoadedRun straight = load_run(dir / "straight", "cpu"), resumed = load_run(dir / "resumed", "cpu");
  auto resumed_parameters = resumed.model->named_parameters();
  for (const auto& item : straight.model->named_parameters())
    EXPECT_TRUE(torch::equal(item.value(), resumed_parameters[item.key()])) << item.key();
  EXPECT_EQ(straight.step, 8);
  EXPECT_TRUE(straight.model->base_frozen());
  EXPECT_EQ(straight.model->routed_adapters().size(), 2u);
  // The loaded base + adapters score what the run's own last eval scored (the same windows).
  const TokenFile valid(dir / "straight/data/valid.bin");
  const EvalResult eval = evaluate(*straight.model, valid, ft.model.seq_len, ft.train.batch_size, ft.train.eval_windows, 1.0,
                                   torch::kCPU, DistributedContext{});
  EXPECT_NEAR(eval.loss, summary["final_val_loss"].get<double>(), 1e-6);
  SamplingOptions sampling;
  sampling.tokens = 40;
  sampling.stop_at_end_of_text = false;
  EXPECT_EQ(sample_tokens(*straight.model, {}, straight.tokenizer->eot_id(), sampling, torch::kCPU).size(), 40u);
}

// Step 0 of a fine-tuning run scores the base model: the base domain's loss equals the base
// run's own final evaluation, and the target domain is clearly harder for it.
TEST(Finetune, StepZeroIsTheBaseAndTheTargetIsAShift) {
  Quiet quiet;
  TempDir dir;
  RunConfig base = base_config(dir / "base");
  base.train.max_steps = 60;
  const nlohmann::json base_summary = train(base, {});
  RunConfig ft = finetune_config(dir / "base", dir / "ft", "shared");
  ft.train.max_steps = 1;
  const nlohmann::json summary = train(ft, {});
  EXPECT_EQ(summary["finetune"]["initial_base_val_loss"].get<double>(), base_summary["final_val_loss"].get<double>());
  EXPECT_GT(summary["finetune"]["initial_val_loss"].get<double>(), base_summary["final_val_loss"].get<double>() + 0.1);
}

// The adapters belong to one base checkpoint: a retrained base is refused, naming the file.
TEST(Finetune, AdaptersOnAChangedBaseAreRefused) {
  Quiet quiet;
  TempDir dir;
  train(base_config(dir / "base"), {});
  train(finetune_config(dir / "base", dir / "ft", "perft_e"), {});
  RunConfig other = base_config(dir / "other");  // the same data, trained for fewer steps
  other.train.max_steps = 4;
  train(other, {});
  std::filesystem::copy_file(checkpoint_path(dir / "other"), checkpoint_path(dir / "base"),
                             std::filesystem::copy_options::overwrite_existing);
  const std::string error = error_of([&] { load_run(dir / "ft", "cpu"); });
  EXPECT_NE(error.find("adapts another base checkpoint"), std::string::npos) << error;
  // A fine-tuning run is no base, and a dense base has no MoE layer for PERFT's adapters.
  RunConfig twice = finetune_config(dir / "ft", dir / "twice", "shared");
  EXPECT_NE(error_of([&] { train(twice, {}); }).find("a fine-tuning run itself"), std::string::npos);
  RunConfig dense = base_config(dir / "dense");
  dense.model.dense = true;
  dense.train.max_steps = 2;
  train(dense, {});
  RunConfig perft_on_dense = finetune_config(dir / "dense", dir / "perft-on-dense", "perft_r");
  EXPECT_NE(error_of([&] { train(perft_on_dense, {}); }).find("is a dense model (use lora or full)"), std::string::npos);
  EXPECT_FALSE(file_exists(dir / "perft-on-dense"));
}
