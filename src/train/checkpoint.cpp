#include "train/checkpoint.h"

#include <torch/torch.h>

#include "util/error.h"
#include "util/files.h"
#include "util/strings.h"

namespace moelab {
namespace {
constexpr const char* kFormat = "moelab-checkpoint-v1";

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }
}  // namespace

std::string checkpoint_path(const std::string& run_dir) { return run_dir + "/checkpoints/latest.pt"; }

std::string expert_shard_checkpoint_path(const std::string& run_dir, int shard, int shards) {
  return run_dir + "/checkpoints/latest.ep" + std::to_string(shard) + "of" + std::to_string(shards) + ".pt";
}

void save_checkpoint(const std::string& path, TinyMoE& model, torch::optim::Optimizer& optimizer,
                     const TrainingState& state) {
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
  archive.write("rng_cpu", at::detail::getDefaultCPUGenerator().get_state());
  // Dropout on a GPU draws from the device's generator: a resumed run continues its stream.
  const torch::Device device = model.parameters().front().device();
  if (device.is_cuda()) archive.write("rng_cuda", at::globalContext().defaultGenerator(device).get_state());
  torch::serialize::OutputArchive model_archive, optimizer_archive;
  model.save(model_archive);
  optimizer.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  // Through our own writer: libtorch's file writer aborts the process when a write fails (it
  // throws from a destructor); this one reports the full disk and keeps the last checkpoint.
  AtomicFileWriter file(path);
  archive.save_to([&](const void* data, size_t size) {
    file.write(data, size);
    return size;
  });
  file.commit();
}

TrainingState load_checkpoint(const std::string& path, TinyMoE& model, torch::optim::Optimizer* optimizer,
                              const torch::Device& device) {
  if (!file_exists(path)) throw UserError(path + ": no checkpoint there");
  TrainingState state;
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
    torch::serialize::InputArchive model_archive;
    archive.read("model", model_archive);
    // Module::load takes each stored tensor whatever its shape: compare afterwards, every
    // parameter and buffer against the shape and type this run's config gives it.
    std::vector<std::pair<std::string, torch::Tensor>> expected;
    for (const auto& item : model.named_parameters()) expected.emplace_back(item.key(), torch::empty_like(item.value(), at::kMeta));
    for (const auto& item : model.named_buffers()) expected.emplace_back(item.key(), torch::empty_like(item.value(), at::kMeta));
    model.load(model_archive);
    auto loaded = model.named_parameters();
    auto buffers = model.named_buffers();
    for (const auto& [name, want] : expected) {
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
