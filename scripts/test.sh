#!/usr/bin/env bash
# Builds bqjit and runs the whole test suite (GPU tests skip without a GPU),
# each stage in its own build tree, none of them the quickstart's
# (build-quickstart):
#   normal  every test of the CTest suite                       (build)
#   install build/ installed into a temporary prefix, used from there alone:
#           the consumer example (examples/consumer) configured, built and
#           run (compile-only without a GPU), each installed header compiled
#           alone against the exported targets, a C program built with
#           pkg-config (bqjit.pc)                              (build, /tmp)
#   python  `pip install .` (twice) into a fresh venv, then python/tests  (build-python)
#           against the wheel's own libbqjit.so: the wheel, the ctypes layer and logging tests
#           need no PyTorch (and fail, never skip, without the library);
#           the PyTorch tests skip when torch is not installed
#   asan    the CPU suites with ASan+UBSan, less the three batch  (build-asan)
#           compiles (see asan() below)
#   tsan    the concurrency tests with TSan                      (build-tsan)
#   fuzz    each libFuzzer target for a bounded time             (build-fuzz, scripts/fuzz.sh)
# The plain suite runs first so that its failures show early. Every tree but
# the wheel's has line tables only (-g1), the ASan tree is built at -O0 and
# the TSan tree at -O1, to keep a 2-core CI machine within 45 minutes.
# Each stage sets every CMake option it relies on (a tree configured
# otherwise, e.g. with BQJIT_BUILD_TESTS=OFF, is configured again), and a
# stage that runs no test fails. The summary gives each stage's time and
# test counts.
#
# Environment:
#   BQJIT_TEST_STAGES   stages to run, in order (default "normal install python asan tsan fuzz")
#   BQJIT_FUZZ_SECONDS  seconds per fuzz target (default 30)
#   BQJIT_JOBS          build and ctest parallelism (default nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
jobs="${BQJIT_JOBS:-$(nproc)}"
stages="${BQJIT_TEST_STAGES:-normal install python asan tsan fuzz}"
export BQJIT_FUZZ_SECONDS="${BQJIT_FUZZ_SECONDS:-30}"
export BQJIT_JOBS="$jobs"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# install_deps.sh installs redis-server: the remote tier's tests fail, never
# skip, without it (they start their own servers on free loopback ports).
export BQJIT_REQUIRE_REDIS=1
# Every option the test trees rely on, given each time.
test_options=(-DBQJIT_BUILD_TESTS=ON -DBQJIT_FUZZ=OFF)
# Line tables only (-g1): full debug info costs a 2-core machine a third of
# the build, and a failing test's backtrace needs no more.
normal_flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG"
              -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" -DBQJIT_SANITIZE= "${test_options[@]}")
# The sanitizer trees: line tables only; ASan at -O0 (half the compile time
# of -O1 under ASan, the suite's own time is mostly NVRTC's, and nothing is
# optimized away from the checks), TSan at -O1 (its concurrency tests run
# many threads through bqjit's code).
asan_flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O0 -g1"
            -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O0 -g1" "${test_options[@]}")
tsan_flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1"
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

# The installed package, used as a host uses it. build/ (the command and
# libraries only) is installed into a fresh prefix under /tmp, and everything
# after that sees the prefix alone: the consumer and the header checks are
# configured from copies outside the checkout with CMAKE_PREFIX_PATH=prefix,
# and their build files must not name the checkout. Each check counts; the
# stage fails when one fails or none ran. The prefix is removed when all pass.
install_passed=0
install_failed=0
# install_check NAME COMMAND...: one check, its output in the stage's log.
install_check() {
  local name="$1"
  shift
  local log="$install_tmp/logs/$((install_passed + install_failed + 1)).log"
  if "$@" </dev/null >"$log" 2>&1; then
    install_passed=$((install_passed + 1))
    echo "  ok    $name"
  else
    install_failed=$((install_failed + 1))
    echo "  FAIL  $name ($log):"
    tail -30 "$log" | sed 's/^/        /'
  fi
}

# The files the package promises, and none that names the checkout.
installed_files() {
  local p="$1" version soname f
  version="$(cat VERSION)"
  soname="libbqjit.so.${version%.*}"
  for f in bin/bqjit "lib/libbqjit.so.$version" "lib/$soname" lib/libbqjit.so \
           lib/libbqjit_runtime.a lib/libbqjit_planner.a lib/libbqjit_cache.a lib/libbqjit_jit.a \
           lib/libbqjit_core.a lib/cmake/bqjit/bqjitConfig.cmake \
           lib/cmake/bqjit/bqjitConfigVersion.cmake lib/cmake/bqjit/bqjitTargets.cmake \
           lib/pkgconfig/bqjit.pc share/doc/bqjit/LICENSE share/doc/bqjit/docs/contract.md; do
    [ -e "$p/$f" ] || { echo "missing: $f"; return 1; }
  done
  for f in include/bqjit/*; do
    cmp "$f" "$p/$f" || { echo "not installed as in the source: $f"; return 1; }
  done
  readelf -d "$p/lib/libbqjit.so.$version" | grep -F "Library soname: [$soname]" ||
    { echo "soname of libbqjit.so is not $soname"; return 1; }
  if grep -rIl -e "$root" "$p"; then
    echo "the files above name the checkout ($root)"
    return 1
  fi
}

# `bqjit version` of the prefix, with no LD_LIBRARY_PATH (NVRTC through its RPATH).
installed_command() {
  local out
  out="$(env -u LD_LIBRARY_PATH "$1/bin/bqjit" --cache-dir "$install_tmp/cache" version)"
  echo "$out"
  grep -qx "bqjit $(cat VERSION)" <<<"$out" && grep -q "^cache format [0-9]" <<<"$out"
}

# cmake_against_prefix SOURCE BUILD: configure a project of the prefix alone.
cmake_against_prefix() {
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$install_tmp/prefix" \
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF || return 1
  local found
  found="$(sed -n 's/^bqjit_DIR:PATH=//p' "$2/CMakeCache.txt")"
  echo "bqjit_DIR=$found"
  [ "$found" = "$install_tmp/prefix/lib/cmake/bqjit" ]
}

# build_outside BUILD TARGET...: builds, and fails if the build files name the checkout.
build_outside() {
  local tree="$1"
  shift
  ninja -C "$tree" "$@" || return 1
  if grep -l -e "$root" "$tree/build.ninja" "$tree/CMakeCache.txt"; then
    echo "the build files above name the checkout ($root)"
    return 1
  fi
}

# The consumer: 0 and PASS on a GPU, 77 after compiling without one.
run_consumer() {
  local rc=0 out
  out="$(BQJIT_CACHE_DIR="$install_tmp/cache" "$1")" || rc=$?
  echo "$out"
  echo "exit $rc"
  case "$rc" in
  0) grep -q "^consumer: PASS " <<<"$out" ;;
  77) grep -q "^consumer: compiled " <<<"$out" && grep -q "^consumer: no GPU" <<<"$out" ;;
  *) return 1 ;;
  esac
}

# A C program built with pkg-config alone, and run.
pkgconfig_program() {
  local pc="$install_tmp/prefix/lib/pkgconfig" cflags libs
  [ "$(PKG_CONFIG_PATH="$pc" pkg-config --modversion bqjit)" = "$(cat VERSION)" ] ||
    { echo "pkg-config --modversion bqjit is not $(cat VERSION)"; return 1; }
  cflags="$(PKG_CONFIG_PATH="$pc" pkg-config --cflags bqjit)"
  libs="$(PKG_CONFIG_PATH="$pc" pkg-config --libs bqjit)"
  echo "cflags: $cflags; libs: $libs"
  # shellcheck disable=SC2086
  cc -std=c11 -Wall -Wextra -Werror $cflags tests/install/pkgconfig_check.c $libs \
    -o "$install_tmp/pkgconfig_check" || return 1
  LD_LIBRARY_PATH="$install_tmp/prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$install_tmp/pkgconfig_check" "$(cat VERSION)" "$install_tmp/cache-c"
}

install_checks() {
  local p="$install_tmp/prefix" target what
  install_check "cmake --install build --prefix $p" cmake --install build --prefix "$p"
  install_check "installed files, soname, no path into the checkout" installed_files "$p"
  install_check "bqjit version (installed, no LD_LIBRARY_PATH)" installed_command "$p"
  cp -r examples/consumer "$install_tmp/consumer"
  install_check "consumer: configure against the prefix" \
    cmake_against_prefix "$install_tmp/consumer" "$install_tmp/consumer-build"
  install_check "consumer: build" build_outside "$install_tmp/consumer-build"
  install_check "consumer: run (compile-only without a GPU)" \
    run_consumer "$install_tmp/consumer-build/consumer"
  cp -r tests/install "$install_tmp/headers"
  install_check "headers: configure against the prefix" \
    cmake_against_prefix "$install_tmp/headers" "$install_tmp/headers-build"
  if [ -f "$install_tmp/headers-build/checks.txt" ]; then
    while read -r target what; do
      install_check "header $what alone" build_outside "$install_tmp/headers-build" "$target"
    done <"$install_tmp/headers-build/checks.txt"
  fi
  install_check "pkg-config: a C program against bqjit.pc" pkgconfig_program
}

install_stage() {
  build_normal bqjit bqjit_cli
  install_tmp="$(mktemp -d "${TMPDIR:-/tmp}/bqjit-install.XXXXXX")"
  mkdir -p "$install_tmp/logs"
  step "install checks" install_checks
  counts+=("$(printf '%-16s %d checks: %d passed, %d failed' "install checks" \
    $((install_passed + install_failed)) "$install_passed" "$install_failed")")
  if [ "$install_failed" -ne 0 ]; then
    echo "test.sh: install: $install_failed checks failed; kept $install_tmp" >&2
    return 1
  fi
  if [ "$install_passed" -le 0 ]; then
    echo "test.sh: install: no check ran" >&2
    return 1
  fi
  rm -rf "$install_tmp"
}

# The Python package as a user gets it: `pip install .` into a fresh venv
# builds libbqjit.so and the bqjit command with CMake (scikit-build-core, from
# PyPI in pip's isolated build environment) and ships them in the wheel; no
# BQJIT_LIBRARY, no build tree. Installed twice: the second install reuses
# build-wheel/ and must work too. (No torch here: the wheel has the ctypes
# path; the PyTorch op library is built and tested on the GPU machine.)
python_venv() {
  local venv="$1"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check pytest
  local i
  for i in 1 2; do
    CMAKE_BUILD_PARALLEL_LEVEL="$jobs" "$venv/bin/python" -m pip install -q \
      --disable-pip-version-check --force-reinstall --no-deps . || return 1
  done
  # From the repository root, `import bqjit` must find the installed package,
  # and it must use the library inside it.
  local where lib
  where="$(cd "$root" && "$venv/bin/python" -c 'import bqjit; print(bqjit.__file__)')"
  lib="$(cd "$root" && env -u BQJIT_LIBRARY "$venv/bin/python" -c 'import bqjit; print(bqjit.library_path())')"
  echo "bqjit installed at $where, its library at $lib"
  case "$where" in
  "$root/$venv"/*) ;;
  *) echo "test.sh: python: bqjit imported from $where, not from the venv" >&2; return 1 ;;
  esac
  case "$lib" in
  "$root/$venv"/*) ;;
  *) echo "test.sh: python: bqjit uses $lib, not the library in its wheel" >&2; return 1 ;;
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
  env -u BQJIT_LIBRARY BQJIT_TEST_WHEEL=1 BQJIT_CACHE_DIR="$root/build-python/cache" \
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
  local venv=build-python/venv
  mkdir -p build-python
  step "python install" python_venv "$venv"
  step "python tests" run_pytest "python tests" "$venv"
}

# suites_of TREE TEST...: the GoogleTest suites of these test executables of
# TREE, as a regex alternation (for ctest -R).
suites_of() {
  local tree="$1" t
  shift
  for t in "$@"; do "$tree/tests/$t" --gtest_list_tests; done |
    sed -n 's/^\([^ #][^ ]*\)\.\( .*\)\?$/\1/p' | sort -u | paste -sd'|'
}

# ASan+UBSan over the CPU suites: every test executable but the GPU suites
# (tests/test_gpu_*: their GPU cases only skip here, and their few checks of
# the case lists are plain logic, run in the normal stage), and what they
# run (the bqjit command, the fake driver). Excluded:
#   CacheRobustness.ReaderOutOfDescriptorsLeavesTheEntryAlone: it takes every
#   file descriptor away (RLIMIT_NOFILE) while bqjit runs, and UBSan's vptr
#   check needs a pipe() to read the object's vtable; without descriptors it
#   reports a valid BqjitError as "invalid vptr" (the runtime's limit, not a
#   bqjit bug; the test runs in the normal and TSan stages).
#   The three batch compiles (CompilerTest.MatrixOfAllSpecializationsCompiles,
#   CompilerTest.EveryRegimesShapeOfEveryKnownDeviceCompiles,
#   CliTest.ExampleManifestPrewarmsCompletely): hundreds of NVRTC compiles,
#   two thirds of the stage's time under ASan, in NVRTC's uninstrumented code;
#   bqjit's side of the same path (source, options, batch threads, the cache)
#   runs instrumented in the smaller compile, prewarm and cache tests, and the
#   three run in the normal stage.
asan_excluded=(CacheRobustness.ReaderOutOfDescriptorsLeavesTheEntryAlone
               CompilerTest.MatrixOfAllSpecializationsCompiles
               CompilerTest.EveryRegimesShapeOfEveryKnownDeviceCompiles
               CliTest.ExampleManifestPrewarmsCompletely)
asan() {
  cmake -S . -B build-asan -G Ninja -DBQJIT_SANITIZE=address "${asan_flags[@]}" >/dev/null
  local targets=() t
  for t in tests/test_*.cpp; do
    t="$(basename "$t" .cpp)"
    case "$t" in test_gpu_*) continue ;; esac
    targets+=("$t")
  done
  step "asan build" ninja -C build-asan -j"$jobs" "${targets[@]}"
  local suites excluded
  suites="$(suites_of build-asan "${targets[@]}")"
  excluded="$(printf '%s\n' "${asan_excluded[@]}" | sed 's/\./\\./' | paste -sd'|')"
  ASAN_OPTIONS="detect_leaks=1:strict_string_checks=1:check_initialization_order=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    step "asan tests" run_ctest "asan tests" build-asan -R "^(($suites)\\.|docs_)" \
    -E "^($excluded)\$"
}

# TSan over the concurrency tests: every test of these executables (those
# that exist; test_cache_robustness may not): the kernel cache, the lock
# files, fleets of processes and the journal's compaction, (test_config) the
# process-wide log sink, (test_compile_worker) the background compile thread
# and, on the fake driver, (test_kernel_launch) launches while background
# variants take their slots and (test_autotuner) the tuner's thread.
tsan() {
  cmake -S . -B build-tsan -G Ninja -DBQJIT_SANITIZE=thread "${tsan_flags[@]}" >/dev/null
  local targets=() t
  for t in test_kernel_cache test_file_lock test_cache_robustness test_config test_warm_table \
           test_planner test_remote_cache test_compile_worker test_kernel_launch test_autotuner; do
    ninja -C build-tsan -t query "$t" >/dev/null 2>&1 && targets+=("$t")
  done
  step "tsan build" ninja -C build-tsan -j"$jobs" "${targets[@]}"
  local suites
  suites="$(suites_of build-tsan "${targets[@]}")"
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
  install) install_stage ;;
  python) python_stage ;;
  *) echo "test.sh: unknown stage '$s' (known: normal install python asan tsan fuzz)" >&2; exit 2 ;;
  esac
done
