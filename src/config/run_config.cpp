#include "config/run_config.h"

#include <cmath>
#include <functional>

#include "util/error.h"
#include "util/files.h"
#include "util/strings.h"

namespace moelab {
using nlohmann::json;

json default_config_json() { return run_config_to_json(RunConfig{}); }

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
  } catch (const json::exception& e) {  // a number beyond double's range (out_of_range 406)
    throw UserError(origin + ": not valid JSON: " + e.what());
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
    if (!base.contains(it.key())) throw UserError(strf("%s: unknown key '%s'", origin.c_str(), printable(key).c_str()));
    json& slot = base[it.key()];
    if (slot.is_object()) {
      merge_at(slot, it.value(), origin, key);
      continue;
    }
    if (!same_kind(slot, it.value())) {
      const char* expected = slot.is_null() ? "a string or null" : type_word(slot);
      throw UserError(strf("%s: '%s' must be %s, got %s", origin.c_str(), printable(key).c_str(), expected,
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
  } catch (const json::exception& e) {
    throw UserError("--set " + assignment + ": " + e.what());
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
  int64_t integer(const std::string& s, const std::string& k, int64_t lo, int64_t hi) const {
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
  double number(const std::string& s, const std::string& k, double lo, double hi, bool lo_open) const {
    double v = at(s, k).get<double>();
    if (!std::isfinite(v) || v < lo || v > hi || (lo_open && v == lo))
      fail(s, k, strf("must be in %s%g, %g], got %g", lo_open ? "(" : "[", lo, hi, v));
    return v;
  }
};

// How a key's value is read and checked.
template <typename T>
using Check = std::function<T(const Reader&, const std::string& section, const std::string& key)>;

Check<int64_t> integer(int64_t lo, int64_t hi = INT64_MAX) {
  return [=](const Reader& r, const std::string& s, const std::string& k) { return r.integer(s, k, lo, hi); };
}
Check<double> number(double lo, double hi, bool lo_open = false) {
  return [=](const Reader& r, const std::string& s, const std::string& k) { return r.number(s, k, lo, hi, lo_open); };
}
Check<bool> flag() {
  return [](const Reader& r, const std::string& s, const std::string& k) { return r.at(s, k).get<bool>(); };
}
// Any string (strategy and gate names are checked against their registries later); with
// `required`, an empty one is refused with that message.
Check<std::string> text(const std::string& required = "") {
  return [=](const Reader& r, const std::string& s, const std::string& k) {
    std::string v = r.at(s, k).get<std::string>();
    if (v.empty() && !required.empty()) r.fail(s, k, required);
    return v;
  };
}
Check<std::string> one_of(std::vector<std::string> options) {
  return [=](const Reader& r, const std::string& s, const std::string& k) {
    std::string v = r.at(s, k).get<std::string>(), list;
    for (const std::string& o : options) {
      if (v == o) return v;
      list += (list.empty() ? "" : "|") + o;
    }
    r.fail(s, k, strf("must be one of %s, got '%s'", list.c_str(), printable(v).c_str()));
  };
}

// One config key: where it sits in the JSON and in RunConfig, and its check. The table below
// is the only place a key is written: the defaults, to-JSON and from-JSON all come from it.
struct Field {
  std::string section, key;
  std::function<json(const RunConfig&)> get;
  std::function<void(const Reader&, RunConfig&)> set;
};

template <typename Part, typename T>
Field field(const char* section, Part RunConfig::*part, const char* key, T Part::*member, Check<T> check) {
  return {section, key, [=](const RunConfig& c) { return json((c.*part).*member); },
          [=](const Reader& r, RunConfig& c) { (c.*part).*member = check(r, section, key); }};
}
template <typename T>
Field field(const char* key, T RunConfig::*member, Check<T> check) {
  return {"", key, [=](const RunConfig& c) { return json(c.*member); },
          [=](const Reader& r, RunConfig& c) { c.*member = check(r, "", key); }};
}

const std::vector<Field>& fields() {
  using R = RunConfig;
  static const std::vector<Field> all = {
      field("seed", &R::seed, integer(0)),
      field("out", &R::out, text("must name a run directory")),

      field("data", &R::data, "train", &DataConfig::train, text("must be \"builtin\" or a path")),
      // null = the last data.val_fraction of data.train
      Field{"data", "valid", [](const R& c) { return c.data.valid ? json(*c.data.valid) : json(nullptr); },
            [](const Reader& r, R& c) {
              if (!r.at("data", "valid").is_null()) c.data.valid = r.at("data", "valid").get<std::string>();
            }},
      field("data", &R::data, "val_fraction", &DataConfig::val_fraction, number(0.0, 0.9, /*lo_open=*/true)),
      field("data", &R::data, "tokenizer", &DataConfig::tokenizer, one_of({"char", "bpe"})),
      field("data", &R::data, "bpe_vocab_size", &DataConfig::bpe_vocab_size, integer(64, 1 << 20)),
      field("data", &R::data, "builtin_stories", &DataConfig::builtin_stories, integer(10, 2000000)),
      field("data", &R::data, "builtin_style", &DataConfig::builtin_style, one_of({"tales", "fables"})),
      field("data", &R::data, "end_of_text", &DataConfig::end_of_text, one_of({"token", "text"})),

      field("model", &R::model, "layers", &ModelConfig::layers, integer(1, 256)),
      field("model", &R::model, "dim", &ModelConfig::dim, integer(8, 65536)),
      field("model", &R::model, "heads", &ModelConfig::heads, integer(1, 4096)),
      field("model", &R::model, "seq_len", &ModelConfig::seq_len, integer(1, 1 << 20)),
      field("model", &R::model, "ffn_mult", &ModelConfig::ffn_mult, integer(1, 64)),
      field("model", &R::model, "dropout", &ModelConfig::dropout, number(0.0, 0.9)),
      field("model", &R::model, "embedding_dropout", &ModelConfig::embedding_dropout, flag()),
      field("model", &R::model, "attention_dropout", &ModelConfig::attention_dropout, number(0.0, 0.9)),
      field("model", &R::model, "init", &ModelConfig::init, one_of({"normal", "seed"})),
      field("model", &R::model, "position", &ModelConfig::position, one_of({"learned", "rope"})),
      field("model", &R::model, "activation", &ModelConfig::activation, one_of({"gelu", "swiglu"})),
      field("model", &R::model, "tie_embeddings", &ModelConfig::tie_embeddings, flag()),
      field("model", &R::model, "moe_every", &ModelConfig::moe_every, integer(1)),
      field("model", &R::model, "dense", &ModelConfig::dense, flag()),
      field("model", &R::model, "dense_width", &ModelConfig::dense_width, number(0.0, 1e6)),
      field("model", &R::model, "dispatcher", &ModelConfig::dispatcher, one_of({"sparse", "masked_matmul"})),

      field("router", &R::router, "strategy", &RouterConfig::strategy, text()),
      field("router", &R::router, "gate", &RouterConfig::gate, text()),
      field("router", &R::router, "num_experts", &RouterConfig::num_experts, integer(1, 4096)),
      field("router", &R::router, "top_k", &RouterConfig::top_k, integer(1)),
      field("router", &R::router, "capacity_factor", &RouterConfig::capacity_factor, number(-1e9, 1e9)),
      field("router", &R::router, "drop_policy", &RouterConfig::drop_policy, one_of({"position", "probs"})),
      field("router", &R::router, "renorm_after_drop", &RouterConfig::renorm_after_drop, flag()),
      field("router", &R::router, "temperature", &RouterConfig::temperature, number(0.0, 1e6, /*lo_open=*/true)),
      field("router", &R::router, "lb_coef", &RouterConfig::lb_coef, number(0.0, 1e3)),
      field("router", &R::router, "z_coef", &RouterConfig::z_coef, number(0.0, 1e3)),
      field("router", &R::router, "bias_rate", &RouterConfig::bias_rate, number(0.0, 1e3)),
      field("router", &R::router, "hash_key", &RouterConfig::hash_key, one_of({"token_id", "position"})),
      field("router", &R::router, "ec_fallback", &RouterConfig::ec_fallback, one_of({"none", "topk"})),
      field("router", &R::router, "sinkhorn_iters", &RouterConfig::sinkhorn_iters, integer(0, 10000)),
      field("router", &R::router, "top1_gate", &RouterConfig::top1_gate, one_of({"prob", "none"})),
      field("router", &R::router, "hard_weight", &RouterConfig::hard_weight, one_of({"sum", "mean"})),

      field("train", &R::train, "batch_size", &TrainConfig::batch_size, integer(1, 1 << 20)),
      field("train", &R::train, "max_steps", &TrainConfig::max_steps, integer(1)),
      field("train", &R::train, "lr", &TrainConfig::lr, number(0.0, 10.0, /*lo_open=*/true)),
      field("train", &R::train, "weight_decay", &TrainConfig::weight_decay, number(0.0, 10.0)),
      field("train", &R::train, "adam_beta2", &TrainConfig::adam_beta2, number(0.0, 0.99999)),
      field("train", &R::train, "warmup_steps", &TrainConfig::warmup_steps, integer(0)),
      field("train", &R::train, "grad_clip", &TrainConfig::grad_clip, number(0.0, 1e9)),
      field("train", &R::train, "eval_interval", &TrainConfig::eval_interval, integer(0)),
      field("train", &R::train, "eval_windows", &TrainConfig::eval_windows, integer(0)),
      field("train", &R::train, "log_interval", &TrainConfig::log_interval, integer(1)),
      field("train", &R::train, "checkpoint_interval", &TrainConfig::checkpoint_interval, integer(0)),
      field("train", &R::train, "device", &TrainConfig::device, one_of({"auto", "cpu", "cuda"})),
      field("train", &R::train, "dtype", &TrainConfig::dtype, one_of({"auto", "fp32", "bf16"})),
      field("train", &R::train, "threads", &TrainConfig::threads, integer(0, 1024)),
      field("train", &R::train, "peak_tflops", &TrainConfig::peak_tflops, number(0.0, 1e6)),
      field("train", &R::train, "trace_interval", &TrainConfig::trace_interval, integer(0)),
      field("train", &R::train, "cuda_graph", &TrainConfig::cuda_graph, flag()),
      field("train", &R::train, "cuda_kernels", &TrainConfig::cuda_kernels, flag()),
      field("train", &R::train, "profile_steps", &TrainConfig::profile_steps, integer(0)),

      field("parallel", &R::parallel, "expert_parallel", &ParallelConfig::expert_parallel, integer(1, 4096)),
      field("parallel", &R::parallel, "timeout_s", &ParallelConfig::timeout_s, number(0.0, 86400.0, /*lo_open=*/true)),
      field("parallel", &R::parallel, "bucket_mb", &ParallelConfig::bucket_mb, number(0.0, 4096.0, /*lo_open=*/true)),

      // null = not fine-tuning
      Field{"finetune", "base", [](const R& c) { return c.finetune.base ? json(*c.finetune.base) : json(nullptr); },
            [](const Reader& r, R& c) {
              const json& v = r.at("finetune", "base");
              if (v.is_null()) return;
              if (v.get<std::string>().empty()) r.fail("finetune", "base", "must name a run directory (or be null)");
              c.finetune.base = v.get<std::string>();
            }},
      field("finetune", &R::finetune, "method", &FinetuneConfig::method, one_of({"perft_r", "perft_e", "shared", "lora", "full"})),
      field("finetune", &R::finetune, "rank", &FinetuneConfig::rank, integer(1, 65536)),
      field("finetune", &R::finetune, "experts", &FinetuneConfig::experts, integer(1, 4096)),
      field("finetune", &R::finetune, "top_k", &FinetuneConfig::top_k, integer(1, 4096)),
      field("finetune", &R::finetune, "strategy", &FinetuneConfig::strategy, text()),
      field("finetune", &R::finetune, "gate", &FinetuneConfig::gate, text()),
      field("finetune", &R::finetune, "capacity_factor", &FinetuneConfig::capacity_factor, number(-1e9, 1e9)),
      field("finetune", &R::finetune, "lb_coef", &FinetuneConfig::lb_coef, number(0.0, 1e3)),
  };
  return all;
}
}  // namespace

json run_config_to_json(const RunConfig& c) {
  json j = json::object();
  for (const Field& f : fields()) (f.section.empty() ? j : j[f.section])[f.key] = f.get(c);
  return j;
}

RunConfig run_config_from_json(const json& config, const std::string& origin) {
  Reader r{config, origin};
  RunConfig c;
  for (const Field& f : fields()) f.set(r, c);
  // The rules between keys.
  const ModelConfig& m = c.model;
  if (m.dim % m.heads != 0)
    r.fail("model", "heads", strf("must divide model.dim = %lld, got %lld", (long long)m.dim, (long long)m.heads));
  if (m.position == "rope" && (m.dim / m.heads) % 2 != 0) r.fail("model", "position", "rope needs an even head dimension");
  if (c.router.top_k > c.router.num_experts)
    r.fail("router", "top_k", strf("must be <= router.num_experts = %lld, got %lld", (long long)c.router.num_experts,
                                   (long long)c.router.top_k));
  if (c.finetune.top_k > c.finetune.experts)
    r.fail("finetune", "top_k", strf("must be <= finetune.experts = %lld, got %lld", (long long)c.finetune.experts,
                                     (long long)c.finetune.top_k));
  if (c.router.num_experts % c.parallel.expert_parallel != 0)
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
