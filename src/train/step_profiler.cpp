#include "train/step_profiler.h"

#include <algorithm>
#include <map>
#include <set>
#include <vector>

#include <torch/torch.h>

#include "util/files.h"
#include "util/strings.h"

#if defined(MOELAB_CUDA) && TORCH_VERSION_MAJOR >= 2
#define MOELAB_KINETO 1
#include <torch/csrc/autograd/profiler_kineto.h>
#endif

namespace moelab {

#ifdef MOELAB_KINETO
namespace {
namespace prof = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;

prof::ProfilerConfig profiler_config() { return prof::ProfilerConfig(prof::ProfilerState::KINETO); }
const std::set<ActivityType> kActivities{ActivityType::CPU, ActivityType::CUDA};
}  // namespace

bool StepProfiler::available() { return true; }

void StepProfiler::start() {
  prof::prepareProfiler(profiler_config(), kActivities);
  prof::enableProfiler(profiler_config(), kActivities);
}

std::string StepProfiler::stop(const std::string& run_dir, int64_t steps, int top) {
  std::unique_ptr<prof::ProfilerResult> result = prof::disableProfiler();
  result->save(run_dir + "/profile.json");
  struct Total {
    int64_t calls = 0;
    double ns = 0;
  };
  std::map<std::string, Total> kernels;
  double all_ns = 0;
  int64_t calls = 0;
  for (const auto& e : result->events()) {
    if (e.deviceType() != c10::DeviceType::CUDA) continue;
    Total& t = kernels[e.name()];
    ++t.calls;
    ++calls;
    t.ns += static_cast<double>(e.durationNs());
    all_ns += static_cast<double>(e.durationNs());
  }
  std::vector<std::pair<std::string, Total>> rows(kernels.begin(), kernels.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  const double per_step = static_cast<double>(std::max<int64_t>(steps, 1));
  std::string table = strf("device time per step: %.3f ms in %.1f kernels and copies (%lld steps profiled)\n"
               "%10s %8s %7s  %s\n",
               all_ns / per_step / 1e6, static_cast<double>(calls) / per_step, (long long)steps, "us/step", "calls", "share",
               "kernel");
  std::string head = table;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& [name, t] = rows[i];
    std::string line = strf("%10.1f %8.1f %6.1f%%  %s\n", t.ns / per_step / 1e3, static_cast<double>(t.calls) / per_step,
                            100.0 * t.ns / std::max(all_ns, 1.0), name.substr(0, 160).c_str());
    table += line;
    if (static_cast<int>(i) < top) head += line;
  }
  write_file_atomic(run_dir + "/profile_kernels.txt", table);
  return head;
}
#else
bool StepProfiler::available() { return false; }
void StepProfiler::start() {}
std::string StepProfiler::stop(const std::string&, int64_t, int) { return ""; }
#endif

}  // namespace moelab
