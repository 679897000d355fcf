#!/usr/bin/env bash
# After `bash bench/device_pack.sh` on main: builds the branches gelu-table (gelu of bf16 gates
# from a table copied to shared memory) and gelu-table-l1 (the same table read through L1),
# bench/NOTES.md fifteenth session, each in a worktree, and puts their libraries and GPU kernel
# tests beside main's in devpack/gelu and devpack/gelu-l1, for the A/B of
# bench/results/2026-12-05-s15-next-call3-script.sh.txt.
set -eu
for branch in gelu-table gelu-table-l1; do
  wt=/tmp/bqjit-$branch
  [ -d "$wt" ] || git worktree add -f "$wt" "$branch" >/dev/null
  git -C "$wt" checkout -q "$branch"
  cmake -S "$wt" -B "$wt/build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  ninja -C "$wt/build" bqjit test_gpu_kernel >/dev/null
  dest=devpack/${branch/gelu-table/gelu}
  mkdir -p "$dest"
  cp -L "$wt/build/runtime/libbqjit.so" "$dest/libbqjit.so"
  cp "$wt/build/tests/test_gpu_kernel" "$dest/"
  strip "$dest"/*
  echo "$dest: $(git -C "$wt" log --oneline -1)"
done
