#include "trace/coactivation.h"

#include "util/error.h"
#include "util/strings.h"

namespace moelab {

void CoactivationMatrix::add(const TraceRecord& record) {
  const int64_t tokens = record.tokens();
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t* ids = record.experts.data() + t * record.k;
    for (int i = 0; i < record.k; ++i) {
      if (ids[i] >= experts_)
        throw UserError(strf("trace layer %lld batch %lld: expert id %d is beyond the %lld experts configured",
                             (long long)record.layer, (long long)record.batch_id, ids[i], (long long)experts_));
      for (int j = i + 1; j < record.k; ++j) {
        if (ids[j] >= experts_ || ids[i] == ids[j]) continue;
        ++counts_[ids[i] * experts_ + ids[j]];
        ++counts_[ids[j] * experts_ + ids[i]];
      }
    }
  }
}

std::string CoactivationMatrix::to_csv() const {
  std::string out;
  for (int64_t a = 0; a < experts_; ++a) {
    for (int64_t b = 0; b < experts_; ++b) {
      if (b) out += ',';
      out += std::to_string(counts_[a * experts_ + b]);
    }
    out += '\n';
  }
  return out;
}

}  // namespace moelab
