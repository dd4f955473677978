#include "train/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <vector>

#include <torch/torch.h>

#include "util/error.h"
#include "util/files.h"
#include "util/strings.h"

namespace moelab {
namespace {
constexpr const char* kFormat = "moelab-checkpoint-v1";

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// A checksum of the whole file rides in the zip archive's comment (zip readers, libtorch's
// included, skip it): libtorch's reader trusts an archive's contents, and a damaged record can
// crash it, so load_checkpoint verifies the bytes before libtorch sees them. The file ends
// with the end-of-central-directory record (22 bytes, its comment length set) and the comment,
// kChecksumTag and 16 hex digits of FNV-1a over every byte before the comment.
constexpr char kChecksumTag[] = "moelab-fnv1a64:";
constexpr size_t kTagLength = sizeof kChecksumTag - 1;
constexpr size_t kCommentLength = kTagLength + 16;
constexpr size_t kEndRecordLength = 22;

struct Fnv1a {
  uint64_t value = 1469598103934665603ull;
  void add(const char* data, size_t size) {
    for (size_t i = 0; i < size; ++i) {
      value ^= static_cast<unsigned char>(data[i]);
      value *= 1099511628211ull;
    }
  }
};

bool is_end_record(const std::string& record, size_t comment_length) {
  return record.size() == kEndRecordLength && record.compare(0, 4, "PK\x05\x06") == 0 &&
         static_cast<unsigned char>(record[20]) == (comment_length & 0xff) &&
         static_cast<unsigned char>(record[21]) == (comment_length >> 8);
}

// UserError unless `path` ends with a checksum comment that matches its contents; returns it.
std::string verify_checksum(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw UserError(path + ": cannot open for reading (" + std::strerror(errno) + ")");
  const auto size = static_cast<size_t>(in.tellg());
  if (size < kEndRecordLength + kCommentLength) throw UserError(path + ": not a moelab checkpoint (too short)");
  std::string end(kEndRecordLength + kCommentLength, '\0');
  in.seekg(static_cast<std::streamoff>(size - end.size()));
  in.read(&end[0], static_cast<std::streamsize>(end.size()));
  const std::string comment = end.substr(kEndRecordLength);
  char* parsed_end = nullptr;
  const std::string digits = comment.substr(kTagLength);
  const uint64_t stored = std::strtoull(digits.c_str(), &parsed_end, 16);
  if (!is_end_record(end.substr(0, kEndRecordLength), kCommentLength) || comment.compare(0, kTagLength, kChecksumTag) != 0 ||
      parsed_end != digits.c_str() + digits.size() || digits.find_first_not_of("0123456789abcdef") != std::string::npos)
    throw UserError(path + ": not a moelab checkpoint, or a damaged one (no moelab checksum at its end)");
  in.seekg(0);
  Fnv1a hash;
  std::vector<char> buffer(1 << 20);
  for (size_t left = size - kCommentLength; left > 0;) {
    const size_t n = std::min(left, buffer.size());
    if (!in.read(buffer.data(), static_cast<std::streamsize>(n))) throw UserError(path + ": cannot read it to the end");
    hash.add(buffer.data(), n);
    left -= n;
  }
  if (hash.value != stored)
    throw UserError(path + ": damaged: its contents do not match the checksum written with it (a torn or altered file)");
  return digits;
}

// Module::save's nested layout (a child module's tensors in an archive of its own, under the
// child's name) restricted to the selected tensors; false when none was selected.
bool write_selected(const torch::nn::Module& module, const std::string& prefix, const TensorSelection& selection,
                    torch::serialize::OutputArchive& archive) {
  bool any = false;
  for (const auto& item : module.named_parameters(/*recurse=*/false))
    if (selection(prefix + item.key())) {
      archive.write(item.key(), item.value());
      any = true;
    }
  for (const auto& item : module.named_buffers(/*recurse=*/false))
    if (selection(prefix + item.key())) {
      archive.write(item.key(), item.value(), /*is_buffer=*/true);
      any = true;
    }
  for (const auto& child : module.named_children()) {
    torch::serialize::OutputArchive child_archive(archive.compilation_unit());
    if (write_selected(*child.value(), prefix + child.key() + ".", selection, child_archive)) {
      archive.write(child.key(), child_archive);
      any = true;
    }
  }
  return any;
}

// The reverse of write_selected: every selected tensor must be in the archive.
void read_selected(torch::nn::Module& module, const std::string& prefix, const TensorSelection& selection,
                   torch::serialize::InputArchive& archive, const std::string& path) {
  torch::NoGradGuard no_grad;
  auto read = [&](const std::string& key, torch::Tensor& tensor, bool buffer) {
    torch::Tensor stored;
    if (!archive.try_read(key, stored, buffer))
      throw UserError(path + ": holds no tensor '" + prefix + key + "' (the checkpoint of another fine-tuning method?)");
    if (stored.sizes() != tensor.sizes() || stored.scalar_type() != tensor.scalar_type())
      throw UserError(strf("%s: a checkpoint of another model: tensor '%s' is %s %s there, this run's config.json makes it "
                           "%s %s", path.c_str(), (prefix + key).c_str(), c10::toString(stored.scalar_type()),
                           c10::str(stored.sizes()).c_str(), c10::toString(tensor.scalar_type()), c10::str(tensor.sizes()).c_str()));
    tensor.copy_(stored);
  };
  for (auto& item : module.named_parameters(/*recurse=*/false))
    if (selection(prefix + item.key())) read(item.key(), item.value(), false);
  for (auto& item : module.named_buffers(/*recurse=*/false))
    if (selection(prefix + item.key())) read(item.key(), item.value(), true);
  for (const auto& child : module.named_children()) {
    bool wanted = false;
    for (const auto& item : child.value()->named_parameters()) wanted = wanted || selection(prefix + child.key() + "." + item.key());
    for (const auto& item : child.value()->named_buffers()) wanted = wanted || selection(prefix + child.key() + "." + item.key());
    if (!wanted) continue;
    torch::serialize::InputArchive child_archive;
    if (!archive.try_read(child.key(), child_archive))
      throw UserError(path + ": holds no module '" + prefix + child.key() + "' (the checkpoint of another fine-tuning method?)");
    read_selected(*child.value(), prefix + child.key() + ".", selection, child_archive, path);
  }
}
}  // namespace

std::string checkpoint_path(const std::string& run_dir) { return run_dir + "/checkpoints/latest.pt"; }

std::string expert_shard_checkpoint_path(const std::string& run_dir, int shard, int shards) {
  return run_dir + "/checkpoints/latest.ep" + std::to_string(shard) + "of" + std::to_string(shards) + ".pt";
}

void save_checkpoint(const std::string& path, TinyMoE& model, torch::optim::Optimizer& optimizer,
                     const TrainingState& state, const TensorSelection& selection) {
  {
    // A checkpoint is the last good state: never one with non-finite weights (one read-back).
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> finite;
    const auto parameters = model.named_parameters();
    for (const auto& item : parameters) finite.push_back(torch::isfinite(item.value()).all());
    torch::Tensor all = torch::stack(finite).cpu();
    for (size_t i = 0; i < parameters.size(); ++i)
      if (!all[static_cast<int64_t>(i)].item<bool>())
        throw UserError(path + ": not written: parameter '" + parameters[i].key() +
                        "' holds non-finite values; the previous checkpoint is kept");
  }
  torch::serialize::OutputArchive archive;
  archive.write("format", c10::IValue(std::string(kFormat)));
  archive.write("step", c10::IValue(state.step));
  archive.write("tokens_seen", c10::IValue(state.tokens_seen));
  archive.write("train_seconds", c10::IValue(state.train_seconds));
  archive.write("sampler_state", c10::IValue(state.sampler_state));
  archive.write("world_size", c10::IValue(state.world_size));
  archive.write("interval_loss_sum", c10::IValue(state.interval_loss_sum));
  archive.write("interval_seconds", c10::IValue(state.interval_seconds));
  archive.write("interval_steps", c10::IValue(state.interval_steps));
  if (!state.base_checksum.empty()) archive.write("base_checksum", c10::IValue(state.base_checksum));
  archive.write("rng_cpu", at::detail::getDefaultCPUGenerator().get_state());
  // Dropout on a GPU draws from the device's generator: a resumed run continues its stream.
  const torch::Device device = model.parameters().front().device();
  if (device.is_cuda()) archive.write("rng_cuda", at::globalContext().defaultGenerator(device).get_state());
  torch::serialize::OutputArchive model_archive, optimizer_archive;
  if (selection) write_selected(model, "", selection, model_archive);
  else model.save(model_archive);
  optimizer.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  // Through our own writer: libtorch's file writer aborts the process when a write fails (it
  // throws from a destructor); this one reports the full disk and keeps the last checkpoint.
  // The archive's last 22 bytes (its end record) are held back to set their comment length.
  AtomicFileWriter file(path);
  Fnv1a hash;
  std::string tail;
  archive.save_to([&](const void* data, size_t size) {
    tail.append(static_cast<const char*>(data), size);
    if (tail.size() > kEndRecordLength) {
      const size_t ready = tail.size() - kEndRecordLength;
      hash.add(tail.data(), ready);
      file.write(tail.data(), ready);
      tail.erase(0, ready);
    }
    return size;
  });
  if (!is_end_record(tail, 0)) throw std::runtime_error("save_checkpoint: libtorch's archive does not end with a zip end record");
  tail[20] = static_cast<char>(kCommentLength & 0xff);
  tail[21] = static_cast<char>(kCommentLength >> 8);
  hash.add(tail.data(), tail.size());
  file.write(tail.data(), tail.size());
  const std::string comment = kChecksumTag + strf("%016llx", static_cast<unsigned long long>(hash.value));
  file.write(comment.data(), comment.size());
  file.commit();
}

TrainingState load_checkpoint(const std::string& path, TinyMoE& model, torch::optim::Optimizer* optimizer,
                              const torch::Device& device, const TensorSelection& selection) {
  if (!file_exists(path)) throw UserError(path + ": no checkpoint there");
  TrainingState state;
  state.file_checksum = verify_checksum(path);
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path, device);
    c10::IValue value;
    if (!archive.try_read("format", value) || !value.isString() || value.toStringRef() != kFormat)
      throw UserError(path + ": not a moelab checkpoint (no '" + std::string(kFormat) + "' format tag)");
    archive.read("step", value);
    state.step = value.toInt();
    archive.read("tokens_seen", value);
    state.tokens_seen = value.toInt();
    archive.read("train_seconds", value);
    state.train_seconds = value.toDouble();
    archive.read("sampler_state", value);
    state.sampler_state = value.toStringRef();
    if (archive.try_read("world_size", value)) state.world_size = value.toInt();
    if (archive.try_read("interval_loss_sum", value)) state.interval_loss_sum = value.toDouble();
    if (archive.try_read("interval_seconds", value)) state.interval_seconds = value.toDouble();
    if (archive.try_read("interval_steps", value)) state.interval_steps = value.toInt();
    if (archive.try_read("base_checksum", value)) state.base_checksum = value.toStringRef();
    torch::serialize::InputArchive model_archive;
    archive.read("model", model_archive);
    if (selection) read_selected(model, "", selection, model_archive, path);
    // Module::load takes each stored tensor whatever its shape: compare afterwards, every
    // parameter and buffer against the shape and type this run's config gives it.
    std::vector<std::pair<std::string, torch::Tensor>> expected;
    for (const auto& item : model.named_parameters()) expected.emplace_back(item.key(), torch::empty_like(item.value(), at::kMeta));
    for (const auto& item : model.named_buffers()) expected.emplace_back(item.key(), torch::empty_like(item.value(), at::kMeta));
    if (!selection) model.load(model_archive);
    auto loaded = model.named_parameters();
    auto buffers = model.named_buffers();
    for (const auto& [name, want] : expected) {
      if (selection && !selection(name)) continue;
      const torch::Tensor* got = loaded.find(name);
      if (!got) got = buffers.find(name);
      if (!got || got->sizes() != want.sizes() || got->scalar_type() != want.scalar_type())
        throw UserError(strf("%s: a checkpoint of another model: tensor '%s' is %s %s there, this run's config.json makes it "
                             "%s %s", path.c_str(), name.c_str(), got ? c10::toString(got->scalar_type()) : "absent",
                             got ? c10::str(got->sizes()).c_str() : "", c10::toString(want.scalar_type()),
                             c10::str(want.sizes()).c_str()));
    }
    if (optimizer) {
      torch::serialize::InputArchive optimizer_archive;
      archive.read("optimizer", optimizer_archive);
      optimizer->load(optimizer_archive);
      torch::Tensor rng;
      archive.read("rng_cpu", rng);
      at::Generator generator = at::detail::getDefaultCPUGenerator();
      generator.set_state(rng.cpu());
      torch::Tensor rng_cuda;
      if (device.is_cuda() && archive.try_read("rng_cuda", rng_cuda))
        at::Generator(at::globalContext().defaultGenerator(device)).set_state(rng_cuda.cpu());
    }
  } catch (const UserError&) {
    throw;
  } catch (const c10::Error& e) {
    throw UserError(path + ": not a readable moelab checkpoint for this run's model (" + first_line(e.what_without_backtrace()) + ")");
  } catch (const std::exception& e) {  // libtorch's archive readers also throw std::out_of_range and kin
    throw UserError(path + ": not a readable moelab checkpoint for this run's model (" + first_line(e.what()) + ")");
  }
  return state;
}

}  // namespace moelab
