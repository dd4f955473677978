// Trace formats, co-activation and the placement simulator (no libtorch).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <tuple>

#include "placement/cost_model.h"
#include "placement/evaluator.h"
#include "placement/initial_placement.h"
#include "placement/search.h"
#include "test_support.h"
#include "trace/coactivation.h"
#include "trace/placement_jsonl.h"
#include "trace/synthetic_trace.h"
#include "util/error.h"
#include "util/files.h"
#include "util/strings.h"

using namespace moelab;
using namespace moelab::placement;
using moelab::testing::TempDir;
using moelab::testing::error_of;

namespace {


std::vector<TraceRecord> read_all(const std::string& path, int64_t layer = -1) {
  std::vector<TraceRecord> out;
  read_placement_jsonl(path, layer, 0, [&](TraceRecord&& r) {
    out.push_back(std::move(r));
    return true;
  });
  return out;
}

SystemConfig tiny_system() {
  SystemConfig s;
  s.rows = 2;
  s.cols = 2;
  s.experts = 2;
  s.num_shared_experts = 0;
  s.slots = 2;
  s.capacity_factor = 2.0;
  return s;
}

}  // namespace

TEST(PlacementJsonl, RoundTripsAndReadsTheTokenForm) {
  TempDir dir;
  TraceRecord r;
  r.layer = 3;
  r.batch_id = 7;
  r.k = 2;
  r.experts = {0, 5, 2, 1, 4, 3};
  r.weights = {0.75f, 0.25f, 0.5f, 0.5f, 0.9f, 0.1f};
  r.origin_rows = {0, 1, 0};
  r.request_id = "req-1";
  {
    std::ofstream out(dir / "t.jsonl");
    write_placement_jsonl(out, r);
    TraceRecord other = r;
    other.layer = 4;
    write_placement_jsonl(out, other);
    out << R"({"layer": 3, "batch_id": 8, "tokens": [{"origin_row": 1, "topk_experts": [6, 7]}]})" << "\n";
  }
  auto layer3 = read_all(dir / "t.jsonl", 3);
  ASSERT_EQ(layer3.size(), 2u);
  EXPECT_EQ(layer3[0].experts, r.experts);
  EXPECT_EQ(layer3[0].weights, r.weights);
  EXPECT_EQ(layer3[0].origin_rows, r.origin_rows);
  EXPECT_EQ(layer3[0].request_id, "req-1");
  EXPECT_EQ(layer3[1].experts, (std::vector<int32_t>{6, 7}));
  EXPECT_EQ(layer3[1].origin_rows, (std::vector<int32_t>{1}));
  EXPECT_EQ(read_all(dir / "t.jsonl").size(), 3u);
}

TEST(PlacementJsonl, BadLinesNameFileLineAndField) {
  TempDir dir;
  write_file_atomic(dir / "a.jsonl", "{\"layer\": 0, \"topk_experts\": [[1, 2], [3, 4]]}\n{\"layer\": 0, \"topk_experts\": [[1, 2], [3]]}\n");
  std::string e = error_of([&] { read_all(dir / "a.jsonl"); });
  EXPECT_NE(e.find("a.jsonl:2: field 'topk_experts[1]': 1 experts, expected k = 2"), std::string::npos) << e;
  write_file_atomic(dir / "b.jsonl", "{\"layer\": 0, \"topk_experts\": [[1, 2]]}\n{not json\n");
  e = error_of([&] { read_all(dir / "b.jsonl"); });
  EXPECT_NE(e.find("b.jsonl:2:"), std::string::npos) << e;
  write_file_atomic(dir / "c.jsonl", "{\"layer\": 0, \"topk_experts\": [[1, -2]]}\n");
  EXPECT_NE(error_of([&] { read_all(dir / "c.jsonl"); }).find("non-negative"), std::string::npos);
  write_file_atomic(dir / "d.jsonl", "{\"layer\": 0, \"origin_rows\": [0, 1], \"topk_experts\": [[1, 2]]}\n");
  EXPECT_NE(error_of([&] { read_all(dir / "d.jsonl"); }).find("2 entries for 1 tokens"), std::string::npos);
}

TEST(Coactivation, HandCheckedTinyTrace) {
  TraceRecord r;
  r.k = 3;
  r.experts = {0, 1, 2, 1, 2, 3};  // pairs: 01 02 12 | 12 13 23
  CoactivationMatrix m(4);
  m.add(r);
  EXPECT_EQ(m.to_csv(), "0,1,1,0\n1,0,2,1\n1,2,0,1\n0,1,1,0\n");
  TraceRecord bad;
  bad.k = 1;
  bad.experts = {9};
  EXPECT_NE(error_of([&] { m.add(bad); }).find("expert id 9 is beyond"), std::string::npos);
}

TEST(SyntheticTrace, SeededDistinctAndSkewed) {
  SyntheticTraceOptions o;
  o.batches = 4;
  o.tokens_per_batch = 512;
  o.experts = 32;
  o.k = 4;
  o.zipf = 1.2;
  o.seed = 5;
  std::vector<TraceRecord> a, b;
  generate_synthetic_trace(o, [&](const TraceRecord& r) { a.push_back(r); });
  generate_synthetic_trace(o, [&](const TraceRecord& r) { b.push_back(r); });
  ASSERT_EQ(a.size(), 4u);
  std::vector<int64_t> counts(32, 0);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].experts, b[i].experts);
    EXPECT_EQ(a[i].origin_rows, b[i].origin_rows);
    for (int64_t t = 0; t < a[i].tokens(); ++t) {
      std::set<int32_t> distinct(a[i].experts.begin() + t * 4, a[i].experts.begin() + t * 4 + 4);
      EXPECT_EQ(distinct.size(), 4u);
      EXPECT_LT(a[i].origin_rows[t], 16);
    }
    for (int32_t e : a[i].experts) ++counts[e];
  }
  std::sort(counts.begin(), counts.end());
  EXPECT_GT(counts.back(), 3 * counts[16]);  // Zipf: the hottest expert well above the median
}

TEST(CostModel, CoefficientsAreTheMinimumNormLeastSquaresFit) {
  const double best[8] = {26.868, 96.183, 33.005, 36.073, 39.141, 42.209, 45.277, 48.345};
  const double avg[8] = {55.258, 66.713, 78.169, 89.624, 101.079, 112.535, 123.990, 135.445};
  const double worst[8] = {88.238, 96.183, 104.129, 112.074, 120.020, 127.965, 135.911, 143.856};
  for (int64_t rows : {2, 8, 16}) {
    Coefficients c = fit_dispatch_coefficients(rows);
    // Least squares: the residual is orthogonal to every column of X = [1, E, avg_hop, max_hop].
    double h[3] = {0.0, (rows - 1) / 2.0, rows / 2.0};
    double g[4] = {0, 0, 0, 0};
    for (int i = 0; i < 8; ++i)
      for (int which = 0; which < 3; ++which) {
        double y = which == 0 ? best[i] : which == 1 ? avg[i] : worst[i];
        double x[4] = {1.0, i + 1.0, h[which], h[which]};
        double residual = y - (c[0] * x[0] + c[1] * x[1] + c[2] * x[2] + c[3] * x[3]);
        for (int j = 0; j < 4; ++j) g[j] += residual * x[j];
      }
    for (double v : g) EXPECT_NEAR(v, 0.0, 1e-7) << "rows " << rows;
    // Minimum norm: the solution lies in X's row space, where the two hop terms are equal.
    EXPECT_DOUBLE_EQ(c[2], c[3]);
  }
  Coefficients one_row = fit_dispatch_coefficients(1);  // no hops at all
  EXPECT_EQ(one_row[2], 0.0);
  EXPECT_EQ(one_row[3], 0.0);
}

TEST(Evaluator, HandBuiltTwoByTwoCase) {
  SystemConfig s = tiny_system();
  TraceRecord r;
  r.k = 2;
  r.experts = {0, 1, 1, 0};
  r.origin_rows = {0, 1};
  Replication rep = replication_from_counts({1, 1});
  Placement p;
  p.device = {0, 3};  // expert 0 at (row 0, col 0), expert 1 at (row 1, col 1)
  PreparedTrace trace = prepare_trace(s, {r}, rep, 0);
  Evaluator ev(s, trace, 1);
  Coefficients c = fit_dispatch_coefficients(2);
  // Each token: hops 0 and 1 (avg 0.5, max 1); E_col = 1 (one instance per column); U = 2.
  double dispatch = c[0] + c[1] * 1 + c[2] * 0.5 + c[3] * 1;
  double combine = c[0] + c[1] * 2 + c[2] * 0.5 + c[3] * 1;
  double compute = 118.0;  // each device: one instance with 2 tokens -> ceil(2/32) = 1 block
  Evaluation e = ev.evaluate(p);
  EXPECT_NEAR(e.mean, dispatch + compute + combine, 1e-9);
  EXPECT_NEAR(e.p99, e.mean, 1e-9);
  EXPECT_NEAR(e.dispatch_mean, dispatch, 1e-9);
  EXPECT_NEAR(e.combine_mean, combine, 1e-9);
  EXPECT_NEAR(e.compute_mean, compute, 1e-9);
  // Both experts in one column (devices 0 and 2): E_col = 2.
  p.device = {0, 2};
  EXPECT_NEAR(ev.evaluate(p).dispatch_mean, c[0] + c[1] * 2 + c[2] * 0.5 + c[3] * 1, 1e-9);
  // Both on one device is refused by max_per_device = 1.
  p.device = {0, 0};
  EXPECT_NE(error_of([&] { check_placement(s, rep, p, "test"); }).find("max_per_device"), std::string::npos);
}

TEST(Evaluator, ReplicaRoutingFillsThenRoundRobins) {
  SystemConfig s = tiny_system();
  s.slots = 3;
  s.capacity_factor = 1.0;
  TraceRecord r;
  r.k = 1;
  r.experts = {0, 0, 0, 0, 0, 1};  // 6 tokens, capacity = max(1, int(1.0 * 6 / 3)) = 2
  Replication rep = replication_from_counts({2, 1});
  PreparedTrace trace = prepare_trace(s, {r}, rep, 0);
  // expert 0's instances 0 and 1: tokens 0,1 -> 0; 2,3 -> 1; then round-robin 4 -> 0
  EXPECT_EQ(trace.records[0].instance, (std::vector<int32_t>{0, 0, 1, 1, 0, 2}));
  EXPECT_EQ(trace.records[0].instance_tokens, (std::vector<int32_t>{3, 2, 1}));
}

TEST(Evaluator, IncrementalSwapsMatchFullEvaluation) {
  SystemConfig s;
  s.rows = 4;
  s.cols = 4;
  s.experts = 24;
  s.slots = 40;
  s.origin_mode = "average-rows";
  SyntheticTraceOptions o;
  o.batches = 6;
  o.tokens_per_batch = 200;
  o.experts = 24;
  o.k = 4;
  o.rows = 4;
  std::vector<TraceRecord> records;
  generate_synthetic_trace(o, [&](const TraceRecord& r) {
    records.push_back(r);
    records.back().origin_rows.clear();  // let average-rows apply
  });
  std::vector<int64_t> freq = count_expert_frequency(s, records);
  Replication rep = replicate(s, freq);
  EXPECT_EQ(rep.num_instances(), 40);
  PreparedTrace trace = prepare_trace(s, records, rep, 1);
  Evaluator ev(s, trace, 2);
  uint64_t state = 9;
  Placement p = random_placement(s, rep, state);
  SwapEvaluator sw(ev, p);
  EXPECT_NEAR(sw.objective(), ev.evaluate(p).mean, 1e-9);
  std::mt19937_64 rng(4);
  for (int i = 0; i < 40; ++i) {
    int32_t a = static_cast<int32_t>(rng() % 40), b = static_cast<int32_t>(rng() % 40);
    double incremental = sw.swap(a, b);
    EXPECT_NEAR(incremental, ev.evaluate(sw.placement()).mean, 1e-9);
    if (i % 2) sw.undo();
  }
  EXPECT_NEAR(sw.objective(), ev.evaluate(sw.placement()).mean, 1e-9);
}

TEST(Search, NeverWorseAndReproducible) {
  SystemConfig s;
  s.rows = 4;
  s.cols = 4;
  s.experts = 32;
  s.num_shared_experts = 1;
  s.slots = 48;
  SyntheticTraceOptions o;
  o.batches = 5;
  o.tokens_per_batch = 256;
  o.experts = 32;
  o.k = 4;
  o.rows = 4;
  o.coactivation = 0.5;
  std::vector<TraceRecord> records;
  generate_synthetic_trace(o, [&](const TraceRecord& r) { records.push_back(r); });
  std::vector<int64_t> freq = count_expert_frequency(s, records);
  Replication rep = replicate(s, freq);
  CoactivationMatrix coact = coactivation_with_shared(s, records);
  PreparedTrace trace = prepare_trace(s, records, rep, 0);
  Evaluator ev(s, trace, 2);
  for (const char* strategy : {"balance", "balance_load_coactivation", "hot-tier", "eplb", "random"}) {
    InitialPlacementConfig init;
    init.placement_strategy = strategy;
    init.top_n = 8;
    Placement start = initial_placement(s, init, rep, freq, coact, 3);
    check_placement(s, rep, start, strategy);
    for (const char* kind : {"random", "local", "anneal", "sequence"}) {
      SearchConfig search;
      search.search = kind;
      search.iters = 10;
      search.local_search_iters = 60;
      search.anneal_iters = 60;
      search.search_sequence = {{"local", 20, 1, 0.01}, {"anneal", 20, 1.0, 0.01}};
      SearchResult a = run_search(ev, search, rep, start, 11), b = run_search(ev, search, rep, start, 11);
      EXPECT_LE(a.after.mean, a.before.mean + 1e-9) << strategy << " " << kind;
      EXPECT_EQ(a.best.device, b.best.device) << strategy << " " << kind;
      check_placement(s, rep, a.best, kind);
      for (size_t i = 1; i < a.convergence.size(); ++i) EXPECT_LE(a.convergence[i], a.convergence[i - 1]);
    }
  }
}

TEST(InitialPlacement, EplbRespectsSlotsAndSpreadsReplicas) {
  SystemConfig s;
  s.rows = 2;
  s.cols = 4;
  s.experts = 10;
  s.num_shared_experts = 1;
  s.slots = 32;  // max_per_device = 4
  std::vector<int64_t> freq = {100, 90, 80, 5, 5, 5, 5, 5, 5, 5, 0};
  Replication rep = replicate(s, freq);
  // 10 + 16 shared (the reference's count, whatever the mesh) = 26 instances; 6 extra slots
  // go to the 6 most frequent gated experts (of the tied ones, the lowest id).
  EXPECT_EQ(rep.replicas, (std::vector<int64_t>{2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 16}));
  InitialPlacementConfig init;
  init.placement_strategy = "eplb";
  Placement p = initial_placement(s, init, rep, freq, CoactivationMatrix(11), 0);
  std::vector<int> per_device(8, 0);
  for (int32_t d : p.device) ++per_device[d];
  for (int n : per_device) EXPECT_LE(n, 4);
  for (int e = 0; e < 3; ++e) EXPECT_NE(p.device[rep.instances[e][0]], p.device[rep.instances[e][1]]);
}

TEST(PlacementFiles, PlacementJsonRoundTripsAndConfigsRefuseBadInput) {
  TempDir dir;
  SystemConfig s = tiny_system();
  Replication rep = replication_from_counts({1, 1});
  Placement p;
  p.device = {3, 0};
  write_file_atomic(dir / "placement.json", placement_to_json(s, rep, p));
  Replication rep2;
  Placement p2;
  read_placement_json(dir / "placement.json", s, rep2, p2);
  EXPECT_EQ(p2.device, p.device);
  EXPECT_EQ(rep2.replicas, rep.replicas);
  write_file_atomic(dir / "bad.json", R"({"0": [{"device": 9}], "1": [{"device": 0}]})");
  EXPECT_NE(error_of([&] { read_placement_json(dir / "bad.json", s, rep2, p2); }).find("outside the 2 x 2 mesh"), std::string::npos);

  write_file_atomic(dir / "sys.jsonc", "{\"rows\": 2, \"cols\": 2, \"experts\": 8, \"slots\": 4, // too few\n \"num_shared_experts\": 0}");
  EXPECT_NE(error_of([&] { load_system_config(dir / "sys.jsonc"); }).find("'slots' must be >="), std::string::npos);
  write_file_atomic(dir / "sys2.jsonc", "{\"rowz\": 2}");
  EXPECT_NE(error_of([&] { load_system_config(dir / "sys2.jsonc"); }).find("unknown key 'rowz'"), std::string::npos);
  write_file_atomic(dir / "search.jsonc", R"({"search": "sequence", "search_sequence": [{"type": "tabu", "iters": 3}]})");
  EXPECT_NE(error_of([&] { load_search_config(dir / "search.jsonc"); }).find("search_sequence[0].type"), std::string::npos);

  SystemConfig small = tiny_system();
  small.trace = dir / "trace.jsonl";
  write_file_atomic(small.trace, "{\"layer\": 0, \"topk_experts\": [[0, 5]]}\n");
  std::vector<TraceRecord> records = load_layer_records(small);
  EXPECT_NE(error_of([&] { count_expert_frequency(small, records); }).find("expert id 5 is beyond the system's 2 experts"),
            std::string::npos);
  write_file_atomic(small.trace, "");
  EXPECT_NE(error_of([&] { load_layer_records(small); }).find("no records for layer 0"), std::string::npos);
}

// ---- NeuPIMs-MoE CSV and NPZ import ----

#include <zip.h>

#include "trace/neupims_csv.h"
#include "trace/npz_import.h"

TEST(NeupimsCsv, RoundTripsWithLayerZeroOrTheTrueLayer) {
  TempDir dir;
  TraceRecord r;
  r.layer = 5;
  r.k = 2;
  r.experts = {3, 0, 1, 2};
  r.weights = {0.7f, 0.3f, 0.6f, 0.4f};
  write_file_atomic(dir / "t.csv", neupims_csv(r, 4));
  // Layer 0 by default: the consumer (DynaNDE's simulator) reads only layer 0 of a file.
  EXPECT_EQ(read_text_file(dir / "t.csv"),
            "layer_id,token_id,expert_0,expert_1,expert_2,expert_3\r\n"
            "0,0,0.300000,0.000000,0.000000,0.700000\r\n"
            "0,1,0.000000,0.600000,0.400000,0.000000\r\n");
  write_file_atomic(dir / "t.csv", neupims_csv(r, 4, /*true_layer_id=*/true));
  EXPECT_EQ(read_text_file(dir / "t.csv").substr(55, 4), "5,0,");
  TraceRecord back = read_neupims_csv(dir / "t.csv");
  EXPECT_EQ(back.layer, 5);
  EXPECT_EQ(back.k, 2);
  EXPECT_EQ(back.experts, (std::vector<int32_t>{3, 0, 1, 2}));  // by descending score
  EXPECT_NEAR(back.weights[0], 0.7f, 1e-6);
  EXPECT_EQ(read_neupims_csv(dir / "t.csv", 1, 9).experts, (std::vector<int32_t>{3, 1}));
  EXPECT_EQ(read_neupims_csv(dir / "t.csv", 1, 9).layer, 9);
}

TEST(NeupimsCsv, AChosenExpertNeverVanishesAndTiesGoToTheHigherId) {
  TraceRecord r;
  r.k = 2;
  r.experts = {1, 2, 0, 3};
  r.weights = {0.5f, 1e-9f, 0.25f, 0.25f};  // token 0's second gate prints as 0.000000
  const std::string csv = neupims_csv(r, 4);
  EXPECT_NE(csv.find("0,0,0.000000,0.500000,0.000001,0.000000\r\n"), std::string::npos);
  // Token 1 ties at 0.25: the higher id (3) ranks first, as numpy's argsort(...)[-k:] takes it.
  TraceRecord ranked = as_written(r);
  EXPECT_EQ(ranked.experts, (std::vector<int32_t>{1, 2, 3, 0}));
  EXPECT_EQ(topk_stats_csv(ranked, 1, 4),
            "Expert_ID,Token_Count,Percentage,Rank\r\n1,1,50.00,1\r\n3,1,50.00,2\r\n0,0,0.00,3\r\n2,0,0.00,4\r\n");
}

TEST(NeupimsCsv, StatsCountsAndRanksOnAKnownCase) {
  TraceRecord r;
  r.k = 2;
  // token 0: e2 (0.9) e0; token 1: e2 (0.8) e1; token 2: e1 (0.6) e2 (ranked entries)
  r.experts = {2, 0, 2, 1, 1, 2};
  r.weights = {0.9f, 0.1f, 0.8f, 0.2f, 0.6f, 0.4f};
  // Percentage = count / tokens x 100: the column sums to 100 k. CRLF, as Python's csv.
  EXPECT_EQ(topk_stats_csv(r, 1, 3), "Expert_ID,Token_Count,Percentage,Rank\r\n2,2,66.67,1\r\n1,1,33.33,2\r\n0,0,0.00,3\r\n");
  EXPECT_EQ(topk_stats_csv(r, 2, 3), "Expert_ID,Token_Count,Percentage,Rank\r\n2,3,100.00,1\r\n1,2,66.67,2\r\n0,1,33.33,3\r\n");
  StatsReport prefill;
  prefill.layer = 7;
  prefill.seq_len = 3;
  const std::string rule(60, '='), thin(60, '-');
  EXPECT_EQ(topk_stats_txt(r, 2, 3, prefill),
            rule + "\nTOP 2 EXPERT TOKEN DISTRIBUTION (Layer 7 - ALL SEQUENCES)\n" + rule +
                "\nTotal tokens: 3\nTotal sequences: 1\nSequence length: 3\nExpected total (tokens \u00d7 2): 6\n" + rule +
                "\nExpert ID    Token Count     Percentage\n" + thin +
                "\nExpert 2     3               100.00%\nExpert 1     2                66.67%\nExpert 0     1                33.33%\n" +
                thin + "\n\nGATING MECHANISM OUTPUT\nExpert_Activ: 3\nH (Gating Output): 0\n");
  StatsReport decode;
  decode.position = 2;
  const std::string text = topk_stats_txt(r, 1, 3, decode);
  EXPECT_EQ(text.substr(61, 46), "TOP 1 EXPERT TOKEN DISTRIBUTION (2Nd token)\n==");
  EXPECT_NE(text.find("Total assignments: 3\n\n" + rule + "\nGATING MECHANISM OUTPUT\n"), std::string::npos);
  EXPECT_NE(text.find("  Expert_GPU: 0\n  Expert_MD:  2\n"), std::string::npos);
}

TEST(NeupimsCsv, RejectsWrongHeadersRowsAndNonFiniteScores) {
  TempDir dir;
  write_file_atomic(dir / "a.csv", "layer,token,e0\n0,0,1.0\n");
  EXPECT_NE(error_of([&] { read_neupims_csv(dir / "a.csv"); }).find("a.csv:1: field 'header'"), std::string::npos);
  write_file_atomic(dir / "b.csv", "layer_id,token_id,expert_0,expert_1\n0,0,0.5,0.5\n0,1,0.5\n");
  EXPECT_NE(error_of([&] { read_neupims_csv(dir / "b.csv"); }).find("b.csv:3: field 'row'"), std::string::npos);
  write_file_atomic(dir / "c.csv", "layer_id,token_id,expert_0,expert_1\n0,0,0.5,abc\n");
  EXPECT_NE(error_of([&] { read_neupims_csv(dir / "c.csv"); }).find("field 'expert_1'"), std::string::npos);
  for (const char* bad : {"nan", "inf", "-inf", "NaN"}) {
    write_file_atomic(dir / "d.csv", std::string("layer_id,token_id,expert_0,expert_1\n0,0,0.5,0.5\n\n0,1,") + bad + ",0.5\n");
    EXPECT_NE(error_of([&] { read_neupims_csv(dir / "d.csv"); }).find("d.csv:4: field 'expert_0'"), std::string::npos) << bad;
  }
  // A short row is blamed on its own line, blank lines counted.
  write_file_atomic(dir / "e.csv", "layer_id,token_id,expert_0,expert_1\n0,0,0.5,0.5\n\n0,1,0.5,0\n");
  EXPECT_NE(error_of([&] { read_neupims_csv(dir / "e.csv"); }).find("e.csv:4: field 'row': 1 routed experts, fewer than k = 2"),
            std::string::npos);
}

// The producer's own stats files (DynaNDE's generator), byte for byte, from its CSVs.
TEST(NeupimsCsv, StatsEqualTheProducersFilesByteForByte) {
  MOELAB_REQUIRE_SHARED("data/routing/flame-moe-290m-prefill/reference-stats/layer2_top6_stats.csv");
  const std::string folder = moelab::testing::shared_path("data/routing/flame-moe-290m-prefill");
  for (int layer : {2, 20}) {
    TraceRecord r = read_neupims_csv(folder + strf("/layer%d.csv", layer));
    ASSERT_EQ(r.k, 6);
    StatsReport report;
    report.layer = layer;
    report.seq_len = 64;
    for (int k : stats_ks(r.k)) {
      const std::string base = folder + strf("/reference-stats/layer%d_top%d_stats", layer, k);
      EXPECT_EQ(topk_stats_csv(r, k, 64), read_text_file(base + ".csv")) << base;
      EXPECT_EQ(topk_stats_txt(r, k, 64, report), read_text_file(base + ".txt")) << base;
    }
  }
}

TEST(NeupimsCsv, ReadsRealFlameMoeRouting) {
  MOELAB_REQUIRE_SHARED("data/routing/flame-moe-290m-prefill/layer10.csv");
  const std::string path = moelab::testing::shared_path("data/routing/flame-moe-290m-prefill/layer10.csv");
  TraceRecord r = read_neupims_csv(path, 0, 10);
  EXPECT_EQ(r.k, 6);
  EXPECT_EQ(r.tokens(), 2048);
  EXPECT_EQ(neupims_csv_experts(path), 64);
  // Rewriting what we read reproduces the producer's file (scores to its 6 decimals, CRLF).
  EXPECT_TRUE(neupims_csv(r, 64) == read_text_file(path));
}

namespace {
std::string npy_int64(const std::vector<int64_t>& values, const std::vector<int64_t>& shape) {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ",";
  if (shape.size() > 1) dims.pop_back();
  std::string header = "{'descr': '<i8', 'fortran_order': False, 'shape': (" + dims + "), }";
  while ((10 + header.size() + 1) % 64) header += ' ';
  header += '\n';
  std::string out = std::string("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  out += header;
  out.append(reinterpret_cast<const char*>(values.data()), values.size() * 8);
  return out;
}

void write_npz(const std::string& path, const std::vector<std::pair<std::string, std::string>>& entries) {
  int error = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &error);
  std::vector<std::string> keep;
  for (const auto& [name, bytes] : entries) {
    keep.push_back(bytes);
    zip_source_t* src = zip_source_buffer(z, keep.back().data(), keep.back().size(), 0);
    zip_file_add(z, (name + ".npy").c_str(), src, ZIP_FL_OVERWRITE);
  }
  zip_close(z);
}
}  // namespace

TEST(NpzImport, ConvertsRequestsWithTokenSlicesAndLayers) {
  TempDir dir;
  // 3 tokens (2 prompt, 1 output), 2 layers, k = 2: value = 10 * token + layer * 3 + j
  std::vector<int64_t> routed;
  for (int t = 0; t < 3; ++t)
    for (int l = 0; l < 2; ++l)
      for (int j = 0; j < 2; ++j) routed.push_back(10 * t + 3 * l + j);
  write_npz(dir / "req_a.npz", {{"request_id", npy_int64({42}, {})},
                                {"prompt_token_ids", npy_int64({5, 6}, {2})},
                                {"output_token_ids", npy_int64({7}, {1})},
                                {"routed_experts", npy_int64(routed, {3, 2, 2})}});
  std::vector<TraceRecord> records;
  NpzImportOptions o;
  EXPECT_EQ(import_npz_folder(dir.path(), o, [&](const TraceRecord& r) { records.push_back(r); }), 1);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].batch_id, 42);
  EXPECT_EQ(records[1].layer, 1);
  EXPECT_EQ(records[1].experts, (std::vector<int32_t>{3, 4, 13, 14, 23, 24}));
  records.clear();
  o.token_slice = "output";
  o.layers = {0};
  import_npz_folder(dir.path(), o, [&](const TraceRecord& r) { records.push_back(r); });
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].experts, (std::vector<int32_t>{20, 21}));
  EXPECT_EQ(records[0].source_file, "req_a.npz");

  write_file_atomic(dir / "broken.npz", "not a zip at all");
  EXPECT_NE(error_of([&] { import_npz_folder(dir.path(), {}, [](const TraceRecord&) {}); }).find("broken.npz: not a readable .npz"),
            std::string::npos);
}

// ---- Parity with moe-balance (johanna-rock/moe-balance at 700358b) ----

#include "placement/simulator.h"
#include "util/python_random.h"

// Values printed by CPython 3.11's random module.
TEST(PythonRandom, MatchesCPython) {
  PythonRandom a(0);
  EXPECT_EQ(a.random(), 0.8444218515250481);
  EXPECT_EQ(a.random(), 0.7579544029403025);
  EXPECT_EQ(a.random(), 0.420571580830845);
  PythonRandom b(0);
  EXPECT_EQ(b.getrandbits(5), 27u);
  EXPECT_EQ(b.getrandbits(32), 1654615998u);
  EXPECT_EQ(b.getrandbits(40), 978212965548u);
  EXPECT_EQ(b.getrandbits(64), 746805015404516437u);
  PythonRandom c(42);
  std::vector<int64_t> rows;
  for (int i = 0; i < 10; ++i) rows.push_back(c.randrange(16));
  EXPECT_EQ(rows, (std::vector<int64_t>{3, 0, 8, 7, 7, 4, 3, 2, 13, 1}));
  // sample(range(1024), 102): the pool method; sample(range(100000), 10): the set method.
  std::vector<int64_t> pool = PythonRandom(7).sample(1024, 102);
  EXPECT_EQ(std::vector<int64_t>(pool.begin(), pool.begin() + 8), (std::vector<int64_t>{663, 970, 154, 404, 666, 49, 74, 840}));
  EXPECT_EQ(std::accumulate(pool.begin(), pool.end(), int64_t{0}), 47621);
  EXPECT_EQ(PythonRandom(12345).sample(100000, 10),
            (std::vector<int64_t>{54607, 96034, 1332, 39143, 48288, 25383, 35421, 74187, 57177, 21192}));
  PythonRandom d((uint64_t{1} << 40) + 5);  // a two-word seed
  EXPECT_EQ(d.random(), 0.5043802970418443);
  EXPECT_EQ(d.randrange(1000003), 281652);
  EXPECT_EQ(PythonRandom(3).uniform(0.9, 1.1), 0.9475929254183784);
}

namespace {
const char* kReference = "data/placement-reference";
std::string reference_path(const std::string& name) { return moelab::testing::shared_path(std::string(kReference) + "/" + name); }

// The reference's system config with the trace path made absolute and fast_test_pct set.
std::string reference_system(const TempDir& dir, const std::string& fast_test_pct = "0.0") {
  std::string text = read_text_file(reference_path("system.jsonc"));
  auto replace = [&](const std::string& from, const std::string& to) { text.replace(text.find(from), from.size(), to); };
  replace("\"trace\": \"trace.jsonl\"", "\"trace\": \"" + reference_path("trace.jsonl") + "\"");
  replace("\"fast_test_pct\": 0.0", "\"fast_test_pct\": " + fast_test_pct);
  write_file_atomic(dir / "system.jsonc", text);
  return dir / "system.jsonc";
}
}  // namespace

TEST(MoeBalance, SynthReproducesGenerateTraceByteForByte) {
  MOELAB_REQUIRE_SHARED("data/placement-reference/trace.jsonl");
  SyntheticTraceOptions o;  // generate_trace.py's defaults, except experts and k as SOURCES.md gives them
  o.experts = 256;
  o.k = 8;
  std::ostringstream out;
  generate_synthetic_trace(o, [&](const TraceRecord& r) { write_placement_jsonl(out, r); });
  const std::string ours = out.str(), theirs = read_text_file(reference_path("trace.jsonl"));
  ASSERT_EQ(ours.size(), theirs.size());
  const size_t first_difference = std::mismatch(ours.begin(), ours.end(), theirs.begin()).first - ours.begin();
  EXPECT_EQ(first_difference, ours.size()) << "first difference at byte " << first_difference;
}

TEST(MoeBalance, InitialPlacementsEqualTheReferencesFiles) {
  MOELAB_REQUIRE_SHARED("data/placement-reference/expected/row_balance/placement.json");
  TempDir dir;
  for (const char* strategy :
       {"row_balance", "col_balance", "row_balance_load_coactivation", "col_balance_load_coactivation", "hot_tier"}) {
    PlaceOptions o;
    o.system_path = reference_system(dir);
    o.initial_path = reference_path(std::string("initial/") + strategy + ".jsonc");
    o.out_dir = dir / strategy;
    run_placement(o);
    const std::string expected = reference_path(std::string("expected/") + strategy);
    EXPECT_EQ(read_text_file(o.out_dir + "/placement.json"), read_text_file(expected + "/placement.json")) << strategy;
    const std::string eval = read_text_file(expected + "/eval.md");
    EXPECT_EQ(read_text_file(o.out_dir + "/eval.md").substr(0, eval.size()), eval) << strategy;
  }
}

// fast_test_pct = 0.1 subsamples 102 of each record's 1024 tokens with random.Random(seed + i):
// eval.md as the reference wrote it (search.py --seed 3 and --seed 0 on this config).
TEST(MoeBalance, FastTestSubsampleEqualsTheReference) {
  MOELAB_REQUIRE_SHARED("data/placement-reference/trace.jsonl");
  TempDir dir;
  const std::string header = "# Search Evaluation Summary\n\n- objective: mean\n";
  const std::vector<std::tuple<const char*, uint64_t, std::string>> cases = {
      {"row_balance", 3,
       "- mean: 625.3105\n- p95: 703.0825\n- p99: 707.4283\n- dispatch_mean: 99.3937\n- compute_mean: 397.6600\n"
       "- combine_mean: 128.2567\n"},
      {"row_balance_load_coactivation", 0,
       "- mean: 582.1438\n- p95: 585.6082\n- p99: 697.7765\n- dispatch_mean: 97.5378\n- compute_mean: 357.5400\n"
       "- combine_mean: 127.0660\n"}};
  for (const auto& [strategy, seed, expected] : cases) {
    PlaceOptions o;
    o.system_path = reference_system(dir, "0.1");
    o.initial_path = reference_path(std::string("initial/") + strategy + ".jsonc");
    o.out_dir = dir / strategy;
    o.seed = seed;
    nlohmann::json result = run_placement(o);
    EXPECT_EQ(result["tokens"], 100 * 102);
    EXPECT_EQ(read_text_file(o.out_dir + "/eval.md").substr(0, header.size() + expected.size()), header + expected) << strategy;
  }
}
