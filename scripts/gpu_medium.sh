#!/usr/bin/env bash
# On a GPU machine, after `bash scripts/gpu.sh build`: one GPU's figures for
# experiments/medium.jsonc (1.09 B parameters, E 32, k 2, seq 1024, bf16) and, in the same
# call, the baseline: moelab's dense model of the same active parameters (an FFN of k experts'
# width). Prints tokens/s, TFLOP/s and MFU (FLOPs actually routed, over a 989 TFLOP/s peak)
# over the steady-state intervals, the MoE's MFU over the dense one's, and a profile of a few
# MoE steps (kernels by time) into $OUT.
#   bash scripts/gpu_medium.sh TRAIN_TXT [STEPS] [BATCH]     (BATCH: the config's, 96, when not given)
set -euo pipefail
data=$1
steps=${2:-80}
batch=${3:-$(grep -o '"batch_size": [0-9]*' experiments/medium.jsonc | grep -o '[0-9]*$')}
out=${OUT:-gpu-out}
mkdir -p "$out"
m=$PWD/build-gpu/moelab
common=(--config experiments/medium.jsonc --sample 0 --set "data.train=$data" --set train.max_steps=$steps
        --set train.batch_size=$batch --set train.eval_interval=$steps --set train.eval_windows=16
        --set train.log_interval=10 --set train.checkpoint_interval=0)
steady() {  # mean tokens/s, TFLOP/s, MFU over the logged intervals after the first two (capture, warm-up)
  python3 - "$1" "$2" <<'PY'
import json, sys
d, name = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(d + "/metrics.jsonl")]
train = [r for r in rows if r["kind"] == "train"][2:]
s = json.load(open(d + "/summary.json"))
mean = lambda k: sum(r[k] for r in train) / len(train)
drop = sum(r["routing"].get("drop_rate", 0) or 0 for r in train) / len(train)
print(f"{name:<18} {s['parameters']/1e9:7.3f}B {s['active_parameters']/1e6:7.1f}M {mean('tokens_per_s'):11.0f} "
      f"{mean('step_ms'):8.2f} {mean('tflops'):8.1f} {100*mean('mfu'):6.2f}% {drop:6.3f} {s['final_val_loss']:8.4f}")
PY
}
printf "%-18s %8s %8s %11s %8s %8s %7s %6s %8s\n" model params active tokens/s step_ms TFLOP/s MFU drop val_loss | tee "$out/medium_table.txt"
for variant in moe dense; do
  dir=/tmp/medium-$variant
  rm -rf "$dir"
  extra=()
  [ $variant = dense ] && extra=(--set model.dense=true)
  [ $variant = moe ] && [ "${PROFILE:-1}" = 1 ] && extra=(--set train.profile_steps=5)
  $m train "${common[@]}" "${extra[@]}" --out "$dir" >"$out/medium_$variant.log" 2>&1 || { tail -20 "$out/medium_$variant.log"; exit 1; }
  cp "$dir/summary.json" "$out/summary_medium_$variant.json"
  cp "$dir/metrics.jsonl" "$out/metrics_medium_$variant.jsonl"
  [ -f "$dir/profile_kernels.txt" ] && cp "$dir/profile_kernels.txt" "$out/profile_medium_$variant.txt"
  steady "$dir" "$variant (batch $batch)" | tee -a "$out/medium_table.txt"
done
python3 - "$out/medium_table.txt" <<'PY' | tee -a "$out/medium_table.txt"
import sys
mfu = {l.split()[0]: float(l.split()[-3].rstrip('%')) for l in open(sys.argv[1]).readlines()[1:]}
print(f"MoE MFU / dense MFU: {mfu['moe'] / mfu['dense']:.3f}")
PY
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a "$out/medium_table.txt"
