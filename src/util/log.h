#pragma once
// Logging facade. spdlog lives only in log.cpp: the GPU machine's libtorch ships fmt headers
// that Debian's spdlog does not compile against, so no torch translation unit may see spdlog.
#include <string>

namespace moelab::log {

void info(const std::string& message);
void warn(const std::string& message);
void error(const std::string& message);
void set_quiet(bool quiet);  // warnings and errors only (tests, sweeps)

}  // namespace moelab::log
