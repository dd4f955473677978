#include "export/onnx_export.h"

#include <cmath>
#include <filesystem>
#include <set>

#include <torch/torch.h>

#include "routers/capacity.h"
#include "util/error.h"
#include "util/files.h"
#include "util/strings.h"

#ifdef MOELAB_ONNX
#include <onnx/onnx_pb.h>
#endif

namespace moelab {

bool onnx_export_available() {
#ifdef MOELAB_ONNX
  return true;
#else
  return false;
#endif
}

#ifndef MOELAB_ONNX

void export_onnx(TinyMoE&, const RunConfig&, const OnnxExportOptions&) {
  throw UserError("moelab export: this build has no ONNX support (install Debian's libonnx-dev and build again)");
}

#else

namespace {

struct Attr {
  std::string name;
  enum Kind { kInt, kFloat, kInts } kind;
  int64_t i = 0;
  float f = 0;
  std::vector<int64_t> ints;
};
Attr attr_int(const std::string& name, int64_t v) { return {name, Attr::kInt, v, 0, {}}; }
Attr attr_float(const std::string& name, float v) { return {name, Attr::kFloat, 0, v, {}}; }
Attr attr_ints(const std::string& name, std::vector<int64_t> v) { return {name, Attr::kInts, 0, 0, std::move(v)}; }

// Appends nodes and initializers to one graph; every value is named by the node that makes it.
class Graph {
 public:
  Graph(onnx::GraphProto* graph, bool external, std::string data_file)
      : graph_(graph), external_(external), data_file_(std::move(data_file)) {}

  // One node; returns its (first) output's name, `name` itself.
  std::string op(const std::string& type, const std::vector<std::string>& inputs, const std::string& name,
                 const std::vector<Attr>& attrs = {}, int outputs = 1) {
    onnx::NodeProto* node = graph_->add_node();
    node->set_op_type(type);
    node->set_name(name);
    for (const std::string& in : inputs) node->add_input(in);
    node->add_output(name);
    for (int i = 1; i < outputs; ++i) node->add_output(name + ":" + std::to_string(i));
    for (const Attr& a : attrs) {
      onnx::AttributeProto* p = node->add_attribute();
      p->set_name(a.name);
      if (a.kind == Attr::kInt) {
        p->set_type(onnx::AttributeProto::INT);
        p->set_i(a.i);
      } else if (a.kind == Attr::kFloat) {
        p->set_type(onnx::AttributeProto::FLOAT);
        p->set_f(a.f);
      } else {
        p->set_type(onnx::AttributeProto::INTS);
        for (int64_t v : a.ints) p->add_ints(v);
      }
    }
    return name;
  }

  // A tensor of the model or a constant as an initializer: int64, float64, float16 and
  // bfloat16 keep their type, anything else is stored as float32.
  std::string tensor(const std::string& name, const torch::Tensor& value) {
    torch::Tensor t = value.detach().cpu().contiguous();
    onnx::TensorProto* p = graph_->add_initializer();
    p->set_name(name);
    if (t.scalar_type() == torch::kLong) p->set_data_type(onnx::TensorProto::INT64);
    else if (t.scalar_type() == torch::kDouble) p->set_data_type(onnx::TensorProto::DOUBLE);
    else if (t.scalar_type() == torch::kHalf) p->set_data_type(onnx::TensorProto::FLOAT16);
    else if (t.scalar_type() == torch::kBFloat16) p->set_data_type(onnx::TensorProto::BFLOAT16);
    else {
      t = t.to(torch::kFloat32);
      p->set_data_type(onnx::TensorProto::FLOAT);
    }
    for (int64_t d : t.sizes()) p->add_dims(d);
    const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
    const char* data = static_cast<const char*>(t.data_ptr());
    if (external_ && bytes >= 1024) {
      p->set_data_location(onnx::TensorProto::EXTERNAL);
      auto add = [&](const std::string& key, const std::string& value) {
        onnx::StringStringEntryProto* e = p->add_external_data();
        e->set_key(key);
        e->set_value(value);
      };
      add("location", std::filesystem::path(data_file_).filename().string());
      add("offset", std::to_string(external_bytes_.size()));
      add("length", std::to_string(bytes));
      external_bytes_.append(data, bytes);
      external_bytes_.append((4096 - external_bytes_.size() % 4096) % 4096, '\0');  // aligned offsets
    } else {
      p->set_raw_data(data, bytes);
    }
    return name;
  }
  std::string ints(const std::string& name, const std::vector<int64_t>& v) {
    return tensor(name, torch::tensor(v, torch::kLong));
  }
  std::string scalar(const std::string& name, double v) { return tensor(name, torch::tensor({static_cast<float>(v)})); }

  const std::string& external_bytes() const { return external_bytes_; }
  onnx::GraphProto* graph() const { return graph_; }
  void set_graph(onnx::GraphProto* graph) { graph_ = graph; }

 private:
  onnx::GraphProto* graph_;
  bool external_;
  std::string data_file_, external_bytes_;
};

// Builds the TinyMoE graph from the model's named tensors and its config.
class Exporter {
 public:
  Exporter(TinyMoE& model, const RunConfig& config, Graph& g, torch::ScalarType weight_dtype, onnx::ModelProto* proto)
      : m_(config.model), r_(config.router), g_(g), params_(model.named_parameters()), buffers_(model.named_buffers()),
        weight_dtype_(weight_dtype), proto_(proto) {}

  void build() {
    const std::string tokens = "tokens";
    // The sequence length S and the token count N = B * S, as int64 [1] tensors.
    std::string shape = g_.op("Shape", {tokens}, "shape");
    seq_ = g_.op("Gather", {shape, g_.ints("const/one_index", {1})}, "seq_len", {attr_int("axis", 0)});
    n_tokens_ = g_.op("ReduceProd", {shape}, "token_count", {attr_int("keepdims", 1)});
    zero_ = g_.ints("const/zero", {0});
    one_ = g_.ints("const/one", {1});
    flat_ = g_.ints("const/flat_shape", {-1, m_.dim});

    std::string x = g_.op("Gather", {param("tok_emb.weight"), tokens}, "embed/tokens", {attr_int("axis", 0)});
    if (m_.position == "learned") {
      std::string positions = g_.op("Slice", {param("pos_emb.weight"), zero_, seq_, zero_}, "embed/positions");
      x = g_.op("Add", {x, positions}, "embed/sum");
    }
    if (m_.position == "rope") {
      const int64_t half = m_.dim / m_.heads / 2;
      torch::Tensor inv_freq = torch::pow(10000.0, -torch::arange(half, torch::kFloat32) / static_cast<double>(half));
      torch::Tensor angles = torch::outer(torch::arange(m_.seq_len, torch::kFloat32), inv_freq);
      rope_cos_ = g_.op("Slice", {g_.tensor("rope/cos_table", angles.cos()), zero_, seq_, zero_}, "rope/cos");
      rope_sin_ = g_.op("Slice", {g_.tensor("rope/sin_table", angles.sin()), zero_, seq_, zero_}, "rope/sin");
    }
    torch::Tensor future = torch::full({m_.seq_len, m_.seq_len}, -INFINITY).triu(1);
    causal_ = g_.op("Slice", {g_.tensor("attention/causal_mask_table", future), g_.ints("const/zeros2", {0, 0}),
                              g_.op("Concat", {seq_, seq_}, "attention/mask_ends", {attr_int("axis", 0)}),
                              g_.ints("const/axes01", {0, 1})},
                    "attention/causal_mask");
    for (int64_t i = 0; i < m_.layers; ++i) x = block_function(x, i);
    std::string normed = layer_norm(x, "ln_f", "ln_f");
    std::string head = m_.tie_embeddings ? param("tok_emb.weight") : param("head.weight");
    g_.op("MatMul", {normed, g_.op("Transpose", {head}, "head/weight_t", {attr_ints("perm", {1, 0})})}, "logits");
  }

 private:
  // A model tensor under its checkpoint name; stored in another dtype, it is read through a
  // Cast to float32.
  std::string param(const std::string& name) {
    const std::string value = weight_dtype_ == torch::kFloat32 ? name : name + "/float32";
    if (done_.insert(name).second) {
      const torch::Tensor* t = params_.find(name);
      if (!t) t = buffers_.find(name);
      if (!t) throw UserError("moelab export: the model has no tensor '" + name + "'");
      g_.tensor(name, t->to(weight_dtype_));
      if (value != name) g_.op("Cast", {name}, value, {attr_int("to", onnx::TensorProto::FLOAT)});
    }
    return value;
  }

  std::string layer_norm(const std::string& x, const std::string& module, const std::string& name) {
    return g_.op("LayerNormalization", {x, param(module + ".weight"), param(module + ".bias")}, name,
                 {attr_int("axis", -1), attr_float("epsilon", 1e-5f)});
  }

  // x W^T + b for a Linear module at `module`.
  std::string linear(const std::string& x, const std::string& module, const std::string& name, bool bias = true) {
    std::string wt = g_.op("Transpose", {param(module + ".weight")}, name + "/weight_t", {attr_ints("perm", {1, 0})});
    std::string y = g_.op("MatMul", {x, wt}, name + "/matmul");
    return bias ? g_.op("Add", {y, param(module + ".bias")}, name) : y;
  }

  // torch::gelu (exact): 0.5 x (1 + erf(x / sqrt 2)).
  std::string gelu(const std::string& x, const std::string& name) {
    std::string e = g_.op("Erf", {g_.op("Mul", {x, scalar(1.0 / std::sqrt(2.0))}, name + "/scaled")}, name + "/erf");
    std::string one_plus = g_.op("Add", {e, scalar(1.0)}, name + "/one_plus");
    return g_.op("Mul", {g_.op("Mul", {x, scalar(0.5)}, name + "/half"), one_plus}, name);
  }
  std::string activation(const std::string& h, const std::string& name) {
    if (m_.activation != "swiglu") return gelu(h, name);
    std::string halves = g_.op("Split", {h}, name + "/halves", {attr_int("axis", -1)}, 2);
    std::string a = halves, b = halves + ":1";
    std::string silu = g_.op("Mul", {a, g_.op("Sigmoid", {a}, name + "/sigmoid")}, name + "/silu");
    return g_.op("Mul", {silu, b}, name);
  }

  std::string scalar(double v) {
    const std::string name = strf("const/%.9g", v);
    if (consts_.insert(name).second) g_.scalar(name, v);
    return name;
  }

  std::string rope(const std::string& x, const std::string& name) {
    std::string halves = g_.op("Split", {x}, name + "/halves", {attr_int("axis", -1)}, 2);
    std::string a = halves, b = halves + ":1";
    std::string first = g_.op("Sub", {g_.op("Mul", {a, rope_cos_}, name + "/a_cos"), g_.op("Mul", {b, rope_sin_}, name + "/b_sin")},
                              name + "/first");
    std::string second = g_.op("Add", {g_.op("Mul", {a, rope_sin_}, name + "/a_sin"), g_.op("Mul", {b, rope_cos_}, name + "/b_cos")},
                               name + "/second");
    return g_.op("Concat", {first, second}, name, {attr_int("axis", -1)});
  }

  std::string attention(const std::string& x, const std::string& module, const std::string& p) {
    const int64_t head_dim = m_.dim / m_.heads;
    std::string qkv = linear(x, module + ".qkv", p + "/qkv");
    qkv = g_.op("Reshape", {qkv, g_.ints(p + "/qkv_shape", {0, 0, 3, m_.heads, head_dim})}, p + "/qkv_heads");
    qkv = g_.op("Transpose", {qkv}, p + "/qkv_t", {attr_ints("perm", {2, 0, 3, 1, 4})});  // [3, B, H, S, hd]
    auto part = [&](int64_t i, const char* what) {
      return g_.op("Gather", {qkv, g_.ints(p + "/index_" + what, {i})}, p + "/" + what + "_4d", {attr_int("axis", 0)});
    };
    auto squeeze = [&](const std::string& t, const char* what) { return g_.op("Squeeze", {t, zero_}, p + "/" + what); };
    std::string q = squeeze(part(0, "q"), "q"), k = squeeze(part(1, "k"), "k"), v = squeeze(part(2, "v"), "v");
    if (m_.position == "rope") {
      q = rope(q, p + "/rope_q");
      k = rope(k, p + "/rope_k");
    }
    std::string scores = g_.op("MatMul", {q, g_.op("Transpose", {k}, p + "/k_t", {attr_ints("perm", {0, 1, 3, 2})})}, p + "/scores");
    scores = g_.op("Mul", {scores, scalar(1.0 / std::sqrt(static_cast<double>(head_dim)))}, p + "/scaled");
    scores = g_.op("Add", {scores, causal_}, p + "/masked");
    std::string probs = g_.op("Softmax", {scores}, p + "/softmax", {attr_int("axis", -1)});
    std::string y = g_.op("MatMul", {probs, v}, p + "/weighted");
    y = g_.op("Transpose", {y}, p + "/merge_t", {attr_ints("perm", {0, 2, 1, 3})});
    y = g_.op("Reshape", {y, g_.ints(p + "/merge_shape", {0, 0, m_.dim})}, p + "/merge");
    return linear(y, module + ".proj", p + "/proj");
  }

  std::string dense_ffn(const std::string& x, const std::string& module, const std::string& p) {
    return linear(activation(linear(x, module + ".up", p + "/up"), p + "/act"), module + ".down", p + "/down");
  }

  std::string gate_logits(const std::string& x, const std::string& module, const std::string& p) {
    if (r_.gate == "mlp")
      return linear(gelu(linear(x, module + ".hidden", p + "/hidden"), p + "/gelu"), module + ".out", p + "/logits");
    if (r_.gate == "mlp_hadamard") {
      std::string h = linear(gelu(linear(x, module + ".fc1", p + "/fc1"), p + "/gelu"), module + ".fc2", p + "/fc2");
      return linear(g_.op("Mul", {h, x}, p + "/hadamard"), module + ".out", p + "/logits");
    }
    return linear(x, module + ".proj", p + "/logits");
  }

  // The [N, E] matrix of each token's gate per expert (zero where not routed).
  std::string dense_gates(const std::string& x, const std::string& module, const std::string& p) {
    const int64_t E = r_.num_experts, k = r_.top_k;
    const std::string& s = r_.strategy;
    std::string zeros_shape = g_.op("Concat", {n_tokens_, g_.ints(p + "/experts", {E})}, p + "/gate_shape", {attr_int("axis", 0)});
    std::string zeros = g_.op("ConstantOfShape", {zeros_shape}, p + "/zeros");  // float 0
    auto scatter = [&](const std::string& ids, const std::string& gates) {
      return g_.op("ScatterElements", {zeros, ids, gates}, p + "/dense_gates", {attr_int("axis", 1)});
    };
    if (s == "hash") {
      // (key mod E)(a mod E) + (b mod E), mod E; expert j = (base + 97 j) mod E; gates 1/k.
      // Keys: the token ids, or (hash_key position) 0..N-1 from Range, whose inputs are scalars.
      std::string keys = r_.hash_key == "position"
                             ? g_.op("Range", {g_.tensor(p + "/range_start", torch::scalar_tensor(0, torch::kLong)),
                                              g_.op("Squeeze", {n_tokens_, zero_}, p + "/n"),
                                              g_.tensor(p + "/range_step", torch::scalar_tensor(1, torch::kLong))},
                                     p + "/positions")
                             : g_.op("Reshape", {"tokens", g_.ints(p + "/flat", {-1})}, p + "/token_ids");
      std::string e = g_.ints(p + "/E", {E});
      std::string base = g_.op("Mod", {keys, e}, p + "/key_mod");
      base = g_.op("Mul", {base, g_.ints(p + "/a_mod", {1315423911LL % E})}, p + "/times_a");
      base = g_.op("Mod", {g_.op("Add", {base, g_.ints(p + "/b_mod", {2654435761LL % E})}, p + "/plus_b"), e}, p + "/base");
      std::vector<int64_t> offsets;
      for (int64_t j = 0; j < k; ++j) offsets.push_back((97 * j) % E);
      std::string ids = g_.op("Mod", {g_.op("Add", {g_.op("Unsqueeze", {base, one_}, p + "/base_col"), g_.ints(p + "/offsets", offsets)},
                                             p + "/shifted"),
                                      e},
                              p + "/ids");
      std::string gates = g_.op("ConstantOfShape", {g_.op("Shape", {ids}, p + "/ids_shape")}, p + "/gates");
      gates = g_.op("Add", {gates, scalar(1.0 / static_cast<double>(k))}, p + "/gates_value");
      return scatter(ids, gates);
    }
    std::string logits = gate_logits(x, module + ".router.gate", p + "/gate");
    std::string selection = logits;
    if (r_.bias_rate > 0) selection = g_.op("Add", {logits, param(module + ".router.expert_bias")}, p + "/biased");
    auto k_input = [&] { return g_.ints(p + "/k", {k}); };
    if (s == "expert_choice") {
      std::string scores = g_.op("Softmax", {logits}, p + "/scores", {attr_int("axis", -1)});
      // C = min(ceil(CF * N * k / E * (1 - 1e-12)), N), in double as routers/capacity.cpp forms it.
      std::string n = g_.op("Cast", {n_tokens_}, p + "/n_double", {attr_int("to", onnx::TensorProto::DOUBLE)});
      const double per_token = r_.capacity_factor * static_cast<double>(k) / static_cast<double>(E) * (1.0 - 1e-12);
      std::string c = g_.op("Ceil", {g_.op("Mul", {n, g_.tensor(p + "/per_token", torch::tensor({per_token}, torch::kDouble))},
                                           p + "/slots")},
                            p + "/ceil");
      c = g_.op("Min", {g_.op("Cast", {c}, p + "/capacity", {attr_int("to", onnx::TensorProto::INT64)}), n_tokens_}, p + "/take");
      std::string columns = g_.op("Transpose", {scores}, p + "/scores_t", {attr_ints("perm", {1, 0})});  // [E, N]
      std::string picked = g_.op("TopK", {columns, c}, p + "/column_topk", {attr_int("axis", 1)}, 2);
      std::string ones = g_.op("Add", {g_.op("Mul", {picked, scalar(0.0)}, p + "/zero_values"), scalar(1.0)}, p + "/ones");
      std::string mask_t = g_.op("ScatterElements", {g_.op("Transpose", {zeros}, p + "/zeros_t", {attr_ints("perm", {1, 0})}),
                                                     picked + ":1", ones},
                                 p + "/selected_t", {attr_int("axis", 1)});
      std::string mask = g_.op("Transpose", {mask_t}, p + "/selected", {attr_ints("perm", {1, 0})});
      std::string gates = g_.op("Mul", {scores, mask}, p + "/dense_gates_ec");
      if (r_.ec_fallback != "topk") return gates;
      // Tokens no expert picked: softk over their top k.
      std::string top = g_.op("TopK", {logits, k_input()}, p + "/fallback_topk", {attr_int("axis", -1)}, 2);
      std::string fb = g_.op("Softmax", {g_.op("Div", {top, scalar(r_.temperature)}, p + "/fallback_scaled")}, p + "/fallback_gates",
                             {attr_int("axis", -1)});
      std::string fb_dense = g_.op("ScatterElements", {zeros, top + ":1", fb}, p + "/fallback_dense", {attr_int("axis", 1)});
      std::string picked_any = g_.op("ReduceSum", {mask, one_}, p + "/picked_count", {attr_int("keepdims", 1)});
      std::string orphan = g_.op("Cast", {g_.op("Equal", {picked_any, scalar(0.0)}, p + "/is_orphan")}, p + "/orphan",
                                 {attr_int("to", onnx::TensorProto::FLOAT)});
      return g_.op("Add", {gates, g_.op("Mul", {fb_dense, orphan}, p + "/fallback_kept")}, p + "/dense_gates");
    }
    if (s == "sinkhorn") {
      std::string scaled = g_.op("Div", {selection, scalar(r_.temperature)}, p + "/sinkhorn/scaled");
      std::string q = g_.op("Exp", {g_.op("Sub", {scaled, g_.op("ReduceMax", {scaled}, p + "/sinkhorn/row_max", {attr_ints("axes", {1}), attr_int("keepdims", 1)})},
                                          p + "/sinkhorn/shifted")},
                            p + "/sinkhorn/q0");
      std::string target = g_.op("Div", {g_.op("Cast", {n_tokens_}, p + "/sinkhorn/n", {attr_int("to", onnx::TensorProto::FLOAT)}),
                                         scalar(static_cast<double>(E))},
                                 p + "/sinkhorn/column_target");
      for (int64_t i = 0; i < r_.sinkhorn_iters; ++i) {
        const std::string round = p + "/sinkhorn/round" + std::to_string(i);
        q = g_.op("Div", {q, g_.op("ReduceSum", {q, one_}, round + "/row_sum", {attr_int("keepdims", 1)})}, round + "/rows");
        std::string col = g_.op("ReduceSum", {q, zero_}, round + "/column_sum", {attr_int("keepdims", 1)});
        q = g_.op("Mul", {q, g_.op("Div", {target, col}, round + "/column_scale")}, round + "/columns");
      }
      std::string top = g_.op("TopK", {q, k_input()}, p + "/topk", {attr_int("axis", -1)}, 2);
      std::string chosen = g_.op("GatherElements", {logits, top + ":1"}, p + "/chosen", {attr_int("axis", 1)});
      std::string gates = k == 1 ? g_.op("Sigmoid", {chosen}, p + "/gates") : g_.op("Softmax", {chosen}, p + "/gates", {attr_int("axis", -1)});
      return scatter(top + ":1", gates);
    }
    const int64_t picks = s == "top1" ? 1 : k;
    std::string top = g_.op("TopK", {selection, g_.ints(p + "/picks", {picks})}, p + "/topk", {attr_int("axis", -1)}, 2);
    std::string ids = top + ":1";
    std::string chosen = selection == logits ? top : g_.op("GatherElements", {logits, ids}, p + "/chosen", {attr_int("axis", 1)});
    std::string gates;
    if (s == "softk") {
      gates = g_.op("Softmax", {g_.op("Div", {chosen, scalar(r_.temperature)}, p + "/scaled")}, p + "/gates", {attr_int("axis", -1)});
    } else if (s == "top1") {
      std::string probs = g_.op("Softmax", {logits}, p + "/probs", {attr_int("axis", -1)});
      gates = g_.op("GatherElements", {probs, ids}, p + "/gates", {attr_int("axis", 1)});
      if (r_.top1_gate != "prob") gates = g_.op("Add", {g_.op("Mul", {gates, scalar(0.0)}, p + "/zero"), scalar(1.0)}, p + "/unit_gates");
    } else if (s == "topk_hard") {
      const double w = r_.hard_weight == "mean" ? 1.0 / static_cast<double>(k) : 1.0;
      gates = g_.op("Add", {g_.op("Mul", {chosen, scalar(0.0)}, p + "/zero"), scalar(w)}, p + "/gates");
    } else {
      throw UserError("moelab export: router.strategy '" + s + "' has no ONNX form");
    }
    return scatter(ids, gates);
  }

  // Every expert on every token, weighted by the dense gate matrix: exact, no data movement.
  std::string moe(const std::string& x, const std::string& module, const std::string& p) {
    std::string flat = g_.op("Reshape", {x, flat_}, p + "/tokens");
    std::string gates = dense_gates(flat, module, p + "/router");
    const std::string e = module + ".experts.";
    std::string h = g_.op("MatMul", {g_.op("Unsqueeze", {flat, zero_}, p + "/experts/input"), param(e + "w1")}, p + "/experts/up");
    h = g_.op("Add", {h, g_.op("Unsqueeze", {param(e + "b1"), one_}, p + "/experts/b1")}, p + "/experts/up_bias");
    h = activation(h, p + "/experts/act");
    std::string y = g_.op("MatMul", {h, param(e + "w2")}, p + "/experts/down");
    y = g_.op("Add", {y, g_.op("Unsqueeze", {param(e + "b2"), one_}, p + "/experts/b2")}, p + "/experts/down_bias");  // [E, N, d]
    std::string weights = g_.op("Unsqueeze", {g_.op("Transpose", {gates}, p + "/gates_t", {attr_ints("perm", {1, 0})}),
                                              g_.ints(p + "/axis2", {2})},
                                p + "/gates_col");
    std::string out = g_.op("ReduceSum", {g_.op("Mul", {y, weights}, p + "/weighted"), zero_}, p + "/combine", {attr_int("keepdims", 0)});
    return g_.op("Reshape", {out, g_.op("Shape", {x}, p + "/shape")}, p + "/out");
  }

  // Block i as an ONNX local function (domain "moelab", name block<i>), one node of the main
  // graph that Netron opens into the block's own graph: its inputs are the values the block
  // reads from outside (the residual stream, the weights, the mask...), its constants are
  // Constant nodes inside it, its weights stay initializers of the main graph.
  std::string block_function(const std::string& x, int64_t i) {
    const std::string name = "block" + std::to_string(i);
    onnx::GraphProto body;
    onnx::GraphProto* main = g_.graph();
    g_.set_graph(&body);
    std::set<std::string> outer_consts;
    outer_consts.swap(consts_);
    const std::string out = block(x, i);
    consts_.swap(outer_consts);
    g_.set_graph(main);

    onnx::FunctionProto* f = proto_->add_functions();
    f->set_name(name);
    f->set_domain("moelab");
    f->set_doc_string("TinyMoE block " + std::to_string(i));
    onnx::OperatorSetIdProto* opset = f->add_opset_import();
    opset->set_domain("");
    opset->set_version(17);
    std::set<std::string> made;
    for (const onnx::TensorProto& t : body.initializer()) {
      if (params_.contains(t.name()) || buffers_.contains(t.name())) {
        *main->add_initializer() = t;
        continue;
      }
      onnx::NodeProto* c = f->add_node();
      c->set_op_type("Constant");
      c->set_name(t.name());
      c->add_output(t.name());
      onnx::AttributeProto* a = c->add_attribute();
      a->set_name("value");
      a->set_type(onnx::AttributeProto::TENSOR);
      *a->mutable_t() = t;
      made.insert(t.name());
    }
    for (const onnx::NodeProto& node : body.node())
      for (const std::string& o : node.output()) made.insert(o);
    std::vector<std::string> inputs;
    std::set<std::string> seen;
    for (const onnx::NodeProto& node : body.node()) {
      *f->add_node() = node;
      for (const std::string& in : node.input())
        if (!made.count(in) && seen.insert(in).second) inputs.push_back(in);
    }
    for (const std::string& in : inputs) f->add_input(in);
    f->add_output(out);
    onnx::NodeProto* call = main->add_node();
    call->set_op_type(name);
    call->set_domain("moelab");
    call->set_name(name);
    for (const std::string& in : inputs) call->add_input(in);
    call->add_output(out);
    return out;
  }

  std::string block(const std::string& x, int64_t i) {
    const std::string module = "block" + std::to_string(i), p = module;
    const bool is_moe = !m_.dense && (i % m_.moe_every == m_.moe_every - 1);
    std::string a = attention(layer_norm(x, module + ".ln1", p + "/ln1"), module + ".attn", p + "/attn");
    std::string h = g_.op("Add", {x, a}, p + "/residual1");
    std::string n = layer_norm(h, module + ".ln2", p + "/ln2");
    std::string f = is_moe ? moe(n, module + ".moe", p + "/moe") : dense_ffn(n, module + ".ffn", p + "/ffn");
    return g_.op("Add", {h, f}, p + "/residual2");
  }

  const ModelConfig& m_;
  const RouterConfig& r_;
  Graph& g_;
  torch::OrderedDict<std::string, torch::Tensor> params_, buffers_;
  torch::ScalarType weight_dtype_;
  onnx::ModelProto* proto_;
  std::set<std::string> done_, consts_;  // model tensors and constants already in the graph
  std::string seq_, n_tokens_, zero_, one_, flat_, causal_, rope_cos_, rope_sin_;
};

}  // namespace

void export_onnx(TinyMoE& model, const RunConfig& config, const OnnxExportOptions& options) {
  torch::NoGradGuard no_grad;
  onnx::ModelProto proto;
  proto.set_ir_version(8);
  proto.set_producer_name("moelab");
  proto.set_doc_string(options.doc);
  onnx::OperatorSetIdProto* opset = proto.add_opset_import();
  opset->set_domain("");
  opset->set_version(17);
  onnx::GraphProto* graph = proto.mutable_graph();
  graph->set_name("tinymoe");
  const std::string data_file = options.out + ".data";
  Graph g(graph, options.external_data, data_file);
  const torch::ScalarType dtype = options.weight_dtype == "float16"    ? torch::kHalf
                                  : options.weight_dtype == "bfloat16" ? torch::kBFloat16
                                                                       : torch::kFloat32;
  onnx::OperatorSetIdProto* blocks = proto.add_opset_import();  // the blocks' local functions
  blocks->set_domain("moelab");
  blocks->set_version(1);
  Exporter(model, config, g, dtype, &proto).build();

  onnx::ValueInfoProto* in = graph->add_input();
  in->set_name("tokens");
  auto* in_type = in->mutable_type()->mutable_tensor_type();
  in_type->set_elem_type(onnx::TensorProto::INT64);
  in_type->mutable_shape()->add_dim()->set_dim_param("batch");
  in_type->mutable_shape()->add_dim()->set_dim_param("seq");
  onnx::ValueInfoProto* out = graph->add_output();
  out->set_name("logits");
  auto* out_type = out->mutable_type()->mutable_tensor_type();
  out_type->set_elem_type(onnx::TensorProto::FLOAT);
  out_type->mutable_shape()->add_dim()->set_dim_param("batch");
  out_type->mutable_shape()->add_dim()->set_dim_param("seq");
  out_type->mutable_shape()->add_dim()->set_dim_value(config.model.vocab_size);

  std::string bytes;
  if (!proto.SerializeToString(&bytes)) throw UserError(options.out + ": the ONNX model could not be serialised (over 2 GB? use --external-data)");
  if (options.external_data) write_file_atomic(data_file, g.external_bytes());
  write_file_atomic(options.out, bytes);
}

#endif

}  // namespace moelab
