#!/usr/bin/env bash
# After `bash bench/device_pack.sh` on main: builds the L1 gelu table (branch gelu-table-l1) and
# its occupancy-capped variants (unused shared memory a gelu block: gelu-table-l1-cap40 and -cap36,
# five and six 256-thread blocks an H100 SM; gelu-table-l1-cap21, ten 128-thread blocks an H200
# SM, silu's 1280 threads), bench/NOTES.md sixteenth session, each in a worktree, and puts their
# libraries in devpack/gelu-l1 and devpack/gelu-capNN for
# bench/results/2026-12-05-s16-next-call1-script.sh.txt.
set -eu
for branch in gelu-table-l1 gelu-table-l1-cap40 gelu-table-l1-cap36 gelu-table-l1-cap21; do
  wt=/tmp/bqjit-$branch
  [ -d "$wt" ] || git worktree add -f "$wt" "$branch" >/dev/null
  git -C "$wt" checkout -q "$branch"
  cmake -S "$wt" -B "$wt/build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  ninja -C "$wt/build" bqjit >/dev/null
  dest=devpack/${branch/gelu-table-l1-cap/gelu-cap}
  dest=${dest/gelu-table-l1/gelu-l1}
  mkdir -p "$dest"
  cp -L "$wt/build/runtime/libbqjit.so" "$dest/libbqjit.so"
  strip "$dest/libbqjit.so"
  echo "$dest: $(git -C "$wt" log --oneline -1)"
done
