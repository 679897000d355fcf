#!/usr/bin/env bash
# After `bash bench/device_pack.sh` on main: builds the branches gelu-table (gelu of bf16 gates
# from a table copied to shared memory) and gelu-table-l1 (the same table read through L1),
# bench/NOTES.md fifteenth session, with their GPU kernel tests, into devpack/gelu and
# devpack/gelu-l1, for the A/B of bench/results/2026-12-05-s15-next-call3-script.sh.txt.
exec bash "$(dirname "$0")/build-branches.sh" --tests gelu-table=devpack/gelu gelu-table-l1=devpack/gelu-l1
