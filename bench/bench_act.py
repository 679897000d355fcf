#!/usr/bin/env python3
"""The activations of docs/contract.md section 6 and the MX rounding of section 7, side
by side on one GPU: at each shape and token count, bqjit's silu, swiglu (split
and interleaved, gpt-oss's alpha 1.702, beta 1, limit 7), gelu_tanh and gelu
kernels, each beside torch.compile of the same activation + quantization, and
at T = 8192 MXFP8 (G = 32, ue8m0, scale_rounding floor, E8M0 bytes) beside
G = 128 (fp32 scales) for silu and gpt-oss's swiglu.

Timing is bench.py's: a CUDA graph of R launches over rotating buffer sets, the
L2 flushed before each replay, the median over replays. bqjit is called through
the ctypes Service (bqjit._lib) with a JSON spec, so that no PyTorch op is
needed for the new fields.

Targets (issue 17), at T >= 1024: swiglu and interleaved within 3% of silu of
the same shape, GELU within 5%; MXFP8 at T = 8192 within 5% of G = 128.

Usage: python3 bench/bench_act.py [--json out.json] [--shapes H,H,...]
       [--tokens 1024,8192] [--replays N] [--no-compile] [--launches tpg,vec,gpb;...]
       [--mx-launches tpg,vec,gpb[,mbs];...]
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import copy_bandwidth, gpu_state, parse_launches, time_graph  # noqa: E402

from bqjit import _lib  # noqa: E402

L2_FLUSH_BYTES = 256 << 20
QMAX = 448.0
MIN_SCALE = 1.0 / (448.0 * 512.0)
OSS = {"alpha": 1.702, "beta": 1.0, "limit": 7.0}

# name -> (spec fields, torch activation, interleaved)
VARIANTS = {
    "silu": ({}, "silu", False),
    "swiglu-split": (dict(activation="swiglu", **OSS), "swiglu", False),
    "swiglu-interleaved": (dict(activation="swiglu", gate_up="interleaved", **OSS), "swiglu", True),
    "silu-interleaved": ({"gate_up": "interleaved"}, "silu", True),
    "gelu_tanh": ({"activation": "gelu_tanh"}, "gelu_tanh", False),
    "gelu": ({"activation": "gelu"}, "gelu", False),
}
# Compared with which row (same shape and T), and the allowed slowdown.
TARGETS = {"swiglu-split": ("silu", 3), "swiglu-interleaved": ("silu", 3),
           "silu-interleaved": ("silu", 3), "gelu_tanh": ("silu", 5), "gelu": ("silu", 5)}
MX_TARGET = 5


def torch_activation(x, act, interleaved):
    """y of docs/contract.md section 6 in fp32, as PyTorch users write it."""
    h = x.shape[-1] // 2
    if interleaved:
        g, u = x[:, 0::2].float(), x[:, 1::2].float()
    else:
        g, u = x[:, :h].float(), x[:, h:].float()
    if act == "silu":
        return g / (1.0 + torch.exp(-g)) * u
    if act == "swiglu":
        g = g.clamp(max=OSS["limit"])
        u = u.clamp(-OSS["limit"], OSS["limit"])
        return g * torch.sigmoid(OSS["alpha"] * g) * (u + OSS["beta"])
    if act == "gelu_tanh":
        return torch.nn.functional.gelu(g, approximate="tanh") * u
    return torch.nn.functional.gelu(g) * u


def torch_op(x, group, act, interleaved, mx):
    """Activation + per-group quantization (fp8 e4m3): fp32 scales (ceil-free,
    SPEC section 1) or, with mx, E8M0 bytes under the OCP floor rule."""
    y = torch_activation(x, act, interleaved)
    t, h = y.shape
    yg = y.view(t, h // group, group)
    amax = yg.abs().amax(dim=-1, keepdim=True)
    if mx:
        _, e = torch.frexp(amax)  # amax = m * 2^e, 0.5 <= m < 1: floor(log2) = e - 1
        e = torch.where(amax == 0, torch.full_like(e, -127), (e - 1 - 8).clamp(-127, 127))
        s = torch.exp2(e.float())
        q = (yg / s).clamp(-QMAX, QMAX).to(torch.float8_e4m3fn)
        return q.view(t, h), (e + 127).to(torch.uint8).squeeze(-1)
    s = (amax / QMAX).clamp(min=MIN_SCALE)
    q = (yg / s).clamp(-QMAX, QMAX).to(torch.float8_e4m3fn)
    return q.view(t, h), s.squeeze(-1)


def spec_json(h, group, fields, mx, device):
    spec = {"hidden": h, "group_size": group, "in_dtype": "bf16", "out_dtype": "fp8_e4m3",
            "arch": _lib.service().spec_for_device({"hidden": h, "group_size": group}, device)["arch"]}
    spec.update(fields)
    if mx:
        spec.update(scale_layout="bytes", ue8m0=True, scale_rounding="floor")
    return json.dumps(spec, separators=(",", ":"), sort_keys=True)


def make_sets(t, h, group, count, mx):
    sets = []
    for _ in range(count):
        x = torch.randn(t, 2 * h, device="cuda", dtype=torch.bfloat16) * 4
        q = torch.empty(t, h, device="cuda", dtype=torch.float8_e4m3fn)
        s = torch.empty(t, h // group, device="cuda", dtype=torch.uint8 if mx else torch.float32)
        sets.append((x, q, s))
    return sets


def check(x, q, s, group, act, interleaved, mx):
    """bqjit against the torch op: scales (bytes exact or fp32 within 1e-5) and
    the fraction of q one step off (boundaries, and tanh vs the kernel's
    exp form for gelu_tanh), which must stay under 1e-3."""
    q_ref, s_ref = torch_op(x, group, act, interleaved, mx)
    if mx:
        scale_bad = int((s.int() - s_ref.int()).abs().gt(0).sum())
        scale_ok = scale_bad <= max(1, s.numel() // 100000)
    else:
        scale_ok = bool(torch.allclose(s, s_ref, rtol=1e-5, atol=0))
    off = int((q.float() - q_ref.float()).abs().gt(0).sum())
    return scale_ok and off <= max(1, q.numel() // 1000), off / q.numel()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="bench_act.json")
    ap.add_argument("--shapes", default="3072,14336",
                    help="H values (G = 128; MX: G = 32); 3072 is gpt-oss's 2880 padded")
    ap.add_argument("--tokens", default="1024,8192")
    ap.add_argument("--replays", type=int, default=15)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--launches", default="",
                    help="tpg,vec,gpb[,min_blocks_per_sm];...: also time each G = 128 row with "
                         "these launch shapes")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated subset of " + ", ".join(VARIANTS) + " (silu is the "
                         "reference of every target)")
    ap.add_argument("--mx-launches", default="",
                    help="tpg,vec,gpb[,min_blocks_per_sm];...: also time each MX row with these "
                         "launch shapes")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: {', '.join(unknown)} not among {', '.join(VARIANTS)}")
    mx_launches = parse_launches(args.mx_launches)
    launches = parse_launches(args.launches)
    torch.manual_seed(0)
    device = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(device)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    copy_gbs = copy_bandwidth(flush)
    print(f"device: {props.name}; torch {torch.__version__}; copy bandwidth {copy_gbs:.0f} GB/s",
          flush=True)
    svc = _lib.service()
    compiled = None
    if not args.no_compile:
        compiled = torch.compile(torch_op, dynamic=False)
        torch._dynamo.config.cache_size_limit = 1024

    runs = []  # (h, t, group, name, mx, launch shape or None)
    for h in (int(v) for v in args.shapes.split(",")):
        for t in (int(v) for v in args.tokens.split(",")):
            if h % 128 == 0:  # gpt-oss's own 2880 has MX rows only (no G = 128 reference)
                for name in variants:
                    for launch in [None] + launches:
                        runs.append((h, t, 128, name, False, launch))
            if t >= 8192 and h % 32 == 0:
                for name in (v for v in ("silu", "swiglu-interleaved") if v in variants):
                    for launch in [None] + mx_launches:
                        runs.append((h, t, 32, name, True, launch))

    rows = []
    header = (f"{'H':>6} {'T':>5} {'G':>4} {'variant':<32} | {'bqjit us':>9} {'GB/s':>6} "
              f"{'vs ref':>7} {'target':>7} | {'compile us':>10} {'vs compile':>10} | ok")
    print(header)
    print("-" * len(header), flush=True)
    for h, t, group, name, mx, launch in runs:
        fields, act, interleaved = VARIANTS[name]
        if launch is not None:
            shape = {"threads_per_group": launch[0], "vec_width": launch[1],
                     "groups_per_block": launch[2]}
            if len(launch) > 3:
                shape["min_blocks_per_sm"] = launch[3]
            fields = dict(fields, launch=shape)
        scale_bytes = (h // group) * (1 if mx else 4)
        bytes_moved = t * (2 * h * 2 + h + scale_bytes)
        count = max(2, min(64, math.ceil(3 * l2 / bytes_moved)))
        sets = make_sets(t, h, group, count, mx)
        reps = count
        try:
            kernel = svc.kernel(spec_json(h, group, fields, mx, device), device)
        except _lib.BqjitError as e:
            if launch is None:
                raise
            print(f"{h:>6} {t:>5} {group:>4} {name}{' mxfp8' if mx else ''} @{launch}: not a valid "
                  f"shape ({e})", flush=True)
            continue

        def run_bqjit(st, kernel=kernel):
            a = _lib.LaunchArgs(st[0].data_ptr(), 2 * h, t, st[1].data_ptr(), st[2].data_ptr(), 0, 0, 1)
            kernel.launch(a, torch.cuda.current_stream().cuda_stream)

        run_bqjit(sets[0])
        torch.cuda.synchronize()
        ok, off = check(sets[0][0], sets[0][1], sets[0][2], group, act, interleaved, mx)
        t_b, spread = time_graph(run_bqjit, sets, reps, args.replays, flush)
        state = gpu_state()
        t_c = float("nan")
        if compiled is not None:
            t_c, _ = time_graph(lambda st: compiled(st[0], group, act, interleaved, mx), sets, reps,
                                args.replays, flush)
        row = dict(hidden=h, tokens=t, group=group, variant=name, mx=mx, launch=launch,
                   bytes=bytes_moved,
                   bqjit_us=t_b, bqjit_spread_us=spread, gbs=bytes_moved / (t_b * 1e-6) / 1e9,
                   compile_us=t_c, speedup_vs_compile=t_c / t_b, correct=ok, q_off_fraction=off,
                   **state)
        # The reference row of the targets: silu of the same shape, or G = 128 for MX.
        ref_name, limit = (name, MX_TARGET) if mx else TARGETS.get(name, (None, None))
        ref = next((r for r in rows if r["hidden"] == h and r["tokens"] == t and
                    r["variant"] == ref_name and not r["mx"] and r["group"] == 128 and
                    r["launch"] is None), None)
        if ref is not None:
            row["vs_ref_pct"] = 100.0 * (t_b / ref["bqjit_us"] - 1.0)
            row["target_pct"] = limit
            row["meets_target"] = t < 1024 or row["vs_ref_pct"] <= limit
        rows.append(row)
        label = name + (" mxfp8" if mx else "") + (" @" + ",".join(map(str, launch)) if launch else "")
        vs = f"{row['vs_ref_pct']:+6.1f}%" if "vs_ref_pct" in row else f"{'':>7}"
        target = f"<={limit}%" if "target_pct" in row else ""
        print(f"{h:>6} {t:>5} {group:>4} {label:<32} | {t_b:>9.2f} {row['gbs']:>6.0f} {vs} "
              f"{target:>7} | {t_c:>10.2f} {row['speedup_vs_compile']:>9.2f}x | "
              f"{'ok' if ok else 'WRONG'}{'' if row.get('meets_target', True) else ' SLOW'}",
              flush=True)
        del sets
        torch.cuda.empty_cache()
        with open(args.json, "w") as f:
            json.dump(dict(device=props.name, torch=torch.__version__, copy_gbs=copy_gbs, rows=rows,
                           time=time.strftime("%Y-%m-%d %H:%M:%S")), f, indent=1)
    print("vs ref: time over silu's of the same shape and T (MX rows: over G = 128 of the same "
          "activation); targets at T >= 1024: swiglu / interleaved 3%, GELU 5%, MXFP8 5%")
    missed = [r for r in rows if not r.get("meets_target", True)]
    print(f"targets: {len([r for r in rows if 'target_pct' in r]) - len(missed)} met, "
          f"{len(missed)} missed; correctness: "
          f"{sum(r['correct'] for r in rows)}/{len(rows)} ok")
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
