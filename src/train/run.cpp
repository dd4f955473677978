#include "train/run.h"

#include <thread>

#include <torch/torch.h>

#include "models/adapters.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#include "util/error.h"

namespace moelab {

std::string adapt_base_model(TinyMoE& model, const FinetuneConfig& finetune) {
  const std::string checksum = load_checkpoint(checkpoint_path(*finetune.base), model, nullptr, torch::kCPU).file_checksum;
  model.attach_adapters(finetune);
  return checksum;
}

LoadedRun load_run(const std::string& run_dir, const std::string& device) {
  // Debian's libtorch starts with one thread; evaluation, sampling and tracing use them all.
  torch::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  LoadedRun run;
  run.config = load_run_config_from(run_dir);
  run.tokenizer = load_tokenizer(run_dir);
  run.config.model.vocab_size = run.tokenizer->vocab_size();
  run.device = torch::Device(resolve_device(device));
  run.model = std::make_shared<TinyMoE>(run.config.model, run.config.router);
  std::string base_checksum;
  if (run.config.finetune.base) base_checksum = adapt_base_model(*run.model, run.config.finetune);
  run.model->to(run.device);
  const TensorSelection selection = run.model->base_frozen() ? TensorSelection(is_adapter_tensor) : TensorSelection();
  const TrainingState state = load_checkpoint(checkpoint_path(run_dir), *run.model, nullptr, run.device, selection);
  if (state.base_checksum != base_checksum)
    throw UserError(checkpoint_path(run_dir) + ": adapts another base checkpoint than " + checkpoint_path(*run.config.finetune.base) +
                    " holds now (the base run was changed or retrained after this fine-tuning)");
  run.step = state.step;
  run.model->eval();
  return run;
}

}  // namespace moelab
