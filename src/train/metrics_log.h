#pragma once
// metrics.jsonl: one JSON object per line, flushed as written so a killed run keeps every
// line it logged. Training rows have "kind": "train", evaluation rows "kind": "eval".
#include <cstdint>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

namespace moelab {

class MetricsLog {
 public:
  // Opens for appending; with resume_step >= 0 first drops rows logged after that step (they
  // belong to the part of the run the checkpoint does not hold), atomically.
  MetricsLog(const std::string& path, int64_t resume_step);
  void write(const nlohmann::json& row);

 private:
  std::ofstream out_;
};

}  // namespace moelab
