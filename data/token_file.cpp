#include "data/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "util/error.h"
#include "util/files.h"
#include "util/strings.h"

namespace moelab {
namespace {
constexpr char kMagic[8] = {'M', 'O', 'E', 'L', 'A', 'B', 'T', 'K'};
constexpr size_t kHeaderBytes = 32;
}  // namespace

void write_token_file(const std::string& path, const std::vector<uint32_t>& ids, int64_t vocab_size) {
  uint32_t width = vocab_size <= 65536 ? 2 : 4;
  std::string bytes(kHeaderBytes + ids.size() * width, '\0');
  std::memcpy(bytes.data(), kMagic, 8);
  uint32_t version = 1, vocab = static_cast<uint32_t>(vocab_size);
  uint64_t count = ids.size();
  std::memcpy(bytes.data() + 8, &version, 4);
  std::memcpy(bytes.data() + 12, &width, 4);
  std::memcpy(bytes.data() + 16, &count, 8);
  std::memcpy(bytes.data() + 24, &vocab, 4);
  char* body = bytes.data() + kHeaderBytes;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (width == 2) {
      uint16_t v = static_cast<uint16_t>(ids[i]);
      std::memcpy(body + 2 * i, &v, 2);
    } else {
      std::memcpy(body + 4 * i, &ids[i], 4);
    }
  }
  write_file_atomic(path, bytes);
}

TokenFile::TokenFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw UserError(path + ": cannot open token file (" + std::strerror(errno) + ")");
  struct stat st {};
  ::fstat(fd, &st);
  mapping_bytes_ = static_cast<size_t>(st.st_size);
  if (mapping_bytes_ < kHeaderBytes) {
    ::close(fd);
    throw UserError(path + ": not a moelab token file (shorter than its 32-byte header)");
  }
  mapping_ = ::mmap(nullptr, mapping_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping_ == MAP_FAILED) {
    mapping_ = nullptr;
    throw UserError(path + ": cannot map token file");
  }
  auto* bytes = static_cast<const unsigned char*>(mapping_);
  uint32_t version = 0, vocab = 0;
  uint64_t count = 0;
  std::memcpy(&version, bytes + 8, 4);
  std::memcpy(&bytes_per_id_, bytes + 12, 4);
  std::memcpy(&count, bytes + 16, 8);
  std::memcpy(&vocab, bytes + 24, 4);
  std::string problem;
  if (std::memcmp(bytes, kMagic, 8) != 0) problem = "bad magic (expected MOELABTK)";
  else if (version != 1) problem = strf("version %u (expected 1)", version);
  else if (bytes_per_id_ != 2 && bytes_per_id_ != 4) problem = strf("%u bytes per id (expected 2 or 4)", bytes_per_id_);
  else if (kHeaderBytes + count * bytes_per_id_ != mapping_bytes_)
    problem = strf("header says %llu ids but the file holds %zu bytes", (unsigned long long)count, mapping_bytes_);
  if (!problem.empty()) {
    ::munmap(mapping_, mapping_bytes_);
    mapping_ = nullptr;
    throw UserError(path + ": not a valid token file: " + problem);
  }
  data_ = bytes + kHeaderBytes;
  count_ = static_cast<int64_t>(count);
  vocab_ = vocab;
}

TokenFile::~TokenFile() {
  if (mapping_) ::munmap(mapping_, mapping_bytes_);
}

void TokenFile::copy_window(int64_t offset, int64_t n, int64_t* dst) const {
  for (int64_t i = 0; i < n; ++i) dst[i] = at(offset + i);
}

}  // namespace moelab
