// Sweeps (training cells run by the moelab binary) and the plotting helpers.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "plot/gnuplot.h"
#include "sweep/sweep.h"
#include "sweep/sweep_plots.h"
#include "test_support.h"
#include "util/error.h"
#include "util/files.h"
#include "util/log.h"

using namespace moelab;
using moelab::testing::TempDir;

namespace {

// Width and height from a PNG's IHDR chunk.
std::pair<int, int> png_size(const std::string& path) {
  std::string bytes = read_text_file(path);
  if (bytes.size() < 24 || bytes.compare(1, 3, "PNG") != 0) return {0, 0};
  auto be32 = [&](size_t at) {
    return (static_cast<unsigned char>(bytes[at]) << 24) | (static_cast<unsigned char>(bytes[at + 1]) << 16) |
           (static_cast<unsigned char>(bytes[at + 2]) << 8) | static_cast<unsigned char>(bytes[at + 3]);
  };
  return {be32(16), be32(20)};
}

const char* kTinySweep = R"({
  // two strategies x two capacity factors of a model that trains in a second
  "base": {"data": {"builtin_stories": 150},
           "model": {"layers": 1, "dim": 32, "heads": 2, "seq_len": 32},
           "router": {"num_experts": 4},
           "train": {"batch_size": 4, "max_steps": 4, "eval_windows": 4, "log_interval": 2, "threads": 1}},
  "grid": {"router.strategy": ["softk", "top1"], "router.capacity_factor": [1.0, 1.25]}
})";

}  // namespace

TEST(Sweep, RunsResumesAndSummarises) {
  moelab::testing::Quiet quiet;
  TempDir dir;
  write_file_atomic(dir / "sweep.jsonc", kTinySweep);
  SweepPlan plan = load_sweep(dir / "sweep.jsonc", dir / "out");
  ASSERT_EQ(plan.cells.size(), 4u);
  EXPECT_EQ(plan.cells[1].name, "strategy-softk_capacity_factor-1.25");
  SweepOptions options;
  options.moelab_binary = MOELAB_BINARY;
  options.parallel = 2;
  EXPECT_EQ(run_sweep(plan, options), 0);
  std::string csv = read_text_file(dir / "out/summary.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 5);  // header + 4 cells
  EXPECT_NE(csv.find("strategy-top1_capacity_factor-1.0,top1,linear,1,4,2,"), std::string::npos) << csv;
  EXPECT_NE(read_text_file(dir / "out/report.md").find("frontier.png"), std::string::npos);

  // A rerun skips every finished cell: their files are untouched.
  auto stamp = std::filesystem::last_write_time(dir / "out/strategy-softk_capacity_factor-1.0/summary.json");
  options.parallel = 1;
  EXPECT_EQ(run_sweep(plan, options), 0);
  EXPECT_EQ(std::filesystem::last_write_time(dir / "out/strategy-softk_capacity_factor-1.0/summary.json"), stamp);

  // A broken cell is reported and the rest continue; a rerun retries only that cell.
  std::filesystem::remove_all(dir / "out/strategy-top1_capacity_factor-1.25");
  options.moelab_binary = "/bin/false";
  EXPECT_EQ(run_sweep(plan, options), 1);
  EXPECT_EQ(std::filesystem::last_write_time(dir / "out/strategy-softk_capacity_factor-1.0/summary.json"), stamp);
}

// A fine-tuning study: the pretrain run first, then grids of different keys (perft_r's N and
// K, the other methods' none), each cell fine-tuning the pretrained base; the CSV gains the
// fine-tuning columns and the report its table.
TEST(Sweep, PretrainsOnceThenFineTunesEveryCell) {
  moelab::testing::Quiet quiet;
  TempDir dir;
  write_file_atomic(dir / "perft.jsonc", R"({
    "pretrain": {"data": {"builtin_stories": 150}, "model": {"layers": 1, "dim": 32, "heads": 2, "seq_len": 32},
                 "router": {"num_experts": 4}, "train": {"batch_size": 4, "max_steps": 6, "eval_windows": 4, "threads": 1}},
    "set": {"data.builtin_stories": 150, "data.builtin_style": "fables", "train.batch_size": 4, "train.max_steps": 4,
            "train.eval_windows": 4, "train.log_interval": 2},
    "grids": [{"finetune.method": ["perft_r"], "finetune.rank": [2], "finetune.experts": [2], "finetune.top_k": [1]},
              {"finetune.method": ["shared", "full"]}]
  })");
  SweepPlan plan = load_sweep(dir / "perft.jsonc", dir / "out");
  ASSERT_EQ(plan.cells.size(), 3u);
  EXPECT_EQ(plan.cells[0].name, "method-perft_r_rank-2_experts-2_top_k-1");
  EXPECT_EQ(plan.cells[2].name, "method-full");
  EXPECT_EQ(plan.keys, (std::vector<std::string>{"finetune.method", "finetune.rank", "finetune.experts", "finetune.top_k"}));
  SweepOptions options;
  options.moelab_binary = MOELAB_BINARY;
  ASSERT_EQ(run_sweep(plan, options), 0);
  EXPECT_TRUE(file_exists(dir / "out/pretrain/summary.json"));
  const std::string csv = read_text_file(dir / "out/summary.csv");
  EXPECT_NE(csv.find(",method,rank,adapter_experts,adapter_top_k,trainable_params,trainable_share,"), std::string::npos) << csv;
  EXPECT_NE(csv.find("method-perft_r_rank-2_experts-2_top_k-1,softk,linear,1.25,4,2,"), std::string::npos) << csv;
  EXPECT_NE(csv.find(",full,,,,"), std::string::npos) << csv;  // full: no rank, no adapter router
  EXPECT_NE(csv.find(",full,,,\n"), std::string::npos) << csv;  // nor the grid keys of the other grid
  EXPECT_NE(read_text_file(dir / "out/report.md").find("## Fine-tuning"), std::string::npos);
  if (plot::gnuplot_available()) {
    EXPECT_TRUE(file_exists(dir / "out/finetune_frontier.png"));
    EXPECT_TRUE(file_exists(dir / "out/adapter_load.png"));
  }
}

TEST(Sweep, RefusesBadGridsBeforeRunningAnything) {
  TempDir dir;
  write_file_atomic(dir / "a.jsonc", R"({"grid": {"router.top_k": [2, 9]}, "out": "x"})");
  try {
    load_sweep(dir / "a.jsonc", "");
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("(cell top_k-9): 'router.top_k' must be <= router.num_experts"), std::string::npos)
        << e.what();
  }
  write_file_atomic(dir / "b.jsonc", R"({"grid": {"router.capacity_factr": [1.0]}, "out": "x"})");
  EXPECT_THROW(load_sweep(dir / "b.jsonc", ""), UserError);
  write_file_atomic(dir / "c.jsonc", R"({"grid": {}, "out": "x"})");
  EXPECT_THROW(load_sweep(dir / "c.jsonc", ""), UserError);
  write_file_atomic(dir / "d.jsonc", R"({"grids": [{"router.top_k": [1]}, {"router.top_k": [1, 2]}], "out": "x"})");
  EXPECT_NE(moelab::testing::error_of([&] { load_sweep(dir / "d.jsonc", ""); }).find("two grids make the same cell top_k-1"),
            std::string::npos);
  write_file_atomic(dir / "e.jsonc", R"({"grid": {"router.top_k": [1]}, "grids": [], "out": "x"})");
  EXPECT_THROW(load_sweep(dir / "e.jsonc", ""), UserError);
  EXPECT_FALSE(std::filesystem::exists("x"));
}

TEST(Plots, EachHelperWritesAPngOfTheExpectedSize) {
  if (!plot::gnuplot_available()) GTEST_SKIP() << "gnuplot is not installed";
  TempDir dir;
  plot::Series a{"softk", {1, 2, 3}, {3, 2, 1.5}}, b{"top1", {1, 2, 3}, {4, 3, 2}};
  ASSERT_TRUE(plot::line_chart(dir / "line.png", "t", "x", "y", {a, b}, true));
  ASSERT_TRUE(plot::scatter(dir / "scatter.png", "t", "x", "y", {a, b}));
  ASSERT_TRUE(plot::heatmap(dir / "heat.png", "t", "x", "y", {{1, 2}, {3, 4}}));
  ASSERT_TRUE(plot::bar_chart(dir / "bars.png", "t", "x", "y", {"e0", "e1", "e2"}, {5, 1, 3}));
  ASSERT_TRUE(plot::colored_text(dir / "text.png", "t", {"H", "i", " ", "\n", "y", "o"}, {0, 1, 1, 0, 2, 3},
                                 {"expert 0", "expert 1", "expert 2", "expert 3"}, 40));
  for (const char* name : {"line.png", "scatter.png", "heat.png", "bars.png"}) {
    EXPECT_EQ(png_size(dir / name), (std::pair<int, int>{1000, 650})) << name;
    EXPECT_GT(std::filesystem::file_size(dir / name), 2000u) << name;
  }
  EXPECT_EQ(png_size(dir / "text.png").first, 1200);
}
