#!/usr/bin/env bash
# On the GPU machine, from the repository root (with .deps/ carried, see ../shared/device; fetch
# it with the extra packages moelab needs: fetch-debs.sh libzip-dev libzip4 libjemalloc2 libjemalloc-dev):
# builds moelab with its CUDA kernels against the machine's PyTorch libtorch, runs the test
# suite (CUDA kernel tests included) and the kernel benchmarks; results go to $OUT (or ./gpu-out).
#   bash scripts/gpu.sh [build|test|bench|all]
set -euo pipefail
what=${1:-all}
out=${OUT:-gpu-out}
mkdir -p "$out"
source .deps/unpack-debs.sh
if [ "$what" = build ] || [ "$what" = all ] || [ ! -x build-gpu/moelab ]; then
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOELAB_CUDA=ON "-DCMAKE_PREFIX_PATH=$TORCH_PREFIX;$DEPS_PREFIX/usr" \
    -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc >"$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
  cmake --build build-gpu -j16 >"$out/build.log" 2>&1 || { grep -E "error|Error" "$out/build.log" | head -40; exit 1; }
fi
if [ "$what" = test ] || [ "$what" = all ]; then
  ./build-gpu/moelab_tests --gtest_filter='CudaKernels*:TrainingOnGpu*:DistributedOnGpu*:MoeLayer*:Kernels*:Dispatcher*' >"$out/cuda_tests.log" 2>&1 || true
  tail -4 "$out/cuda_tests.log"; grep -A4 Failure "$out/cuda_tests.log" | head -20 || true
  compute-sanitizer --tool memcheck ./build-gpu/moelab_tests --gtest_filter='CudaKernels.PermuteAndUnpermute*:CudaKernels.SoftmaxTopKGradient:CudaKernels.ExpertBiasActivation*:CudaKernels.LayerNorm*:CudaKernels.AddLayerNorm*:CudaKernels.ColumnSum*:CudaKernels.CountingSort*:CudaKernels.BalancingLoss*:CudaKernels.KeptGates*:CudaKernels.TopKIds*:CudaKernels.ColumnTopk*:CudaKernels.Sinkhorn*:CudaKernels.AdamW*:CudaKernels.Bf16Operand*:CudaKernels.CapacitySlots*:CudaKernels.FusedExpertFfn*' \
    >"$out/sanitizer.log" 2>&1 && echo "compute-sanitizer: clean" || { echo "compute-sanitizer: FAILED"; tail -20 "$out/sanitizer.log"; }
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  m=./build-gpu/moelab
  for op in topk sinkhorn pack combine routing; do $m bench $op --out "$out/bench_$op.jsonl" | tail -1; done
  $m bench topk --skew-experts 8 --skew-bias 2 --out "$out/bench_topk_skew.jsonl" | tail -1
  $m bench moe-layer --tokens 8192 --hidden 1024 --experts 32 --iters 20 --out "$out/bench_moe_layer.jsonl" | tail -1
fi
