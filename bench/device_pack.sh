#!/usr/bin/env bash
# Builds a lean Release tree (no debug info) and copies what the GPU machine
# needs into devpack/ (git-ignored), small enough to travel with `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-dev -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build-dev -j2
rm -rf devpack && mkdir -p devpack/bin devpack/lib
for t in build-dev/tests/test_*; do
  [ -x "$t" ] && [ -f "$t" ] && cp "$t" devpack/bin/
done
cp build-dev/tools/bqjit build-dev/examples/host_app build-dev/bench/warm_path/bench_warm_path \
  devpack/bin/ 2>/dev/null || true
cp build-dev/runtime/libbqjit.so devpack/lib/
cp build-dev/tests/libbqjit_fake_cuda.so devpack/lib/ 2>/dev/null || true
strip devpack/bin/* devpack/lib/*.so
du -sh devpack
