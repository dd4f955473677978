#pragma once
// Shared cxxopts handling: --help prints usage and exits 0; a bad flag is a UserError.
#include <cxxopts.hpp>
#include <iostream>
#include <string>
#include <type_traits>
#include <vector>

#include "util/error.h"
#include "util/strings.h"

namespace moelab::cli {

inline cxxopts::ParseResult parse_options(cxxopts::Options& options, int argc, char** argv) {
  options.add_options()("h,help", "show this help");
  cxxopts::ParseResult result;
  try {
    result = options.parse(argc, argv);
  } catch (const cxxopts::exceptions::exception& e) {
    throw UserError(options.program() + ": " + e.what() + " (see --help)");
  }
  if (result.count("help")) {
    std::cout << options.help() << std::endl;
    std::exit(0);
  }
  if (!result.unmatched().empty()) throw UserError(options.program() + ": unexpected argument '" + result.unmatched()[0] + "'");
  return result;
}

// "1,2,3" -> {1, 2, 3}; integers must be written as integers.
template <typename T>
std::vector<T> parse_list(const std::string& text, const std::string& flag) {
  std::vector<T> out;
  for (const std::string& part : split(text, ','))
    if (!part.empty()) {
      try {
        size_t used = 0;
        T value = std::is_integral_v<T> ? static_cast<T>(std::stoll(part, &used)) : static_cast<T>(std::stod(part, &used));
        if (used != part.size()) throw std::invalid_argument(part);
        out.push_back(value);
      } catch (const std::exception&) {
        throw UserError(flag + " expects comma-separated " + (std::is_integral_v<T> ? "integers" : "numbers") + ", got '" +
                        text + "'");
      }
    }
  return out;
}

template <typename T>
T required(const cxxopts::ParseResult& result, const std::string& name, const std::string& program) {
  if (!result.count(name)) throw UserError(program + ": --" + name + " is required (see --help)");
  return result[name].as<T>();
}

}  // namespace moelab::cli
