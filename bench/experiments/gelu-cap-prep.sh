#!/usr/bin/env bash
# After `bash bench/device_pack.sh` on main: builds the L1 gelu table (branch gelu-table-l1) and
# its occupancy-capped variants (unused shared memory a gelu block: gelu-table-l1-cap40 and -cap36,
# five and six 256-thread blocks an H100 SM; gelu-table-l1-cap21, ten 128-thread blocks an H200
# SM, silu's 1280 threads), bench/NOTES.md sixteenth session, into devpack/gelu-l1 and
# devpack/gelu-capNN for bench/results/2026-12-05-s16-next-call1-script.sh.txt.
exec bash "$(dirname "$0")/build-branches.sh" gelu-table-l1=devpack/gelu-l1 \
  gelu-table-l1-cap40=devpack/gelu-cap40 gelu-table-l1-cap36=devpack/gelu-cap36 \
  gelu-table-l1-cap21=devpack/gelu-cap21
