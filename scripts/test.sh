#!/usr/bin/env bash
# Builds bqjit and runs the whole test suite (GPU tests skip without a GPU),
# each stage in its own build tree, none of them the quickstart's
# (build-quickstart):
#   normal  every test of the CTest suite                       (build)
#   python  installs ./python into a venv and runs python/tests  (build-python)
#           against build/'s libbqjit.so: the ctypes layer and logging tests
#           need no PyTorch (and fail, never skip, without the library);
#           the PyTorch tests skip when torch is not installed
#   asan    the same CPU suite with ASan+UBSan                   (build-asan)
#   tsan    the concurrency tests with TSan                      (build-tsan)
#   fuzz    each libFuzzer target for a bounded time             (build-fuzz, scripts/fuzz.sh)
# The plain suite runs first so that its failures show early. Sanitizer trees
# are built at -O1 with line tables only, to keep a 2-core CI machine lean.
# Each stage sets every CMake option it relies on (a tree configured
# otherwise, e.g. with BQJIT_BUILD_TESTS=OFF, is configured again), and a
# stage that runs no test fails. The summary gives each stage's time and
# test counts.
#
# Environment:
#   BQJIT_TEST_STAGES   stages to run, in order (default "normal python asan tsan fuzz")
#   BQJIT_FUZZ_SECONDS  seconds per fuzz target (default 30)
#   BQJIT_JOBS          build and ctest parallelism (default nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
jobs="${BQJIT_JOBS:-$(nproc)}"
stages="${BQJIT_TEST_STAGES:-normal python asan tsan fuzz}"
export BQJIT_FUZZ_SECONDS="${BQJIT_FUZZ_SECONDS:-30}"
export BQJIT_JOBS="$jobs"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# install_deps.sh installs redis-server: the remote tier's tests fail, never
# skip, without it (they start their own servers on free loopback ports).
export BQJIT_REQUIRE_REDIS=1
# Every option the test trees rely on, given each time.
test_options=(-DBQJIT_BUILD_TESTS=ON -DBQJIT_FUZZ=OFF)
normal_flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DBQJIT_SANITIZE= "${test_options[@]}")
sanitizer_flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1"
                 -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" "${test_options[@]}")

timings=()
counts=()
report() {
  local status=$?
  [ ${#timings[@]} -eq 0 ] || printf 'test.sh: %s\n' "${timings[@]}"
  [ ${#counts[@]} -eq 0 ] || printf 'test.sh: %s\n' "${counts[@]}"
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

# run_ctest NAME TREE [CTEST ARGS...]: the tests of TREE; fails when one fails
# or when none ran (all filtered out, skipped or disabled). Its counts go to
# the summary either way.
run_ctest() {
  local name="$1" tree="$2" rc=0
  shift 2
  local log="$tree/test.sh-ctest.log"
  ctest --test-dir "$tree" -j"$jobs" --output-on-failure --no-tests=error "$@" 2>&1 |
    tee "$log" || rc=$?
  local total failed skipped disabled passed
  total="$(sed -n 's/.* tests passed, [0-9]* tests\{0,1\} failed out of \([0-9]*\).*/\1/p' "$log" | tail -1)"
  failed="$(sed -n 's/.* tests passed, \([0-9]*\) tests\{0,1\} failed out of .*/\1/p' "$log" | tail -1)"
  skipped="$(grep -cE '^[[:space:]]*[0-9]+ - .* \(Skipped\)$' "$log" || true)"
  disabled="$(grep -cE '^[[:space:]]*[0-9]+ - .* \(Disabled\)$' "$log" || true)"
  # ctest's total counts skipped tests, not disabled ones.
  passed=$((${total:-0} - ${failed:-0} - skipped))
  counts+=("$(printf '%-16s %d tests: %d passed, %d failed, %d skipped (no GPU); %d disabled' \
    "$name" "${total:-0}" "$passed" "${failed:-0}" "$skipped" "$disabled")")
  [ "$rc" -eq 0 ] || return "$rc"
  if [ "$passed" -le 0 ]; then
    echo "test.sh: $name: no test ran" >&2
    return 1
  fi
}

build_normal() {
  cmake -S . -B build -G Ninja "${normal_flags[@]}" >/dev/null
  step "normal build" ninja -C build -j"$jobs" "$@"
}

normal() {
  build_normal
  step "normal tests" run_ctest "normal tests" build
}

# The Python package, installed (not run from the source tree) into a venv of
# its own, against build/'s library. pytest from PyPI, setuptools too when
# the venv lacks it.
python_venv() {
  local venv="$1"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check pytest 'setuptools>=61' wheel
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation \
    --no-deps --force-reinstall ./python
  # From the repository root, `import bqjit` must find the installed package.
  local where
  where="$(cd "$root" && "$venv/bin/python" -c 'import bqjit; print(bqjit.__file__)')"
  echo "bqjit installed at $where"
  case "$where" in
  "$root/$venv"/*) ;;
  *) echo "test.sh: python: bqjit imported from $where, not from the venv" >&2; return 1 ;;
  esac
}

# pytest_count WORD LINE: the number before WORD in pytest's summary LINE (0 if none).
pytest_count() {
  local n
  n="$(grep -oE "[0-9]+ $1" <<<"$2" | grep -oE '^[0-9]+' | head -1 || true)"
  echo "${n:-0}"
}

# run_pytest NAME VENV: python/tests with the installed package; fails when a
# test fails, when none passed (pytest's exit 5 included) or when one errs.
run_pytest() {
  local name="$1" venv="$2" rc=0
  local log="build-python/pytest.log"
  BQJIT_LIBRARY="$root/build/runtime/libbqjit.so" BQJIT_CACHE_DIR="$root/build-python/cache" \
    "$venv/bin/pytest" -q -rs -p no:cacheprovider python/tests 2>&1 | tee "$log" || rc=$?
  local last passed failed skipped errors
  last="$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|errors?|deselected)' "$log" | tail -1 || true)"
  passed="$(pytest_count passed "$last")"
  failed="$(pytest_count failed "$last")"
  skipped="$(pytest_count skipped "$last")"
  errors="$(pytest_count 'errors?' "$last")"
  counts+=("$(printf '%-16s %d tests: %d passed, %d failed, %d errors, %d skipped (no torch or GPU)' \
    "$name" $((passed + failed + errors + skipped)) "$passed" "$failed" "$errors" "$skipped")")
  [ "$rc" -eq 0 ] || return "$rc" # 5: no test was collected
  if [ "$passed" -le 0 ]; then
    echo "test.sh: $name: no test passed" >&2
    return 1
  fi
}

python_stage() {
  build_normal bqjit
  local venv=build-python/venv
  mkdir -p build-python
  step "python install" python_venv "$venv"
  step "python tests" run_pytest "python tests" "$venv"
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
    step "asan tests" run_ctest "asan tests" build-asan \
    -E '^CacheRobustness\.ReaderOutOfDescriptorsLeavesTheEntryAlone$'
}

# TSan over the concurrency tests: every test of these executables (those
# that exist; test_cache_robustness may not): the kernel cache, the lock
# files, fleets of processes and the journal's compaction, and (test_config)
# the process-wide log sink.
tsan() {
  cmake -S . -B build-tsan -G Ninja -DBQJIT_SANITIZE=thread "${sanitizer_flags[@]}" >/dev/null
  local targets=() t
  for t in test_kernel_cache test_file_lock test_cache_robustness test_config test_warm_table \
           test_planner test_remote_cache; do
    ninja -C build-tsan -t query "$t" >/dev/null 2>&1 && targets+=("$t")
  done
  step "tsan build" ninja -C build-tsan -j"$jobs" "${targets[@]}"
  local suites
  suites="$(for t in "${targets[@]}"; do build-tsan/tests/"$t" --gtest_list_tests; done |
            sed -n 's/^\([^ #][^ ]*\)\.\( .*\)\?$/\1/p' | sort -u | paste -sd'|')"
  TSAN_OPTIONS="suppressions=$root/sanitizers/tsan.supp:halt_on_error=1:second_deadlock_stack=1" \
    step "tsan tests" run_ctest "tsan tests" build-tsan -R "^($suites)\\."
}

fuzz() {
  step "fuzz (build+run)" bash scripts/fuzz.sh "$BQJIT_FUZZ_SECONDS"
}

step "install deps" bash scripts/install_deps.sh
for s in $stages; do
  case "$s" in
  normal | asan | tsan | fuzz) "$s" ;;
  python) python_stage ;;
  *) echo "test.sh: unknown stage '$s' (known: normal python asan tsan fuzz)" >&2; exit 2 ;;
  esac
done
