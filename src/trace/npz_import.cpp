#include "trace/npz_import.h"

#include <zip.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "util/error.h"
#include "util/log.h"
#include "util/strings.h"

namespace moelab {
namespace {

// Parses a .npy byte string: magic, version, little-endian header length, a Python dict
// literal {'descr': ..., 'fortran_order': ..., 'shape': (...)}, then the raw data.
NpyArray parse_npy(const std::string& bytes, const std::string& where) {
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) throw UserError(where + ": not a .npy array");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0, offset = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    offset = 10;
  } else {
    if (bytes.size() < 12) throw UserError(where + ": truncated .npy header");
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    offset = 12;
  }
  if (offset + header_len > bytes.size()) throw UserError(where + ": truncated .npy header");
  const std::string header = bytes.substr(offset, header_len);
  auto field = [&](const std::string& key) {
    size_t k = header.find("'" + key + "'");
    if (k == std::string::npos) throw UserError(where + ": .npy header lacks '" + key + "'");
    size_t colon = header.find(':', k);
    size_t start = header.find_first_not_of(' ', colon + 1);
    return header.substr(start);
  };
  NpyArray a;
  std::string descr = field("descr");
  if (descr.empty() || descr[0] != '\'') throw UserError(where + ": unsupported .npy descr");
  a.dtype = descr.substr(1, descr.find('\'', 1) - 1);
  if (field("fortran_order").rfind("True", 0) == 0) throw UserError(where + ": Fortran-ordered arrays are not supported");
  std::string shape = field("shape");
  shape = shape.substr(1, shape.find(')') - 1);
  for (const std::string& dim : split(shape, ','))
    if (dim.find_first_not_of(' ') != std::string::npos) a.shape.push_back(std::stoll(dim));
  int64_t count = 1;
  for (int64_t d : a.shape) count *= d;
  const char* data = bytes.data() + offset + header_len;
  const size_t available = bytes.size() - offset - header_len;
  const char kind = a.dtype.size() >= 2 ? a.dtype[1] : '?';
  if (a.dtype == "|O") throw UserError(where + ": a pickled object array; re-save it as an integer array (numpy.asarray(x, dtype=int))");
  if ((kind == 'i' || kind == 'u') && a.dtype[0] != '>') {
    const int width = std::stoi(a.dtype.substr(2));
    if (available < static_cast<size_t>(count * width)) throw UserError(where + ": the array data is truncated");
    a.values.resize(count);
    for (int64_t i = 0; i < count; ++i) {
      uint64_t raw = 0;
      std::memcpy(&raw, data + i * width, width);
      if (kind == 'i' && width < 8 && (raw >> (8 * width - 1)) & 1) raw |= ~uint64_t{0} << (8 * width);  // sign-extend
      a.values[i] = static_cast<int64_t>(raw);
    }
  } else if (kind == 'U' && a.dtype[0] != '>') {  // UTF-32 little endian, fixed width
    const int64_t width = std::stoll(a.dtype.substr(2));
    for (int64_t i = 0; i < count * width && static_cast<size_t>(4 * i + 4) <= available; ++i) {
      uint32_t cp = 0;
      std::memcpy(&cp, data + 4 * i, 4);
      if (cp) a.text += static_cast<char>(cp < 128 ? cp : '?');
    }
  } else if (kind == 'S') {
    a.text.assign(data, std::min(available, static_cast<size_t>(count * std::stoll(a.dtype.substr(2)))));
    a.text.erase(std::find(a.text.begin(), a.text.end(), '\0'), a.text.end());
  } else {
    throw UserError(where + ": unsupported dtype '" + a.dtype + "' (expected integers or strings)");
  }
  return a;
}

}  // namespace

std::vector<std::pair<std::string, NpyArray>> read_npz(const std::string& path) {
  int error = 0;
  zip_t* archive = zip_open(path.c_str(), ZIP_RDONLY, &error);
  if (!archive) {
    zip_error_t ze;
    zip_error_init_with_code(&ze, error);
    std::string why = zip_error_strerror(&ze);
    zip_error_fini(&ze);
    throw UserError(path + ": not a readable .npz (zip) file: " + why);
  }
  std::vector<std::pair<std::string, NpyArray>> arrays;
  try {
    const zip_int64_t entries = zip_get_num_entries(archive, 0);
    for (zip_int64_t i = 0; i < entries; ++i) {
      zip_stat_t st;
      if (zip_stat_index(archive, i, 0, &st) != 0) continue;
      std::string name = st.name;
      zip_file_t* file = zip_fopen_index(archive, i, 0);
      if (!file) throw UserError(path + ": cannot read entry " + name);
      std::string bytes(st.size, '\0');
      zip_int64_t got = zip_fread(file, bytes.data(), st.size);
      zip_fclose(file);
      if (got != static_cast<zip_int64_t>(st.size)) throw UserError(path + ": entry " + name + " is truncated");
      if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name.resize(name.size() - 4);
      arrays.emplace_back(name, parse_npy(bytes, path + ": " + name));
    }
  } catch (...) {
    zip_close(archive);
    throw;
  }
  zip_close(archive);
  return arrays;
}

int64_t import_npz_folder(const std::string& folder, const NpzImportOptions& options,
                          const std::function<void(const TraceRecord&)>& emit) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(folder)) throw UserError(folder + ": not a folder of .npz files");
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(folder))
    if (entry.path().extension() == ".npz") files.push_back(entry.path().filename().string());
  std::sort(files.begin(), files.end());
  if (options.max_requests > 0 && static_cast<int64_t>(files.size()) > options.max_requests) files.resize(options.max_requests);
  if (files.empty()) throw UserError(folder + ": no .npz files");
  int64_t imported = 0;
  for (size_t index = 0; index < files.size(); ++index) {
    const std::string path = folder + "/" + files[index];
    const NpyArray* routed = nullptr;
    int64_t prompt_len = 0, output_len = 0;
    std::string request_id = std::to_string(index);
    int64_t batch_id = static_cast<int64_t>(index);
    auto arrays = read_npz(path);
    for (const auto& [name, a] : arrays) {
      if (name == "routed_experts") routed = &a;
      if (name == "prompt_token_ids") prompt_len = a.shape.empty() ? 0 : a.shape[0];
      if (name == "output_token_ids") output_len = a.shape.empty() ? 0 : a.shape[0];
      if (name == "request_id") {
        if (!a.values.empty()) {
          batch_id = a.values[0];
          request_id = std::to_string(batch_id);
        } else if (!a.text.empty()) {
          request_id = a.text;
        }
      }
    }
    if (!routed || routed->shape.size() != 3 || routed->values.empty()) {
      log::warn(path + ": skipped: routed_experts must be an integer array [seq, layers, k]");
      continue;
    }
    const int64_t seq = routed->shape[0], layers = routed->shape[1], k = routed->shape[2];
    if (prompt_len + output_len == 0) prompt_len = seq;
    int64_t start = 0, end = seq;
    if (options.token_slice == "prompt") end = std::min(prompt_len, seq);
    if (options.token_slice == "output") {
      start = std::min(prompt_len, seq);
      end = std::min(prompt_len + output_len, seq);
    }
    for (int64_t layer = 0; layer < layers; ++layer) {
      if (!options.layers.empty() && !options.layers.count(layer)) continue;
      TraceRecord r;
      r.layer = layer;
      r.batch_id = batch_id;
      r.k = static_cast<int>(k);
      r.request_id = request_id;
      r.source_file = files[index];
      for (int64_t t = start; t < end; ++t)
        for (int64_t j = 0; j < k; ++j) {
          int64_t e = routed->values[(t * layers + layer) * k + j];
          if (e < 0) throw UserError(strf("%s: routed_experts[%lld, %lld, %lld] = %lld is negative", path.c_str(), (long long)t,
                                          (long long)layer, (long long)j, (long long)e));
          r.experts.push_back(static_cast<int32_t>(e));
        }
      emit(r);
    }
    ++imported;
  }
  return imported;
}

}  // namespace moelab
