#!/usr/bin/env python3
"""bqjit against PyTorch eager and torch.compile, side by side, on one GPU.

Every implementation is timed the same way: a CUDA graph holding R launches,
each on its own input/output set (rotating sets so that together they exceed
the L2 cache where memory allows), replayed after an L2 flush; the time of one
launch is the replay's time over R; the median of the replays is reported.
Graphs remove the host's launch overhead, which would otherwise dominate the
small shapes. The device-to-device copy bandwidth is measured in the same run.

Usage: python3 bench/bench.py [--quick] [--json out.json] [--shapes H:T:G,...]

--autotune: BQJIT_AUTOTUNE=1 (through the Python ops): each row's first launch
asks for its regime to be tuned, which finishes before the row is checked and
timed; the winners stay in the cache directory's tuning records.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

if "--autotune" in sys.argv:
    # Before bqjit loads: the tuner is the ctypes service's (bqjit.service()),
    # which the Python ops launch through and finish_tuning() reaches.
    os.environ["BQJIT_AUTOTUNE"] = "1"
    os.environ["BQJIT_TORCH_OPS"] = "python"

import bqjit

L2_FLUSH_BYTES = 256 << 20
HIDDEN = [2048, 7168, 14336, 18432, 25600]
TOKENS = [1, 16, 64, 256, 1024, 8192]
GROUPS = [64, 96, 128, 192]
QMAX = 448.0
MIN_SCALE = 1.0 / (448.0 * 512.0)


def torch_op(x, group, with_y=False):
    """docs/contract.md section 1 in PyTorch (bf16 in, fp8 e4m3 out, row scales);
    with_y: also y, per group, in fp32."""
    h = x.shape[-1] // 2
    g = x[:, :h].float()
    u = x[:, h:].float()
    y = g / (1.0 + torch.exp(-g)) * u
    yg = y.view(x.shape[0], h // group, group)
    amax = yg.abs().amax(dim=-1, keepdim=True)
    s = (amax / QMAX).clamp(min=MIN_SCALE)
    q = (yg / s).clamp(-QMAX, QMAX).to(torch.float8_e4m3fn)
    if with_y:
        return q.view(x.shape[0], h), s.squeeze(-1), yg
    return q.view(x.shape[0], h), s.squeeze(-1)


def v1_launch(group):
    """The first heuristic's shape (bench/NOTES.md, version 1), bf16 input:
    16-byte vectors, two vectors per thread, 256 threads per block."""
    vec = 8
    while group % vec:
        vec //= 2
    vectors = group // vec
    tpg = 1
    while tpg * 2 <= min(32, max(1, vectors // 2)) and vectors % (tpg * 2) == 0:
        tpg *= 2
    return {"threads_per_group": tpg, "vec_width": vec, "groups_per_block": max(1, 256 // tpg)}


def make_sets(t, h, group, count):
    sets = []
    for _ in range(count):
        x = torch.randn(t, 2 * h, device="cuda", dtype=torch.bfloat16) * 4
        q = torch.empty(t, h, device="cuda", dtype=torch.float8_e4m3fn)
        s = torch.empty(t, h // group, device="cuda", dtype=torch.float32)
        sets.append((x, q, s))
    return sets


FLUSH_MODE = "zero"
WARMUP_S = 0.05


def flush_l2(flush):
    """Evicts the L2 before a timed replay: "zero" writes the flush buffer (the
    usual way, as triton's do_bench does; it leaves the L2 full of dirty lines
    that the next kernel writes back), "read" reads it (clean lines)."""
    if FLUSH_MODE == "read":
        flush.max()
    else:
        flush.zero_()


def time_graph(fn, sets, reps_per_graph, replays, flush, all_times=None):
    """Median microseconds of one fn(set) call, from graph replays. The time of
    every replay is appended to all_times when given."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for st in sets[:2]:  # warm up outside capture (compiles, autotunes)
            fn(st)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(reps_per_graph):
            fn(sets[i % len(sets)])
    # Untimed replays first, for at least WARMUP_S: right after its buffers are
    # allocated, the first few milliseconds of replays run up to 15% slower
    # (bench/NOTES.md, "the swing"), which would penalise whichever
    # implementation happens to be timed first on a shape.
    warm_start = time.perf_counter()
    warm = 0
    while warm < 3 or time.perf_counter() - warm_start < WARMUP_S:
        flush_l2(flush)
        graph.replay()
        torch.cuda.synchronize()
        warm += 1
    times = []
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    for _ in range(replays):
        flush_l2(flush)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / reps_per_graph)
    del graph
    if all_times is not None:
        all_times.extend(round(t, 2) for t in times)
    return statistics.median(times), (max(times) - min(times))


def parse_launches(text):
    """"tpg,vec,gpb[,mbs];..." as a list of int tuples (--launches)."""
    return [tuple(int(v) for v in item.split(",")) for item in text.split(";") if item]


def copy_bandwidth(flush):
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    ts = []
    for _ in range(10):
        flush_l2(flush)
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1000.0)
    del src, dst
    return 2 * n / statistics.median(ts) / 1e9


def check_correct(x, q, s, group):
    """bqjit's result against the torch op, within docs/contract.md section 1's
    tolerance: scales within 1e-6 relative; q identical except one e4m3 step
    where the reference's y / s lies within 2e-6 relative of the boundary
    between the two codes. Gives (ok, elements at a boundary)."""
    q_ref, s_ref, yg = torch_op(x, group, with_y=True)
    if not torch.allclose(s, s_ref, rtol=1e-6, atol=0):
        return False, 0
    codes = q.view(torch.uint8).view(yg.shape).int()
    codes_ref = q_ref.view(torch.uint8).view(yg.shape).int()
    off = codes != codes_ref
    n_off = int(off.sum())
    if n_off == 0:
        return True, 0
    # Adjacent codes of the same sign, and the quotient next to their midpoint.
    adjacent = ((codes ^ codes_ref) & 0x80 == 0) & ((codes - codes_ref).abs() == 1)
    v = yg.double() / s_ref.double().unsqueeze(-1)
    mid = (q.view(yg.shape).double() + q_ref.view(yg.shape).double()) / 2
    near = (v - mid).abs() <= 2e-6 * v.abs()
    allowed = off & adjacent & near
    return int(allowed.sum()) == n_off, n_off


def gpu_state():
    """SM clock (MHz), temperature (C) and power (mW) now, where NVML answers:
    the run-to-run swing in bench/NOTES.md may follow the SM clock."""
    state = {}
    for key, fn in (("sm_clock_mhz", "clock_rate"), ("temperature_c", "temperature"),
                    ("power_mw", "power_draw")):
        try:
            state[key] = getattr(torch.cuda, fn)()
        except Exception:  # NVML missing or unsupported: leave it out
            pass
    return state


def pdl_mode():
    """Whether bqjit's launches are programmatic dependent launches (sm_90+):
    the library's default, BQJIT_PDL (on unless 0)."""
    return "off (BQJIT_PDL=0)" if os.environ.get("BQJIT_PDL") == "0" else "on (sm_90+; BQJIT_PDL=0 turns it off)"


def write_json(path, props, copy_gbs, rows):
    out = dict(device=props.name, torch=torch.__version__, copy_gbs=copy_gbs, pdl=pdl_mode(),
               method="CUDA graph of R launches over rotating buffer sets, L2 flushed before each "
                      "replay, median over replays",
               rows=rows, time=time.strftime("%Y-%m-%d %H:%M:%S"))
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a few shapes only")
    ap.add_argument("--json", default="bench_results.json")
    ap.add_argument("--shapes", default="", help="H:T:G,... instead of the grid")
    ap.add_argument("--hidden", default="", help="comma-separated H values of the grid to run")
    ap.add_argument("--replays", type=int, default=15)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--no-eager", action="store_true", help="skip PyTorch eager")
    ap.add_argument("--flush", choices=["zero", "read"], default="zero",
                    help="how the L2 is evicted before each replay (see flush_l2)")
    ap.add_argument("--launches", default="",
                    help="explicit launch shapes to time beside the default, "
                         "tpg,vec,gpb;tpg,vec,gpb;... (skipped where G does not fit)")
    ap.add_argument("--v1", action="store_true", help="also time the first heuristic's launch shape")
    ap.add_argument("--autotune", action="store_true",
                    help="BQJIT_AUTOTUNE=1: tune each row's regime on its first launch, then time")
    args = ap.parse_args()
    global FLUSH_MODE
    FLUSH_MODE = args.flush
    launches = parse_launches(args.launches)

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    copy_gbs = copy_bandwidth(flush)
    print(f"device: {props.name}, {props.multi_processor_count} SMs, L2 {l2 >> 20} MiB; "
          f"torch {torch.__version__}; copy bandwidth {copy_gbs:.0f} GB/s (read+write); "
          f"bqjit's programmatic launches {pdl_mode()}", flush=True)

    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
    elif args.quick:
        shapes = [(14336, 8192, 128), (18432, 8192, 128), (18432, 8192, 96), (18432, 8192, 192),
                  (14336, 64, 128), (18432, 64, 128), (7168, 1, 128), (2048, 1024, 64)]
    else:
        hidden = [int(v) for v in args.hidden.split(",")] if args.hidden else HIDDEN
        shapes = [(h, t, g) for h in hidden for t in TOKENS for g in GROUPS if h % g == 0]

    compiled = None
    if not args.no_compile:
        compiled = torch.compile(torch_op, dynamic=False)
        torch._dynamo.config.cache_size_limit = 1024
        torch._dynamo.config.recompile_limit = 1024 if hasattr(torch._dynamo.config, "recompile_limit") else None

    rows = []
    header = (f"{'H':>6} {'T':>5} {'G':>4} | {'bqjit us':>9} {'GB/s':>6} {'%copy':>6} {'%cp=':>5} | "
              f"{'eager us':>9} {'compile us':>10} | {'vs compile':>10} ok")
    print(header)
    print("-" * len(header), flush=True)
    for h, t, g in shapes:
        bytes_moved = t * (2 * h * 2 + h + (h // g) * 4)
        per_set = bytes_moved
        count = max(2, min(64, math.ceil(3 * l2 / per_set)))
        if per_set * count > (12 << 30):
            count = 2
        sets = make_sets(t, h, g, count)
        reps = max(count, 8) if t <= 256 else count
        x0, q0, s0 = sets[0]
        bqjit.silu_mul_quant(x0, group_size=g, out=q0, scales_out=s0)
        if args.autotune:
            torch.cuda.synchronize()
            bqjit.service().finish_tuning()
            bqjit.silu_mul_quant(x0, group_size=g, out=q0, scales_out=s0)  # the winner
        torch.cuda.synchronize()
        ok, at_boundary = check_correct(x0, q0, s0, g)

        def run_bqjit(st):
            bqjit.silu_mul_quant(st[0], group_size=g, out=st[1], scales_out=st[2])

        def run_eager(st):
            torch_op(st[0], g)

        def run_compiled(st):
            compiled(st[0], g)

        times_b = []
        t_b, spread_b = time_graph(run_bqjit, sets, reps, args.replays, flush, times_b)
        state = gpu_state()  # right after bqjit's replays
        explicit = {}
        for tpg, vec, gpb in launches:
            if g % vec or (g // vec) % tpg:
                continue
            shape = {"threads_per_group": tpg, "vec_width": vec, "groups_per_block": gpb}

            def run_shape(st, shape=shape):
                bqjit.silu_mul_quant(st[0], group_size=g, out=st[1], scales_out=st[2], launch=shape)

            times_l = []
            t_l, _ = time_graph(run_shape, sets, reps, args.replays, flush, times_l)
            explicit[f"{tpg},{vec},{gpb}"] = dict(us=t_l, times=times_l)
        t_v1 = float("nan")
        if args.v1:
            launch1 = v1_launch(g)

            def run_v1(st):
                bqjit.silu_mul_quant(st[0], group_size=g, out=st[1], scales_out=st[2], launch=launch1)

            t_v1, _ = time_graph(run_v1, sets, reps, args.replays, flush)
        t_e = float("nan")
        if not args.no_eager:
            t_e, _ = time_graph(run_eager, sets, reps, max(5, args.replays // 3), flush)
        t_c = float("nan")
        if compiled is not None:
            t_c, _ = time_graph(run_compiled, sets, reps, args.replays, flush)
        # A device-to-device copy moving the same bytes (half read, half
        # written) through the same graph method: what launch overhead and
        # ramp-up leave of the bandwidth at this size.
        copy_sets = [(torch.empty(bytes_moved // 2, dtype=torch.uint8, device="cuda"),
                      torch.empty(bytes_moved // 2, dtype=torch.uint8, device="cuda"))
                     for _ in range(count)]
        t_copy, _ = time_graph(lambda st: st[1].copy_(st[0]), copy_sets, reps, args.replays, flush)
        del copy_sets
        gbs = bytes_moved / (t_b * 1e-6) / 1e9
        row = dict(hidden=h, tokens=t, group=g, bytes=bytes_moved, bqjit_us=t_b,
                   bqjit_spread_us=spread_b, bqjit_gbs=gbs, pct_copy=100 * gbs / copy_gbs,
                   same_size_copy_us=t_copy, pct_same_size_copy=100 * t_copy / t_b,
                   eager_us=t_e, compile_us=t_c, v1_us=t_v1, speedup_vs_compile=t_c / t_b,
                   floor_us=bytes_moved / (copy_gbs * 1e9) * 1e6, correct=ok, at_boundary=at_boundary,
                   sets=count, reps=reps,
                   bqjit_times_us=times_b, launches=explicit, flush=FLUSH_MODE,
                   autotune=args.autotune,
                   **state)
        rows.append(row)
        print(f"{h:>6} {t:>5} {g:>4} | {t_b:>9.2f} {gbs:>6.0f} {row['pct_copy']:>5.1f}% "
              f"{row['pct_same_size_copy']:>4.0f}% | "
              f"{t_e:>9.1f} {t_c:>10.2f} | {row['speedup_vs_compile']:>9.2f}x {'ok' if ok else 'WRONG'}"
              + (f" | v1 {t_v1:.2f}" if args.v1 else "")
              + "".join(f" | {k} {v['us']:.2f}" for k, v in explicit.items())
              + (f" | {state['sm_clock_mhz']} MHz" if "sm_clock_mhz" in state else ""),
              flush=True)
        del sets
        torch.cuda.empty_cache()
        write_json(args.json, props, copy_gbs, rows)  # after every row: a killed run keeps its rows

    write_json(args.json, props, copy_gbs, rows)
    print("%copy: of the 1 GiB copy bandwidth; %cp=: a copy of the same bytes, same method, "
          "time over bqjit's")
    big = [r for r in rows if r["tokens"] >= 1024]
    if big:
        print(f"T>=1024: min %copy {min(r['pct_copy'] for r in big):.1f}, "
              f"min %same-size copy {min(r['pct_same_size_copy'] for r in big):.1f}, "
              f"min speedup vs compile {min(r['speedup_vs_compile'] for r in big):.2f}x")
    dec = [r for r in rows if r["tokens"] <= 64]
    if dec:
        print(f"T<=64: max bqjit {max(r['bqjit_us'] for r in dec):.2f} us")
    print(f"correctness: {sum(r['correct'] for r in rows)}/{len(rows)} rows within docs/contract.md "
          f"section 1's tolerance, {sum(r['at_boundary'] for r in rows)} elements one step off at a "
          "rounding boundary (allowed)")
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
