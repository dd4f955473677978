#!/usr/bin/env bash
# Installs moelab's build and run dependencies from Debian's registry (bookworm).
set -euo pipefail
packages=(build-essential cmake ninja-build pkg-config libtorch-dev libopenblas0-openmp
          libcxxopts-dev libspdlog-dev nlohmann-json3-dev libsentencepiece-dev libgtest-dev
          libgloo-dev gnuplot-nox libzip-dev)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
