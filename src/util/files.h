#pragma once
#include <string>

namespace moelab {

std::string read_text_file(const std::string& path);  // UserError naming the path if unreadable
// Writes through a temporary file in the same folder, fsyncs it, then renames it over `path`:
// a crash at any moment leaves either the old file or the new one, never a torn one.
void write_file_atomic(const std::string& path, const std::string& content);
// Moves an already written temporary file into place with the same guarantees.
void commit_file(const std::string& tmp_path, const std::string& path);
void ensure_directory(const std::string& path);
bool file_exists(const std::string& path);
std::string executable_directory();  // folder of the running binary (to find moelab-bpe)
std::string temp_path_beside(const std::string& path);

}  // namespace moelab
