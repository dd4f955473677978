#include "train/train_report.h"

#include <torch/torch.h>

#include "routers/routing_metrics.h"
#include "util/log.h"
#include "util/strings.h"

namespace moelab {

using nlohmann::json;

json routing_report(const std::vector<RoutingPlan>& plans) {
  std::vector<RoutingMetrics> layers;
  for (const RoutingPlan& plan : plans) layers.push_back(compute_routing_metrics(plan));
  json routing = json::object();
  if (layers.empty()) return routing;
  routing = average_metrics(layers).to_json();
  routing["layers"] = json::array();
  for (const RoutingMetrics& m : layers) routing["layers"].push_back(m.to_json());
  return routing;
}

json log_training_step(TrainingRun& run, int64_t step, double lr, double interval_loss_sum, const StepOutputs& out) {
  const TrainConfig& tc = run.config.train;
  const TrainingState& s = run.state;
  const json routing = routing_report(out.plans);
  const double steps = static_cast<double>(s.interval_steps);
  const double tokens_per_s = steps * static_cast<double>(run.tokens_per_step) / s.interval_seconds;
  const double kept_share = routing.contains("drop_rate") && routing["drop_rate"].is_number()
                                ? 1.0 - routing["drop_rate"].get<double>()
                                : 1.0;
  const double flops_per_token = run.model->flops_per_token(kept_share);
  run.routed_flops_sum += flops_per_token;
  ++run.routed_flops_count;
  json row = {{"kind", "train"},
              {"step", step},
              {"lr", lr},
              {"loss", interval_loss_sum / steps},
              {"step_loss", out.lm_loss.item<double>()},
              {"aux_loss", out.aux_loss.item<double>()},
              {"grad_norm", out.grad_norm.item<double>()},
              {"tokens_per_s", tokens_per_s},
              {"step_ms", 1000.0 * s.interval_seconds / steps},
              {"tflops", tokens_per_s * flops_per_token / 1e12},
              {"routing", routing}};
  if (!out.adapter_plans.empty()) row["adapter_routing"] = routing_report(out.adapter_plans);
  if (tc.peak_tflops > 0) row["mfu"] = tokens_per_s * flops_per_token / (tc.peak_tflops * 1e12);
  if (run.metrics) run.metrics->write(row);
  json reported = {{"routing", routing}};
  if (row.contains("adapter_routing")) reported["adapter_routing"] = row["adapter_routing"];
  const std::string route_line = routing.empty() ? ""
                                                 : strf(" | drop %.3f cv %.3f ent %.2f", routing["drop_rate"].get<double>(),
                                                        routing["load_cv"].get<double>(), routing["gate_entropy"].get<double>());
  const double eta = static_cast<double>(tc.max_steps - step) * s.train_seconds / static_cast<double>(step);
  log::info(strf("step %lld/%lld | loss %.4f | lr %.2e | %s tok/s%s | eta %s", (long long)step, (long long)tc.max_steps,
                 interval_loss_sum / steps, lr, human_count(tokens_per_s).c_str(), route_line.c_str(),
                 human_duration(eta).c_str()));
  return reported;
}

json training_summary(const TrainingRun& run, const EvalResult& eval, const json& routing) {
  const RunConfig& c = run.config;
  const TinyMoE& model = *run.model;
  const double flops_per_token = run.routed_flops_per_token();
  const double tokens_per_s = static_cast<double>(run.state.tokens_seen) / run.state.train_seconds;
  json summary = {{"steps", run.state.step},
                  {"final_val_loss", eval.loss},
                  {"final_ppl", eval.ppl},
                  {"bits_per_token", eval.bits_per_token},
                  {"bits_per_char", eval.bits_per_char},
                  {"tokens_per_s", tokens_per_s},
                  {"train_seconds", run.state.train_seconds},
                  {"tokens_seen", run.state.tokens_seen},
                  {"unigram_entropy", run.data->unigram_entropy},
                  {"parameters", model.parameter_count()},
                  {"active_parameters", model.active_parameter_count()},
                  {"flops_per_token", run.flops_per_token},
                  {"routed_flops_per_token", flops_per_token},
                  {"strategy", c.model.dense ? std::string("dense") : c.router.strategy},
                  {"gate", c.router.gate},
                  {"capacity_factor", c.router.capacity_factor},
                  {"num_experts", c.router.num_experts},
                  {"top_k", c.router.top_k},
                  {"router_parameters", model.moe_layers().empty() ? 0 : model.moe_layers()[0]->router().gate_parameter_count()},
                  {"device", run.device.str()},
                  {"dtype", run.bf16 ? "bf16" : "fp32"},
                  {"routing", routing.value("routing", json::object())}};
  if (routing.contains("adapter_routing")) summary["adapter_routing"] = routing["adapter_routing"];
  if (c.train.peak_tflops > 0) summary["mfu"] = tokens_per_s * flops_per_token / (c.train.peak_tflops * 1e12);
  if (run.finetuning()) {
    const FinetuneConfig& f = c.finetune;
    const int64_t trainable = model.trainable_parameter_count();
    summary["finetune"] = {{"base", *f.base},
                           {"method", f.method},
                           {"rank", f.method == "full" ? json(nullptr) : json(f.rank)},
                           {"trainable_parameters", trainable},
                           {"trainable_share", static_cast<double>(trainable) / static_cast<double>(model.parameter_count())},
                           {"final_base_val_loss", run.base_domain_eval.loss}};
    if (run.initial_eval.tokens > 0) {
      summary["finetune"]["initial_val_loss"] = run.initial_eval.loss;
      summary["finetune"]["initial_base_val_loss"] = run.initial_base_domain_eval.loss;
    }
    if (f.method == "perft_r") {
      summary["finetune"]["experts"] = f.experts;
      summary["finetune"]["top_k"] = f.top_k;
      summary["finetune"]["strategy"] = f.strategy;
    }
  }
  summary["world_size"] = run.dist.world;
  summary["expert_parallel"] = run.dist.expert_parallel;
  return summary;
}

}  // namespace moelab
