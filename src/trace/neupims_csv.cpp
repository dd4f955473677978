#include "trace/neupims_csv.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numeric>

#include "util/error.h"
#include "util/files.h"
#include "util/strings.h"

namespace moelab {
namespace {

std::string header(int64_t experts) {
  std::string h = "layer_id,token_id";
  for (int64_t e = 0; e < experts; ++e) h += ",expert_" + std::to_string(e);
  return h;
}

// The smallest score the 6-decimal format can show: a chosen expert is never written as 0.
constexpr double kSmallestWrittenScore = 1e-6;

// A score as the CSV shows it: printf's correctly rounded 6 decimals, read back.
double written_score(double score) {
  char text[64];
  std::snprintf(text, sizeof text, "%.6f", score);
  return std::max(std::strtod(text, nullptr), kSmallestWrittenScore);
}

// Higher score first; among equal scores the higher expert id (numpy's argsort(...)[-k:]).
bool ranks_before(double score_a, int32_t expert_a, double score_b, int32_t expert_b) {
  return score_a != score_b ? score_a > score_b : expert_a > expert_b;
}

std::vector<int64_t> topk_counts(const TraceRecord& r, int k, int64_t experts) {
  if (k > r.k) throw UserError(strf("trace stats: top-%d asked of a trace with k = %d", k, r.k));
  std::vector<int64_t> counts(experts, 0);
  for (int64_t t = 0; t < r.tokens(); ++t)
    for (int j = 0; j < k; ++j) {
      const int32_t e = r.experts[t * r.k + j];
      if (e < 0 || e >= experts) throw UserError(strf("trace stats: expert id %d is outside 0..%lld", e, (long long)experts - 1));
      ++counts[e];
    }
  return counts;
}

// Experts by count, high to low; equal counts in expert order (Python's stable sort).
std::vector<int64_t> by_count(const std::vector<int64_t>& counts) {
  std::vector<int64_t> order(counts.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return counts[a] > counts[b]; });
  return order;
}

double percentage(int64_t count, int64_t tokens) { return tokens > 0 ? static_cast<double>(count) / tokens * 100 : 0.0; }

// Python's str.title() of an ordinal: the first letter after the digits in upper case ("2Nd").
std::string title_case(std::string s) {
  for (char& c : s)
    if (std::isalpha(static_cast<unsigned char>(c))) {
      c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      break;
    }
  return s;
}

}  // namespace

std::string ordinal(int64_t n) {
  const char* suffix = (n % 100 >= 11 && n % 100 <= 13) ? "th" : n % 10 == 1 ? "st" : n % 10 == 2 ? "nd" : n % 10 == 3 ? "rd" : "th";
  return std::to_string(n) + suffix;
}

std::vector<int> stats_ks(int model_k) {
  std::vector<int> ks = {1};
  if (model_k >= 2) ks.push_back(2);
  if (model_k > 2) ks.push_back(model_k);
  return ks;
}

std::string neupims_csv(const TraceRecord& r, int64_t experts, bool true_layer_id) {
  const std::string layer_field = std::to_string(true_layer_id ? r.layer : 0) + ",";
  std::string out = header(experts) + "\r\n";
  out.reserve(out.size() + static_cast<size_t>(r.tokens()) * (static_cast<size_t>(experts) * 9 + 16));
  std::vector<double> row(experts);
  char number[64];
  for (int64_t t = 0; t < r.tokens(); ++t) {
    std::fill(row.begin(), row.end(), 0.0);
    for (int j = 0; j < r.k; ++j) {
      const int32_t e = r.experts[t * r.k + j];
      if (e < 0 || e >= experts)
        throw UserError(strf("trace: expert id %d is outside the %lld experts of the CSV", e, (long long)experts));
      const double score = r.weights.empty() ? 1.0 / r.k : r.weights[t * r.k + j];
      if (!std::isfinite(score) || score < 0) throw UserError(strf("trace: token %lld has a score of %g", (long long)t, score));
      row[e] = std::max(score, kSmallestWrittenScore);
    }
    out += layer_field;
    out += std::to_string(t);
    for (double v : row) {
      if (v == 0.0) {
        out += ",0.000000";
        continue;
      }
      const int n = std::snprintf(number, sizeof number, ",%.6f", v);
      out.append(number, static_cast<size_t>(n));
    }
    out += "\r\n";
  }
  return out;
}

int64_t neupims_csv_experts(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw UserError(path + ": cannot open");
  std::string line;
  std::getline(in, line);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  std::vector<std::string> cols = split(line, ',');
  if (cols.size() < 3 || cols[0] != "layer_id" || cols[1] != "token_id")
    throw UserError(path + ":1: field 'header': expected layer_id,token_id,expert_0,...");
  return static_cast<int64_t>(cols.size()) - 2;
}

TraceRecord as_written(const TraceRecord& r) {
  TraceRecord out = r;
  std::vector<int> order(r.k);
  for (int64_t t = 0; t < r.tokens(); ++t) {
    std::vector<double> score(r.k);
    for (int j = 0; j < r.k; ++j) score[j] = written_score(r.weights.empty() ? 1.0 / r.k : r.weights[t * r.k + j]);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](int a, int b) { return ranks_before(score[a], r.experts[t * r.k + a], score[b], r.experts[t * r.k + b]); });
    for (int j = 0; j < r.k; ++j) {
      out.experts[t * r.k + j] = r.experts[t * r.k + order[j]];
      if (!out.weights.empty()) out.weights[t * r.k + j] = static_cast<float>(score[order[j]]);
    }
  }
  return out;
}

TraceRecord read_neupims_csv(const std::string& path, int k, int64_t layer) {
  std::ifstream in(path);
  if (!in) throw UserError(path + ": cannot open");
  std::string line;
  std::getline(in, line);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  std::vector<std::string> cols = split(line, ',');
  const int64_t experts = static_cast<int64_t>(cols.size()) - 2;
  if (experts < 1 || line != header(experts))
    throw UserError(path + ":1: field 'header': expected layer_id,token_id,expert_0,...,expert_{E-1} in order");
  struct Row {
    int64_t line;
    std::vector<std::pair<double, int32_t>> scores;
  };
  std::vector<Row> rows;
  int64_t file_layer = 0, line_no = 1;
  int most = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    std::vector<std::string> fields = split(line, ',');
    if (static_cast<int64_t>(fields.size()) != experts + 2)
      throw UserError(strf("%s:%lld: field 'row': %zu values, expected %lld", path.c_str(), (long long)line_no, fields.size(),
                           (long long)(experts + 2)));
    char* end = nullptr;
    file_layer = std::strtoll(fields[0].c_str(), &end, 10);
    if (*end || fields[0].empty()) throw UserError(strf("%s:%lld: field 'layer_id': not an integer", path.c_str(), (long long)line_no));
    Row row{line_no, {}};
    for (int64_t e = 0; e < experts; ++e) {
      const std::string& f = fields[e + 2];
      const double v = std::strtod(f.c_str(), &end);
      if (*end || f.empty() || !std::isfinite(v) || v < 0)
        throw UserError(strf("%s:%lld: field 'expert_%lld': '%s' is not a finite non-negative number", path.c_str(),
                             (long long)line_no, (long long)e, f.c_str()));
      if (v > 0) row.scores.emplace_back(v, static_cast<int32_t>(e));
    }
    most = std::max(most, static_cast<int>(row.scores.size()));
    rows.push_back(std::move(row));
  }
  if (rows.empty()) throw UserError(path + ": no token rows");
  TraceRecord r;
  r.k = k > 0 ? k : most;
  if (r.k == 0) throw UserError(path + ": every score is zero: no routing to read");
  r.layer = layer >= 0 ? layer : file_layer;
  r.source_file = path;
  r.experts.reserve(rows.size() * r.k);
  r.weights.reserve(rows.size() * r.k);
  for (Row& row : rows) {
    auto& scores = row.scores;
    if (static_cast<int>(scores.size()) < r.k)
      throw UserError(strf("%s:%lld: field 'row': %zu routed experts, fewer than k = %d", path.c_str(), (long long)row.line,
                           scores.size(), r.k));
    std::sort(scores.begin(), scores.end(),
              [](const auto& a, const auto& b) { return ranks_before(a.first, a.second, b.first, b.second); });
    for (int j = 0; j < r.k; ++j) {
      r.experts.push_back(scores[j].second);
      r.weights.push_back(static_cast<float>(scores[j].first));
    }
  }
  return r;
}

std::string topk_stats_csv(const TraceRecord& r, int k, int64_t experts) {
  const std::vector<int64_t> counts = topk_counts(r, k, experts);
  std::string out = "Expert_ID,Token_Count,Percentage,Rank\r\n";
  int64_t rank = 0;
  for (int64_t e : by_count(counts))
    out += strf("%lld,%lld,%.2f,%lld\r\n", (long long)e, (long long)counts[e], percentage(counts[e], r.tokens()), (long long)++rank);
  return out;
}

std::string topk_stats_txt(const TraceRecord& r, int k, int64_t experts, const StatsReport& report) {
  const std::vector<int64_t> counts = topk_counts(r, k, experts);
  const int64_t tokens = r.tokens();
  const std::string rule(60, '='), thin(60, '-');
  const bool decode = report.position > 0;
  std::string out = rule + "\n";
  if (decode) {
    out += strf("TOP %d EXPERT TOKEN DISTRIBUTION (%s token)\n", k, title_case(ordinal(report.position)).c_str());
    out += rule + "\n";
    out += strf("Total tokens: %lld\n", (long long)tokens);
  } else {
    if (report.seq_len <= 0) throw UserError("trace stats: the prefill report needs the sequence length");
    out += strf("TOP %d EXPERT TOKEN DISTRIBUTION (Layer %lld - ALL SEQUENCES)\n", k, (long long)report.layer);
    out += rule + "\n";
    out += strf("Total tokens: %lld\nTotal sequences: %lld\nSequence length: %lld\n", (long long)tokens,
                (long long)(tokens / report.seq_len), (long long)report.seq_len);
  }
  out += strf("Expected total (tokens \u00d7 %d): %lld\n", k, (long long)(tokens * k));
  out += rule + "\n";
  out += strf("%-12s %-15s %-10s\n", "Expert ID", "Token Count", "Percentage");
  out += thin + "\n";
  for (int64_t e : by_count(counts))
    out += strf("Expert %-5lld %-15lld %6.2f%%\n", (long long)e, (long long)counts[e], percentage(counts[e], tokens));
  out += thin + "\n";

  // The producer's gating estimate: the share of active experts a PCIe link can keep on the
  // GPU beside the memory devices (BW_PCIe 32, BW_MD 512 Gbps, alpha 1), rounded half to even.
  int64_t active = 0;
  for (int64_t c : counts) active += c > 0;
  const int64_t on_gpu = static_cast<int64_t>(std::nearbyint(32.0 / (512 + 32) * static_cast<double>(active)));
  if (!decode) return out + strf("\nGATING MECHANISM OUTPUT\nExpert_Activ: %lld\nH (Gating Output): %lld\n", (long long)active, (long long)on_gpu);
  out += strf("Total assignments: %lld\n\n", (long long)std::accumulate(counts.begin(), counts.end(), int64_t{0}));
  out += rule + "\nGATING MECHANISM OUTPUT\n" + rule + "\n";
  out += strf("Expert_Activ (experts with \u22651 token): %lld\n\n", (long long)active);
  out += "Bandwidth Parameters:\n  BW_PCIe: 32 Gbps\n  BW_MD:   512 Gbps\n  Alpha (\u03b1): 1.0\n\n";
  out += strf("Calculated Values:\n  Expert_GPU: %lld\n  Expert_MD:  %lld\n  H (Gating Output): %lld\n\n", (long long)on_gpu,
              (long long)(active - on_gpu), (long long)on_gpu);
  out += "Formulas Used:\n  Expert_GPU = (BW_PCIe / (BW_MD + BW_PCIe)) \u00d7 Expert_Activ\n";
  out += strf("  Expert_GPU = (32 / (512 + 32)) \u00d7 %lld\n", (long long)active);
  out += strf("  Expert_MD = Expert_Activ - Expert_GPU\n  H = \u03b1 \u00d7 Expert_GPU = 1.0 \u00d7 %lld\n", (long long)on_gpu);
  return out;
}

void write_neupims_with_stats(const std::string& base, const TraceRecord& record, int64_t experts, const StatsReport& report,
                              bool true_layer_id) {
  write_file_atomic(base + ".csv", neupims_csv(record, experts, true_layer_id));
  const TraceRecord ranked = as_written(record);
  for (int k : stats_ks(record.k)) {
    write_file_atomic(base + strf("_top%d_stats.csv", k), topk_stats_csv(ranked, k, experts));
    write_file_atomic(base + strf("_top%d_stats.txt", k), topk_stats_txt(ranked, k, experts, report));
  }
}

}  // namespace moelab
