#pragma once
// Helpers shared by the test binaries: where the shared real data is, and temp folders.
#include <gtest/gtest.h>

#include <ftw.h>
#include <stdio.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>

#include "config/run_config.h"
#include "util/blas_kernels.h"
#include "util/error.h"
#include "util/log.h"

namespace moelab::testing {

// The test binaries multiply matrices with the kernels moelab itself uses (see blas_kernels.h).
inline const bool kCpuBlasKernels = (relaunch_with_cpu_blas_kernels(), true);

inline std::string shared_path(const std::string& relative) { return std::string(MOELAB_SHARED_DIR) + "/" + relative; }

// Skips the calling test (with a message) when ../shared is not beside the checkout.
#define MOELAB_REQUIRE_SHARED(relative)                                                      \
  do {                                                                                       \
    if (!std::filesystem::exists(::moelab::testing::shared_path(relative)))                  \
      GTEST_SKIP() << "../shared/" << (relative) << " is absent: real-data test skipped";    \
  } while (0)

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "moelab-test-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  // nftw rather than std::filesystem::remove_all, which crashes at the end of a test in the
  // GPU build (against PyTorch's libtorch) once a test has initialised CUDA.
  ~TempDir() {
    ::nftw(path_.c_str(), [](const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); }, 16,
           FTW_DEPTH | FTW_PHYS);
  }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Silences moelab's log for a test's duration.
struct Quiet {
  Quiet() { log::set_quiet(true); }
  ~Quiet() { log::set_quiet(false); }
};

// The message of the UserError `f` throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

// A router config with the fields the routing tests vary.
inline RouterConfig routing_config(const std::string& strategy, int64_t experts, int64_t k, double capacity_factor) {
  RouterConfig c;
  c.strategy = strategy;
  c.num_experts = experts;
  c.top_k = k;
  c.capacity_factor = capacity_factor;
  return c;
}

inline void use_built_bpe_tool() { ::setenv("MOELAB_BPE", MOELAB_BPE_PATH, 1); }

}  // namespace moelab::testing
