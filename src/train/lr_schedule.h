#pragma once
// Linear warmup to the peak over `warmup` steps, then cosine decay to 0 at `total`.
#include <cmath>
#include <cstdint>

namespace moelab {

inline double learning_rate(int64_t step, double peak, int64_t warmup, int64_t total) {
  if (step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (total <= warmup) return peak;
  double progress = static_cast<double>(step - warmup) / static_cast<double>(total - warmup);
  return 0.5 * peak * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
}

}  // namespace moelab
