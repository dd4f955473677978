#include "train/metrics_log.h"

#include <sstream>

#include "util/error.h"
#include "util/files.h"

namespace moelab {

MetricsLog::MetricsLog(const std::string& path, int64_t resume_step) {
  if (resume_step >= 0 && file_exists(path)) {
    std::istringstream in(read_text_file(path));
    std::string line, kept;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      auto row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (row.is_discarded()) break;  // a torn last line from a kill
      if (row.value("step", int64_t{0}) > resume_step) continue;
      kept += line + "\n";
    }
    write_file_atomic(path, kept);
  }
  out_.open(path, std::ios::app);
  if (!out_) throw UserError(path + ": cannot open for appending");
}

void MetricsLog::write(const nlohmann::json& row) {
  out_ << row.dump() << "\n";
  out_.flush();
}

}  // namespace moelab
