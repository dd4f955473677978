// Tests of the torch-free core: config, corpus, story generator, tokenizers, token files,
// batch sampling.
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <set>

#include "config/run_config.h"
#include "data/batch_sampler.h"
#include "data/corpus.h"
#include "data/prepare.h"
#include "data/story_generator.h"
#include "data/token_file.h"
#include "data/tokenizer.h"
#include "test_support.h"
#include "util/error.h"
#include "util/files.h"
#include "util/strings.h"
#include "util/thread_pool.h"

using namespace moelab;
using moelab::testing::TempDir;
using moelab::testing::error_of;

// ---- config ----

TEST(Config, DefaultsAreTheUnifiedExperiment) {
  RunConfig c = load_run_config("", {});
  EXPECT_EQ(c.seed, 17);
  EXPECT_EQ(c.model.layers, 4);
  EXPECT_EQ(c.model.dim, 256);
  EXPECT_EQ(c.model.seq_len, 256);
  EXPECT_EQ(c.router.strategy, "softk");
  EXPECT_EQ(c.router.num_experts, 8);
  EXPECT_EQ(c.router.top_k, 2);
  EXPECT_DOUBLE_EQ(c.router.capacity_factor, 1.25);
  EXPECT_TRUE(c.router.renorm_after_drop);
  EXPECT_DOUBLE_EQ(c.router.lb_coef, 1e-2);
  EXPECT_EQ(c.train.batch_size, 32);
  EXPECT_EQ(c.train.max_steps, 1200);
  EXPECT_DOUBLE_EQ(c.train.lr, 3e-4);
  EXPECT_EQ(c.train.warmup_steps, 50);
}

TEST(Config, CommentsAndOverrides) {
  TempDir dir;
  write_file_atomic(dir / "c.jsonc", "{\n // a comment\n \"model\": {\"dim\": 64, /* inline */ \"heads\": 2},\n"
                                     " \"router\": {\"strategy\": \"top1\", \"capacity_factor\": 1}\n}\n");
  RunConfig c = load_run_config(dir / "c.jsonc", {"train.max_steps=20", "router.strategy=hash", "data.valid=\"v.txt\""});
  EXPECT_EQ(c.model.dim, 64);
  EXPECT_EQ(c.model.heads, 2);
  EXPECT_EQ(c.router.strategy, "hash");
  EXPECT_DOUBLE_EQ(c.router.capacity_factor, 1.0);
  EXPECT_EQ(c.train.max_steps, 20);
  ASSERT_TRUE(c.data.valid.has_value());
  EXPECT_EQ(*c.data.valid, "v.txt");
}

TEST(Config, RefusesUnknownKeysWrongTypesAndImpossibleValues) {
  TempDir dir;
  write_file_atomic(dir / "a.json", R"({"router": {"stratgy": "top1"}})");
  EXPECT_NE(error_of([&] { load_run_config(dir / "a.json", {}); }).find("unknown key 'router.stratgy'"), std::string::npos);
  write_file_atomic(dir / "b.json", R"({"model": {"layers": "four"}})");
  std::string e = error_of([&] { load_run_config(dir / "b.json", {}); });
  EXPECT_NE(e.find("'model.layers' must be an integer, got a string"), std::string::npos) << e;
  EXPECT_NE(e.find("b.json"), std::string::npos);
  e = error_of([] { load_run_config("", {"model.heads=3"}); });
  EXPECT_NE(e.find("'model.heads' must divide model.dim"), std::string::npos) << e;
  e = error_of([] { load_run_config("", {"router.top_k=9"}); });
  EXPECT_NE(e.find("'router.top_k' must be <= router.num_experts"), std::string::npos) << e;
  e = error_of([] { load_run_config("", {"model.seq_len=0"}); });
  EXPECT_NE(e.find("'model.seq_len' must be in [1, 1048576], got 0"), std::string::npos) << e;
  e = error_of([] { load_run_config("", {"train.max_steps=1.5"}); });
  EXPECT_NE(e.find("must be an integer"), std::string::npos) << e;
  e = error_of([] { load_run_config("", {"nosuch=1"}); });
  EXPECT_NE(e.find("unknown key 'nosuch'"), std::string::npos) << e;
  e = error_of([] { load_run_config("", {"data.tokenizer=words"}); });
  EXPECT_NE(e.find("'data.tokenizer' must be one of char|bpe"), std::string::npos) << e;
}

TEST(Config, ParseErrorNamesFileLineAndColumn) {
  TempDir dir;
  write_file_atomic(dir / "bad.jsonc", "{\n  \"seed\": 3,\n  \"out\": \n}\n");
  std::string e = error_of([&] { load_run_config(dir / "bad.jsonc", {}); });
  EXPECT_NE(e.find("bad.jsonc:4:"), std::string::npos) << e;
}

// Every key, each set to a value other than its default: read into the struct (spot checks of
// each section) and written back unchanged. The key list must be the defaults' exactly, so a
// key the config gains fails here until it is given a value too.
TEST(Config, EveryKeyReadsAndWritesBack) {
  const nlohmann::json all = nlohmann::json::parse(R"({
    "seed": 3, "out": "elsewhere",
    "data": {"train": "t.txt", "valid": "v.txt", "val_fraction": 0.2, "tokenizer": "bpe", "bpe_vocab_size": 512,
             "builtin_stories": 99, "builtin_style": "fables", "end_of_text": "text"},
    "model": {"layers": 3, "dim": 64, "heads": 8, "seq_len": 32, "ffn_mult": 2, "dropout": 0.2, "embedding_dropout": false,
              "attention_dropout": 0.05, "init": "seed", "position": "rope", "activation": "swiglu", "tie_embeddings": true, "moe_every": 2,
              "dense": true, "dense_width": 2.5, "dispatcher": "masked_matmul"},
    "router": {"strategy": "hash", "gate": "mlp", "num_experts": 16, "top_k": 3, "capacity_factor": 2.0,
               "drop_policy": "probs", "renorm_after_drop": false, "temperature": 0.5, "lb_coef": 0.5, "z_coef": 0.001,
               "bias_rate": 0.01, "hash_key": "position", "ec_fallback": "topk", "sinkhorn_iters": 7, "top1_gate": "none",
               "hard_weight": "mean"},
    "train": {"batch_size": 4, "max_steps": 9, "lr": 0.001, "weight_decay": 0.5, "adam_beta2": 0.999, "warmup_steps": 2, "grad_clip": 0.5,
              "eval_interval": 3, "eval_windows": 5, "log_interval": 2, "checkpoint_interval": 4, "device": "cpu",
              "dtype": "fp32", "threads": 2, "peak_tflops": 100.0, "trace_interval": 3, "cuda_graph": false, "cuda_kernels": false,
              "profile_steps": 2},
    "parallel": {"expert_parallel": 2, "timeout_s": 30.0, "bucket_mb": 10.0},
    "finetune": {"base": "runs/base", "method": "lora", "rank": 16, "experts": 8, "top_k": 2, "strategy": "topk_hard",
                 "gate": "mlp", "capacity_factor": 1.5, "lb_coef": 0.1}})");
  const nlohmann::json defaults = default_config_json();
  const nlohmann::json given_keys = all.flatten(), default_keys = defaults.flatten();
  ASSERT_EQ(given_keys.size(), default_keys.size());
  for (const auto& [key, value] : given_keys.items()) {
    ASSERT_TRUE(default_keys.contains(key)) << key;
    EXPECT_NE(default_keys[key], value) << key << " keeps its default: the test cannot see it read";
  }
  nlohmann::json merged = defaults;
  merge_config(merged, all, "all.json");
  RunConfig c = run_config_from_json(merged, "all.json");
  EXPECT_EQ(c.data.valid.value_or(""), "v.txt");
  EXPECT_EQ(c.model.dispatcher, "masked_matmul");
  EXPECT_EQ(c.router.hard_weight, "mean");
  EXPECT_DOUBLE_EQ(c.train.lr, 0.001);
  EXPECT_DOUBLE_EQ(c.parallel.bucket_mb, 10.0);
  EXPECT_EQ(c.finetune.base.value_or(""), "runs/base");
  EXPECT_EQ(c.finetune.method, "lora");
  EXPECT_EQ(run_config_to_json(c), all);
}

// ---- prepared data ----

// RUN/data is keyed by what produced it: another source is prepared again, or refused when
// resuming; a damaged info.json is named.
TEST(PreparedData, AnotherSourceIsPreparedAgainAndRefusedOnResume) {
  TempDir dir;
  const std::string run = dir / "run";
  write_file_atomic(dir / "a.txt", std::string(400, 'a') + "\n<|endoftext|>\nab ab ab ab ab ab ab ab ab ab\n");
  DataConfig from_file;
  from_file.train = dir / "a.txt";
  PreparedData a = prepare_data(from_file, 1, run);
  const int64_t file_tokens = TokenFile(a.train_tokens).size();
  DataConfig builtin;
  builtin.builtin_stories = 50;
  // The same source again: reused as it is.
  EXPECT_EQ(TokenFile(prepare_data(from_file, 1, run).train_tokens).size(), file_tokens);
  EXPECT_EQ(TokenFile(prepare_data(from_file, 1, run, /*resuming=*/true).train_tokens).size(), file_tokens);
  // Resuming onto other data: refused, naming what differs.
  try {
    prepare_data(builtin, 1, run, /*resuming=*/true);
    ADD_FAILURE() << "resumed onto other data";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("info.json: the run's data was prepared from another source"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("train: \""), std::string::npos) << e.what();
  }
  // A new attempt with other data: prepared again, from the new source.
  PreparedData b = prepare_data(builtin, 1, run);
  TempDir fresh;
  EXPECT_EQ(TokenFile(b.train_tokens).size(), TokenFile(prepare_data(builtin, 1, fresh / "run").train_tokens).size());
  EXPECT_NE(TokenFile(b.train_tokens).size(), file_tokens);
  EXPECT_EQ(nlohmann::json::parse(read_text_file(run + "/data/info.json"))["source"]["train"], "builtin");
  // The built-in stories' seed is part of the source; the same corpus path holding other text too.
  EXPECT_THROW(prepare_data(builtin, 2, run, /*resuming=*/true), UserError);
  prepare_data(from_file, 1, run);
  write_file_atomic(dir / "a.txt", std::string(300, 'b') + "\n");
  EXPECT_THROW(prepare_data(from_file, 1, run, /*resuming=*/true), UserError);
  // A damaged description.
  write_file_atomic(run + "/data/info.json", "{\"valid_chars\": ");
  try {
    prepare_data(from_file, 1, run);
    ADD_FAILURE() << "a damaged info.json was used";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("info.json: not the prepared data's description"), std::string::npos) << e.what();
  }
}

// ---- corpus and generator ----

TEST(Corpus, SplitsStoriesOnEndOfTextLines) {
  auto stories = split_stories("Once upon a time.\n<|endoftext|>\nThe end.\nMore.\n<|endoftext|>\n");
  ASSERT_EQ(stories.size(), 2u);
  EXPECT_EQ(stories[0], "Once upon a time.");
  EXPECT_EQ(stories[1], "The end.\nMore.");
  EXPECT_EQ(split_stories(join_stories(stories)), stories);
  EXPECT_EQ(split_stories("plain text\nwith lines").size(), 1u);
}

TEST(Corpus, TailSplitTakesTheLastFractionOfCharacters) {
  std::string text = "abcdefghij\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9";  // 20 code points
  auto [head, tail] = split_tail(text, 0.25);
  EXPECT_EQ(count_code_points(tail), 5u);
  EXPECT_EQ(head + tail, text);
}

TEST(Corpus, RejectsNonUtf8NamingTheLine) {
  TempDir dir;
  write_file_atomic(dir / "bad.txt", "fine\nalso fine\nbroken \xff here\n");
  std::string e = error_of([&] { read_corpus_file(dir / "bad.txt"); });
  EXPECT_NE(e.find("bad.txt:3: not valid UTF-8"), std::string::npos) << e;
  write_file_atomic(dir / "empty.txt", "");
  EXPECT_NE(error_of([&] { read_corpus_file(dir / "empty.txt"); }).find("empty"), std::string::npos);
}

TEST(StoryGenerator, DeterministicVariedAndLarge) {
  std::string a = generate_stories(200, 5), b = generate_stories(200, 5), c = generate_stories(200, 6);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  auto stories = split_stories(a);
  ASSERT_EQ(stories.size(), 200u);
  std::set<std::string> distinct(stories.begin(), stories.end());
  EXPECT_GT(distinct.size(), 190u);
  std::set<std::string> openings;
  for (const auto& s : stories) openings.insert(s.substr(0, s.find('.')));
  EXPECT_GT(openings.size(), 50u);
  EXPECT_NE(a.find('"'), std::string::npos);  // dialogue
  EXPECT_GT(generate_stories(8000, 1).size(), 3u * 1000 * 1000);  // a few MB on demand
}

// The fine-tuning domain: fables in the tales' alphabet (a tokenizer trained on tales encodes
// them without <unk>), sharing few word sequences with them.
TEST(StoryGenerator, FablesAreAnotherDomainOfTheSameAlphabet) {
  const std::string tales = generate_stories(2000, 5), fables = generate_stories(300, 5, "fables");
  EXPECT_EQ(fables, generate_stories(300, 5, "fables"));
  auto stories = split_stories(fables);
  ASSERT_EQ(stories.size(), 300u);
  EXPECT_GT(std::set<std::string>(stories.begin(), stories.end()).size(), 250u);
  CharTokenizer tok = CharTokenizer::train(tales);
  tok.encode(fables);
  EXPECT_EQ(tok.unknown_count(), 0);
  // Word trigrams of the fables that the tales also use: a small share.
  auto trigrams = [](const std::string& text) {
    std::vector<std::string> words = split(text, ' ');
    std::set<std::string> out;
    for (size_t i = 0; i + 2 < words.size(); ++i) out.insert(words[i] + " " + words[i + 1] + " " + words[i + 2]);
    return out;
  };
  const std::set<std::string> tale_trigrams = trigrams(tales), fable_trigrams = trigrams(fables);
  size_t shared = 0;
  for (const auto& t : fable_trigrams) shared += tale_trigrams.count(t);
  EXPECT_LT(shared * 10, fable_trigrams.size());
}

// ---- tokenizers ----

TEST(CharTokenizer, RoundTripsGeneratedText) {
  std::string text = generate_stories(300, 11);
  CharTokenizer tok = CharTokenizer::train(text);
  std::vector<uint32_t> ids = tok.encode(text);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(tok.unknown_count(), 0);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok.eot_id()), 300);
}

// data.end_of_text "text": the file's characters as they are, separator lines included, as the
// seed's character loader reads them; the mode is saved with the tokenizer.
TEST(CharTokenizer, PlainTextKeepsSeparatorLinesAsCharacters) {
  const std::string text = "Hi.\n<|endoftext|>\nBye.\n";
  CharTokenizer plain = CharTokenizer::train(text, /*plain_text=*/true);
  std::vector<uint32_t> ids = plain.encode(text);
  EXPECT_EQ(ids.size(), text.size());  // ASCII: one token per byte, newlines and marker included
  EXPECT_EQ(std::count(ids.begin(), ids.end(), plain.eot_id()), 0);
  EXPECT_EQ(plain.decode(ids), text);
  std::set<char32_t> expected(text.begin(), text.end());
  EXPECT_EQ(plain.code_points(), std::vector<char32_t>(expected.begin(), expected.end()));

  CharTokenizer stories = CharTokenizer::train(text);  // the default: one end-of-text token per story
  std::vector<uint32_t> story_ids = stories.encode(text);
  EXPECT_EQ(story_ids.size(), 3u + 1 + 4 + 1);
  EXPECT_EQ(std::count(story_ids.begin(), story_ids.end(), stories.eot_id()), 2);

  moelab::testing::TempDir dir;
  plain.save(dir.path());
  std::unique_ptr<Tokenizer> loaded = load_tokenizer(dir.path());
  EXPECT_EQ(loaded->encode(text), ids);
  stories.save(dir.path());
  EXPECT_EQ(load_tokenizer(dir.path())->encode(text), story_ids);
}

TEST(CharTokenizer, RoundTripsRealTinyStoriesAndCountsUnknowns) {
  MOELAB_REQUIRE_SHARED("data/tinystories/train.txt");
  std::string train = read_corpus_file(moelab::testing::shared_path("data/tinystories/train.txt"));
  std::string valid = read_corpus_file(moelab::testing::shared_path("data/tinystories/valid.txt"));
  // SOURCES.md: 79 distinct characters in train and valid together, newline not counted.
  EXPECT_EQ(CharTokenizer::train(train + valid).code_points().size(), 79u + 1);
  CharTokenizer tok = CharTokenizer::train(train);
  std::string round = tok.decode(tok.encode(train));
  EXPECT_EQ(split_stories(round), split_stories(train));
  EXPECT_EQ(tok.unknown_count(), 0);
  tok.encode(valid);  // valid.txt has characters train.txt lacks: counted, not fatal
  const int64_t unseen_in_valid = tok.unknown_count();
  EXPECT_GT(unseen_in_valid, 0);
  std::vector<uint32_t> ids = tok.encode("A \u263a smile");  // a character not in the training text
  EXPECT_EQ(tok.unknown_count(), unseen_in_valid + 1);
  EXPECT_EQ(ids[2], 0u);
}

TEST(CharTokenizer, SavesAndLoads) {
  TempDir dir;
  CharTokenizer tok = CharTokenizer::train("hello world\n<|endoftext|>\n");
  tok.save(dir.path());
  auto loaded = load_tokenizer(dir.path());
  EXPECT_EQ(loaded->vocab_size(), tok.vocab_size());
  EXPECT_EQ(loaded->encode("hello"), tok.encode("hello"));
  write_file_atomic(dir / "tokenizer.json", "{\"type\": \"words\"}");
  EXPECT_NE(error_of([&] { load_tokenizer(dir.path()); }).find("'type' must be char or bpe"), std::string::npos);
}

TEST(BpeTokenizer, RoundTripsGeneratedAndRealText) {
  moelab::testing::use_built_bpe_tool();
  TempDir dir;
  std::string train = generate_stories(400, 3);
  BpeTokenizer tok = BpeTokenizer::train(train, 512, dir.path());
  std::string held_out = generate_stories(20, 99);
  std::vector<uint32_t> ids = tok.encode(held_out);
  EXPECT_LT(ids.size(), held_out.size() / 2);  // subwords, not characters
  EXPECT_EQ(split_stories(tok.decode(ids)), split_stories(held_out));
  for (uint32_t id : ids) EXPECT_LT(id, 512u);
  std::string odd = "Zo\u00eb's caf\u00e9 \u263a costs 42\u20ac\n<|endoftext|>\n";  // unseen characters: byte fallback
  EXPECT_EQ(tok.decode(tok.encode(odd)), odd);
  if (std::filesystem::exists(moelab::testing::shared_path("data/tinystories/valid.txt"))) {
    std::string real = read_corpus_file(moelab::testing::shared_path("data/tinystories/valid.txt")).substr(0, 200000);
    real = real.substr(0, real.rfind("<|endoftext|>")) + "<|endoftext|>\n";
    EXPECT_EQ(split_stories(tok.decode(tok.encode(real))), split_stories(real));
  }
}

TEST(BpeTokenizer, HelperFailureIsAClearError) {
  ::setenv("MOELAB_BPE", "/nonexistent/moelab-bpe", 1);
  BpeTokenizer tok("/nonexistent.model", 512);
  EXPECT_NE(error_of([&] { tok.encode("hi"); }).find("cannot run the BPE helper"), std::string::npos);
  moelab::testing::use_built_bpe_tool();
  EXPECT_NE(error_of([&] { tok.encode("hi"); }).find("moelab-bpe"), std::string::npos);
}

// ---- token files and batches ----

TEST(TokenFile, RoundTripsNarrowAndWideIds) {
  TempDir dir;
  std::vector<uint32_t> small = {0, 1, 65535, 7}, wide = {0, 70000, 3, 1u << 30};
  write_token_file(dir / "a.bin", small, 65536);
  write_token_file(dir / "b.bin", wide, int64_t{1} << 31);
  TokenFile a(dir / "a.bin"), b(dir / "b.bin");
  ASSERT_EQ(a.size(), 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(a.at(i), small[i]);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(b.at(i), wide[i]);
  EXPECT_EQ(std::filesystem::file_size(dir / "a.bin"), 32u + 8u);
}

TEST(TokenFile, RejectsMalformedFiles) {
  TempDir dir;
  write_file_atomic(dir / "junk.bin", std::string(40, 'x'));
  EXPECT_NE(error_of([&] { TokenFile t(dir / "junk.bin"); }).find("bad magic"), std::string::npos);
  write_token_file(dir / "t.bin", {1, 2, 3}, 10);
  std::string bytes = read_text_file(dir / "t.bin");
  write_file_atomic(dir / "short.bin", bytes.substr(0, bytes.size() - 1));
  EXPECT_NE(error_of([&] { TokenFile t(dir / "short.bin"); }).find("header says 3 ids"), std::string::npos);
}

TEST(BatchSampler, WindowsAreShiftedAndResumable) {
  TempDir dir;
  std::vector<uint32_t> ids(1000);
  for (uint32_t i = 0; i < ids.size(); ++i) ids[i] = i % 977;
  write_token_file(dir / "t.bin", ids, 1000);
  TokenFile tokens(dir / "t.bin");
  BatchSampler a(tokens, 4, 16, 42), b(tokens, 4, 16, 42);
  std::vector<int64_t> x(64), y(64), x2(64), y2(64);
  a.next(x.data(), y.data());
  for (int i = 0; i < 64; ++i) {
    if (i % 16 != 15) {
      EXPECT_EQ(y[i], x[i + 1]);
    }
  }
  std::string saved = a.state();
  a.next(x.data(), y.data());
  b.restore(saved);
  b.next(x2.data(), y2.data());
  EXPECT_EQ(x, x2);
  EXPECT_EQ(y, y2);
  EXPECT_NE(error_of([&] { b.restore("not a state"); }).find("sampler state"), std::string::npos);
}

TEST(ThreadPool, RunsTasksInOrderWithTheirResultsAndErrors) {
  std::vector<int> order;
  {
    ThreadPool one(1);  // one worker: tasks run in submission order
    std::vector<std::future<int>> squares;
    for (int i = 0; i < 50; ++i) squares.push_back(one.submit([i, &order] { order.push_back(i); return i * i; }));
    for (int i = 0; i < 50; ++i) EXPECT_EQ(squares[i].get(), i * i);
    std::future<void> failing = one.submit([] { throw UserError("task failed"); });
    EXPECT_THROW(failing.get(), UserError);
  }
  std::vector<int> expected(50);
  for (int i = 0; i < 50; ++i) expected[i] = i;
  EXPECT_EQ(order, expected);

  std::atomic<int> done{0};
  {
    ThreadPool two(2);
    for (int i = 0; i < 200; ++i) two.submit([&done] { ++done; });
  }  // the destructor finishes what was queued
  EXPECT_EQ(done.load(), 200);

  ThreadPool none(0);  // no workers: the caller runs the task
  EXPECT_EQ(none.submit([] { return std::this_thread::get_id(); }).get(), std::this_thread::get_id());
}
