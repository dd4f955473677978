#include "util/blas_kernels.h"

#include <dlfcn.h>
#include <strings.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace moelab {
namespace {

// The kernels the CPU's features allow, in OpenBLAS's names; null for none better than SSE3.
const char* supported_kernels() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512cd"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return nullptr;
}

// Whether OpenBLAS's `running` kernels already use what `wanted` would.
bool at_least(const char* running, const char* wanted) {
  for (const char* name : {"SkylakeX", "Cooperlake", "SapphireRapids"})
    if (strcasecmp(running, name) == 0) return true;
  if (std::string(wanted) == "SkylakeX") return false;
  for (const char* name : {"Haswell", "Zen"})
    if (strcasecmp(running, name) == 0) return true;
  return false;
}

}  // namespace

void relaunch_with_cpu_blas_kernels() {
  if (std::getenv("OPENBLAS_CORETYPE")) return;  // the user's choice, or this relaunch's
  using CoreName = char* (*)();
  const auto core_name = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  const char* wanted = supported_kernels();
  if (!core_name || !wanted || at_least(core_name(), wanted)) return;
  // This process's own arguments, NUL-separated.
  std::ifstream cmdline("/proc/self/cmdline", std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  for (size_t begin = 0; begin < text.size();) {
    const size_t end = text.find('\0', begin);
    args.push_back(text.substr(begin, end - begin));
    begin = end == std::string::npos ? text.size() : end + 1;
  }
  if (args.empty()) return;
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  setenv("OPENBLAS_CORETYPE", wanted, 1);
  execv("/proc/self/exe", argv.data());
  unsetenv("OPENBLAS_CORETYPE");  // execv failed: carry on with the kernels loaded
}

}  // namespace moelab
