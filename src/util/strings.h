#pragma once
#include <cstdarg>
#include <string>
#include <vector>

namespace moelab {

// printf-style formatting into a std::string (spdlog/fmt stay out of torch translation units).
std::string strf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

std::vector<std::string> split(const std::string& s, char sep);
// "1m05s", "3.2s": for progress lines.
std::string human_duration(double seconds);
// "12.3k", "2.05M": for token rates.
std::string human_count(double value);
// `text` with control characters written as escapes (\n, \r, \t, \xHH): user data quoted in
// an error message keeps the message on one line.
std::string printable(const std::string& text);

}  // namespace moelab
