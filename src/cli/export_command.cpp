#include <chrono>
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "cli/options.h"
#include "config/run_config.h"
#include "export/onnx_export.h"
#include "train/run.h"
#include "util/files.h"

namespace moelab::cli {

int export_command(int argc, char** argv) {
  cxxopts::Options options("moelab export", "Export a run's trained model (its latest checkpoint) to a standard format.");
  options.add_options()("run", "run directory (required)", cxxopts::value<std::string>())(
      "format", "onnx", cxxopts::value<std::string>()->default_value("onnx"))(
      "out", "file to write (required)", cxxopts::value<std::string>())(
      "external-data", "weights in OUT.data beside the graph (ONNX external data)")(
      "dtype", "the weights' storage: float32 | float16 | bfloat16 (computation stays float32)",
      cxxopts::value<std::string>()->default_value("float32"));
  auto args = parse_options(options, argc, argv);
  const std::string run_dir = required<std::string>(args, "run", "moelab export");
  const std::string out = required<std::string>(args, "out", "moelab export");
  if (args["format"].as<std::string>() != "onnx")
    throw UserError("moelab export: --format must be onnx, got '" + printable(args["format"].as<std::string>()) + "'");
  if (!onnx_export_available())
    throw UserError("moelab export: this build has no ONNX support (install Debian's libonnx-dev and build again)");
  const std::filesystem::path folder = std::filesystem::path(out).parent_path();
  if (!folder.empty() && !std::filesystem::is_directory(folder))
    throw UserError(out + ": cannot be written (no folder " + folder.string() + ")");
  const auto start = std::chrono::steady_clock::now();
  LoadedRun run = load_run(run_dir, "cpu");
  if (run.model->base_frozen())
    throw UserError(run_dir + ": a fine-tuned run with " + run.config.finetune.method +
                    " adapters; the ONNX graph has no adapters yet (a run fine-tuned with method full exports)");
  OnnxExportOptions o;
  o.out = out;
  o.external_data = args.count("external-data") > 0;
  o.weight_dtype = args["dtype"].as<std::string>();
  if (o.weight_dtype != "float32" && o.weight_dtype != "float16" && o.weight_dtype != "bfloat16")
    throw UserError("moelab export: --dtype must be float32, float16 or bfloat16, got '" + printable(o.weight_dtype) + "'");
  o.doc = "moelab TinyMoE, step " + std::to_string(run.step) + ", dropless routing; config: " + run_config_to_json(run.config).dump();
  export_onnx(*run.model, run.config, o);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << out << ": " << file_size(out) << " bytes" << (o.external_data ? " (+ " + std::to_string(file_size(out + ".data")) + " in " + out + ".data)" : "")
            << ", exported in " << seconds << " s\n";
  return 0;
}

}  // namespace moelab::cli
