#!/usr/bin/env bash
# The command line on bad input: one clear error naming the file/field, exit status 2, and
# nothing already written is damaged.
set -u
moelab=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
failures=0

expect_error() {  # expect_error NAME PATTERN -- command...
  local name=$1 pattern=$2
  shift 3
  local out rc
  out=$("$@" 2>&1)
  rc=$?
  if [ "$rc" -ne 2 ]; then
    echo "FAIL $name: exit $rc, expected 2"; echo "$out"; failures=$((failures + 1))
  elif ! grep -q -- "$pattern" <<<"$out"; then
    echo "FAIL $name: message lacks '$pattern'"; echo "$out"; failures=$((failures + 1))
  elif [ "$(wc -l <<<"$out")" -ne 1 ]; then
    echo "FAIL $name: expected one line"; echo "$out"; failures=$((failures + 1))
  else
    echo "ok   $name: $out"
  fi
}

printf '{"router": {"strategy": "softk", "capacty_factor": 1.0}}' >"$dir/typo.json"
expect_error unknown-key "typo.json: unknown key 'router.capacty_factor'" -- "$moelab" train --config "$dir/typo.json"
printf '{"model": {"dim": 64, "heads": 5}}' >"$dir/heads.json"
expect_error heads "'model.heads' must divide model.dim" -- "$moelab" train --config "$dir/heads.json"
printf '{"seed": 1,\n "out": }' >"$dir/broken.json"
expect_error parse "broken.json:2:" -- "$moelab" train --config "$dir/broken.json"
expect_error strategy "router.strategy must be one of" -- "$moelab" train --set router.strategy=top3 --out "$dir/x"
expect_error missing-config "cannot open" -- "$moelab" train --config "$dir/nope.json"
expect_error missing-corpus "cannot open" -- "$moelab" train --set data.train="$dir/none.txt" --out "$dir/y"
mkdir "$dir/corpus-dir"
expect_error corpus-directory "corpus-dir: is a directory, not a file" -- "$moelab" train --set data.train="$dir/corpus-dir" --out "$dir/d"
printf 'ok\n\xff\xfe\n' >"$dir/binary.txt"
expect_error bad-corpus "binary.txt:2: not valid UTF-8" -- "$moelab" train --set data.train="$dir/binary.txt" --out "$dir/z"
expect_error bad-flag "moelab train" -- "$moelab" train --no-such-flag
expect_error finetune-no-base "'finetune.base' = .*nope is not a moelab run directory" -- "$moelab" train --set finetune.base="$dir/nope" --out "$dir/ft"
expect_error finetune-method "'finetune.method' must be one of" -- "$moelab" train --set finetune.method=adapterz --out "$dir/ft"
expect_error finetune-top-k "'finetune.top_k' must be <= finetune.experts" -- "$moelab" train --set finetune.top_k=5 --out "$dir/ft"
[ -e "$dir/ft" ] && { echo "FAIL finetune: a refused fine-tuning run wrote $dir/ft"; failures=$((failures + 1)); }
expect_error expert-parallel "'parallel.expert_parallel' must divide router.num_experts" -- "$moelab" train --set parallel.expert_parallel=3 --out "$dir/ep"
expect_error ep-world "must divide the number of ranks, 1" -- "$moelab" train --set parallel.expert_parallel=2 --out "$dir/ep2"
printf '{"grid": {"router.strategy": ["softk", "top3"]}, "out": "%s/sw"}' "$dir" >"$dir/sweep.jsonc"
expect_error sweep-strategy "(cell strategy-top3): router.strategy must be one of" -- "$moelab" sweep --config "$dir/sweep.jsonc"
[ -e "$dir/sw" ] && { echo "FAIL a refused sweep created its directory"; failures=$((failures + 1)); }
printf '{"rows": 2, "cols": 2, "experts": 8, "slots": 4, "trace": "t.jsonl"}' >"$dir/system.jsonc"
expect_error place-slots "'slots' must be >=" -- "$moelab" place --system "$dir/system.jsonc"
expect_error not-a-run "not a moelab run directory" -- "$moelab" eval --run "$dir"
expect_error huge-dim "'model.dim' must be in \[8, 65536\], got 4000000000" -- "$moelab" train --set model.dim=4000000000 --out "$dir/big"
expect_error huge-corpus "'data.builtin_stories' must be in \[10, 2000000\]" -- "$moelab" train --set data.builtin_stories=100000000000 --out "$dir/big"
expect_error u64-layers "'model.layers' must be at most 256, got 18446744073709551615" -- "$moelab" train --set model.layers=18446744073709551615 --out "$dir/big"

# Help is usage, exit 0, for every command and subcommand set.
for cmd in "plot" "bench" "bench capacity" "train" "trace synth"; do
  out=$($moelab $cmd --help 2>&1); rc=$?
  if [ "$rc" -ne 0 ] || ! grep -qi "usage" <<<"$out"; then
    echo "FAIL help '$cmd': exit $rc"; echo "$out" | head -3; failures=$((failures + 1))
  else
    echo "ok   help '$cmd'"
  fi
done
grep -q "default: 16384" <<<"$($moelab bench capacity --help)" || { echo "FAIL bench capacity --help shows no defaults"; failures=$((failures + 1)); }
grep -q "(required)" <<<"$($moelab eval --help)" || { echo "FAIL eval --help marks no required option"; failures=$((failures + 1)); }

# Traces: a non-finite score names its line and column; a failed convert leaves no temp file.
printf 'layer_id,token_id,expert_0,expert_1\n0,0,0.5,0.25\n0,1,nan,0.5\n' >"$dir/nan.csv"
expect_error neupims-nan "nan.csv:3: field 'expert_0'" -- "$moelab" trace convert --in "$dir/nan.csv" --out "$dir/nan.jsonl"
expect_error neupims-nan-stats "nan.csv:3: field 'expert_0'" -- "$moelab" trace stats --in "$dir/nan.csv" --seq-len 2
ls "$dir" | grep -q 'nan.jsonl' && { echo "FAIL a failed convert left $(ls "$dir" | grep nan.jsonl)"; failures=$((failures + 1)); }
printf '{"layer": 0, "topk_experts": [[1, 4294967299]]}\n' >"$dir/wide.jsonl"
expect_error trace-id-2^32 "wide.jsonl:1: field 'topk_experts\[0\]': expert ids must be non-negative integers below 2^31" -- "$moelab" coact --trace "$dir/wide.jsonl" --layer 0 --out "$dir/c.csv"
printf '{"layer": 0, "topk_experts": [[1, 2147483648]]}\n' >"$dir/wide.jsonl"
expect_error trace-id-2^31 "expert ids must be non-negative integers below 2^31" -- "$moelab" coact --trace "$dir/wide.jsonl" --layer 0 --out "$dir/c.csv"
printf '{"layer": 0, "topk_experts": [[1, 100000]]}\n' >"$dir/wide.jsonl"
expect_error coact-huge-e "the largest id + 1) exceed the 8192" -- "$moelab" coact --trace "$dir/wide.jsonl" --layer 0 --out "$dir/c.csv"
# trace synth makes the folder it writes into.
"$moelab" trace synth --out "$dir/new/folder/s.jsonl" --batches 2 --tokens-per-batch 8 >/dev/null 2>&1 && [ -s "$dir/new/folder/s.jsonl" ] \
  || { echo "FAIL trace synth into a new folder"; failures=$((failures + 1)); }

# A finished tiny run, then attempts that must leave it untouched.
"$moelab" train --out "$dir/run" --sample 0 --set data.builtin_stories=100 --set model.layers=1 --set model.dim=32 \
  --set model.seq_len=32 --set train.batch_size=4 --set train.max_steps=3 --set train.eval_windows=4 >/dev/null 2>&1 \
  || { echo "FAIL tiny run did not train"; failures=$((failures + 1)); }
before=$(cat "$dir/run/metrics.jsonl" "$dir/run/checkpoints/latest.pt" | md5sum)
expect_error rerun "already holds a run" -- "$moelab" train --out "$dir/run" --set train.max_steps=3
head -c 1000 "$dir/run/checkpoints/latest.pt" >"$dir/truncated.pt"
cp "$dir/run/checkpoints/latest.pt" "$dir/good.pt"
cp "$dir/truncated.pt" "$dir/run/checkpoints/latest.pt"
expect_error corrupt-checkpoint "latest.pt: not a moelab checkpoint, or a damaged one" -- "$moelab" generate --run "$dir/run"
cmp -s "$dir/truncated.pt" "$dir/run/checkpoints/latest.pt" || { echo "FAIL corrupt checkpoint was modified"; failures=$((failures + 1)); }
# One byte changed inside: the checksum catches it before libtorch parses the archive.
cp "$dir/good.pt" "$dir/run/checkpoints/latest.pt"
printf '\x7f' | dd of="$dir/run/checkpoints/latest.pt" bs=1 seek=3000 conv=notrunc 2>/dev/null
expect_error flipped-checkpoint "latest.pt: damaged: its contents do not match the checksum" -- "$moelab" eval --run "$dir/run"
cp "$dir/good.pt" "$dir/run/checkpoints/latest.pt"
after=$(cat "$dir/run/metrics.jsonl" "$dir/run/checkpoints/latest.pt" | md5sum)
# Export: an unknown format, a folder that does not exist, a run without a checkpoint; nothing written.
expect_error export-format "--format must be onnx, got 'tflite'" -- "$moelab" export --run "$dir/run" --format tflite --out "$dir/m.onnx"
expect_error export-folder "cannot be written (no folder" -- "$moelab" export --run "$dir/run" --out "$dir/nowhere/m.onnx"
mkdir -p "$dir/no-ckpt" && cp "$dir/run/config.json" "$dir/run/tokenizer.json" "$dir/no-ckpt/"
expect_error export-no-checkpoint "no checkpoint" -- "$moelab" export --run "$dir/no-ckpt" --out "$dir/m.onnx"
ls "$dir" | grep -q 'm.onnx' && { echo "FAIL a refused export left $(ls "$dir" | grep m.onnx)"; failures=$((failures + 1)); }
[ "$before" = "$after" ] || { echo "FAIL the finished run changed"; failures=$((failures + 1)); }
"$moelab" eval --run "$dir/run" >/dev/null || { echo "FAIL eval of the intact run"; failures=$((failures + 1)); }

# Text too short to score or trace: the user's file is named, no scratch file is left.
printf 'Hi.\n' >"$dir/short.txt"
expect_error eval-short-data "short.txt: 4 tokens, fewer than the 33 that one evaluation window" -- "$moelab" eval --run "$dir/run" --data "$dir/short.txt"
expect_error trace-short-data "short.txt: 4 tokens, fewer than the 33 that one sequence" -- "$moelab" trace --run "$dir/run" --data "$dir/short.txt" --out "$dir/t.jsonl"
ls "$dir/run/data" | grep -q '\.tmp\.' && { echo "FAIL scratch files left in run/data: $(ls "$dir/run/data")"; failures=$((failures + 1)); }
cp "$dir/run/data/info.json" "$dir/info.json"
printf 'garbage' >"$dir/run/data/info.json"
expect_error damaged-info "info.json: field 'valid_chars'" -- "$moelab" eval --run "$dir/run"
cp "$dir/info.json" "$dir/run/data/info.json"
expect_error negative-temperature "temperature must be a finite number >= 0" -- "$moelab" generate --run "$dir/run" --temperature -1
expect_error resume-finished "finished at step 3 = train.max_steps; nothing to resume" -- "$moelab" train --resume "$dir/run"
# A temporary file a crash left (its process gone) is removed when the run is next trained.
touch "$dir/run/checkpoints/latest.pt.tmp.999999999.0"
"$moelab" train --resume "$dir/run" >/dev/null 2>&1
[ -e "$dir/run/checkpoints/latest.pt.tmp.999999999.0" ] && { echo "FAIL a stale temporary checkpoint survived a resume"; failures=$((failures + 1)); }

echo "cli bad-input checks: $failures failed"
[ "$failures" -eq 0 ]
