#!/usr/bin/env bash
# Installs moelab's build and run dependencies from Debian's registry (bookworm).
set -euo pipefail
packages=(build-essential cmake ninja-build pkg-config libtorch-dev libopenblas0-openmp
          libcxxopts-dev libspdlog-dev nlohmann-json3-dev libsentencepiece-dev libgtest-dev
          libgloo-dev gnuplot-nox libzip-dev libjemalloc-dev libonnx-dev python3-onnx)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
# ONNX Runtime for the export tests (npm's package carries its CPU library; its install script
# would fetch GPU files and is skipped). Optional: the tests skip without it.
if command -v npm >/dev/null 2>&1 && [ ! -d "$(dirname "$0")/../.node/node_modules/onnxruntime-node" ]; then
  npm install --prefix "$(dirname "$0")/../.node" --ignore-scripts --no-audit --no-fund onnxruntime-node >/dev/null 2>&1 ||
    echo "setup: npm could not install onnxruntime-node; the ONNX round-trip tests will skip"
fi
