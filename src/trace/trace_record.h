#pragma once
// One recorded routing decision set: a batch of tokens at one MoE layer. The unit that every
// trace format reads and writes and that the placement simulator replays.
#include <cstdint>
#include <string>
#include <vector>

namespace moelab {

struct TraceRecord {
  int64_t layer = 0;
  int64_t batch_id = 0;
  int k = 0;                          // experts per token
  std::vector<int32_t> experts;       // [tokens * k], token-major
  std::vector<float> weights;         // [tokens * k], or empty when the trace has none
  std::vector<int32_t> origin_rows;   // [tokens], or empty (the simulator's origin_mode applies)
  std::string request_id, source_file;  // optional
  int64_t source_line = 0;              // 1-based line of the file it was read from (0: not read)

  int64_t tokens() const { return k > 0 ? static_cast<int64_t>(experts.size()) / k : 0; }
};

}  // namespace moelab
