#!/usr/bin/env bash
# On a GPU machine with N >= 2 GPUs, after `bash scripts/gpu.sh build`: the scale-out figures.
#   1. seed 003's expert-parallel benchmark (4096 tokens/rank, d 4096, E 64, k 2) with and
#      without skew, over N ranks (NCCL);
#   2. data-parallel scaling of the unified config: tokens/s on N GPUs over 1 GPU, weak
#      (batch 32 per rank) and strong (global batch 32);
#   3. the unified config trained expert-parallel over the N GPUs;
#   4. the distributed test suite (Gloo, CPU processes) when this libtorch has Gloo.
#   bash scripts/gpu_dist.sh TRAIN_TXT [STEPS]
set -euo pipefail
data=$1
steps=${2:-300}
out=${OUT:-gpu-out}
mkdir -p "$out"
# NVLink multicast stays off on shared hosts (KINDS.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
m=$PWD/build-gpu/moelab
n=$(nvidia-smi -L | wc -l)
run() { torchrun --no-python --nproc-per-node "$n" --master-port 29577 "$@"; }

for args in "--skew-experts 0 --skew-bias 0" "--skew-experts 8 --skew-bias 2" "--skew-experts 8 --skew-bias 2 --strategy sinkhorn" \
            "--overlap-chunks 2" "--overlap-chunks 8"; do
  run $m bench ep $args --out "$out/ep.jsonl.part" 2>"$out/ep.err" | tail -1
  cat "$out/ep.jsonl.part" >>"$out/ep.jsonl"
done
rm -f "$out/ep.jsonl.part"

common=(--config experiments/unified.jsonc --sample 0 --set "data.train=$data" --set train.max_steps=$steps
        --set train.eval_interval=$steps --set train.log_interval=50 --set train.checkpoint_interval=0)
steady() {  # tokens/s over the logged intervals after the first (warm-up)
  python3 - "$1" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
train = [r for r in rows if r["kind"] == "train"][1:]
ev = [r for r in rows if r["kind"] == "eval"]
print(f"{sum(r['tokens_per_s'] for r in train) / len(train):.0f} {ev[-1]['val_loss']:.4f}")
PY
}
rm -rf /tmp/dp1 /tmp/dpN /tmp/dpS /tmp/epN
$m train "${common[@]}" --out /tmp/dp1 >"$out/dp1.log" 2>&1
run $m train "${common[@]}" --out /tmp/dpN >"$out/dpN.log" 2>&1
run $m train "${common[@]}" --out /tmp/dpS --set train.batch_size=$((32 / n)) >"$out/dpS.log" 2>&1
run $m train "${common[@]}" --out /tmp/epN --set parallel.expert_parallel=$n >"$out/epN.log" 2>&1
read one_tps one_val < <(steady /tmp/dp1)
read dp_tps dp_val < <(steady /tmp/dpN)
read ds_tps ds_val < <(steady /tmp/dpS)
read ep_tps ep_val < <(steady /tmp/epN)
{
  echo "unified softk, $steps steps, bf16; tokens/s counts every rank's tokens"
  printf "%-34s %12s %9s %s\n" run tokens/s val_loss scaling
  printf "%-34s %12s %9s %s\n" "1 GPU, batch 32" "$one_tps" "$one_val" "-"
  printf "%-34s %12s %9s %.3f\n" "$n GPUs DP, batch 32/rank (weak)" "$dp_tps" "$dp_val" "$(python3 -c "print($dp_tps/$one_tps/$n)")"
  printf "%-34s %12s %9s %.3f\n" "$n GPUs DP, global batch 32 (strong)" "$ds_tps" "$ds_val" "$(python3 -c "print($ds_tps/$one_tps/$n)")"
  printf "%-34s %12s %9s %.3f\n" "$n GPUs DP+EP$n, batch 32/rank" "$ep_tps" "$ep_val" "$(python3 -c "print($ep_tps/$one_tps/$n)")"
} | tee "$out/dp_table.txt"
for d in dp1 dpN dpS epN; do cp /tmp/$d/summary.json "$out/summary_$d.json"; done

if ./build-gpu/moelab_tests --gtest_list_tests | grep -q DistributedTraining; then
  ./build-gpu/moelab_tests --gtest_filter='DistributedTraining*:ExpertParallel*' >"$out/dist_tests.log" 2>&1 || true
  tail -3 "$out/dist_tests.log"
fi
