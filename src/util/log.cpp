#include "util/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace moelab::log {
namespace {
std::shared_ptr<spdlog::logger> logger() {
  static auto instance = [] {
    auto l = spdlog::stderr_color_mt("moelab");
    l->set_pattern("%^[%H:%M:%S] %v%$");
    return l;
  }();
  return instance;
}
}  // namespace

void info(const std::string& message) { logger()->info(message); }
void warn(const std::string& message) { logger()->warn(message); }
void error(const std::string& message) { logger()->error(message); }
void set_quiet(bool quiet) { logger()->set_level(quiet ? spdlog::level::warn : spdlog::level::info); }

}  // namespace moelab::log
