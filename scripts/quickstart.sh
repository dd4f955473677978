#!/usr/bin/env bash
# The main job: set up, build, train the quickstart model on the embedded story corpus,
# print its report and a generated story.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2
./build/moelab train --config experiments/quickstart.jsonc --out "runs/quickstart-$(date +%Y%m%d-%H%M%S)"
