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
  cp build-dev/wheel/bqjit-*.whl devpack/
  chmod +x devpack/site/bqjit/bin/bqjit
  [ -f devpack/site/bqjit/libbqjit_torch.so ] ||
    { echo "device_pack: the wheel has no PyTorch op library" >&2; exit 1; }
fi
du -sh devpack
