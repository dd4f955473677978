#include "config/run_config.h"

#include <cmath>

#include "util/error.h"
#include "util/files.h"
#include "util/strings.h"

namespace moelab {
using nlohmann::json;

json default_config_json() { return run_config_to_json(RunConfig{}); }

json run_config_to_json(const RunConfig& c) {
  json j;
  j["seed"] = c.seed;
  j["out"] = c.out;
  j["data"] = {{"train", c.data.train},
               {"valid", c.data.valid ? json(*c.data.valid) : json(nullptr)},
               {"val_fraction", c.data.val_fraction},
               {"tokenizer", c.data.tokenizer},
               {"bpe_vocab_size", c.data.bpe_vocab_size},
               {"builtin_stories", c.data.builtin_stories}};
  j["model"] = {{"layers", c.model.layers},     {"dim", c.model.dim},
                {"heads", c.model.heads},       {"seq_len", c.model.seq_len},
                {"ffn_mult", c.model.ffn_mult}, {"dropout", c.model.dropout},
                {"attention_dropout", c.model.attention_dropout}, {"init", c.model.init},
                {"position", c.model.position}, {"activation", c.model.activation},
                {"tie_embeddings", c.model.tie_embeddings},
                {"moe_every", c.model.moe_every}, {"dense", c.model.dense},
                {"dense_width", c.model.dense_width}, {"dispatcher", c.model.dispatcher}};
  const RouterConfig& r = c.router;
  j["router"] = {{"strategy", r.strategy},
                 {"gate", r.gate},
                 {"num_experts", r.num_experts},
                 {"top_k", r.top_k},
                 {"capacity_factor", r.capacity_factor},
                 {"drop_policy", r.drop_policy},
                 {"renorm_after_drop", r.renorm_after_drop},
                 {"temperature", r.temperature},
                 {"lb_coef", r.lb_coef},
                 {"z_coef", r.z_coef},
                 {"bias_rate", r.bias_rate},
                 {"hash_key", r.hash_key},
                 {"ec_fallback", r.ec_fallback},
                 {"sinkhorn_iters", r.sinkhorn_iters},
                 {"top1_gate", r.top1_gate},
                 {"hard_weight", r.hard_weight}};
  const TrainConfig& t = c.train;
  j["train"] = {{"batch_size", t.batch_size},
                {"max_steps", t.max_steps},
                {"lr", t.lr},
                {"weight_decay", t.weight_decay},
                {"warmup_steps", t.warmup_steps},
                {"grad_clip", t.grad_clip},
                {"eval_interval", t.eval_interval},
                {"eval_windows", t.eval_windows},
                {"log_interval", t.log_interval},
                {"checkpoint_interval", t.checkpoint_interval},
                {"device", t.device},
                {"dtype", t.dtype},
                {"threads", t.threads},
                {"peak_tflops", t.peak_tflops},
                {"trace_interval", t.trace_interval},
                {"cuda_graph", t.cuda_graph},
                {"profile_steps", t.profile_steps}};
  j["parallel"] = {{"expert_parallel", c.parallel.expert_parallel},
                   {"timeout_s", c.parallel.timeout_s},
                   {"bucket_mb", c.parallel.bucket_mb}};
  return j;
}

json parse_jsonc_text(const std::string& text, const std::string& origin) {
  try {
    return json::parse(text, nullptr, /*allow_exceptions=*/true, /*ignore_comments=*/true);
  } catch (const json::parse_error& e) {
    // Turn nlohmann's byte offset into a line and column a person can go to.
    size_t line = 1, column = 1;
    for (size_t i = 0; i + 1 < e.byte && i < text.size(); ++i) {
      if (text[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    std::string what = e.what();
    size_t colon = what.find("syntax error");
    throw UserError(strf("%s:%zu:%zu: not valid JSON: %s", origin.c_str(), line, column,
                         (colon == std::string::npos ? what : what.substr(colon)).c_str()));
  }
}

json parse_jsonc_file(const std::string& path) { return parse_jsonc_text(read_text_file(path), path); }

static const char* type_word(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

// Nullable string fields have null as their default; the user may give a string or null.
static bool same_kind(const json& expected, const json& given) {
  if (expected.is_null()) return given.is_null() || given.is_string();
  if (expected.is_number_float()) return given.is_number();
  if (expected.is_number_integer()) return given.is_number_integer();
  return expected.type() == given.type();
}

static void merge_at(json& base, const json& user, const std::string& origin, const std::string& prefix) {
  if (!user.is_object())
    throw UserError(strf("%s: %s must be an object, got %s", origin.c_str(),
                         prefix.empty() ? "the config" : prefix.c_str(), type_word(user)));
  for (auto it = user.begin(); it != user.end(); ++it) {
    std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (!base.contains(it.key())) throw UserError(strf("%s: unknown key '%s'", origin.c_str(), key.c_str()));
    json& slot = base[it.key()];
    if (slot.is_object()) {
      merge_at(slot, it.value(), origin, key);
      continue;
    }
    if (!same_kind(slot, it.value())) {
      const char* expected = slot.is_null() ? "a string or null" : type_word(slot);
      throw UserError(strf("%s: '%s' must be %s, got %s", origin.c_str(), key.c_str(), expected,
                           type_word(it.value())));
    }
    // Keep float-typed fields float so that later merges still type-check them as numbers.
    slot = (slot.is_number_float() && it.value().is_number_integer()) ? json(it.value().get<double>())
                                                                        : it.value();
  }
}

void merge_config(json& base, const json& user, const std::string& origin) { merge_at(base, user, origin, ""); }

void apply_override(json& config, const std::string& assignment) {
  size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw UserError("--set " + assignment + ": expected KEY=VALUE, e.g. train.max_steps=20");
  std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  json value;
  try {
    value = json::parse(text);
  } catch (const json::parse_error&) {
    value = text;  // bare words are strings: --set router.strategy=top1
  }
  // Build {"a": {"b": value}} and merge it, so --set gets the same checks as a file.
  json patch = value;
  std::vector<std::string> parts = split(key, '.');
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) patch = json{{*it, patch}};
  merge_at(config, patch, "--set " + key, "");
}

namespace {
// Reads typed fields out of the merged JSON, naming the key in every refusal.
struct Reader {
  const json& root;
  std::string origin;
  const json& at(const std::string& section, const std::string& key) const {
    return section.empty() ? root.at(key) : root.at(section).at(key);
  }
  std::string path(const std::string& section, const std::string& key) const {
    return section.empty() ? key : section + "." + key;
  }
  [[noreturn]] void fail(const std::string& section, const std::string& key, const std::string& what) const {
    throw UserError(strf("%s: '%s' %s", origin.c_str(), path(section, key).c_str(), what.c_str()));
  }
  int64_t integer(const std::string& s, const std::string& k, int64_t lo, int64_t hi = INT64_MAX) const {
    const json& value = at(s, k);
    if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      fail(s, k, strf("must be at most %lld, got %llu", (long long)hi, (unsigned long long)value.get<uint64_t>()));
    int64_t v = value.get<int64_t>();
    if (v < lo || v > hi)
      fail(s, k, hi == INT64_MAX ? strf("must be >= %lld, got %lld", (long long)lo, (long long)v)
                                 : strf("must be in [%lld, %lld], got %lld", (long long)lo, (long long)hi,
                                        (long long)v));
    return v;
  }
  double number(const std::string& s, const std::string& k, double lo, double hi, bool lo_open = false) const {
    double v = at(s, k).get<double>();
    if (!std::isfinite(v) || v < lo || v > hi || (lo_open && v == lo))
      fail(s, k, strf("must be in %s%g, %g], got %g", lo_open ? "(" : "[", lo, hi, v));
    return v;
  }
  std::string choice(const std::string& s, const std::string& k, std::initializer_list<const char*> options) const {
    std::string v = at(s, k).get<std::string>();
    std::string list;
    for (const char* o : options) {
      if (v == o) return v;
      list += (list.empty() ? "" : "|") + std::string(o);
    }
    fail(s, k, strf("must be one of %s, got '%s'", list.c_str(), v.c_str()));
  }
  std::string text(const std::string& s, const std::string& k) const { return at(s, k).get<std::string>(); }
  bool flag(const std::string& s, const std::string& k) const { return at(s, k).get<bool>(); }
};
}  // namespace

RunConfig run_config_from_json(const json& config, const std::string& origin) {
  Reader r{config, origin};
  RunConfig c;
  c.seed = r.integer("", "seed", 0);
  c.out = r.text("", "out");
  if (c.out.empty()) r.fail("", "out", "must name a run directory");

  c.data.train = r.text("data", "train");
  if (c.data.train.empty()) r.fail("data", "train", "must be \"builtin\" or a path");
  if (!config["data"]["valid"].is_null()) c.data.valid = r.text("data", "valid");
  c.data.val_fraction = r.number("data", "val_fraction", 0.0, 0.9, /*lo_open=*/true);
  c.data.tokenizer = r.choice("data", "tokenizer", {"char", "bpe"});
  c.data.bpe_vocab_size = r.integer("data", "bpe_vocab_size", 64, 1 << 20);
  c.data.builtin_stories = r.integer("data", "builtin_stories", 10, 2000000);

  ModelConfig& m = c.model;
  m.layers = r.integer("model", "layers", 1, 256);
  m.dim = r.integer("model", "dim", 8, 65536);
  m.heads = r.integer("model", "heads", 1, 4096);
  if (m.dim % m.heads != 0) r.fail("model", "heads", strf("must divide model.dim = %lld, got %lld", (long long)m.dim, (long long)m.heads));
  m.seq_len = r.integer("model", "seq_len", 1, 1 << 20);
  m.ffn_mult = r.integer("model", "ffn_mult", 1, 64);
  m.dropout = r.number("model", "dropout", 0.0, 0.9);
  m.attention_dropout = r.number("model", "attention_dropout", 0.0, 0.9);
  m.init = r.choice("model", "init", {"normal", "pytorch"});
  m.position = r.choice("model", "position", {"learned", "rope"});
  if (m.position == "rope" && (m.dim / m.heads) % 2 != 0) r.fail("model", "position", "rope needs an even head dimension");
  m.activation = r.choice("model", "activation", {"gelu", "swiglu"});
  m.tie_embeddings = r.flag("model", "tie_embeddings");
  m.moe_every = r.integer("model", "moe_every", 1);
  m.dense = r.flag("model", "dense");
  m.dense_width = r.number("model", "dense_width", 0.0, 1e6);
  m.dispatcher = r.choice("model", "dispatcher", {"sparse", "masked_matmul"});

  RouterConfig& ro = c.router;
  ro.strategy = r.text("router", "strategy");
  ro.gate = r.text("router", "gate");
  ro.num_experts = r.integer("router", "num_experts", 1, 4096);
  ro.top_k = r.integer("router", "top_k", 1);
  if (ro.top_k > ro.num_experts)
    r.fail("router", "top_k", strf("must be <= router.num_experts = %lld, got %lld", (long long)ro.num_experts, (long long)ro.top_k));
  ro.capacity_factor = r.number("router", "capacity_factor", -1e9, 1e9);
  ro.drop_policy = r.choice("router", "drop_policy", {"position", "probs"});
  ro.renorm_after_drop = r.flag("router", "renorm_after_drop");
  ro.temperature = r.number("router", "temperature", 0.0, 1e6, /*lo_open=*/true);
  ro.lb_coef = r.number("router", "lb_coef", 0.0, 1e3);
  ro.z_coef = r.number("router", "z_coef", 0.0, 1e3);
  ro.bias_rate = r.number("router", "bias_rate", 0.0, 1e3);
  ro.hash_key = r.choice("router", "hash_key", {"token_id", "position"});
  ro.ec_fallback = r.choice("router", "ec_fallback", {"none", "topk"});
  ro.sinkhorn_iters = r.integer("router", "sinkhorn_iters", 0, 10000);
  ro.top1_gate = r.choice("router", "top1_gate", {"prob", "none"});
  ro.hard_weight = r.choice("router", "hard_weight", {"sum", "mean"});

  TrainConfig& t = c.train;
  t.batch_size = r.integer("train", "batch_size", 1, 1 << 20);
  t.max_steps = r.integer("train", "max_steps", 1);
  t.lr = r.number("train", "lr", 0.0, 10.0, /*lo_open=*/true);
  t.weight_decay = r.number("train", "weight_decay", 0.0, 10.0);
  t.warmup_steps = r.integer("train", "warmup_steps", 0);
  t.grad_clip = r.number("train", "grad_clip", 0.0, 1e9);
  t.eval_interval = r.integer("train", "eval_interval", 0);
  t.eval_windows = r.integer("train", "eval_windows", 0);
  t.log_interval = r.integer("train", "log_interval", 1);
  t.checkpoint_interval = r.integer("train", "checkpoint_interval", 0);
  t.device = r.choice("train", "device", {"auto", "cpu", "cuda"});
  t.dtype = r.choice("train", "dtype", {"auto", "fp32", "bf16"});
  t.threads = r.integer("train", "threads", 0, 1024);
  t.peak_tflops = r.number("train", "peak_tflops", 0.0, 1e6);
  t.trace_interval = r.integer("train", "trace_interval", 0);
  t.cuda_graph = r.flag("train", "cuda_graph");
  t.profile_steps = r.integer("train", "profile_steps", 0);

  ParallelConfig& p = c.parallel;
  p.expert_parallel = r.integer("parallel", "expert_parallel", 1, 4096);
  p.timeout_s = r.number("parallel", "timeout_s", 0.0, 86400.0, /*lo_open=*/true);
  p.bucket_mb = r.number("parallel", "bucket_mb", 0.0, 4096.0, /*lo_open=*/true);
  if (c.router.num_experts % p.expert_parallel != 0)
    r.fail("parallel", "expert_parallel", "must divide router.num_experts (" + std::to_string(c.router.num_experts) + ")");
  return c;
}

RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides) {
  json config = default_config_json();
  if (!path.empty()) merge_config(config, parse_jsonc_file(path), path);
  for (const std::string& o : overrides) apply_override(config, o);
  return run_config_from_json(config, path.empty() ? "config" : path);
}

}  // namespace moelab
