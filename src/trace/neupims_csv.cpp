#include "trace/neupims_csv.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <set>

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

// Per token, the indices of its entries ordered by descending score (ties: earlier entry).
std::vector<int> ranked_entries(const TraceRecord& r, int64_t t) {
  std::vector<int> order(r.k);
  std::iota(order.begin(), order.end(), 0);
  if (!r.weights.empty())
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return r.weights[t * r.k + a] > r.weights[t * r.k + b]; });
  return order;
}

std::vector<int64_t> topk_counts(const TraceRecord& r, int k, int64_t experts) {
  std::vector<int64_t> counts(experts, 0);
  for (int64_t t = 0; t < r.tokens(); ++t) {
    std::vector<int> order = ranked_entries(r, t);
    for (int j = 0; j < k && j < r.k; ++j) {
      int32_t e = r.experts[t * r.k + order[j]];
      if (e < experts) ++counts[e];
    }
  }
  return counts;
}

std::vector<int64_t> by_count(const std::vector<int64_t>& counts) {
  std::vector<int64_t> order(counts.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return counts[a] > counts[b]; });
  return order;
}

}  // namespace

std::string neupims_csv(const TraceRecord& r, int64_t experts) {
  std::string out = header(experts) + "\n";
  std::vector<double> row(experts);
  for (int64_t t = 0; t < r.tokens(); ++t) {
    std::fill(row.begin(), row.end(), 0.0);
    for (int j = 0; j < r.k; ++j) {
      int32_t e = r.experts[t * r.k + j];
      if (e >= experts) throw UserError(strf("trace: expert id %d is beyond the %lld experts of the CSV", e, (long long)experts));
      row[e] = r.weights.empty() ? 1.0 / r.k : r.weights[t * r.k + j];
    }
    out += std::to_string(r.layer) + "," + std::to_string(t);
    for (double v : row) out += strf(",%.6f", v);
    out += "\n";
  }
  return out;
}

int64_t neupims_csv_experts(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw UserError(path + ": cannot open");
  std::string line;
  std::getline(in, line);
  std::vector<std::string> cols = split(line, ',');
  if (cols.size() < 3 || cols[0] != "layer_id" || cols[1] != "token_id")
    throw UserError(path + ":1: field 'header': expected layer_id,token_id,expert_0,...");
  return static_cast<int64_t>(cols.size()) - 2;
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
  std::vector<std::vector<std::pair<double, int32_t>>> rows;
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
    std::vector<std::pair<double, int32_t>> scores;
    for (int64_t e = 0; e < experts; ++e) {
      const std::string& f = fields[e + 2];
      double v = std::strtod(f.c_str(), &end);
      if (*end || f.empty() || v < 0)
        throw UserError(strf("%s:%lld: field 'expert_%lld': '%s' is not a non-negative number", path.c_str(), (long long)line_no,
                             (long long)e, f.c_str()));
      if (v > 0) scores.emplace_back(v, static_cast<int32_t>(e));
    }
    most = std::max(most, static_cast<int>(scores.size()));
    rows.push_back(std::move(scores));
  }
  if (rows.empty()) throw UserError(path + ": no token rows");
  TraceRecord r;
  r.k = k > 0 ? k : most;
  if (r.k == 0) throw UserError(path + ": every score is zero: no routing to read");
  r.layer = layer >= 0 ? layer : file_layer;
  r.source_file = path;
  for (size_t t = 0; t < rows.size(); ++t) {
    auto& scores = rows[t];
    if (static_cast<int>(scores.size()) < r.k)
      throw UserError(strf("%s:%zu: field 'row': %zu routed experts, fewer than k = %d", path.c_str(), t + 2, scores.size(), r.k));
    std::stable_sort(scores.begin(), scores.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    for (int j = 0; j < r.k; ++j) {
      r.experts.push_back(scores[j].second);
      r.weights.push_back(static_cast<float>(scores[j].first));
    }
  }
  return r;
}

std::string topk_stats_csv(const TraceRecord& r, int k, int64_t experts) {
  std::vector<int64_t> counts = topk_counts(r, k, experts);
  const double total = static_cast<double>(std::accumulate(counts.begin(), counts.end(), int64_t{0}));
  std::string out = "Expert_ID,Token_Count,Percentage,Rank\n";
  int64_t rank = 0;
  for (int64_t e : by_count(counts))
    out += strf("%lld,%lld,%.2f,%lld\n", (long long)e, (long long)counts[e], total > 0 ? 100.0 * counts[e] / total : 0.0,
                (long long)++rank);
  return out;
}

std::string topk_stats_txt(const TraceRecord& r, int k, int64_t experts, const std::string& title) {
  std::vector<int64_t> counts = topk_counts(r, k, experts);
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  int64_t used = 0;
  for (int64_t c : counts) used += c > 0;
  std::string out = strf("Top-%d expert statistics: %s\nTokens: %lld\nAssignments: %lld\nExperts used: %lld of %lld\n\n", k,
                         title.c_str(), (long long)r.tokens(), (long long)total, (long long)used, (long long)experts);
  out += "Rank  Expert  Tokens  Percentage\n";
  int64_t rank = 0;
  for (int64_t e : by_count(counts))
    out += strf("%4lld  %6lld  %6lld  %9.2f%%\n", (long long)++rank, (long long)e, (long long)counts[e],
                total > 0 ? 100.0 * counts[e] / total : 0.0);
  return out;
}

void write_neupims_with_stats(const std::string& base, const TraceRecord& r, int64_t experts) {
  write_file_atomic(base + ".csv", neupims_csv(r, experts));
  std::set<int> ks = {1, std::min(2, r.k), r.k};
  for (int k : ks) {
    write_file_atomic(base + strf("_top%d_stats.csv", k), topk_stats_csv(r, k, experts));
    write_file_atomic(base + strf("_top%d_stats.txt", k), topk_stats_txt(r, k, experts, base));
  }
}

}  // namespace moelab
