#include "data/corpus.h"

#include <cstring>

#include "util/error.h"
#include "util/files.h"
#include "util/strings.h"

namespace moelab {

std::vector<std::string> split_stories(const std::string& text) {
  std::vector<std::string> stories;
  const std::string marker = kEndOfText;
  size_t start = 0;
  auto push = [&](size_t begin, size_t end) {
    while (begin < end && (text[begin] == '\n' || text[begin] == '\r')) ++begin;
    while (end > begin && (text[end - 1] == '\n' || text[end - 1] == '\r')) --end;
    if (end > begin) stories.emplace_back(text.substr(begin, end - begin));
  };
  while (true) {
    size_t pos = text.find(marker, start);
    if (pos == std::string::npos) {
      push(start, text.size());
      break;
    }
    push(start, pos);
    start = pos + marker.size();
  }
  return stories;
}

std::string join_stories(const std::vector<std::string>& stories) {
  std::string out;
  for (const std::string& s : stories) {
    out += s;
    out += "\n";
    out += kEndOfText;
    out += "\n";
  }
  return out;
}

size_t first_invalid_utf8_line(const std::string& text) {
  size_t line = 1;
  for (size_t i = 0; i < text.size();) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\n') ++line;
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > text.size()) return line;
    for (size_t j = 1; j < len; ++j)
      if ((static_cast<unsigned char>(text[i + j]) & 0xC0) != 0x80) return line;
    i += len;
  }
  return 0;
}

char32_t next_code_point(const std::string& text, size_t& pos) {
  unsigned char c = static_cast<unsigned char>(text[pos]);
  if (c < 0x80) {
    ++pos;
    return c;
  }
  int len = (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : 4;
  char32_t cp = c & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
  for (int j = 1; j < len; ++j) cp = (cp << 6) | (static_cast<unsigned char>(text[pos + j]) & 0x3F);
  pos += len;
  return cp;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

size_t count_code_points(const std::string& text) {
  size_t n = 0;
  for (unsigned char c : text) n += (c & 0xC0) != 0x80;
  return n;
}

std::pair<std::string, std::string> split_tail(const std::string& text, double tail_fraction) {
  size_t total = count_code_points(text);
  size_t head_points = total - static_cast<size_t>(static_cast<double>(total) * tail_fraction);
  size_t pos = 0, seen = 0;
  while (pos < text.size() && seen < head_points) {
    next_code_point(text, pos);
    ++seen;
  }
  return {text.substr(0, pos), text.substr(pos)};
}

std::string read_corpus_file(const std::string& path) {
  std::string text = read_text_file(path);
  if (text.empty()) throw UserError(path + ": the corpus is empty");
  if (std::memchr(text.data(), '\0', text.size()))
    throw UserError(path + ": not a text corpus (it contains NUL bytes; expected UTF-8 text)");
  if (size_t line = first_invalid_utf8_line(text))
    throw UserError(strf("%s:%zu: not valid UTF-8 (expected UTF-8 text)", path.c_str(), line));
  return text;
}

}  // namespace moelab
