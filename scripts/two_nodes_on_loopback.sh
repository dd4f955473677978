#!/usr/bin/env bash
# The multi-node launch of docs/distributed.md, run on one machine: two torchrun agents, each
# acting as a node of one process (--nnodes 2, --node-rank 0 and 1), meeting at 127.0.0.1.
# On a real cluster the same two commands run on two hosts with --master-addr set to node
# 0's address. Trains the quickstart model expert-parallel over the two "nodes" on the CPU
# (Gloo; DEVICE=cuda with one GPU per node: NODE0_GPU / NODE1_GPU pick them) and checks that
# both ranks finished and wrote their expert shards.
#   bash scripts/two_nodes_on_loopback.sh [OUT_DIR]
set -euo pipefail
out=${1:-runs/two-nodes}
moelab=${MOELAB:-$PWD/build/moelab}
device=${DEVICE:-cpu}
port=${PORT:-29555}
rm -rf "$out" && mkdir -p "$(dirname "$out")"
args=(--config experiments/quickstart.jsonc --out "$out" --sample 0 --set train.max_steps=40 --set train.eval_interval=40
      --set train.checkpoint_interval=40 --set train.device=$device --set parallel.expert_parallel=2)
for node in 0 1; do
  gpu_var="NODE${node}_GPU"
  # The underscore spellings work in torchrun 1.13 and 2.x. --redirects/--tee 2 (stderr to a
  # file and the console) sidestep Debian's torchrun 1.13 on Python 3.11, whose parser turns
  # the default "0" into None and fails before starting anything.
  CUDA_VISIBLE_DEVICES=${!gpu_var:-$node} torchrun --nnodes 2 --node_rank $node --nproc_per_node 1 \
    --master_addr 127.0.0.1 --master_port "$port" --redirects 2 --tee 2 \
    --no_python "$moelab" train "${args[@]}" >"$out.node$node.log" 2>&1 &
  pids[$node]=$!
done
status=0
for node in 0 1; do wait "${pids[$node]}" || { status=$?; echo "node $node failed:"; tail -20 "$out.node$node.log"; }; done
[ $status = 0 ] || exit $status
ls "$out/checkpoints/latest.ep0of2.pt" "$out/checkpoints/latest.ep1of2.pt" >/dev/null
grep -h "distributed (" "$out.node0.log" | head -1
echo "two nodes: ok ($out)"
