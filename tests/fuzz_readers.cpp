// Fuzz targets for the readers of files moelab takes from outside: the run config (JSONC), the
// placement JSONL trace, the NeuPIMs-MoE CSV, placement.json and the placement simulator's
// system config; built with MOELAB_FUZZ_CHECKPOINT (linking libtorch), the checkpoint reader,
// seeded with a checkpoint of a small model that the driver writes itself. Oracle: on any bytes a reader returns, or throws one UserError; a crash, a
// sanitizer report or any other exception is a finding.
//
// Built two ways from this one file, the readers' sources compiled in with ASan and UBSan:
// - with clang and -DMOELAB_LIBFUZZER, as a libFuzzer target (MOELAB_FUZZ_TARGET picks the
//   reader; scripts/fuzz.sh runs each for as long as asked);
// - with any compiler, as a driver that ctest runs briefly: each target gets its seed files
//   and seeded random mutations of them (byte flips, inserted tokens, cut and spliced
//   ranges) for a time budget:  moelab_fuzz_driver TARGET SECONDS SEED_FILE...
//   (moelab_fuzz_checkpoint_driver checkpoint SECONDS: libtorch is not built with the
//   sanitizers, so that one finds crashes and wrong exceptions only).
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "config/run_config.h"
#include "placement/placement.h"
#include "placement/placement_config.h"
#include "trace/neupims_csv.h"
#include "trace/placement_jsonl.h"
#include "util/error.h"
#ifdef MOELAB_FUZZ_CHECKPOINT
#include <torch/torch.h>

#include "train/checkpoint.h"
#endif

namespace {

using Reader = std::function<void(const std::string& path)>;

#ifdef MOELAB_FUZZ_CHECKPOINT
// A model small enough to load thousands of times a second.
std::shared_ptr<moelab::TinyMoE> checkpoint_model() {
  moelab::ModelConfig m;
  m.layers = 1;
  m.dim = 16;
  m.heads = 2;
  m.seq_len = 8;
  m.vocab_size = 20;
  moelab::RouterConfig r;
  r.num_experts = 4;
  return std::make_shared<moelab::TinyMoE>(m, r);
}

// The seed: that model's checkpoint, as the trainer writes it.
std::string checkpoint_seed(const std::string& path) {
  std::shared_ptr<moelab::TinyMoE> model = checkpoint_model();
  torch::optim::AdamW optimizer(model->parameters());
  moelab::TrainingState state;
  state.step = 3;
  state.sampler_state = "1 2 3";
  moelab::save_checkpoint(path, *model, optimizer, state);
  std::ifstream in(path, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}
#endif

const std::map<std::string, Reader>& readers() {
  static const std::map<std::string, Reader> all = {
      {"config",
       [](const std::string& path) {
         nlohmann::json config = moelab::default_config_json();
         moelab::merge_config(config, moelab::parse_jsonc_file(path), path);
         moelab::run_config_from_json(config, path);
       }},
      {"placement-jsonl",
       [](const std::string& path) {
         moelab::read_placement_jsonl(path, -1, 0, [](moelab::TraceRecord&&) { return true; });
       }},
      {"neupims-csv", [](const std::string& path) { moelab::read_neupims_csv(path); }},
      {"placement-json",
       [](const std::string& path) {
         moelab::placement::SystemConfig system;
         system.rows = 2;
         system.cols = 2;
         system.experts = 8;
         system.num_shared_experts = 1;
         system.slots = 32;
         moelab::placement::Replication replication;
         moelab::placement::Placement placement;
         moelab::placement::read_placement_json(path, system, replication, placement);
       }},
      {"system-config", [](const std::string& path) { moelab::placement::load_system_config(path); }},
#ifdef MOELAB_FUZZ_CHECKPOINT
      {"checkpoint",
       [](const std::string& path) {
         static const std::shared_ptr<moelab::TinyMoE> model = checkpoint_model();
         torch::optim::AdamW optimizer(model->parameters());
         moelab::load_checkpoint(path, *model, &optimizer, torch::kCPU);
       }},
#endif
  };
  return all;
}

// The bytes go to a file (the readers take paths), in memory where /dev/shm exists.
std::string scratch_path() {
  const std::string dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  return dir + "/moelab-fuzz-" + std::to_string(getpid());
}

// Runs one input; false (after printing the finding) when the reader broke the oracle.
bool run_one(const Reader& reader, const std::string& bytes, const std::string& path) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  try {
    reader(path);
  } catch (const moelab::UserError& e) {
    const std::string what = e.what();
    if (what.find('\n') != std::string::npos) {
      std::cerr << "finding: a UserError of more than one line: " << what << "\n";
      return false;
    }
  } catch (const std::exception& e) {
    std::cerr << "finding: not a UserError: " << e.what() << "\n";
    return false;
  }
  return true;
}

}  // namespace

#ifdef MOELAB_LIBFUZZER

namespace {
const Reader* target = nullptr;
std::string path;
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* name = std::getenv("MOELAB_FUZZ_TARGET");
  auto it = name ? readers().find(name) : readers().end();
  if (it == readers().end()) {
    std::cerr << "set MOELAB_FUZZ_TARGET to one of:";
    for (const auto& [n, r] : readers()) std::cerr << " " << n;
    std::cerr << "\n";
    std::exit(2);
  }
  target = &it->second;
  path = scratch_path();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!run_one(*target, std::string(reinterpret_cast<const char*>(data), size), path)) std::abort();
  return 0;
}

#else

namespace {

const char* kTokens[] = {"\"", "{", "}", "[", "]", ",", ":", "\n", "\r\n", "0", "-1", "1e999", "nan", "inf",
                         "4294967299", "2147483648", "9223372036854775808", "null", "true", "\"\"", ";", "\\u0000"};

std::string mutate(const std::vector<std::string>& seeds, std::mt19937_64& rng) {
  std::string s = seeds[rng() % seeds.size()];
  const int steps = 1 + static_cast<int>(rng() % 4);
  for (int i = 0; i < steps; ++i) {
    const size_t at = s.empty() ? 0 : rng() % (s.size() + 1);
    switch (rng() % 6) {
      case 0:  // flip a bit
        if (!s.empty()) s[at % s.size()] ^= static_cast<char>(1 << (rng() % 8));
        break;
      case 1:  // a random byte
        s.insert(s.begin() + static_cast<std::ptrdiff_t>(at), static_cast<char>(rng() % 256));
        break;
      case 2:  // a token the formats are made of, or numbers at their limits
        s.insert(at, kTokens[rng() % (sizeof kTokens / sizeof *kTokens)]);
        break;
      case 3:  // cut a range
        if (!s.empty()) s.erase(at % s.size(), 1 + rng() % 16);
        break;
      case 4:  // repeat a range
        if (!s.empty()) s.insert(at, s.substr(at % s.size(), 1 + rng() % 32));
        break;
      default: {  // splice with another seed
        const std::string& other = seeds[rng() % seeds.size()];
        s = s.substr(0, at) + other.substr(other.empty() ? 0 : rng() % other.size());
      }
    }
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
#ifdef MOELAB_FUZZ_CHECKPOINT
  torch::set_num_threads(1);
  const bool writes_own_seed = argc == 3 && std::string(argv[1]) == "checkpoint";
#else
  const bool writes_own_seed = false;
#endif
  if ((argc < 4 && !writes_own_seed) || !readers().count(argv[1])) {
    std::cerr << "usage: moelab_fuzz_driver TARGET SECONDS SEED_FILE...   (targets:";
    for (const auto& [n, r] : readers()) std::cerr << " " << n;
    std::cerr << ")\n";
    return 2;
  }
  const Reader& reader = readers().at(argv[1]);
  const double seconds = std::atof(argv[2]);
  std::vector<std::string> seeds;
  for (int i = 3; i < argc; ++i) {
    std::ifstream in(argv[i], std::ios::binary);
    if (!in) {
      std::cerr << argv[i] << ": cannot read the seed file\n";
      return 2;
    }
    std::stringstream text;
    text << in.rdbuf();
    seeds.push_back(text.str());
  }
  const std::string path = scratch_path();
#ifdef MOELAB_FUZZ_CHECKPOINT
  if (writes_own_seed) seeds.push_back(checkpoint_seed(path + ".seed"));
#endif
  std::mt19937_64 rng(20261207);
  int64_t runs = 0;
  bool ok = true;
  for (const std::string& seed : seeds) ok = run_one(reader, seed, path) && ok, ++runs;
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (ok && std::chrono::steady_clock::now() < end) {
    const std::string input = mutate(seeds, rng);
    ++runs;
    if (!run_one(reader, input, path)) {
      ok = false;
      const std::string saved = std::string("fuzz-finding-") + argv[1];
      std::ofstream(saved, std::ios::binary) << input;
      std::cerr << "the input is in " << saved << "\n";
    }
  }
  std::remove(path.c_str());
  std::remove((path + ".seed").c_str());
  std::cout << argv[1] << ": " << runs << " inputs, " << (ok ? "no finding" : "a finding") << "\n";
  return ok ? 0 : 1;
}

#endif
