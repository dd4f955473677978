#pragma once
// Token dispatchers, Megatron-Core's interface: dispatch() moves the tokens a routing plan
// sends to experts into the rows those experts compute; combine() brings the experts' output
// rows back, one gate-weighted [T, d] row per token. A dispatcher knows nothing of how the
// plan was made. The MoE layer chooses its dispatcher once, when it is built (and again only
// when its experts are sharded over ranks: models/all_to_all_dispatcher.h).
#include <memory>
#include <string>

#include <torch/types.h>

#include "routers/routing_plan.h"

namespace moelab {

// What the experts compute on (see Experts::forward).
struct ExpertInput {
  // Packed: [R, d] rows, expert-major, expert_rows[e] of them for expert e; rows after their
  // sum are padding. Uniform (rows_per_expert > 0): [E, rows_per_expert, d], a view.
  torch::Tensor rows;
  torch::Tensor expert_rows;    // [E] int64 rows per expert, on the rows' device
  int64_t rows_per_expert = 0;  // > 0: the uniform layout, known on the host
};

class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;
  // x [T, d] -> the experts' rows; keeps what combine() needs until the next dispatch.
  virtual ExpertInput dispatch(const torch::Tensor& x, const RoutingPlan& plan) = 0;
  // The experts' output for dispatch()'s rows -> [T, d].
  virtual torch::Tensor combine(const torch::Tensor& expert_output) = 0;
  // Whether dispatch and combine run without reading anything back to the host (a CUDA
  // graph can capture them).
  virtual bool host_sync_free() const = 0;
};

// model.dispatcher: "sparse" packs each kept assignment's token into its expert's rows (no
// padding to capacity); "masked_matmul" gives every expert every token and masks the output
// by the gates (E times the FLOPs, no data movement; for small E, to compare against).
std::unique_ptr<TokenDispatcher> make_token_dispatcher(const std::string& name);

// The sparse dispatcher's packing, also used by the expert-parallel dispatcher and the
// benchmarks.
struct PackedTokens {
  torch::Tensor packed;        // [R, d], R = min(T*K, E*capacity) (T*K when dropless): the kept
                               //   assignments first, expert-major, in capacity-queue order within
                               //   an expert (flat order, but priority order under drop_policy
                               //   "probs"); then rows never computed on or read
  torch::Tensor token_index;   // [R] int64: the token each packed row came from
  torch::Tensor row_of_entry;  // [T, K] int64: the packed row of each assignment, -1 if not kept
  torch::Tensor gates;         // [T, K] float32: the plan's gates (differentiable)
  torch::Tensor expert_rows;   // [E] int64: rows of `packed` per expert (on the device)
};
PackedTokens pack_tokens(const torch::Tensor& x, const RoutingPlan& plan);
// out[t] = sum over t's kept assignments j of gates[t, j] * expert_output[row_of_entry[t, j]].
torch::Tensor combine_packed(const torch::Tensor& expert_output, const PackedTokens& packed);

}  // namespace moelab
