#!/usr/bin/env bash
# Compiles every kernels/*.cu on a machine without a GPU, to catch compile errors before a
# device run: nvcc (/usr/local/cuda/bin/nvcc) against Debian's libtorch 1.13 headers, which
# ship ATen's CUDA headers but not c10's generated cuda_cmake_macros.h (a stub stands in).
# Nothing is linked or run; the GPU build proper is scripts/gpu.sh.
#   bash scripts/check_cuda_compiles.sh
set -euo pipefail
nvcc=${NVCC:-/usr/local/cuda/bin/nvcc}
if [ ! -x "$nvcc" ] || [ ! -f /usr/include/ATen/cuda/CUDAContext.h ]; then
  echo "check_cuda_compiles: needs $nvcc and libtorch's ATen/cuda headers; skipped"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/include/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$work/include/c10/cuda/impl/cuda_cmake_macros.h"
status=0
for source in kernels/*.cu; do
  if "$nvcc" -std=c++17 -arch=sm_90a -I. -I"$work/include" -I/usr/include/torch/csrc/api/include -DMOELAB_CUDA \
       -c "$source" -o "$work/$(basename "$source").o" >"$work/log" 2>&1; then
    echo "ok      $source"
  else
    echo "FAILED  $source"; grep -E "error" "$work/log" | head -20; status=1
  fi
done
exit $status
