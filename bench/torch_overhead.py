#!/usr/bin/env python3
"""Host time per call of bqjit's PyTorch ops against PyTorch's own, side by
side in one run on one GPU (issue 14's targets), and the first call in a fresh
process.

Per call: an eager loop of N calls at T=1 (decode), timed on the host with
one synchronize at the end; the kernels take 2-4 us, so this is the cost of
the call. Rows:
  x.mul(2)                      one torch kernel that allocates (the yardstick)
  bqjit.silu_mul_quant          allocates q and scales, like x.mul(2)
  bqjit.silu_mul_quant out=     outputs preallocated
  torch.compile(reference)      the PyTorch reference op compiled by Inductor
  torch.compile(bqjit)          fullgraph, a function calling bqjit.silu_mul_quant
and the same for the masked MoE op (E experts of T_max = 1 rows; its
reference takes masked_m too and zeroes the dead rows).

First call: a fresh `python` (torch imported, CUDA initialized, x allocated)
times its first and second bqjit.silu_mul_quant, with a cold cache and then
a warm one (the same cache directory).

Usage: python3 bench/torch_overhead.py [--calls N] [--json FILE]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import bqjit

H, G = 7168, 128
QMAX = 448.0
MIN_SCALE = 1.0 / (448.0 * 512.0)


def reference(x, group):
    """SPEC section 1 in PyTorch (row scales), for torch.compile."""
    h = x.shape[-1] // 2
    g = x[..., :h].float()
    u = x[..., h:].float()
    y = g / (1.0 + torch.exp(-g)) * u
    yg = y.view(*x.shape[:-1], h // group, group)
    amax = yg.abs().amax(dim=-1, keepdim=True)
    s = (amax / QMAX).clamp(min=MIN_SCALE)
    q = (yg / s).clamp(-QMAX, QMAX).to(torch.float8_e4m3fn)
    return q.view(*x.shape[:-1], h), s.squeeze(-1)


def reference_masked(x, masked_m, group):
    """The reference of a masked batch: rows past masked_m[e] are zeros before
    quantizing (the cost of the mask, not of skipping them)."""
    live = torch.arange(x.shape[1], device=x.device)[None, :] < masked_m[:, None]
    return reference(torch.where(live[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device)), group)


def per_call_us(fn, calls, repeats=5):
    """Median over `repeats` of (host time of `calls` calls + one sync) / calls."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(times)


FIRST_CALL = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import bqjit
t2 = time.perf_counter()
x = torch.randn(1, 2 * %(h)d, device="cuda", dtype=torch.bfloat16)
torch.cuda.synchronize()
t3 = time.perf_counter()
if %(profile)d:
    import cProfile, io, pstats
    prof = cProfile.Profile()
    prof.enable()
q, s = bqjit.silu_mul_quant(x, %(g)d)
torch.cuda.synchronize()
t4 = time.perf_counter()
if %(profile)d:
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(12)
    sys.stderr.write(out.getvalue())
q, s = bqjit.silu_mul_quant(x, %(g)d)
torch.cuda.synchronize()
t5 = time.perf_counter()
print(json.dumps({"import_torch_s": t1 - t0, "import_bqjit_ms": (t2 - t1) * 1e3, "cuda_init_s": t3 - t2,
                  "first_call_ms": (t4 - t3) * 1e3, "second_call_ms": (t5 - t4) * 1e3,
                  "backend": bqjit.ops.OPS_BACKEND}))
"""


def first_call(cache_dir, backend=None, profile=False):
    """Timings of a fresh process; with `profile`, cProfile's top functions of
    its first call (by cumulative time) are printed."""
    env = dict(os.environ, BQJIT_CACHE_DIR=cache_dir)
    if backend == "python":
        env["BQJIT_TORCH_OPS"] = "python"
    out = subprocess.run([sys.executable, "-c", FIRST_CALL % {"h": H, "g": G, "profile": int(profile)}], env=env,
                         capture_output=True, text=True, check=True)
    if profile:
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        print("\n".join(lines[-22:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    print(f"GPU: {props.name}, torch {torch.__version__}, bqjit ops backend: {bqjit.ops.OPS_BACKEND}"
          f"{'' if bqjit.ops.OPS_FALLBACK_REASON is None else ' (' + bqjit.ops.OPS_FALLBACK_REASON + ')'}")
    rows = []

    x = torch.randn(1, 2 * H, device="cuda", dtype=torch.bfloat16)
    q = torch.empty(1, H, device="cuda", dtype=torch.float8_e4m3fn)
    s = torch.empty(1, H // G, device="cuda", dtype=torch.float32)
    e = args.experts
    xm = torch.randn(e, 1, 2 * H, device="cuda", dtype=torch.bfloat16)
    mm = torch.ones(e, dtype=torch.int32, device="cuda")
    qm = torch.empty(e, 1, H, device="cuda", dtype=torch.float8_e4m3fn)
    sm = torch.empty(e, 1, H // G, device="cuda", dtype=torch.float32)

    compiled_ref = torch.compile(reference, fullgraph=True, dynamic=False)
    compiled_bqjit = torch.compile(lambda v: bqjit.silu_mul_quant(v, G), fullgraph=True, dynamic=False)
    compiled_ref_masked = torch.compile(reference_masked, fullgraph=True, dynamic=False)
    compiled_masked = torch.compile(lambda v, m: bqjit.silu_mul_quant_masked(v, m, G), fullgraph=True,
                                    dynamic=False)
    breaks = {
        "bqjit.silu_mul_quant": torch._dynamo.explain(lambda v: bqjit.silu_mul_quant(v, G))(x).graph_break_count,
        "bqjit.silu_mul_quant_masked":
            torch._dynamo.explain(lambda v, m: bqjit.silu_mul_quant_masked(v, m, G))(xm, mm).graph_break_count,
    }

    cases = [
        ("x.mul(2)", lambda: x.mul(2)),
        ("bqjit.silu_mul_quant", lambda: bqjit.silu_mul_quant(x, G)),
        ("bqjit.silu_mul_quant(out=)", lambda: bqjit.silu_mul_quant(x, G, out=q, scales_out=s)),
        ("torch.ops.bqjit.silu_mul_quant", lambda: torch.ops.bqjit.silu_mul_quant(
            x, G, "fp8_e4m3", "row", False, None, None)),
        ("torch.compile(reference)", lambda: compiled_ref(x, G)),
        ("torch.compile(bqjit)", lambda: compiled_bqjit(x)),
        (f"masked E={e}: bqjit.silu_mul_quant_masked", lambda: bqjit.silu_mul_quant_masked(xm, mm, G)),
        (f"masked E={e}: (out=)", lambda: bqjit.silu_mul_quant_masked(xm, mm, G, out=qm, scales_out=sm)),
        (f"masked E={e}: torch.compile(reference)", lambda: compiled_ref_masked(xm, mm, G)),
        (f"masked E={e}: torch.compile(bqjit)", lambda: compiled_masked(xm, mm)),
    ]
    base = None
    print(f"\nhost time per call, eager loop of {args.calls} calls, T=1, H={H}, G={G} ({props.name})")
    print(f"{'call':<48} {'us/call':>8} {'vs x.mul(2)':>12}")
    for name, fn in cases:
        us = per_call_us(fn, args.calls)
        base = us if base is None else base
        rows.append({"call": name, "us_per_call": us, "vs_mul": us / base})
        print(f"{name:<48} {us:>8.1f} {us / base:>11.2f}x")
    print(f"graph breaks under torch._dynamo.explain: {breaks}")

    with tempfile.TemporaryDirectory() as cache:
        cold = first_call(cache)
        warm = first_call(cache)
        for backend in ("python", "cpp"):
            print(f"\nprofile of the first call with a warm cache, {backend} ops ({props.name}):")
            prof = first_call(cache, backend, profile=True)
            print(f"{backend} ops: first call {prof['first_call_ms']:.1f} ms, second {prof['second_call_ms']:.2f} ms")
    print(f"\nfirst call in a fresh process ({props.name}): cold cache {cold['first_call_ms']:.1f} ms, "
          f"warm cache {warm['first_call_ms']:.1f} ms; second call {warm['second_call_ms']:.2f} ms; "
          f"warm first - second = {warm['first_call_ms'] - warm['second_call_ms']:.1f} ms "
          f"(import torch {warm['import_torch_s']:.2f} s, import bqjit {warm['import_bqjit_ms']:.1f} ms, "
          f"CUDA init {warm['cuda_init_s']:.2f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": props.name, "torch": torch.__version__, "backend": bqjit.ops.OPS_BACKEND,
                       "rows": rows, "graph_breaks": breaks, "first_call_cold": cold,
                       "first_call_warm": warm}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
