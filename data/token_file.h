#pragma once
// Token ids on disk, written once by data preparation and memory-mapped by training (the
// nanoGPT/llm.c idiom). A 32-byte header guards against reading the wrong file:
//   "MOELABTK" | u32 version = 1 | u32 bytes per id (2 or 4) | u64 count | u32 vocab | u32 0
#include <cstdint>
#include <string>
#include <vector>

namespace moelab {

void write_token_file(const std::string& path, const std::vector<uint32_t>& ids, int64_t vocab_size);

class TokenFile {
 public:
  explicit TokenFile(const std::string& path);  // UserError naming the file if malformed
  ~TokenFile();
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  int64_t size() const { return count_; }
  int64_t vocab_size() const { return vocab_; }
  uint32_t at(int64_t i) const {
    return bytes_per_id_ == 2 ? reinterpret_cast<const uint16_t*>(data_)[i] : reinterpret_cast<const uint32_t*>(data_)[i];
  }
  // Copies ids [offset, offset + n) widened to int64 (what embedding lookups take).
  void copy_window(int64_t offset, int64_t n, int64_t* dst) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_bytes_ = 0;
  const unsigned char* data_ = nullptr;
  int64_t count_ = 0, vocab_ = 0;
  uint32_t bytes_per_id_ = 2;
};

}  // namespace moelab
