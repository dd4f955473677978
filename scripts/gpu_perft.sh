#!/usr/bin/env bash
# On the GPU machine, after `bash scripts/gpu.sh build`: the PERFT study's GPU figures.
#  1. The step cost: the unified model's training step against a PERFT-R fine-tuning step of
#     it (N 8, K 2, rank 32: the largest of the study), both captured, same GPU, same call;
#     the median step time over steps 100-600 of each.
#  2. The study itself: experiments/perft.sweep.jsonc, its tables and each run's summary and
#     metrics into $OUT/perft.tar.gz (`moelab plot sweep` draws the pictures from them).
#   bash scripts/gpu_perft.sh step|sweep DATA_DIR
# DATA_DIR holds TinyStories' train.txt and v1_validation_head.txt (../shared/data/tinystories
# or a copy of it).
set -euo pipefail
what=${1:?usage: gpu_perft.sh step|sweep DATA_DIR}
data=${2:?usage: gpu_perft.sh step|sweep DATA_DIR}
out=${OUT:-gpu-out}
m=./build-gpu/moelab
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
if [ "$what" = sweep ]; then
  sed "s#\.\./shared/data/tinystories#$data#g" experiments/perft.sweep.jsonc >"$runs/perft.sweep.jsonc"
  $m sweep --config "$runs/perft.sweep.jsonc" --out "$runs/perft" | tail -40
  # What the pictures and tables are drawn from, in one file: moelab plot sweep redraws them.
  (cd "$runs" && find perft -name summary.json -o -name metrics.jsonl -o -name summary.csv -o -name report.md |
    tar -czf "$out/perft.tar.gz" -T -)
  exit 0
fi
train=$data/train.txt
target=$data/v1_validation_head.txt
common=(--set train.eval_interval=0 --set train.log_interval=20 --set train.checkpoint_interval=0 --set train.eval_windows=64 --sample 0)
$m train --config experiments/unified.jsonc --out "$runs/base" --set "data.train=\"$train\"" --set train.max_steps=600 "${common[@]}" \
  >"$out/perft_step_base.log" 2>&1
$m train --out "$runs/perft_r" --set "finetune.base=\"$runs/base\"" --set finetune.method=perft_r --set finetune.rank=32 \
  --set finetune.experts=8 --set finetune.top_k=2 --set "data.train=\"$target\"" --set train.max_steps=600 "${common[@]}" \
  >"$out/perft_step_perft_r.log" 2>&1
grep -h "training step:" "$out/perft_step_base.log" "$out/perft_step_perft_r.log"
python3 - "$runs/base" "$runs/perft_r" <<'PY' | tee "$out/perft_step_cost.txt"
import json, statistics, sys
def median_step_ms(run):
    rows = [json.loads(l) for l in open(run + "/metrics.jsonl")]
    return statistics.median(r["step_ms"] for r in rows if r["kind"] == "train" and r["step"] > 100)
base, perft = (median_step_ms(r) for r in sys.argv[1:3])
s = json.load(open(sys.argv[2] + "/summary.json"))
print(f"unified training step {base:.3f} ms | PERFT-R (N 8, K 2, r 32) fine-tuning step {perft:.3f} ms | ratio {perft / base:.3f} "
      f"| trainable {s['finetune']['trainable_parameters']} ({100 * s['finetune']['trainable_share']:.3f}%)")
PY
