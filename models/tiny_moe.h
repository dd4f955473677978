#pragma once
// TinyMoE decoder (SPEC section 2): token + position embedding, pre-LayerNorm blocks of
// causal attention and an FFN (MoE in every moe_every-th block, else dense), final
// LayerNorm, bias-free LM head.
#include <memory>
#include <optional>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "config/run_config.h"
#include "kernels/layer_norm.h"
#include "models/attention.h"
#include "models/moe_layer.h"

namespace moelab {

// Dense FFN: Linear(d, h) -> GELU (or SwiGLU) -> Linear(h, d).
class DenseFfn : public torch::nn::Module {
 public:
  DenseFfn(int64_t dim, int64_t hidden, bool swiglu);
  torch::Tensor forward(const torch::Tensor& x);
  void add_lora(int64_t rank);  // LoRA of rank r on both projections

 private:
  torch::nn::Linear up_{nullptr}, down_{nullptr};
  std::shared_ptr<LowRankUpdate> up_lora_, down_lora_;
  bool swiglu_;
};

// A pre-LayerNorm block: h = x + attn(ln1(x)), out = h + ffn(ln2(h)). Each LayerNorm runs
// fused with the residual add before it (kernels::add_layer_norm), so a block takes the
// stream x with ln1(x) already computed and returns out with next_norm(out), next_norm being
// the following block's ln1 or the final LayerNorm.
class Block : public torch::nn::Module {
 public:
  Block(const ModelConfig& model, const RouterConfig& router, bool moe);
  kernels::ResidualNorm forward(const torch::Tensor& x, const torch::Tensor& normed, const torch::Tensor& token_ids,
                                const torch::nn::LayerNorm& next_norm);
  // An MoE block up to its router: attention, then the router's plan in moe->last_plan().
  void route(const torch::Tensor& x, const torch::Tensor& normed, const torch::Tensor& token_ids);
  const torch::nn::LayerNorm& ln1() const { return ln1_; }
  // finetune.method's adapters in this block (see TinyMoE::attach_adapters).
  void attach_adapters(const FinetuneConfig& finetune);
  std::shared_ptr<MoeLayer> moe;  // null in dense blocks

 private:
  torch::nn::LayerNorm ln1_{nullptr}, ln2_{nullptr};
  std::shared_ptr<CausalSelfAttention> attn_;
  std::shared_ptr<DenseFfn> dense_;
  torch::nn::Dropout dropout_{nullptr};
};

struct ModelOutput {
  torch::Tensor logits;    // [B, S, V]
  torch::Tensor aux_loss;  // scalar: the sum of every MoE layer's balancing terms
};

class TinyMoE : public torch::nn::Module {
 public:
  TinyMoE(const ModelConfig& model, const RouterConfig& router);
  ModelOutput forward(const torch::Tensor& tokens);  // tokens [B, S] int64
  // Every MoE layer's routing of `tokens` (in its last_plan()) without what follows the last
  // router (its experts, later blocks, the head), which routing does not depend on: tracing
  // costs a fraction of a forward pass.
  void route(const torch::Tensor& tokens);

  // Fine-tuning (finetune.method): puts the method's adapters in place (models/adapters.h), on
  // the device the model is on. Every method but full then freezes the rest: the other
  // parameters stop requiring gradients and the base routers' expert bias stops moving.
  void attach_adapters(const FinetuneConfig& finetune);
  bool base_frozen() const { return finetune_ && finetune_->method != "full"; }
  // The parameters the optimizer updates: all of them, or the adapters' under a frozen base.
  std::vector<torch::Tensor> trainable_parameters() const;
  int64_t trainable_parameter_count() const;

  std::vector<std::shared_ptr<MoeLayer>> moe_layers() const;
  // perft_r's adapter MoE layers, one beside each MoE layer (empty without them).
  std::vector<std::shared_ptr<MoeLayer>> routed_adapters() const;
  std::vector<int64_t> moe_layer_ids() const;  // block index of each MoE layer
  void update_expert_biases();
  // Every router's (the adapter routers' too) capacity off or back on (Router::set_dropless).
  void set_dropless(bool dropless);
  bool host_sync_free(bool bf16) const;  // every MoE layer's MoeLayer::host_sync_free
  // Expert parallelism: every MoE layer keeps only its rank's experts (see MoeLayer).
  void shard_experts(const std::shared_ptr<Communicator>& expert_group);
  // The sharded experts' parameters and all the others (replicated on every rank).
  std::vector<torch::Tensor> expert_shard_parameters() const;
  std::vector<torch::Tensor> replicated_parameters() const;
  int64_t parameter_count() const;
  // Per token, no embeddings: the experts the router sends a token to (1 for top1, top_k for
  // the other token-choice strategies and expert choice), and the adapters it passes through
  // (LoRA's are merged into the weights they adapt, adding none).
  int64_t active_parameter_count() const;
  // Training FLOPs per token, nanoGPT's count: 6 per parameter a token passes through (its
  // experts as the strategy computes them: CF*k on average for expert choice) + attention;
  // 4 per frozen parameter (no weight gradient). `kept_share` scales the experts' term: the
  // share of the router's assignments that capacity kept (1 - drop rate), so that the count
  // is of the FLOPs actually routed (dropped assignments skip their expert).
  double flops_per_token(double kept_share = 1.0) const;
  const ModelConfig& config() const { return model_; }

 private:
  torch::Tensor embed(const torch::Tensor& tokens);  // token + position embeddings, dropout
  // The embedding and blocks [0, count): the residual stream and its LayerNorm for what comes
  // next (block `count`'s ln1, or the final LayerNorm after the last block).
  kernels::ResidualNorm through_blocks(const torch::Tensor& tokens, size_t count);
  struct ParameterSplit {
    int64_t shared = 0, per_expert = 0;  // the base model's
    double adapters = 0;                 // adapter parameters a token passes through, on average
  };
  ParameterSplit parameter_split() const;
  ModelConfig model_;
  RouterConfig router_;
  std::optional<FinetuneConfig> finetune_;  // set by attach_adapters
  torch::nn::Embedding tok_emb_{nullptr}, pos_emb_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
  std::vector<std::shared_ptr<Block>> blocks_;
  torch::nn::LayerNorm ln_f_{nullptr};
  torch::nn::Linear head_{nullptr};
};

// The FFN hidden width of one expert (m*d) and of the dense baseline (k*m*d: equal active
// parameters; model.dense_width experts' widths instead of k when set).
int64_t expert_hidden(const ModelConfig& model);
int64_t dense_hidden(const ModelConfig& model, const RouterConfig& router);

}  // namespace moelab
