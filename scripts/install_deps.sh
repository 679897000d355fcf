#!/usr/bin/env bash
# Installs bqjit's build dependencies from Debian's packages (redis-server
# for the tests of the remote tier, which start their own servers). The CUDA 13.0
# toolkit (NVRTC, cuda.h) is expected in /usr/local/cuda.
set -euo pipefail
packages=(cmake ninja-build g++ llvm-14-dev nlohmann-json3-dev libgtest-dev libcli11-dev
          libxxhash-dev clang-14 libclang-rt-14-dev python3 python3-venv
          libhiredis-dev redis-server libssl-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ ! -f /usr/local/cuda/include/nvrtc.h ]; then
  echo "install_deps: the CUDA toolkit is missing: /usr/local/cuda/include/nvrtc.h not found" >&2
  exit 1
fi
