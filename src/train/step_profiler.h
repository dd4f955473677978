#pragma once
// Profiles a few training steps with libtorch's Kineto profiler: RUN/profile.json (a Chrome
// trace: open it in Perfetto or chrome://tracing) and RUN/profile_kernels.txt, the device
// kernels by total time per step (kernels inside a replayed CUDA graph included). CUDA
// builds of libtorch 2.x only; elsewhere available() is false.
#include <cstdint>
#include <string>

namespace moelab {

class StepProfiler {
 public:
  static bool available();
  void start();
  // Stops, writes both files under run_dir and returns the table's first `top` rows.
  std::string stop(const std::string& run_dir, int64_t steps, int top = 12);
};

}  // namespace moelab
