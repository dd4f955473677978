#pragma once
// Expert co-activation: counts of expert pairs chosen by the same token (E x E, symmetric,
// zero diagonal), as the seed's --coact-csv writes it (header-less CSV).
#include <cstdint>
#include <string>
#include <vector>

#include "trace/trace_record.h"

namespace moelab {

class CoactivationMatrix {
 public:
  explicit CoactivationMatrix(int64_t experts) : experts_(experts), counts_(experts * experts, 0) {}
  void add(const TraceRecord& record);  // UserError if an id is >= experts
  int64_t at(int64_t a, int64_t b) const { return counts_[a * experts_ + b]; }
  int64_t experts() const { return experts_; }
  std::string to_csv() const;

 private:
  int64_t experts_;
  std::vector<int64_t> counts_;
};

}  // namespace moelab
