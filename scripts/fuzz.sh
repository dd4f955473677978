#!/usr/bin/env bash
# libFuzzer runs of the reader targets in tests/fuzz_readers.cpp, under ASan and UBSan, built
# with Debian's clang (clang, libclang-rt-14-dev). Each target starts from its seed files and
# runs SECONDS; the logs, the grown corpora and any crashing input go to $OUT (fuzz-out).
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config placement-jsonl neupims-csv placement-json system-config)
out=${OUT:-fuzz-out}
mkdir -p "$out"
sources=(tests/fuzz_readers.cpp src/util/*.cpp src/config/run_config.cpp src/trace/placement_jsonl.cpp
         src/trace/synthetic_trace.cpp src/trace/coactivation.cpp src/trace/neupims_csv.cpp src/trace/npz_import.cpp
         src/placement/*.cpp src/plot/gnuplot.cpp)
clang++ -std=c++17 -O1 -g -DMOELAB_LIBFUZZER -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I. -Isrc "${sources[@]}" -lspdlog -lfmt -lzip -o "$out/fuzz_readers"
declare -A seeds=(
  [config]="experiments/quickstart.jsonc experiments/unified.jsonc"
  [placement-jsonl]="tests/fuzz_seeds/trace.jsonl"
  [neupims-csv]="tests/fuzz_seeds/neupims.csv"
  [placement-json]="tests/fuzz_seeds/placement.json"
  [system-config]="experiments/placement/system_example.jsonc experiments/placement/flame_system.jsonc")
for t in "${targets[@]}"; do
  mkdir -p "$out/corpus-$t"
  cp ${seeds[$t]} "$out/corpus-$t/"
  rc=0
  (cd "$out" && MOELAB_FUZZ_TARGET=$t ./fuzz_readers -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$t-" \
     "corpus-$t" >"$t.log" 2>&1) || rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/$t.log" | grep -o '[0-9]*$' || echo "?")
  echo "$t: $runs executions in ${seconds} s, exit $rc$([ $rc -eq 0 ] && echo ', no finding' || echo ", a finding: see $out/$t.log")"
done
