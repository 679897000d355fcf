#!/usr/bin/env bash
# Builds a lean Release tree (no debug info) and copies what the GPU machine
# needs into devpack/ (git-ignored), small enough to travel with `carry`.
# devpack/ is also an installed prefix (`cmake --install`: bin/bqjit,
# lib/libbqjit.so*, the C++ libraries, include/, lib/cmake/bqjit), and
# devpack/bin/consumer is examples/consumer built against that prefix alone
# (in build-dev-consumer/); bench/device_run.sh tests runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-dev -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build-dev -j2
rm -rf devpack build-dev-consumer && mkdir -p devpack/bin devpack/lib
cmake --install build-dev --prefix devpack --strip >/dev/null
cmake -S examples/consumer -B build-dev-consumer -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$PWD/devpack" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF >/dev/null
ninja -C build-dev-consumer -j2
cp build-dev-consumer/consumer devpack/bin/
# The consumer is linked: its static archives need not travel with the pack.
rm -f devpack/lib/libbqjit_*.a
# Links may not travel with the pack: the soname and the plain name as files.
for f in devpack/lib/libbqjit.so*; do
  if [ -L "$f" ]; then cp --remove-destination "$(readlink -f "$f")" "$f"; fi
done
rm -f devpack/lib/libbqjit.so.*.*.* # the soname's file (libbqjit.so.MAJOR.MINOR) is what loads
for t in build-dev/tests/test_*; do
  [ -x "$t" ] && [ -f "$t" ] && cp "$t" devpack/bin/
done
cp build-dev/examples/host_app build-dev/bench/warm_path/bench_warm_path devpack/bin/ 2>/dev/null ||
  true
cp build-dev/tests/libbqjit_fake_cuda.so devpack/lib/ 2>/dev/null || true
strip devpack/bin/* devpack/lib/*.so*
du -sh devpack
