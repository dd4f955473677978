#pragma once
// The training loop: one function a person can read in a sitting.
#include <string>

#include <nlohmann/json.hpp>

#include "config/run_config.h"

namespace moelab {

struct TrainOptions {
  std::string resume_dir;   // continue the run in this directory
  int64_t stop_after = 0;   // stop (with a checkpoint) after this step, as if interrupted
};

// Trains per `config` into config.out (or resume_dir) and returns summary.json's content.
nlohmann::json train(RunConfig config, const TrainOptions& options);

// The config a run was started with (RUN/config.json).
RunConfig load_run_config_from(const std::string& run_dir);

// "auto" -> cuda when available, else cpu.
std::string resolve_device(const std::string& device);

}  // namespace moelab
