#pragma once
// Parameter-efficient fine-tuning of a trained TinyMoE: the adapters that train while the
// base stays frozen (finetune.method; TinyMoE::attach_adapters puts them in place).
//
//   perft_r  PERFT-R (Liu et al. 2024): beside each MoE layer, N low-rank adapter experts and a
//            router of their own (a moelab Router: any strategy and gate network, its own
//            balancing loss) sending each token to K of them: an MoeLayer of bottleneck width r.
//   perft_e  PERFT-E: one low-rank adapter per base expert, computed on the rows the base
//            router dispatched to that expert and combined with the base router's gates.
//   shared   one always-on low-rank FFN beside each MoE layer.
//   lora     LoRA on the attention projections (qkv, proj), the dense FFNs' and the experts' w1
//            and w2: W + A B, trained A and B of rank r.
//   full     no adapter: every base parameter trains (the reference).
//
// Every adapter's output side starts at zero (LoRA's B, an adapter FFN's output projection), so
// a freshly adapted model computes exactly what its base computes. Adapter modules are
// registered under names beginning "adapter", which is how a fine-tuning checkpoint picks
// them out of the model (is_adapter_tensor).
#include <memory>
#include <string>

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include "config/run_config.h"

namespace moelab {

// The router configuration of perft_r's adapter router: its own strategy, gate, N, K,
// capacity and balancing coefficient; no z-loss, no expert bias.
RouterConfig adapter_router_config(const FinetuneConfig& finetune);

// Whether a parameter or buffer name (as named_parameters() gives it) is an adapter's.
bool is_adapter_tensor(const std::string& name);

// A low-rank update of a weight: weight + A B, A [..., in, r] drawn like a linear layer's
// weight (U(+-1/sqrt(in))), B [..., r, out] zero. `layout_out_in`: the weight is stored
// [out, in] (torch::nn::Linear) rather than [..., in, out] (the experts' stacked weights).
// The update is merged into the weight each forward (its cost, in*r*out multiply-adds per
// matrix, is far below the tokens' GEMMs), so the layer's own kernels run unchanged.
class LowRankUpdate : public torch::nn::Module {
 public:
  LowRankUpdate(int64_t in, int64_t out, int64_t rank, int64_t batch, bool layout_out_in);
  torch::Tensor merged(const torch::Tensor& weight) const;

  torch::Tensor a, b;

 private:
  bool layout_out_in_;
};

// The shared adapter: y = W_up gelu(W_down x + b_down) + b_up, rank r, W_up and b_up zero.
class LowRankFfn : public torch::nn::Module {
 public:
  LowRankFfn(int64_t dim, int64_t rank);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Linear down_{nullptr}, up_{nullptr};
};

}  // namespace moelab
