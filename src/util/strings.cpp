#include "util/strings.h"

#include <cmath>
#include <cstdio>

namespace moelab {

std::string strf(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  va_list copy;
  va_copy(copy, args);
  int n = std::vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  std::string out(n > 0 ? n : 0, '\0');
  if (n > 0) std::vsnprintf(out.data(), out.size() + 1, fmt, args);
  va_end(args);
  return out;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t pos = s.find(sep, start);
    parts.push_back(s.substr(start, pos == std::string::npos ? std::string::npos : pos - start));
    if (pos == std::string::npos) break;
    start = pos + 1;
  }
  return parts;
}

std::string human_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  if (seconds < 60) return strf("%.1fs", seconds);
  long s = std::lround(seconds);
  if (s < 3600) return strf("%ldm%02lds", s / 60, s % 60);
  return strf("%ldh%02ldm", s / 3600, (s % 3600) / 60);
}

std::string human_count(double value) {
  if (value >= 1e9) return strf("%.2fG", value / 1e9);
  if (value >= 1e6) return strf("%.2fM", value / 1e6);
  if (value >= 1e3) return strf("%.1fk", value / 1e3);
  return strf("%.0f", value);
}

std::string printable(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) out += strf("\\x%02x", c);
    else out += static_cast<char>(c);
  }
  return out;
}

}  // namespace moelab
