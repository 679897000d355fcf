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
# The suites that need a GPU (the CPU suites run in CI): the pack must stay
# under the 64 MiB that travel with a device run.
for t in build-dev/tests/test_gpu_* build-dev/tests/test_cuda_driver; do
  [ -x "$t" ] && [ -f "$t" ] && cp "$t" devpack/bin/
done
cp build-dev/examples/host_app build-dev/bench/warm_path/bench_warm_path build-dev/bench/pdl/bench_pdl devpack/bin/ 2>/dev/null ||
  true
cp build-dev/tests/libbqjit_fake_cuda.so devpack/lib/ 2>/dev/null || true
# The preloadable diagnostics for hangs and crashes at exit on the device
# (bench/stackdump): every thread's backtrace on a timer, and the exit
# handlers as they are registered and run.
cc -O1 -shared -fPIC -o devpack/lib/libbqjit_stackdump.so bench/stackdump/stackdump.c -lpthread -ldl
cc -O1 -shared -fPIC -o devpack/lib/libbqjit_atexit_log.so bench/stackdump/atexit_log.c -ldl
strip devpack/bin/* devpack/lib/*.so*
# The Python package as a wheel, with the PyTorch op library built against the
# torch of BQJIT_TORCH_PYTHON (a Python with the device's torch, 2.11 + CUDA
# 13.0: `pip install torch==2.11.0` into a venv; the device has no compiler
# dependencies of ours and no internet). Unpacked into devpack/site, which
# device_run.sh puts first on PYTHONPATH.
if [ -n "${BQJIT_TORCH_PYTHON:-}" ]; then
  rm -rf build-dev/wheel
  CMAKE_BUILD_PARALLEL_LEVEL=2 "$BQJIT_TORCH_PYTHON" -m pip wheel -q --no-build-isolation --no-deps \
    -w build-dev/wheel .
  mkdir -p devpack/site
  python3 -m zipfile -e build-dev/wheel/bqjit-*.whl devpack/site
  chmod +x devpack/site/bqjit/bin/bqjit
  [ -f devpack/site/bqjit/libbqjit_torch.so ] ||
    { echo "device_pack: the wheel has no PyTorch op library" >&2; exit 1; }
fi
du -sh devpack
