#include "trace/routing_pictures.h"

#include <fstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "config/run_config.h"
#include "data/corpus.h"
#include "data/token_file.h"
#include "plot/gnuplot.h"
#include "util/files.h"
#include "util/strings.h"

namespace moelab {

void draw_routing_pictures(LoadedRun& run, const std::string& text, const std::string& prefix) {
  std::vector<uint32_t> ids = run.tokenizer->encode(text);
  const int64_t n = std::min<int64_t>({static_cast<int64_t>(ids.size()), run.config.model.seq_len, 480});
  if (n <= 0) return;
  ids.resize(n);
  std::vector<std::string> pieces;
  for (uint32_t id : ids) {
    std::string piece = run.tokenizer->decode({id});
    pieces.push_back(id == run.tokenizer->eot_id() ? "\n" : piece);
  }
  torch::NoGradGuard no_grad;
  auto layers = run.model->moe_layers();
  auto layer_ids = run.model->moe_layer_ids();
  run.model->set_dropless(true);
  torch::Tensor input = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kLong).unsqueeze(0).to(run.device);
  run.model->forward(input);
  const int64_t experts = run.config.router.num_experts;
  std::vector<std::string> names;
  for (int64_t e = 0; e < experts; ++e) names.push_back("expert " + std::to_string(e));
  for (size_t l = 0; l < layers.size(); ++l) {
    const RoutingPlan& plan = layers[l]->last_plan();
    torch::Tensor dense = torch::zeros({n, experts});
    dense.scatter_add_(1, plan.expert_ids.cpu(), plan.gates.detach().to(torch::kFloat32).cpu());
    std::vector<std::vector<double>> heat(experts, std::vector<double>(n));
    std::vector<int> top(n);
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t e = 0; e < experts; ++e) heat[e][t] = dense[t][e].item<double>();
      top[t] = static_cast<int>(dense[t].argmax().item<int64_t>());
    }
    const long long id = layer_ids[l];
    plot::heatmap(prefix + strf("_heatmap_layer%lld.png", id), strf("gate weight per token and expert, layer %lld", id),
                  "token position", "expert", heat);
    std::vector<std::string> characters;
    std::vector<int> classes;
    for (int64_t t = 0; t < n; ++t) {
      // One coloured cell per character; a multi-character piece colours all of its characters.
      const std::string& piece = pieces[t];
      for (size_t pos = 0; pos < piece.size();) {
        size_t start = pos;
        next_code_point(piece, pos);
        characters.push_back(piece.substr(start, pos - start));
        classes.push_back(top[t]);
      }
    }
    plot::colored_text(prefix + strf("_tokens_layer%lld.png", id), strf("each token coloured by its top expert, layer %lld", id),
                       characters, classes, names, 96);
  }
  run.model->set_dropless(false);
}

std::string validation_sample(const LoadedRun& run, const std::string& run_dir) {
  TokenFile valid(run_dir + "/data/valid.bin");
  std::vector<uint32_t> ids;
  for (int64_t i = 0; i < std::min<int64_t>(valid.size(), run.config.model.seq_len); ++i) ids.push_back(valid.at(i));
  return run.tokenizer->decode(ids);
}

void draw_run_pictures(const std::string& run_dir, const std::string& prefix) {
  plot::Series train{"train loss", {}, {}}, valid{"validation loss", {}, {}};
  std::ifstream metrics(run_dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(metrics, line)) {
    auto row = nlohmann::json::parse(line, nullptr, false);
    if (row.is_discarded()) continue;
    plot::Series& s = row.value("kind", "") == "eval" ? valid : train;
    s.x.push_back(row["step"].get<double>());
    s.y.push_back(row.value("kind", "") == "eval" ? row["val_loss"].get<double>() : row["loss"].get<double>());
  }
  plot::line_chart(prefix + "_curves.png", "training curves: " + run_dir, "step", "loss (nats/token)", {train, valid}, true);
  if (!file_exists(run_dir + "/summary.json")) return;
  auto summary = parse_jsonc_file(run_dir + "/summary.json");
  const auto& routing = summary["routing"];
  if (!routing.contains("expert_load")) return;
  std::vector<std::string> labels;
  std::vector<double> values;
  for (size_t e = 0; e < routing["expert_load"].size(); ++e) {
    labels.push_back(std::to_string(e));
    values.push_back(routing["expert_load"][e].get<double>());
  }
  plot::bar_chart(prefix + "_expert_load.png", "kept assignments per expert at the last log step (all layers)", "expert",
                  "assignments", labels, values);
}

}  // namespace moelab
