#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace moelab {

std::string read_text_file(const std::string& path);  // UserError naming the path if unreadable
// Writes through a temporary file in the same folder, fsyncs it, then renames it over `path`:
// a crash at any moment leaves either the old file or the new one, never a torn one.
void write_file_atomic(const std::string& path, const std::string& content);

// Streams bytes into a temporary file beside `path`; commit() moves it into place with the
// same guarantees. A failed write (a full disk, a file-size limit) is remembered rather than
// thrown mid-stream, so that a producer that cannot stop cleanly (libtorch's archive writer)
// finishes; commit() then removes the temporary file and throws one UserError naming `path`
// and the system's reason. Destroyed without commit(), it removes its temporary file.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(const std::string& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  void write(const void* data, size_t size);
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  int error_ = 0;  // errno of the first failed write
};
void ensure_directory(const std::string& path);
bool file_exists(const std::string& path);
int64_t file_size(const std::string& path);  // -1 when it cannot be read (a directory, missing)
std::string executable_directory();  // folder of the running binary (to find moelab-bpe)
std::string temp_path_beside(const std::string& path);
// Removes the temporary files (temp_path_beside's "NAME.tmp.PID.N") in `dir` whose writing
// process is gone: what a crash left behind. Returns how many were removed.
int remove_stale_temp_files(const std::string& dir);

}  // namespace moelab
