#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu.sh build here and in BASELINE (another checkout, e.g.
# the commit before a change, with its own build-gpu/): the unified config's training
# throughput of both trees for each STRATEGY, ROUNDS times alternately, so that both are
# measured in the same visit on the same GPU. Prints per run the steady-state tokens/s (the
# mean over the logged intervals after the first, which holds the CUDA-graph capture).
#   bash scripts/gpu_ab_throughput.sh BASELINE TRAIN_TXT [STEPS] [ROUNDS] [STRATEGIES...]
set -euo pipefail
baseline=$1
data=$(realpath "$2")
steps=${3:-600}
rounds=${4:-3}
shift $(( $# < 4 ? $# : 4 ))
strategies=("$@")
[ ${#strategies[@]} -gt 0 ] || strategies=(softk)
out=${OUT:-gpu-out}
mkdir -p "$out"
run() {  # tree strategy label
  local dir=/tmp/ab-$3-$2
  rm -rf "$dir"
  (cd "$1" && ./build-gpu/moelab train --config experiments/unified.jsonc --sample 0 --out "$dir" --set "data.train=$data" \
     --set "router.strategy=$2" --set train.max_steps="$steps" --set train.eval_interval="$steps" \
     --set train.log_interval=100 --set train.checkpoint_interval=0 >"$out/ab_$3_$2.log" 2>&1)
  python3 - "$dir" "$3" "$2" <<'PY' | tee -a "$out/ab_throughput.txt"
import json, sys
d, label, s = sys.argv[1:]
train = [json.loads(l) for l in open(d + "/metrics.jsonl")]
train = [r for r in train if r["kind"] == "train"][1:]
print(f"{label:<9} {s:<14} {sum(r['tokens_per_s'] for r in train) / len(train):12.0f} tokens/s")
PY
}
for s in "${strategies[@]}"; do
  for ((i = 0; i < rounds; i++)); do
    run "$baseline" "$s" baseline
    run . "$s" change
  done
done
