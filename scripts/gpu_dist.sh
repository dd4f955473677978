#!/usr/bin/env bash
# On a GPU machine with N >= 2 GPUs, after `bash scripts/gpu.sh build`: the scale-out figures.
#   1. seed 003's expert-parallel benchmark (4096 tokens/rank, d 4096, E 64, k 2) with and
#      without skew, over N ranks (NCCL);
#   2. the unified and the medium config on 1 GPU, N GPUs data-parallel (batch per rank as in
#      the config: weak scaling) and N GPUs expert-parallel: tokens/s, MFU, scaling efficiency
#      (tokens/s over N x one GPU's), each run's step mode (captured or eager, and why);
#   3. the distributed tests on the GPUs (NCCL, captured steps), and on CPU processes (Gloo)
#      when this libtorch has Gloo.
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
  run $m bench ep $args --out "$out/ep.jsonl.part" 2>"$out/ep.err" | tail -2
  cat "$out/ep.jsonl.part" >>"$out/ep.jsonl"
done
rm -f "$out/ep.jsonl.part"

# Tokens/s counts every rank's tokens; steady state = the mean of the log intervals after the
# first two (capture, warm-up); MFU counts the FLOPs actually routed (989 TFLOP/s peak).
steady() {
  python3 - "$1" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
train = [r for r in rows if r["kind"] == "train"][2:]
ev = [r for r in rows if r["kind"] == "eval"]
mean = lambda k: sum(r[k] for r in train) / len(train)
print(f"{mean('tokens_per_s'):.0f} {100 * mean('mfu'):.2f} {ev[-1]['val_loss']:.4f}")
PY
}
table=$out/dp_table.txt
printf "%-10s %-28s %12s %7s %9s %s\n" config run tokens/s MFU val_loss scaling | tee "$table"
for cfg in unified medium; do
  case $cfg in
    unified) cfg_steps=$steps; interval=50 ;;
    medium) cfg_steps=60; interval=10 ;;
  esac
  common=(--config experiments/$cfg.jsonc --sample 0 --set "data.train=$data" --set train.max_steps=$cfg_steps
          --set train.eval_interval=$cfg_steps --set train.eval_windows=16 --set train.log_interval=$interval
          --set train.checkpoint_interval=0 --set train.peak_tflops=989)
  rm -rf /tmp/$cfg-1 /tmp/$cfg-dp /tmp/$cfg-ep
  $m train "${common[@]}" --out /tmp/$cfg-1 >"$out/${cfg}_1.log" 2>&1
  run $m train "${common[@]}" --out /tmp/$cfg-dp >"$out/${cfg}_dp.log" 2>&1
  run $m train "${common[@]}" --out /tmp/$cfg-ep --set parallel.expert_parallel=$n >"$out/${cfg}_ep.log" 2>&1
  read one_tps one_mfu one_val < <(steady /tmp/$cfg-1)
  for r in 1 dp ep; do
    read tps mfu val < <(steady /tmp/$cfg-$r)
    case $r in 1) label="1 GPU" ;; dp) label="$n GPUs DP" ;; ep) label="$n GPUs DP+EP$n" ;; esac
    ranks=$([ $r = 1 ] && echo 1 || echo $n)
    printf "%-10s %-28s %12s %6s%% %9s %.3f\n" $cfg "$label" "$tps" "$mfu" "$val" "$(python3 -c "print($tps/$one_tps/$ranks)")" | tee -a "$table"
    cp /tmp/$cfg-$r/summary.json "$out/summary_${cfg}_$r.json"
    grep -h "training step:" "$out/${cfg}_$r.log" 2>/dev/null | head -1 || true
  done
done

# Correctness on the GPUs (NCCL, captured steps) and, where this libtorch has Gloo, on CPU ranks.
./build-gpu/moelab_tests --gtest_filter='DistributedOnGpu*' >"$out/dist_gpu_tests.log" 2>&1 || true
tail -3 "$out/dist_gpu_tests.log"
if ./build-gpu/moelab_tests --gtest_list_tests | grep -q DistributedTraining; then
  ./build-gpu/moelab_tests --gtest_filter='DistributedTraining*:ExpertParallel*' >"$out/dist_tests.log" 2>&1 || true
  tail -3 "$out/dist_tests.log"
fi
