#include "trace/placement_jsonl.h"

#include <charconv>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "util/error.h"
#include "util/strings.h"

namespace moelab {
using nlohmann::json;

namespace {

struct LineContext {
  const std::string& path;
  int64_t line;
  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw UserError(strf("%s:%lld: field '%s': %s", path.c_str(), (long long)line, field.c_str(), what.c_str()));
  }
};

void append_experts(const LineContext& at, const json& list, const std::string& field, TraceRecord& record,
                    const json* weights) {
  if (!list.is_array()) at.fail(field, "expected an array of expert ids");
  if (record.k == 0) {
    if (list.empty()) at.fail(field, "a token with no experts");
    record.k = static_cast<int>(list.size());
  }
  if (static_cast<int>(list.size()) != record.k)
    at.fail(field, strf("%zu experts, expected k = %d like the first token", list.size(), record.k));
  for (const json& id : list) {
    // A uint64 beyond int64 reads as a negative int64: refused here too, never wrapped.
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > std::numeric_limits<int32_t>::max())
      at.fail(field, "expert ids must be non-negative integers below 2^31");
    record.experts.push_back(static_cast<int32_t>(id.get<int64_t>()));
  }
  if (weights) {
    if (!weights->is_array() || weights->size() != list.size())
      at.fail(field + " weights", "topk_weights must match topk_experts in shape");
    for (const json& w : *weights) {
      if (!w.is_number()) at.fail(field + " weights", "weights must be numbers");
      record.weights.push_back(w.get<float>());
    }
  }
}

TraceRecord parse_record(const json& row, const LineContext& at) {
  if (!row.is_object()) at.fail("(line)", "expected a JSON object");
  TraceRecord record;
  if (!row.contains("layer") || !row["layer"].is_number_integer()) at.fail("layer", "missing or not an integer");
  record.layer = row["layer"].get<int64_t>();
  if (row.contains("batch_id")) {
    if (!row["batch_id"].is_number_integer()) at.fail("batch_id", "not an integer");
    record.batch_id = row["batch_id"].get<int64_t>();
  }
  if (row.contains("request_id")) record.request_id = row["request_id"].is_string() ? row["request_id"].get<std::string>() : row["request_id"].dump();
  if (row.contains("source_file") && row["source_file"].is_string()) record.source_file = row["source_file"].get<std::string>();
  if (row.contains("tokens")) {
    const json& tokens = row["tokens"];
    if (!tokens.is_array()) at.fail("tokens", "expected an array");
    for (size_t t = 0; t < tokens.size(); ++t) {
      const json& token = tokens[t];
      std::string field = strf("tokens[%zu]", t);
      if (!token.is_object() || !token.contains("topk_experts")) at.fail(field, "expected {\"origin_row\", \"topk_experts\"}");
      append_experts(at, token["topk_experts"], field + ".topk_experts", record, nullptr);
      if (token.contains("origin_row")) {
        if (!token["origin_row"].is_number_integer() || token["origin_row"].get<int64_t>() < 0)
          at.fail(field + ".origin_row", "must be a non-negative integer");
        record.origin_rows.push_back(static_cast<int32_t>(token["origin_row"].get<int64_t>()));
      }
    }
  } else {
    if (!row.contains("topk_experts")) at.fail("topk_experts", "missing (and no 'tokens' array either)");
    const json& experts = row["topk_experts"];
    if (!experts.is_array()) at.fail("topk_experts", "expected an array of arrays");
    const json* weights = row.contains("topk_weights") ? &row["topk_weights"] : nullptr;
    if (weights && (!weights->is_array() || weights->size() != experts.size()))
      at.fail("topk_weights", "must have one entry per token, like topk_experts");
    for (size_t t = 0; t < experts.size(); ++t)
      append_experts(at, experts[t], strf("topk_experts[%zu]", t), record, weights ? &(*weights)[t] : nullptr);
    if (row.contains("origin_rows")) {
      const json& rows = row["origin_rows"];
      if (!rows.is_array()) at.fail("origin_rows", "expected an array");
      for (const json& r : rows) {
        if (!r.is_number_integer() || r.get<int64_t>() < 0) at.fail("origin_rows", "entries must be non-negative integers");
        record.origin_rows.push_back(static_cast<int32_t>(r.get<int64_t>()));
      }
    }
  }
  if (!record.origin_rows.empty() && static_cast<int64_t>(record.origin_rows.size()) != record.tokens())
    at.fail("origin_rows", strf("%zu entries for %lld tokens", record.origin_rows.size(), (long long)record.tokens()));
  return record;
}

}  // namespace

void read_placement_jsonl(const std::string& path, int64_t layer, int64_t max_records,
                          const std::function<bool(TraceRecord&&)>& visit) {
  std::ifstream in(path);
  if (!in) throw UserError(path + ": cannot open trace");
  std::string text;
  int64_t line = 0, visited = 0;
  while (std::getline(in, text)) {
    ++line;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    LineContext at{path, line};
    json row = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (row.is_discarded()) at.fail("(line)", "not valid JSON");
    if (layer >= 0 && row.is_object() && row.contains("layer") && row["layer"].is_number_integer() &&
        row["layer"].get<int64_t>() != layer)
      continue;
    TraceRecord record = parse_record(row, at);
    record.source_line = line;
    ++visited;
    if (!visit(std::move(record))) return;
    if (max_records > 0 && visited >= max_records) return;
  }
}

namespace {

void append_int(std::string& out, int64_t v) {
  char buffer[24];
  auto end = std::to_chars(buffer, buffer + sizeof buffer, v).ptr;
  out.append(buffer, end);
}

}  // namespace

std::string placement_jsonl_line(const TraceRecord& record) {
  // Written by hand into one buffer (to_chars, no streams): a trace of millions of tokens is
  // hundreds of MB. The layout is Python's json.dumps (", " and ": "), as moe-balance writes.
  const int64_t tokens = record.tokens();
  std::string out;
  out.reserve(static_cast<size_t>(tokens) * (record.k * (record.weights.empty() ? 5 : 15) + 8) + 128);
  out += "{\"layer\": ";
  append_int(out, record.layer);
  out += ", \"batch_id\": ";
  append_int(out, record.batch_id);
  if (!record.request_id.empty()) out += ", \"request_id\": " + json(record.request_id).dump();
  if (!record.source_file.empty()) out += ", \"source_file\": " + json(record.source_file).dump();
  out += ", \"origin_rows\": [";
  for (size_t i = 0; i < record.origin_rows.size(); ++i) {
    if (i) out += ", ";
    append_int(out, record.origin_rows[i]);
  }
  out += "], \"topk_experts\": [";
  for (int64_t t = 0; t < tokens; ++t) {
    out += t ? ", [" : "[";
    for (int j = 0; j < record.k; ++j) {
      if (j) out += ", ";
      append_int(out, record.experts[t * record.k + j]);
    }
    out += ']';
  }
  out += ']';
  if (!record.weights.empty()) {
    out += ", \"topk_weights\": [";
    char buffer[32];
    for (int64_t t = 0; t < tokens; ++t) {
      out += t ? ", [" : "[";
      for (int j = 0; j < record.k; ++j) {
        if (j) out += ", ";
        // %.6g: six significant digits, enough for a gate and a third of the bytes of %.9g.
        auto end = std::to_chars(buffer, buffer + sizeof buffer, record.weights[t * record.k + j], std::chars_format::general, 6).ptr;
        out.append(buffer, end);
      }
      out += ']';
    }
    out += ']';
  }
  out += "}\n";
  return out;
}

void write_placement_jsonl(std::ostream& out, const TraceRecord& record) {
  const std::string line = placement_jsonl_line(record);
  out.write(line.data(), static_cast<std::streamsize>(line.size()));
}

}  // namespace moelab
