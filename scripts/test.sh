#!/usr/bin/env bash
# Builds bqjit and runs the whole test suite (GPU tests skip without a GPU),
# then, each in its own build tree:
#   asan   the same CPU suite with ASan+UBSan            (build-asan)
#   tsan   the concurrency tests with TSan                (build-tsan)
#   fuzz   each libFuzzer target for a bounded time       (build-fuzz, scripts/fuzz.sh)
# The plain suite runs first so that its failures show early. Sanitizer trees
# are built at -O1 with line tables only, to keep a 2-core CI machine lean.
#
# Environment:
#   BQJIT_TEST_STAGES   stages to run, in order (default "normal asan tsan fuzz")
#   BQJIT_FUZZ_SECONDS  seconds per fuzz target (default 30)
#   BQJIT_JOBS          build and ctest parallelism (default nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
jobs="${BQJIT_JOBS:-$(nproc)}"
stages="${BQJIT_TEST_STAGES:-normal asan tsan fuzz}"
export BQJIT_FUZZ_SECONDS="${BQJIT_FUZZ_SECONDS:-30}"
export BQJIT_JOBS="$jobs"
sanitizer_flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1"
                 -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1")

timings=()
report() {
  local status=$?
  [ ${#timings[@]} -eq 0 ] || printf 'test.sh: %s\n' "${timings[@]}"
  [ "$status" -eq 0 ] || echo "test.sh: FAILED (exit $status)" >&2
}
trap report EXIT
# step NAME COMMAND...: runs and times one step.
step() {
  local name="$1" t0=$SECONDS
  shift
  echo "=== test.sh: $name"
  "$@"
  timings+=("$(printf '%-16s %4d s' "$name" $((SECONDS - t0)))")
}

normal() {
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
  step "normal build" ninja -C build -j"$jobs"
  step "normal tests" ctest --test-dir build -j"$jobs" --output-on-failure
}

# ASan+UBSan over every CPU test. Excluded:
#   CacheRobustness.ReaderOutOfDescriptorsLeavesTheEntryAlone: it takes every
#   file descriptor away (RLIMIT_NOFILE) while bqjit runs, and UBSan's vptr
#   check needs a pipe() to read the object's vtable; without descriptors it
#   reports a valid BqjitError as "invalid vptr" (the runtime's limit, not a
#   bqjit bug; the test runs in the normal and TSan stages).
asan() {
  cmake -S . -B build-asan -G Ninja -DBQJIT_SANITIZE=address "${sanitizer_flags[@]}" >/dev/null
  step "asan build" ninja -C build-asan -j"$jobs"
  ASAN_OPTIONS="detect_leaks=1:strict_string_checks=1:check_initialization_order=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    step "asan tests" ctest --test-dir build-asan -j"$jobs" --output-on-failure \
    -E '^CacheRobustness\.ReaderOutOfDescriptorsLeavesTheEntryAlone$'
}

# TSan over the concurrency tests: every test of these executables (those
# that exist; test_cache_robustness may not).
tsan() {
  cmake -S . -B build-tsan -G Ninja -DBQJIT_SANITIZE=thread "${sanitizer_flags[@]}" >/dev/null
  local targets=() t
  for t in test_kernel_cache test_file_lock test_cache_robustness test_warm_table test_planner; do
    ninja -C build-tsan -t query "$t" >/dev/null 2>&1 && targets+=("$t")
  done
  step "tsan build" ninja -C build-tsan -j"$jobs" "${targets[@]}"
  local suites
  suites="$(for t in "${targets[@]}"; do build-tsan/tests/"$t" --gtest_list_tests; done |
            sed -n 's/^\([^ #][^ ]*\)\.\( .*\)\?$/\1/p' | sort -u | paste -sd'|')"
  TSAN_OPTIONS="suppressions=$root/sanitizers/tsan.supp:halt_on_error=1:second_deadlock_stack=1" \
    step "tsan tests" ctest --test-dir build-tsan -j"$jobs" --output-on-failure \
    --no-tests=error -R "^($suites)\\."
}

fuzz() {
  step "fuzz (build+run)" bash scripts/fuzz.sh "$BQJIT_FUZZ_SECONDS"
}

step "install deps" bash scripts/install_deps.sh
for s in $stages; do
  case "$s" in
  normal | asan | tsan | fuzz) "$s" ;;
  *) echo "test.sh: unknown stage '$s' (known: normal asan tsan fuzz)" >&2; exit 2 ;;
  esac
done
