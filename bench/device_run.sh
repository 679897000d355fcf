#!/usr/bin/env bash
# Runs on the GPU machine: every GPU test, the examples (host_app; consumer,
# built against devpack/ as an installed prefix), the CLI checks, the
# Python tests, the benchmark and a tuning demonstration; logs go to $OUT.
# Usage: bash bench/device_run.sh [tests|torch|bench|tune|warm|all|ab|ncu|act|fp4|fusion|pdl|autotune|waves] [bench args...]
#   waves: T swept across one and two waves at two H, few-token shapes side by
#   side (FP4 one- and two-vector teams; 8-bit with and without the full-SM
#   promise), for a wave-aware variant choice (WAVES_FP4_H/T, WAVES_ACT_H/T).
#   autotune: BQJIT_AUTOTUNE=1 beside the default on the same rows of bench.py
#   (AUTOTUNE_SHAPES, H:T:G,...), each on an empty cache of its own, in one call;
#   the tuner's log lines (what it tuned, the winner, its time) in autotune.txt.
#   pdl: programmatic dependent launch at decode sizes (bench/pdl), in CUDA graphs.
#   torch: the wheel (devpack/site, with its C++ op library): the Python tests,
#   the Python-op fallback's tests, and bench/torch_overhead.py.
#   warm: the warm-path benchmark (bench/warm_path), C++ and C API.
#   act: the activations of issue 17 (bench/bench_act.py: silu, swiglu split and
#   interleaved, gelu_tanh, gelu, torch.compile of each, MXFP8 against G = 128),
#   the GPU kernel suite's activation cases, and `bqjit verify` of gpt-oss's and
#   a GELU spec.
#   fp4: the FP4 outputs of issue 18: the kernel suite's FP4 cases (GpuKernelFp4:
#   NVFP4, MXFP4, swizzled_128x4), the NVFP4 global_scale launch check, `bqjit
#   verify` of NVFP4 and MXFP4 specs, the FP4 Python tests (with devpack/site's
#   C++ op library where packed) and bench/bench_fp4.py (NVFP4 and MXFP4 against
#   a same-size copy and torch.compile).
#   ab: this build against devpack/old (another build's libbqjit.so); ncu: both
#   under Nsight Compute at one shape (NCU_SHAPE=H:T:G).
#   fusion: issue 20 with the wheel (devpack/site): the kernel suite's min_scale
#   cases, `bqjit verify` of a min_scale spec, python/tests/test_fusion.py (the
#   pass on the GPU) and the min_scale keyword tests, then
#   bench/bench_fusion_mlp.py (the gated MLP block, torch.compile alone and with
#   the pass). FUSION_PART=tests or bench runs one half (each fits 600 s alone).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$PWD/devpack/lib:${LD_LIBRARY_PATH:-}
export BQJIT_CACHE_DIR=/tmp/bqjit-cache
export BQJIT_LIBRARY=$PWD/devpack/lib/libbqjit.so
export PYTHONPATH=$PWD/python:${PYTHONPATH:-}
# The exit status of the pipeline just run (pipefail: the Python's, not
# tee's), one line in $OUT/exits.txt: a crash at exit prints no error of its own.
exits() {
  local rc=$?
  echo "$1: exit $rc" | tee -a "$OUT/exits.txt"
}
what=${1:-all}
shift || true
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"

if [ "$what" = tests ] || [ "$what" = all ]; then
  # The GPU suites; the CPU suites run in CI. The fake-driver tests look for
  # the fake library at its build path, so they are left to CI as well.
  for name in test_gpu_kernel test_gpu_runtime test_gpu_multi_device \
              "test_cuda_driver --gtest_filter=-FakeDriverTest.*"; do
    bin=${name%% *}
    args=${name#"$bin"}
    [ -x devpack/bin/$bin ] || { echo "$bin: not built"; continue; }
    devpack/bin/$bin $args --gtest_brief=1 >"$OUT/$bin.log" 2>&1
    echo "$bin: exit $? $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$OUT/$bin.log" | tr '\n' ' ')"
  done | tee "$OUT/summary.txt"
  devpack/bin/host_app 2>&1 | tee -a "$OUT/summary.txt"
  # examples/consumer, built against devpack/ as an installed prefix.
  if [ -x devpack/bin/consumer ]; then
    devpack/bin/consumer >"$OUT/consumer.log" 2>&1
    echo "consumer: exit $? $(tail -1 "$OUT/consumer.log")" | tee -a "$OUT/summary.txt"
  else
    echo "consumer: not built" | tee -a "$OUT/summary.txt"
  fi
  for spec in "hidden=7104 G=96" "hidden=7168 G=128" "hidden=14336 G=64" "hidden=18432 G=192 layout=col_tma" \
              "hidden=2304 G=96 out=int8 layout=ue8m0_packed ue8m0=1"; do
    for t in 7 3000; do
      devpack/bin/bqjit verify $spec --tokens $t 2>&1 | tail -1 | cut -c1-160 | tee -a "$OUT/summary.txt"
    done
  done
  if [ -z "${NO_PYTEST:-}" ]; then
    (cd python && timeout 300 python3 -m pytest -q tests 2>&1 | tail -4) | tee "$OUT/pytest.txt"
  fi
fi
if [ "$what" = torch ] || [ "$what" = all ]; then
  if [ -d devpack/site ]; then
    # The installed package as a user has it: its own libbqjit.so, no BQJIT_LIBRARY.
    (
      unset BQJIT_LIBRARY
      export PYTHONPATH=$PWD/devpack/site BQJIT_EXPECT_OPS=cpp
      # Not from python/: `python -m` puts the current directory first on
      # sys.path, and python/bqjit would shadow the wheel.
      repo=$PWD
      cd /tmp && timeout 400 python3 -m pytest -q -rs -p no:cacheprovider "$repo/python/tests" 2>&1 | tail -15
    ) | tee "$OUT/pytest-wheel.txt"
    (
      unset BQJIT_LIBRARY
      export PYTHONPATH=$PWD/devpack/site BQJIT_TORCH_OPS=python BQJIT_EXPECT_OPS=python
      repo=$PWD
      cd /tmp && timeout 300 python3 -m pytest -q -p no:cacheprovider "$repo/python/tests/test_torch_ops.py" \
        "$repo/python/tests/test_bqjit.py" "$repo/python/tests/test_pdl.py" \
        -k "masked or vllm or errors or compile or graph or backend or reuse or pdl" 2>&1 | tail -4
    ) | tee "$OUT/pytest-python-ops.txt"
    (
      unset BQJIT_LIBRARY
      export PYTHONPATH=$PWD/devpack/site
      timeout 300 python3 bench/torch_overhead.py --json "$OUT/torch_overhead.json" 2>&1
    ) | tee "$OUT/torch_overhead.txt"
  else
    echo "torch: devpack/site missing (pack with BQJIT_TORCH_PYTHON set)" | tee "$OUT/pytest-wheel.txt"
  fi
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  timeout 270 python3 bench/bench.py --json "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.txt"
  exits bench.py
fi
if [ "$what" = act ]; then
  # The new cases of the kernel suite (their names carry the activation, the
  # gate/up layout and the rounding), then the whole suite's count.
  # ACT_NO_TESTS=1 after `tests` in the same call: the whole suite ran already.
  if [ -z "${ACT_NO_TESTS:-}" ]; then
    devpack/bin/test_gpu_kernel --gtest_brief=1 \
      --gtest_filter='*swiglu*:*gelu*:*interleaved*:*floor*:*bytes*:GpuKernelCases.*' \
      >"$OUT/test_gpu_kernel_act.log" 2>&1
    echo "test_gpu_kernel (activation cases): exit $? $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' \
      "$OUT/test_gpu_kernel_act.log" | tr '\n' ' ')" | tee "$OUT/summary_act.txt"
  fi
  grep -c '^\[allowance\]' "$OUT/test_gpu_kernel_act.log" "$OUT/test_gpu_kernel.log" 2>/dev/null |
    sed 's/^/cases that used the boundary allowance: /' | tee -a "$OUT/summary_act.txt"
  oss="hidden=2880 act=swiglu alpha=1.702 beta=1 limit=7 gate_up=interleaved ue8m0=1"
  for spec in "$oss G=32 layout=bytes rounding=floor" "$oss G=64 layout=col_tma" \
              "hidden=21504 G=128 act=gelu_tanh" "hidden=21504 G=128 act=gelu" \
              "hidden=14336 G=32 layout=bytes ue8m0=1 rounding=floor out=fp8_e5m2"; do
    for t in 7 3001; do
      devpack/bin/bqjit verify $spec --tokens $t 2>&1 | tail -1 | cut -c1-200 | tee -a "$OUT/summary_act.txt"
    done
  done
  timeout 400 python3 bench/bench_act.py --json "$OUT/bench_act.json" "$@" 2>&1 | tee "$OUT/bench_act.txt"
  exits bench_act.py
fi
if [ "$what" = fp4 ]; then
  devpack/bin/test_gpu_kernel --gtest_brief=1 --gtest_filter='*Fp4*' >"$OUT/test_gpu_kernel_fp4.log" 2>&1
  echo "test_gpu_kernel (FP4 cases): exit $? $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' \
    "$OUT/test_gpu_kernel_fp4.log" | tr '\n' ' ')" | tee "$OUT/summary_fp4.txt"
  grep -c '^\[allowance\]' "$OUT/test_gpu_kernel_fp4.log" |
    sed 's/^/FP4 cases that used the boundary allowance: /' | tee -a "$OUT/summary_fp4.txt"
  devpack/bin/test_gpu_runtime --gtest_brief=1 --gtest_filter='*Nvfp4*' >"$OUT/test_gpu_runtime_fp4.log" 2>&1
  echo "test_gpu_runtime (NVFP4 global_scale): exit $? $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' \
    "$OUT/test_gpu_runtime_fp4.log" | tr '\n' ' ')" | tee -a "$OUT/summary_fp4.txt"
  for spec in "hidden=7168 G=16 out=fp4_e2m1 layout=swizzled_128x4" \
              "hidden=2064 G=16 out=fp4_e2m1 layout=bytes in=fp32" \
              "hidden=2880 G=32 out=fp4_e2m1 ue8m0=1 layout=swizzled_128x4" \
              "hidden=2880 G=32 out=fp4_e2m1 ue8m0=1 layout=bytes rounding=floor act=swiglu alpha=1.702 beta=1 limit=7 gate_up=interleaved"; do
    for t in 7 3001; do
      devpack/bin/bqjit verify $spec --tokens $t 2>&1 | tail -1 | cut -c1-220 | tee -a "$OUT/summary_fp4.txt"
    done
  done
  devpack/bin/bqjit verify hidden=7168 G=16 out=fp4_e2m1 layout=swizzled_128x4 --tokens 1025 \
    --global-scale 0.001 2>&1 | tail -1 | cut -c1-220 | tee -a "$OUT/summary_fp4.txt"
  if [ -d devpack/site ]; then
    (
      unset BQJIT_LIBRARY
      export PYTHONPATH=$PWD/devpack/site:$PWD/python/tests BQJIT_EXPECT_OPS=cpp
      repo=$PWD
      cd /tmp && timeout 300 python3 -m pytest -q -rs -p no:cacheprovider "$repo/python/tests/test_fp4.py" 2>&1 |
        tail -8
    ) | tee "$OUT/pytest_fp4.txt"
    (
      unset BQJIT_LIBRARY
      export PYTHONPATH=$PWD/devpack/site BQJIT_TORCH_OPS=python
      repo=$PWD
      cd /tmp && timeout 300 python3 -m pytest -q -p no:cacheprovider "$repo/python/tests/test_fp4.py" 2>&1 |
        tail -4
    ) | tee "$OUT/pytest_fp4_python_ops.txt"
    (
      unset BQJIT_LIBRARY
      export PYTHONPATH=$PWD/devpack/site
      timeout 400 python3 bench/bench_fp4.py --json "$OUT/bench_fp4.json" \
        --launches "${FP4_LAUNCHES:-1,8,256;2,8,128;2,8,256;4,8,64;1,4,256;8,4,32}" "$@" 2>&1
    ) | tee "$OUT/bench_fp4.txt"
    exits bench_fp4.py
  else
    (cd python && timeout 300 python3 -m pytest -q -rs tests/test_fp4.py 2>&1 | tail -8) | tee "$OUT/pytest_fp4.txt"
    timeout 400 python3 bench/bench_fp4.py --json "$OUT/bench_fp4.json" \
      --launches "${FP4_LAUNCHES:-1,8,256;2,8,128;2,8,256;4,8,64;1,4,256;8,4,32}" "$@" 2>&1 |
      tee "$OUT/bench_fp4.txt"
    exits bench_fp4.py
  fi
  # The tuner's view of the two formats at one large shape (records go to the
  # run's cache, so a later bench in the same call uses them).
  if [ -n "${FP4_TUNE:-}" ]; then
    for spec in "hidden=14336 G=16 out=fp4_e2m1 layout=swizzled_128x4" \
                "hidden=14336 G=32 out=fp4_e2m1 ue8m0=1 layout=swizzled_128x4"; do
      timeout 120 devpack/bin/bqjit tune $spec --tokens 8192 --iters 10 2>&1 | tail -8 |
        tee -a "$OUT/tune_fp4.txt"
    done
  fi
fi
if [ "$what" = fusion ]; then
  part=${FUSION_PART:-all}
  if [ "$part" != bench ]; then
    devpack/bin/test_gpu_kernel --gtest_brief=1 --gtest_filter='*minscale*:GpuKernelCases.*' \
      >"$OUT/test_gpu_kernel_minscale.log" 2>&1
    echo "test_gpu_kernel (min_scale cases): exit $? $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' \
      "$OUT/test_gpu_kernel_minscale.log" | tr '\n' ' ')" | tee "$OUT/summary_fusion.txt"
    for spec in "hidden=14336 G=128 min_scale=2.2321428e-13" \
                "hidden=12288 G=128 min_scale=1e-3 layout=col_tma ue8m0=1" "hidden=768 G=96 out=int8 min_scale=3e-3"; do
      devpack/bin/bqjit verify $spec --tokens 1025 2>&1 | tail -1 | cut -c1-200 | tee -a "$OUT/summary_fusion.txt"
    done
    if [ -d devpack/site ]; then
      (
        unset BQJIT_LIBRARY
        # The GPU cases only (the CPU cases of test_fusion.py run where no GPU is).
        export PYTHONPATH=$PWD/devpack/site BQJIT_EXPECT_OPS=cpp BQJIT_FUSION_DEVICES=cuda
        repo=$PWD
        cd /tmp && timeout 330 python3 -m pytest -q -rs -s -p no:cacheprovider "$repo/python/tests/test_fusion.py" \
          "$repo/python/tests/test_torch_ops.py" -k "test_fusion or min_scale" 2>&1 |
          grep -E '^\[fusion\]|passed|failed|error|FAILED|ERROR|SKIPPED' | tail -60
      ) | tee "$OUT/pytest-fusion.txt"
    else
      echo "fusion: devpack/site missing (pack with BQJIT_TORCH_PYTHON set)" | tee "$OUT/pytest-fusion.txt"
    fi
  fi
  if [ "$part" != tests ]; then
    (
      unset BQJIT_LIBRARY
      export PYTHONPATH=$PWD/devpack/site
      timeout 400 python3 bench/bench_fusion_mlp.py --json "$OUT/bench_fusion_mlp.json" "$@" 2>&1
    ) | tee "$OUT/bench_fusion_mlp.txt"
  fi
fi
if [ "$what" = warm ] || [ "$what" = all ]; then
  timeout 240 devpack/bin/bench_warm_path --json "$OUT/warm_path.json" 2>&1 | tee "$OUT/warm_path.txt"
fi
if [ "$what" = ab ]; then
  # The kernel of another build (devpack/old/libbqjit.so, its own cache) timed
  # against this one, alternating processes: B A B A, so that drift in the
  # machine's state shows up as a difference between the two runs of one build.
  shapes=${AB_SHAPES:-14336:8192:128,18432:8192:96,18432:8192:128,18432:8192:192,25600:8192:128,7168:8192:64,2048:8192:128,14336:1024:128,14336:256:128,18432:64:128,14336:16:128,18432:1:128}
  mkdir -p "$OUT/ab"
  for round in 1 2; do
    for which in new old; do
      lib=$PWD/devpack/lib/libbqjit.so pythonpath=$PWD/python
      [ "$which" = old ] && lib=$PWD/devpack/old/libbqjit.so
      # The other build's binding too, where it was packed (devpack/old/python).
      [ "$which" = old ] && [ -d devpack/old/python ] && pythonpath=$PWD/devpack/old/python
      echo "== $which (round $round)" | tee -a "$OUT/ab.txt"
      PYTHONPATH=$pythonpath BQJIT_LIBRARY=$lib BQJIT_CACHE_DIR=/tmp/bqjit-cache-$which timeout 120 python3 bench/bench.py \
        --json "$OUT/ab/$which-$round.json" --no-compile --no-eager --replays 11 --shapes "$shapes" "$@" \
        2>&1 | tee -a "$OUT/ab.txt"
    done
  done
fi
if [ "$what" = pdl ]; then
  # Programmatic dependent launch at decode sizes, in CUDA graphs behind a producer.
  timeout 200 devpack/bin/bench_pdl --json "$OUT/pdl.json" 2>&1 | tee "$OUT/pdl.txt"
fi
if [ "$what" = ncu ] && [ -n "${NCU_CASES:-}" ]; then
  # Hardware counters of one launch of this build per case (';'-separated
  # bench/one_launch.py arguments), e.g. NCU_CASES="7168:8192:128;7168:8192:32 out=fp4_e2m1 ue8m0=1".
  IFS=';' read -ra cases <<<"$NCU_CASES"
  i=0
  for c in "${cases[@]}"; do
    i=$((i + 1))
    # shellcheck disable=SC2086
    timeout 120 ncu --clock-control none -k regex:silu_mul_quant -s 2 -c 1 --section SpeedOfLight \
      --section Occupancy --section SchedulerStats --section WarpStateStats --section LaunchStats \
      --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section InstructionStats \
      python3 bench/one_launch.py $c >"$OUT/ncu-case$i.txt" 2>&1
    echo "ncu case $i ($c): exit $?" | tee -a "$OUT/summary.txt"
  done
elif [ "$what" = ncu ]; then
  # Hardware counters of one launch of each build at the throughput shape.
  for which in new old; do
    lib=$PWD/devpack/lib/libbqjit.so
    [ "$which" = old ] && lib=$PWD/devpack/old/libbqjit.so
    BQJIT_LIBRARY=$lib BQJIT_CACHE_DIR=/tmp/bqjit-cache-$which timeout 120 ncu --clock-control none \
      -k regex:silu_mul_quant -s 2 -c 1 --section SpeedOfLight --section Occupancy \
      --section SchedulerStats --section WarpStateStats --section LaunchStats \
      --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
      python3 bench/one_launch.py ${NCU_SHAPE:-14336:8192:128} >"$OUT/ncu-$which.txt" 2>&1
    echo "ncu $which: exit $?" | tee -a "$OUT/summary.txt"
  done
fi
if [ "$what" = tune ] || [ "$what" = all ]; then
  # Tune two shapes, then time them again: the stored records take effect.
  timeout 50 devpack/bin/bqjit tune hidden=18432 G=96 --tokens 2048 --iters 10 2>&1 | tail -12 |
    tee "$OUT/tune.txt"
  timeout 40 python3 bench/bench.py --json "$OUT/bench_tuned.json" --replays 8 --no-compile \
    --shapes 18432:8192:96 2>&1 | tail -3 | tee -a "$OUT/tune.txt"
fi

if [ "$what" = waves ]; then
  # The measurement a wave-aware choice between two compiled few-token
  # variants needs first (bench/NOTES.md, eleventh session): T swept across
  # one and two waves of the device's resident blocks at two H, each row with
  # the planner's shape beside the alternatives. FP4: one-vector teams (NVFP4
  # 2,8,128; MXFP4 4,8,64) against two-vector teams (1,8,256; 2,8,128).
  # 8-bit outputs: the few-token shape 16,8,16 with and without the promise
  # of 8 blocks an SM, per activation. Blocks and waves follow from each row's
  # shape (tasks / groups a block, against SMs x resident blocks).
  # The wheel in devpack/site (its library and C++ ops), as in `fp4`; without
  # one, the source package over devpack/lib (Python ops: the graph replays
  # time the GPU alike).
  (
    if [ -d devpack/site ]; then unset BQJIT_LIBRARY; export PYTHONPATH=$PWD/devpack/site; fi
    timeout 280 python3 bench/bench_fp4.py --no-compile --replays 10 --json "$OUT/waves_fp4.json" \
      --hidden "${WAVES_FP4_H:-7168,25600}" \
      --tokens "${WAVES_FP4_T:-16,32,48,64,96,128,160,192,256,320,384,512}" \
      --launches "1,8,256;2,8,128;4,8,64" 2>&1
  ) | tee "$OUT/waves_fp4.txt"
  exits waves_fp4
  (
    if [ -d devpack/site ]; then unset BQJIT_LIBRARY; export PYTHONPATH=$PWD/devpack/site; fi
    timeout 280 python3 bench/bench_act.py --no-compile --replays 10 --json "$OUT/waves_act.json" \
      --shapes "${WAVES_ACT_H:-3072,7168}" --tokens "${WAVES_ACT_T:-128,256,384,512,768,1024,1536}" \
      --launches "16,8,16;16,8,16,8" 2>&1
  ) | tee "$OUT/waves_act.txt"
  exits waves_act
fi
if [ "$what" = autotune ]; then
  shapes=${AUTOTUNE_SHAPES:-2048:8192:64,18432:1024:96,7168:1024:128,14336:8192:128,14336:64:128,7168:1:128}
  BQJIT_CACHE_DIR=$(mktemp -d) timeout 250 python3 bench/bench.py --no-compile --replays 10 \
    --json "$OUT/bench_default.json" --shapes "$shapes" 2>&1 | tee "$OUT/autotune.txt"
  exits "bench.py (default)"
  BQJIT_CACHE_DIR=$(mktemp -d) BQJIT_LOG_LEVEL=info timeout 300 python3 bench/bench.py --autotune \
    --no-compile --replays 10 --json "$OUT/bench_autotune.json" --shapes "$shapes" \
    2>"$OUT/autotune_log.txt" | tee -a "$OUT/autotune.txt"
  exits "bench.py --autotune"
  grep 'autotune' "$OUT/autotune_log.txt" | tee -a "$OUT/autotune.txt"
fi
