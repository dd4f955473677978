#pragma once
// Shared cxxopts handling: --help prints usage and exits 0; a bad flag is a UserError.
#include <cxxopts.hpp>
#include <iostream>

#include "util/error.h"

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

template <typename T>
T required(const cxxopts::ParseResult& result, const std::string& name, const std::string& program) {
  if (!result.count(name)) throw UserError(program + ": --" + name + " is required (see --help)");
  return result[name].as<T>();
}

}  // namespace moelab::cli
