#pragma once
// Import of real routing data in the seed's NPZ format: a folder of per-request .npz files
// holding request_id, prompt_token_ids, output_token_ids and routed_experts[seq, layer, k].
// The zip container is read with libzip; the .npy arrays inside are parsed here (integer and
// unicode arrays; pickled object arrays are refused with a clear error).
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "trace/trace_record.h"

namespace moelab {

struct NpyArray {
  std::string dtype;            // numpy descr, e.g. "<i8", "<U7"
  std::vector<int64_t> shape;
  std::vector<int64_t> values;  // integer arrays
  std::string text;             // unicode/bytes arrays (joined)
};

// Reads every array of one .npz file; UserError naming the file and the array.
std::vector<std::pair<std::string, NpyArray>> read_npz(const std::string& path);

struct NpzImportOptions {
  std::string token_slice = "all";  // all | prompt | output
  std::set<int64_t> layers;         // empty = all
  int64_t max_requests = 0;         // 0 = all
};

// One record per (request, layer), in file-name order then layer order, as the seed writes
// them (batch_id = the numeric request id, or the file's index). Returns files imported.
int64_t import_npz_folder(const std::string& folder, const NpzImportOptions& options,
                          const std::function<void(const TraceRecord&)>& emit);

}  // namespace moelab
