#include "train/run.h"

#include <thread>

#include <torch/torch.h>

#include "train/checkpoint.h"
#include "train/trainer.h"

namespace moelab {

LoadedRun load_run(const std::string& run_dir, const std::string& device) {
  // Debian's libtorch starts with one thread; evaluation, sampling and tracing use them all.
  torch::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  LoadedRun run;
  run.config = load_run_config_from(run_dir);
  run.tokenizer = load_tokenizer(run_dir);
  run.config.model.vocab_size = run.tokenizer->vocab_size();
  run.device = torch::Device(resolve_device(device));
  run.model = std::make_shared<TinyMoE>(run.config.model, run.config.router);
  run.model->to(run.device);
  run.step = load_checkpoint(checkpoint_path(run_dir), *run.model, nullptr, run.device).step;
  run.model->eval();
  return run;
}

}  // namespace moelab
