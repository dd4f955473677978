#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu.sh build: the seed's quality protocol (unified softk,
# 1200 steps on TinyStories train.txt, validation over its last 10% every 60 steps) with
# moelab's initialisation and with the seed model's (model.init=pytorch, attention dropout),
# printing the validation loss at steps 420 and 1200; then `moelab trace` speed for the
# unified model over the same text.
#   bash scripts/gpu_seed_protocol.sh TRAIN_TXT
set -euo pipefail
data=$1
out=${OUT:-gpu-out}
mkdir -p "$out"
m=./build-gpu/moelab
common=(--config experiments/unified.jsonc --sample 0 --set "data.train=$data" --set train.eval_interval=60
        --set train.log_interval=100 --set train.checkpoint_interval=0)
run() {  # run NAME SETTINGS...
  local name=$1; shift
  rm -rf "/tmp/q-$name"
  $m train "${common[@]}" "$@" --out "/tmp/q-$name" >"$out/quality_$name.log" 2>&1
  python3 - "/tmp/q-$name/metrics.jsonl" "$name" <<'PY' | tee -a "$out/seed_protocol.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ev = {r["step"]: r["val_loss"] for r in rows if r["kind"] == "eval"}
print(f"{sys.argv[2]:<28} val@420 {ev.get(420, float('nan')):.4f}  val@1200 {ev.get(1200, float('nan')):.4f}")
PY
}
run normal
run pytorch --set model.init=pytorch
run pytorch_attn_dropout --set model.init=pytorch --set model.attention_dropout=0.1
# Trace export: the unified model (a short run), every token of the text, placement JSONL.
rm -rf /tmp/q-trace
$m train "${common[@]}" --set train.max_steps=50 --out /tmp/q-trace >"$out/trace_train.log" 2>&1
for bs in 32 256; do
  $m trace --run /tmp/q-trace --data "$data" --format jsonl --out /tmp/q-trace.jsonl --batch-size $bs 2>&1 | tail -1 | tee -a "$out/trace_speed.txt"
done
$m trace --run /tmp/q-trace --data "$data" --format neupims --out /tmp/q-np --batch-size 256 --max-sequences 2048 2>&1 | tail -1 | tee -a "$out/trace_speed.txt"
