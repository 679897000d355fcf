#!/usr/bin/env bash
# After `bash bench/device_pack.sh` on main: builds the branch gelu-table (gelu of bf16 gates
# from a shared-memory table, bench/NOTES.md fifteenth session) in a worktree and puts its
# library and GPU kernel tests beside main's, in devpack/gelu, for the A/B of
# bench/results/2026-12-05-s15-next-call3-script.sh.txt.
set -eu
wt=${GELU_TABLE_WORKTREE:-/tmp/bqjit-gelu-table}
[ -d "$wt" ] || git worktree add -f "$wt" gelu-table >/dev/null
cmake -S "$wt" -B "$wt/build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$wt/build" bqjit test_gpu_kernel >/dev/null
mkdir -p devpack/gelu
cp -L "$wt/build/runtime/libbqjit.so" devpack/gelu/libbqjit.so
cp "$wt/build/tests/test_gpu_kernel" devpack/gelu/
strip devpack/gelu/*
echo "devpack/gelu: $(git -C "$wt" log --oneline -1)"
