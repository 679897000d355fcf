#!/usr/bin/env bash
# Builds experiment branches beside main's device pack: each BRANCH=DEST in a worktree of its
# own (/tmp/bqjit-BRANCH), its libbqjit.so (and with --tests its test_gpu_kernel) copied,
# stripped, to DEST (under devpack/, which `bash bench/device_pack.sh` makes first).
# Usage: bash bench/experiments/build-branches.sh [--tests] BRANCH=DEST...
set -eu
tests=0
if [ "${1:-}" = --tests ]; then tests=1; shift; fi
for pair in "$@"; do
  branch=${pair%%=*} dest=${pair#*=}
  wt=/tmp/bqjit-$branch
  [ -d "$wt" ] || git worktree add -f "$wt" "$branch" >/dev/null
  git -C "$wt" checkout -q "$branch"
  cmake -S "$wt" -B "$wt/build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  targets=(bqjit)
  [ $tests = 1 ] && targets+=(test_gpu_kernel)
  ninja -C "$wt/build" "${targets[@]}" >/dev/null
  mkdir -p "$dest"
  cp -L "$wt/build/runtime/libbqjit.so" "$dest/libbqjit.so"
  [ $tests = 1 ] && cp "$wt/build/tests/test_gpu_kernel" "$dest/"
  strip "$dest"/*
  echo "$dest: $(git -C "$wt" log --oneline -1)"
done
