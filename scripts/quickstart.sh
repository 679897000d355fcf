#!/usr/bin/env bash
# Installs what bqjit needs, builds it, and prewarms the kernel cache for the
# real model shapes of examples/manifest.json on sm_90 (no GPU needed), then
# shows the cache. Arguments are passed on to `bqjit prewarm`. It builds the
# command alone, in a tree of its own (build-quickstart), so that the test
# command's trees (scripts/test.sh) are never configured without tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
build=build-quickstart
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBQJIT_BUILD_TESTS=OFF \
  -DBQJIT_SANITIZE= -DBQJIT_FUZZ=OFF
ninja -C "$build" -j"$(nproc)" bqjit_cli
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
"./$build/tools/bqjit" prewarm examples/manifest.json --arch sm_90 "$@"
"./$build/tools/bqjit" cache stats
