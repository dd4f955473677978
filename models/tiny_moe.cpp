#include "models/tiny_moe.h"

#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "models/kernel_modules.h"
#include "routers/strategy.h"

namespace moelab {

int64_t expert_hidden(const ModelConfig& model) { return model.ffn_mult * model.dim; }
int64_t dense_hidden(const ModelConfig& model, const RouterConfig& router) {
  const double width = model.dense_width > 0 ? model.dense_width : static_cast<double>(router.top_k);
  return std::max<int64_t>(1, std::llround(width * static_cast<double>(model.ffn_mult * model.dim)));
}

DenseFfn::DenseFfn(int64_t dim, int64_t hidden, bool swiglu) : swiglu_(swiglu) {
  up_ = register_module("up", torch::nn::Linear(dim, swiglu ? 2 * hidden : hidden));
  down_ = register_module("down", torch::nn::Linear(hidden, dim));
}

void DenseFfn::add_lora(int64_t rank) {
  up_lora_ = register_module("adapter_lora_up", std::make_shared<LowRankUpdate>(up_->weight.size(1), up_->weight.size(0), rank, 0, true));
  down_lora_ =
      register_module("adapter_lora_down", std::make_shared<LowRankUpdate>(down_->weight.size(1), down_->weight.size(0), rank, 0, true));
}

torch::Tensor DenseFfn::forward(const torch::Tensor& x) {
  torch::Tensor h = apply_linear(up_, x, up_lora_);
  if (swiglu_) {
    auto halves = h.chunk(2, -1);
    h = torch::silu(halves[0]) * halves[1];
  } else {
    h = torch::gelu(h);
  }
  return apply_linear(down_, h, down_lora_);
}

Block::Block(const ModelConfig& model, const RouterConfig& router, bool use_moe) {
  ln1_ = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({model.dim})));
  ln2_ = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({model.dim})));
  attn_ = register_module("attn", std::make_shared<CausalSelfAttention>(model.dim, model.heads, model.seq_len,
                                                                         model.position == "rope", model.attention_dropout));
  bool swiglu = model.activation == "swiglu";
  if (use_moe)
    moe = register_module("moe", std::make_shared<MoeLayer>(router, model.dim, expert_hidden(model), swiglu, model.dispatcher));
  else dense_ = register_module("ffn", std::make_shared<DenseFfn>(model.dim, dense_hidden(model, router), swiglu));
  dropout_ = register_module("dropout", torch::nn::Dropout(model.dropout));
}

// Under bf16 autocast the branches come back in bf16 and the residual stream stays fp32;
// the fused add casts them.
kernels::ResidualNorm Block::forward(const torch::Tensor& x, const torch::Tensor& normed, const torch::Tensor& token_ids,
                                     const torch::nn::LayerNorm& next_norm) {
  auto [h, normed2] = apply_add_layer_norm(ln2_, x, dropout_(attn_->forward(normed)));
  torch::Tensor ffn;
  if (moe) {
    const int64_t batch = normed2.size(0), seq = normed2.size(1), dim = normed2.size(2);
    ffn = moe->forward(normed2.reshape({batch * seq, dim}), token_ids.reshape({batch * seq})).view({batch, seq, dim});
  } else {
    ffn = dense_->forward(normed2);
  }
  return apply_add_layer_norm(next_norm, h, dropout_(ffn));
}

TinyMoE::TinyMoE(const ModelConfig& model, const RouterConfig& router) : model_(model), router_(router) {
  tok_emb_ = register_module("tok_emb", torch::nn::Embedding(model.vocab_size, model.dim));
  if (model.position == "learned") pos_emb_ = register_module("pos_emb", torch::nn::Embedding(model.seq_len, model.dim));
  dropout_ = register_module("dropout", torch::nn::Dropout(model.dropout));
  for (int64_t i = 0; i < model.layers; ++i) {
    bool use_moe = !model.dense && (i % model.moe_every == model.moe_every - 1);
    blocks_.push_back(register_module("block" + std::to_string(i), std::make_shared<Block>(model, router, use_moe)));
  }
  ln_f_ = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({model.dim})));
  if (!model.tie_embeddings)
    head_ = register_module("head", torch::nn::Linear(torch::nn::LinearOptions(model.dim, model.vocab_size).bias(false)));
  torch::NoGradGuard no_grad;
  if (model.init == "seed") {
    // The seed's Python model as PyTorch initialises it. Already so from construction: the
    // linear layers (libtorch's nn::Linear draws weight and bias U(+-1/sqrt(fan_in)), as
    // Python's does), the token embedding (N(0, 1)), the LayerNorms, the experts' zero biases
    // and the gates (the seed's own N(0, 1/d) linear gate, PyTorch's defaults for the MLPs).
    // Redrawn here:
    // - the position embedding: the seed's zero parameter;
    // - attention, as nn.MultiheadAttention: Xavier-uniform in-projection over the whole
    //   [3d, d] weight, zero in- and out-projection biases;
    // - experts: Xavier-uniform over each stacked [E, d, h] and [E, h, d] tensor, for which
    //   PyTorch takes fan_in = d*h and fan_out = E*h (resp. h*d, E*d). The bound,
    //   sqrt(6 / (fan_in + fan_out)), is about 15x smaller than a per-expert draw's at the
    //   seed's shape: its experts start near zero.
    auto ends_with = [](const std::string& s, const std::string& tail) {
      return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
    };
    for (auto& item : named_parameters()) {
      const std::string& name = item.key();
      torch::Tensor& p = item.value();
      if (name == "pos_emb.weight" || ends_with(name, ".attn.qkv.bias") || ends_with(name, ".attn.proj.bias")) p.zero_();
      if (ends_with(name, ".attn.qkv.weight") || ends_with(name, ".experts.w1") || ends_with(name, ".experts.w2"))
        torch::nn::init::xavier_uniform_(p);
    }
    return;
  }
  // nanoGPT's initialisation for the dense parts; experts and gates keep their own.
  for (auto& item : named_parameters()) {
    const std::string& name = item.key();
    if (name.find(".experts.") != std::string::npos || name.find(".router.") != std::string::npos) continue;
    if (name.find("ln") != std::string::npos) continue;
    if (name.find("bias") != std::string::npos) item.value().zero_();
    else item.value().normal_(0.0, 0.02);
  }
}

void Block::attach_adapters(const FinetuneConfig& finetune) {
  const std::string& method = finetune.method;
  if (method == "lora") {
    attn_->add_lora(finetune.rank);
    if (dense_) dense_->add_lora(finetune.rank);
    else moe->experts().add_lora(finetune.rank);
  }
  if (!moe) return;  // the PERFT variants sit beside MoE layers
  if (method == "perft_r") moe->add_routed_adapter(adapter_router_config(finetune), finetune.rank);
  if (method == "perft_e") moe->add_expert_adapters(finetune.rank);
  if (method == "shared") moe->add_shared_adapter(finetune.rank);
}

void Block::route(const torch::Tensor& x, const torch::Tensor& normed, const torch::Tensor& token_ids) {
  torch::Tensor normed2 = apply_add_layer_norm(ln2_, x, dropout_(attn_->forward(normed))).normed;
  moe->route(normed2.reshape({-1, normed2.size(2)}), token_ids.reshape({-1}));
}

torch::Tensor TinyMoE::embed(const torch::Tensor& tokens) {
  torch::Tensor x = tok_emb_(tokens);
  if (pos_emb_) x = x + pos_emb_(torch::arange(tokens.size(1), tokens.options()));
  return model_.embedding_dropout ? dropout_(x) : x;
}

kernels::ResidualNorm TinyMoE::through_blocks(const torch::Tensor& tokens, size_t count) {
  // The LayerNorm after block i: the next block's ln1, or the final one after the last.
  auto norm_after = [&](size_t i) -> const torch::nn::LayerNorm& { return i < blocks_.size() ? blocks_[i]->ln1() : ln_f_; };
  torch::Tensor x = embed(tokens);
  kernels::ResidualNorm stream{x, apply_layer_norm(norm_after(0), x)};
  for (size_t i = 0; i < count; ++i) stream = blocks_[i]->forward(stream.sum, stream.normed, tokens, norm_after(i + 1));
  return stream;
}

void TinyMoE::route(const torch::Tensor& tokens) {
  size_t last = blocks_.size();
  for (size_t i = 0; i < blocks_.size(); ++i)
    if (blocks_[i]->moe) last = i;
  if (last == blocks_.size()) return;
  kernels::ResidualNorm stream = through_blocks(tokens, last);
  blocks_[last]->route(stream.sum, stream.normed, tokens);
}

ModelOutput TinyMoE::forward(const torch::Tensor& tokens) {
  const torch::Tensor normed = through_blocks(tokens, blocks_.size()).normed;
  ModelOutput out;
  out.logits = head_ ? apply_linear(head_, normed) : torch::matmul(normed, tok_emb_->weight.t());
  out.aux_loss = torch::zeros({}, out.logits.options().dtype(torch::kFloat32));
  for (const auto& layer : moe_layers()) out.aux_loss = out.aux_loss + layer->aux_loss();
  return out;
}

void TinyMoE::attach_adapters(const FinetuneConfig& finetune) {
  const torch::Device device = tok_emb_->weight.device();
  for (const auto& block : blocks_) block->attach_adapters(finetune);
  to(device);
  finetune_ = finetune;
  if (!base_frozen()) return;
  for (const auto& item : named_parameters())
    if (!is_adapter_tensor(item.key())) item.value().requires_grad_(false);
  for (const auto& layer : moe_layers()) layer->router().freeze_expert_bias();
}

std::vector<torch::Tensor> TinyMoE::trainable_parameters() const {
  std::vector<torch::Tensor> trainable;
  for (const auto& p : parameters())
    if (p.requires_grad()) trainable.push_back(p);
  return trainable;
}

int64_t TinyMoE::trainable_parameter_count() const {
  int64_t n = 0;
  for (const auto& p : trainable_parameters()) n += p.numel();
  return n;
}

std::vector<std::shared_ptr<MoeLayer>> TinyMoE::routed_adapters() const {
  std::vector<std::shared_ptr<MoeLayer>> adapters;
  for (const auto& layer : moe_layers())
    if (layer->routed_adapter()) adapters.push_back(layer->routed_adapter());
  return adapters;
}

std::vector<std::shared_ptr<MoeLayer>> TinyMoE::moe_layers() const {
  std::vector<std::shared_ptr<MoeLayer>> layers;
  for (const auto& block : blocks_)
    if (block->moe) layers.push_back(block->moe);
  return layers;
}

std::vector<int64_t> TinyMoE::moe_layer_ids() const {
  std::vector<int64_t> ids;
  for (size_t i = 0; i < blocks_.size(); ++i)
    if (blocks_[i]->moe) ids.push_back(static_cast<int64_t>(i));
  return ids;
}

bool TinyMoE::host_sync_free(bool bf16) const {
  for (const auto& layer : moe_layers())
    if (!layer->host_sync_free(bf16)) return false;
  return true;
}

void TinyMoE::update_expert_biases() {
  for (const auto& layer : moe_layers()) layer->router().update_expert_bias();
}

void TinyMoE::set_dropless(bool dropless) {
  for (const auto& layer : moe_layers()) layer->router().set_dropless(dropless);
  for (const auto& adapter : routed_adapters()) adapter->router().set_dropless(dropless);
}

void TinyMoE::shard_experts(const std::shared_ptr<Communicator>& expert_group) {
  for (const auto& layer : moe_layers()) layer->shard_experts(expert_group);
}

std::vector<torch::Tensor> TinyMoE::expert_shard_parameters() const {
  std::vector<torch::Tensor> shards;
  for (const auto& layer : moe_layers())
    if (layer->experts_sharded())
      for (const auto& p : layer->experts().parameters()) shards.push_back(p);
  return shards;
}

std::vector<torch::Tensor> TinyMoE::replicated_parameters() const {
  std::vector<torch::Tensor> shards = expert_shard_parameters(), replicated;
  for (const auto& p : parameters()) {
    bool shard = false;
    for (const auto& s : shards) shard = shard || s.is_same(p);
    if (!shard) replicated.push_back(p);
  }
  return replicated;
}

int64_t TinyMoE::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

// Parameters every token passes through (no embeddings; experts excluded), one expert's, and
// the adapters' a token passes through.
TinyMoE::ParameterSplit TinyMoE::parameter_split() const {
  ParameterSplit split;
  for (const auto& item : named_parameters()) {
    const std::string& name = item.key();
    if (name.rfind("tok_emb", 0) == 0 || name.rfind("pos_emb", 0) == 0) continue;
    if (is_adapter_tensor(name)) {
      const double numel = static_cast<double>(item.value().numel());
      if (name.find(".adapter_routed.experts.") != std::string::npos) {  // the adapter experts its router picks
        const RouterConfig adapter_router = adapter_router_config(*finetune_);
        split.adapters += numel / static_cast<double>(finetune_->experts) *
                          static_cast<double>(make_strategy(adapter_router)->experts_per_token(adapter_router));
      }
      else if (name.find(".adapter_experts.") != std::string::npos)  // the adapters of the token's experts
        split.adapters += numel / static_cast<double>(router_.num_experts) *
                          static_cast<double>(make_strategy(router_)->experts_per_token(router_));
      else if (name.find(".adapter_lora") == std::string::npos)  // LoRA's is merged into its weight
        split.adapters += numel;
      continue;
    }
    // Expert tensors stack the experts this process holds (E / EP under expert parallelism).
    if (name.find(".experts.") != std::string::npos) split.per_expert += item.value().numel() / item.value().size(0);
    else split.shared += item.value().numel();
  }
  return split;
}

int64_t TinyMoE::active_parameter_count() const {
  const ParameterSplit split = parameter_split();
  const int64_t experts = split.per_expert == 0 ? 0 : split.per_expert * make_strategy(router_)->experts_per_token(router_);
  return split.shared + experts + std::llround(split.adapters);
}

double TinyMoE::flops_per_token(double kept_share) const {
  const ParameterSplit split = parameter_split();
  const double expert_passes =
      split.per_expert == 0 ? 0.0 : make_strategy(router_)->expert_passes_per_token(router_) * kept_share;
  const double base = static_cast<double>(split.shared) + static_cast<double>(split.per_expert) * expert_passes;
  return (base_frozen() ? 4.0 : 6.0) * base + 6.0 * split.adapters +
         12.0 * static_cast<double>(model_.layers * model_.dim * model_.seq_len);
}

}  // namespace moelab
