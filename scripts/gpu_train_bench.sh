#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu.sh build: trains SPEC's unified config (4 layers,
# d 256, E 8, k 2, CF 1.25, batch 32 x 256, bf16) on TinyStories for each router strategy and
# the dense baselines of equal active parameters (an FFN of k experts' width: k = 2; k = 1 for
# top1, which routes each token to one expert; 2.5 for expert choice, whose experts take
# capacity = CF * T * k / E tokens each, CF * k = 2.5 per token on average), and prints
# strategy, tokens/s, MFU, step time, validation loss at equal steps and the step time over
# the baseline's; then the
# seed's quality protocol for softk (1200 steps, validation over the held-out 10% at steps
# 420 and 1200).
#   bash scripts/gpu_train_bench.sh TRAIN_TXT [STEPS]
set -euo pipefail
data=$1
steps=${2:-300}
out=${OUT:-gpu-out}
m=./build-gpu/moelab
common=(--config experiments/unified.jsonc --sample 0 --set "data.train=$data" --set train.max_steps=$steps
        --set train.eval_interval=$steps --set train.log_interval=50 --set train.checkpoint_interval=0 --set train.peak_tflops=989)
printf "%-14s %12s %8s %9s %9s\n" strategy tokens/s MFU step_ms val_loss | tee "$out/train_table.txt"
for s in top1 topk_hard softk hash expert_choice sinkhorn dense dense_k1 dense_w2.5; do
  dir=/tmp/bench-$s
  rm -rf "$dir"
  case $s in
    dense) extra=(--set model.dense=true) ;;
    dense_k1) extra=(--set model.dense=true --set router.top_k=1) ;;
    dense_w2.5) extra=(--set model.dense=true --set model.dense_width=2.5) ;;
    *) extra=(--set "router.strategy=$s") ;;
  esac
  $m train "${common[@]}" "${extra[@]}" --out "$dir" >"$out/train_$s.log" 2>&1
  cp "$dir/summary.json" "$out/summary_$s.json"
  # steady-state step time: the mean of the logged intervals after the first (compile/warm-up)
  python3 - "$dir" "$s" <<'PY' | tee -a "$out/train_table.txt"
import json, sys
d, s = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(d + "/metrics.jsonl")]
train = [r for r in rows if r["kind"] == "train"][1:]
summary = json.load(open(d + "/summary.json"))
tps = sum(r["tokens_per_s"] for r in train) / len(train)
step = sum(r["step_ms"] for r in train) / len(train)
mfu = sum(r.get("mfu", 0) for r in train) / len(train)
print(f"{s:<14} {tps:12.0f} {100*mfu:7.2f}% {step:9.2f} {summary['final_val_loss']:9.4f}")
PY
done
# MoE step time over the dense baseline of equal active parameters (expert choice also over
# the k = 2 one, for comparison with the top-2 routers).
python3 - "$out/train_table.txt" <<'PY' | tee -a "$out/train_table.txt"
import sys
step = {l.split()[0]: float(l.split()[3]) for l in open(sys.argv[1]).readlines()[1:] if len(l.split()) == 5}
bases = {"top1": ["dense_k1"], "expert_choice": ["dense_w2.5", "dense"]}
for s, ms in step.items():
    if s.startswith("dense"): continue
    for base in bases.get(s, ["dense"]):
        print(f"{s:<14} step / {base} step = {ms / step[base]:.3f}")
PY
rm -rf /tmp/quality
$m train --config experiments/unified.jsonc --sample 0 --out /tmp/quality --set "data.train=$data" --set train.eval_interval=60 \
  --set train.log_interval=100 --set train.checkpoint_interval=0 >"$out/quality.log" 2>&1
grep -E '"step": ?(420|1200),' /tmp/quality/metrics.jsonl | grep eval | tee "$out/quality_evals.jsonl"
cp /tmp/quality/summary.json "$out/summary_quality.json"
