#pragma once
// Corpus text. The canonical form is TinyStories': stories separated by a line
// "<|endoftext|>". Plain text without that marker is one document.
#include <string>
#include <vector>

namespace moelab {

inline constexpr const char* kEndOfText = "<|endoftext|>";

// Splits on separator lines; drops the newline on either side of a separator and empty stories.
std::vector<std::string> split_stories(const std::string& text);
std::string join_stories(const std::vector<std::string>& stories);

// Reads a corpus file; a missing, empty or non-UTF-8 file is a UserError naming the file
// (and, for bad UTF-8, the line).
std::string read_corpus_file(const std::string& path);

// Number of Unicode code points (the text is known to be valid UTF-8).
size_t count_code_points(const std::string& text);

// Splits text into (head, tail) with the tail holding `tail_fraction` of the code points:
// the seed's "last 10% of the text" validation split.
std::pair<std::string, std::string> split_tail(const std::string& text, double tail_fraction);

// Validates UTF-8; returns the 1-based line of the first bad byte or 0 if valid.
size_t first_invalid_utf8_line(const std::string& text);

// Decodes one code point at text[pos], advancing pos.
char32_t next_code_point(const std::string& text, size_t& pos);
void append_utf8(std::string& out, char32_t cp);

}  // namespace moelab
