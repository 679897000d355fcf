#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ in build-fuzz (clang-14, libraries
# instrumented with -fsanitize=fuzzer-no-link,address,undefined) and runs
# each for a bounded time from its seed corpus in fuzz/corpus/<target>/.
# Fails on any crash, sanitizer report, leak, timeout or broken invariant;
# the input that did it is left in build-fuzz/artifacts/.
#
#   bash scripts/fuzz.sh [SECONDS_EACH] [TARGET...]    (default 60 s; every target)
#
# Environment: BQJIT_FUZZ_SECONDS (instead of the first argument),
# BQJIT_JOBS (build parallelism, default nproc), CXX_FUZZ / CC_FUZZ (the
# compilers, default clang++-14 / clang-14).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${BQJIT_FUZZ_SECONDS:-60}"
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
  seconds="$1"
  shift
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_spec fuzz_manifest fuzz_metadata fuzz_c_api fuzz_bundle fuzz_journal)
jobs="${BQJIT_JOBS:-$(nproc)}"
build=build-fuzz

cmake -S . -B "$build" -G Ninja -DBQJIT_FUZZ=ON -DBQJIT_BUILD_TESTS=OFF \
  -DCMAKE_CXX_COMPILER="${CXX_FUZZ:-clang++-14}" -DCMAKE_C_COMPILER="${CC_FUZZ:-clang-14}" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" >/dev/null
ninja -C "$build" -j"$jobs" "${targets[@]}"

export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1:strict_string_checks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

status=0
summary=()
for t in "${targets[@]}"; do
  work="$build/corpus/$t" # new inputs go here; fuzz/corpus/<target> stays as committed
  mkdir -p "$work" "$build/artifacts"
  log="$build/$t.log"
  echo "fuzz: $t for ${seconds} s (log: $log)"
  rc=0
  "$build/fuzz/$t" "$work" "fuzz/corpus/$t" -dict=fuzz/bqjit.dict -max_total_time="$seconds" \
    -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$build/artifacts/$t-" >"$log" 2>&1 || rc=$?
  done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)"
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  cov="$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' <<<"$done_line")"
  ft="$(sed -n 's/.* ft: \([0-9]*\) .*/\1/p' <<<"$done_line")"
  corp="$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\) .*/\1/p' <<<"$done_line")"
  eps="$(sed -n 's/.* exec\/s: \([0-9]*\) .*/\1/p' <<<"$done_line")"
  if [ "$rc" -ne 0 ]; then
    status=1
    summary+=("$t: FAILED (exit $rc) after ${runs:-?} runs; see $log and $build/artifacts/")
    tail -n 60 "$log" >&2
  else
    summary+=("$t: ok, ${runs:-?} runs in ${seconds} s (${eps:-?} exec/s), cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}")
  fi
done
printf 'fuzz: %s\n' "${summary[@]}"
exit "$status"
