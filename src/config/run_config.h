#pragma once
// The run configuration: one typed struct per section, built from JSON by load_run_config().
// The canonical defaults are SPEC's "unified" experiment; default_config_json() is their
// single source of truth, and every key a user writes must exist there with the same type.
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace moelab {

struct DataConfig {
  std::string train = "builtin";     // "builtin" = the embedded story generator, or a path
  std::optional<std::string> valid;  // none = last val_fraction of train
  double val_fraction = 0.1;
  std::string tokenizer = "char";    // char | bpe
  int64_t bpe_vocab_size = 2048;
  int64_t builtin_stories = 20000;   // stories the generator writes when train = builtin
  std::string builtin_style = "tales";  // the generator's style: tales | fables (a domain shift for fine-tuning)
  // What a "<|endoftext|>" line becomes (char tokenizer): "token", one end-of-text token that
  // takes the place of the line and the newlines around it; "text", its characters and
  // newlines as they are, the file read as plain text (the seed's character loader, whose
  // per-character loss so counts the 13 nearly certain characters after each story's "<").
  std::string end_of_text = "token";
};

struct ModelConfig {
  int64_t layers = 4, dim = 256, heads = 4, seq_len = 256, ffn_mult = 4;
  double dropout = 0.1;              // on each block's residual branches (and the embeddings, below)
  bool embedding_dropout = true;     // dropout also on token + position embedding (nanoGPT); the seed: none
  double attention_dropout = 0.0;    // dropout on the attention probabilities (training only)
  // normal: nanoGPT's N(0, 0.02) for embeddings and linear layers, zero biases (experts
  // Xavier per expert, the linear gate N(0, 1/d)); seed: the seed's Python model as PyTorch
  // initialises it (see TinyMoE's constructor and docs/results.md).
  std::string init = "normal";
  std::string position = "learned";  // learned | rope
  std::string activation = "gelu";   // gelu | swiglu
  bool tie_embeddings = false;
  int64_t moe_every = 1;             // every n-th block has a MoE FFN, the others dense
  bool dense = false;                // dense baseline with the MoE's active parameters
  double dense_width = 0;            // its FFN width in experts' widths (0: router.top_k); expert
                                     // choice at capacity factor c activates c * k per token
  std::string dispatcher = "sparse";  // sparse (pack by expert) | masked_matmul (every expert on every token)
  int64_t vocab_size = 0;            // set from the tokenizer, not by the user
};

struct RouterConfig {
  std::string strategy = "softk", gate = "linear";
  int64_t num_experts = 8, top_k = 2;
  double capacity_factor = 1.25;     // <= 0: dropless
  std::string drop_policy = "position";  // position | probs
  bool renorm_after_drop = true;
  double temperature = 1.0;
  double lb_coef = 1e-2, z_coef = 0.0, bias_rate = 0.0;
  std::string hash_key = "token_id";     // token_id | position
  std::string ec_fallback = "none";      // none | topk
  int64_t sinkhorn_iters = 3;
  std::string top1_gate = "prob";        // prob | none
  std::string hard_weight = "sum";       // sum | mean
};

struct TrainConfig {
  int64_t batch_size = 32, max_steps = 1200;
  double lr = 3e-4, weight_decay = 0.01;
  double adam_beta2 = 0.95;     // AdamW's second-moment decay (nanoGPT's 0.95; PyTorch's default, the seed's, 0.999)
  int64_t warmup_steps = 50;
  double grad_clip = 1.0;
  int64_t eval_interval = 200, eval_windows = 0, log_interval = 10, checkpoint_interval = 200;
  std::string device = "auto";  // auto | cpu | cuda
  std::string dtype = "auto";   // auto | fp32 | bf16
  int64_t threads = 0;          // 0 = all cores
  double peak_tflops = 0;       // the device's peak, for MFU; 0 = not reported
  int64_t trace_interval = 0;   // every n steps, the step's routing to RUN/traces/train_routing.jsonl; 0 = off
  bool cuda_graph = true;       // CUDA: capture the training step once and replay it (NCCL collectives included)
  bool cuda_kernels = true;     // CUDA: moelab's kernels serve the ops they cover; false = the libtorch references
  int64_t profile_steps = 0;    // CUDA: profile this many steps after the warm-up (RUN/profile.json, profile_kernels.txt)
};

// Scale-out (SPEC 9). The world (ranks, rendezvous) comes from the launcher's environment:
// torchrun's RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT/LOCAL_RANK or mpirun's OMPI_COMM_WORLD_*.
// train.batch_size is per rank: a step trains on batch_size x world sequences.
struct ParallelConfig {
  int64_t expert_parallel = 1;  // ranks an MoE layer's experts are sharded over; divides the world and E
  double timeout_s = 120;       // a collective or the rendezvous waiting longer than this fails the job
  double bucket_mb = 25;        // gradient all-reduce bucket size (DDP's bucket_cap_mb)
};

// Fine-tuning a finished run (base set): the base's model, router, tokenizer and weights; the
// data.* keys give the target corpus. Every method but full freezes the base and trains only
// its adapters (models/adapters.h), each of which starts as the identity (its output
// projection zero), so step 0 computes what the base computes.
struct FinetuneConfig {
  std::optional<std::string> base;  // a run directory with a checkpoint; null: not fine-tuning
  std::string method = "perft_r";   // perft_r | perft_e | shared | lora | full
  int64_t rank = 8;                 // the adapters' bottleneck width
  // perft_r: `experts` adapter experts beside each MoE layer, `top_k` per token, chosen by a
  // router of their own (any of moelab's strategies and gate networks).
  int64_t experts = 4, top_k = 1;
  std::string strategy = "softk", gate = "linear";
  double capacity_factor = 0;       // <= 0: dropless
  double lb_coef = 0.01;
};

struct RunConfig {
  int64_t seed = 17;
  std::string out = "runs/unified-softk";
  DataConfig data;
  ModelConfig model;
  RouterConfig router;
  TrainConfig train;
  ParallelConfig parallel;
  FinetuneConfig finetune;
};

nlohmann::json default_config_json();

// Reads a JSON-with-comments file; a parse error names the file, line and column.
nlohmann::json parse_jsonc_file(const std::string& path);
nlohmann::json parse_jsonc_text(const std::string& text, const std::string& origin);

// Overlays `user` on `base`, refusing keys absent from `base` and values of another type;
// `origin` (a file name) prefixes every error.
void merge_config(nlohmann::json& base, const nlohmann::json& user, const std::string& origin);

// Applies "section.key=value" (value parsed as JSON, else taken as a string).
void apply_override(nlohmann::json& config, const std::string& assignment);

// Typed struct from a merged config; impossible values are refused naming the key.
RunConfig run_config_from_json(const nlohmann::json& config, const std::string& origin);
nlohmann::json run_config_to_json(const RunConfig& config);

// defaults <- file (if any) <- overrides, then checked.
RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides);

}  // namespace moelab
