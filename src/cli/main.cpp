// moelab: train small Mixture-of-Experts language models and study how they route.
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <new>
#include <string>

#include "cli/commands.h"
#include "dist/communicator.h"
#include "util/blas_kernels.h"
#include "util/error.h"
#include "util/log.h"
#include "util/strings.h"

namespace {

const char* kUsage = R"(usage: moelab <command> [options]     (moelab <command> --help for its options)

commands:
  train      train a model from a JSON(C) config          moelab train --config FILE [--set KEY=VALUE ...]
  eval       score a run's checkpoint on its validation text or a text file
  generate   sample stories from a run's checkpoint
  sweep      run a grid of training runs (resumable) with a summary CSV and report
  trace      record a run's routing (jsonl|neupims|coact|freq); trace synth|import-npz|convert|stats
  place      expert-placement simulator: replicate, place and search on a device mesh
  coact      expert co-activation matrix of a trace layer
  plot       pictures: plot sweep --config SWEEP | plot run --run DIR
  export     a run's model as ONNX                        moelab export --run DIR --out model.onnx
  bench      benchmarks: bench topk|routing|pack|combine|moe-layer (CUDA) | capacity | ep (N ranks)
)";

}  // namespace

// moelab links jemalloc, so every malloc (libtorch's CPU tensors included) is jemalloc's, read
// with these options. glibc's malloc served each training step's tensors, whose sizes change
// with the experts' loads, by growing its heap: tens of MB a step at the seed's model shape on
// the CPU, until the system killed the run. jemalloc's size classes reuse freed extents, and
// with purging off it keeps them mapped, so a step's buffers are not faulted in again: the
// resident size stays at the largest step's working set.
extern "C" {
const char* malloc_conf = "dirty_decay_ms:-1,muzzy_decay_ms:-1";
}

int main(int argc, char** argv) {
  moelab::relaunch_with_cpu_blas_kernels();
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  try {
    if (command == "train") return moelab::cli::train_command(argc - 1, argv + 1);
    if (command == "eval") return moelab::cli::eval_command(argc - 1, argv + 1);
    if (command == "generate") return moelab::cli::generate_command(argc - 1, argv + 1);
    if (command == "sweep") return moelab::cli::sweep_command(argc - 1, argv + 1);
    if (command == "trace") return moelab::cli::trace_command(argc - 1, argv + 1);
    if (command == "place") return moelab::cli::place_command(argc - 1, argv + 1);
    if (command == "coact") return moelab::cli::coact_command(argc - 1, argv + 1);
    if (command == "plot") return moelab::cli::plot_command(argc - 1, argv + 1);
    if (command == "bench") return moelab::cli::bench_command(argc - 1, argv + 1);
    if (command == "export") return moelab::cli::export_command(argc - 1, argv + 1);
    std::cerr << "moelab: unknown command '" << command << "'\n" << kUsage;
    return 2;
  } catch (const moelab::DistributedError& e) {
    // Straight out: a c10d thread still waiting on a dead peer would hang the destructors.
    std::cerr << "moelab " << command << ": error: " << e.what() << std::endl;
    std::_Exit(1);
  } catch (const moelab::UserError& e) {
    // One line whatever the message quotes of the user's input.
    std::cerr << "moelab " << command << ": error: " << moelab::printable(e.what()) << std::endl;
    return 2;
  } catch (const std::bad_alloc&) {
    std::cerr << "moelab " << command << ": error: out of memory: the model or data sizes asked for do not fit this machine"
              << std::endl;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "moelab " << command << ": internal error: " << e.what() << std::endl;
    return 1;
  }
}
