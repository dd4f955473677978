#pragma once
// ONNX export of a trained TinyMoE (opset 17, float32): input `tokens` int64 [batch, seq],
// output `logits` float [batch, seq, vocab], both axes dynamic (seq up to model.seq_len).
// Weights are initializers under the checkpoint's names. The graph computes what moelab's
// model computes in eval mode with dropless routing (as `moelab generate` routes): every
// strategy in standard operators (TopK, Softmax, ScatterElements, Sinkhorn's rounds unrolled,
// hash arithmetic on the token ids, expert choice's per-expert top-C over the batch with
// C = ceil(CF * N * k / E), its capacity being its definition), and the experts in the masked
// dense form (every expert on every token, weighted by the [N, E] gate matrix: exact, E times
// the FLOPs). Node names follow module paths (block2/moe/router/topk); the model's doc string
// holds the run's config.
#include <string>

#include "models/tiny_moe.h"

namespace moelab {

struct OnnxExportOptions {
  std::string out;           // model.onnx
  bool external_data = false;  // weights in OUT.data beside the graph (ONNX external data)
  // The weights' storage type: float32, or float16 / bfloat16 (half the file; each weight is
  // Cast to float32 where it is read, so the computation stays float32).
  std::string weight_dtype = "float32";
  std::string doc;           // the model's doc string (the run's config)
};

// Writes the file atomically; UserError for a model the export cannot express.
void export_onnx(TinyMoE& model, const RunConfig& config, const OnnxExportOptions& options);

bool onnx_export_available();  // built with libonnx

}  // namespace moelab
