#!/usr/bin/env python3
"""FP4 outputs (docs/contract.md section 8) on one GPU: NVFP4 (G = 16, E4M3 block
scales under a global scale) and MXFP4 (G = 32, E8M0), both in the
swizzled_128x4 layout that Blackwell's block-scaled GEMMs read, over
bench.py's grid of H at T >= 1024 (and a decode size), side by side in one
run with torch.compile of the same op written in PyTorch (the reference) and
with a device-to-device copy of the same bytes.

Bytes moved per token: 4H read (bf16 gate and up), H / 2 + H / 16 (NVFP4) or
H / 2 + H / 32 (MXFP4) written, plus the swizzled layout's padding.
Target (issue 18): at T >= 1024, bqjit at >= 95% of the same-size copy.

Timing is bench.py's: a CUDA graph of R launches over rotating buffer sets, the
L2 flushed before each replay, the median over replays. bqjit is called
through the PyTorch op (bqjit.silu_mul_quant with out=, scales_out= and
global_scale=).

Usage: python3 bench/bench_fp4.py [--json out.json] [--hidden H,H,...]
       [--tokens 1024,8192] [--replays N] [--no-compile] [--launches tpg,vec,gpb[,mbs];...]

--launches times explicit launch shapes beside the heuristic's (where G
allows them): G = 16 and 32 are the smallest groups bqjit has served, and the
shape that suits them best on a given GPU is a measurement, not a guess.
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import HIDDEN, copy_bandwidth, gpu_state, parse_launches, time_graph  # noqa: E402

import bqjit  # noqa: E402

L2_FLUSH_BYTES = 256 << 20
TARGET_PCT = 95.0
FP4 = getattr(torch, "float4_e2m1fn_x2", None)
FP4_OUT = FP4 if FP4 is not None else "fp4_e2m1"


def e2m1_codes(v):
    """saturate_round to e2m1 (clamp to 6, nearest, ties to even) as int32 4-bit codes."""
    a = v.abs().clamp(max=6.0)
    code = ((a > 0.25).int() + (a >= 0.75).int() + (a > 1.25).int() + (a >= 1.75).int() + (a > 2.5).int()
            + (a >= 3.5).int() + (a > 5.0).int())
    return code | (torch.signbit(v).int() << 3)


def swizzle(rows):
    """Row-major scale bytes [T, NG] -> swizzled_128x4 [Tp, NGp], padding 0."""
    t, ng = rows.shape
    tp, ngp = (t + 127) // 128 * 128, (ng + 3) // 4 * 4
    padded = torch.nn.functional.pad(rows, (0, ngp - ng, 0, tp - t))
    return padded.view(tp // 128, 4, 32, ngp // 4, 4).permute(0, 3, 2, 1, 4).reshape(tp, ngp)


def torch_op(x, gs, nvfp4, layout="swizzled_128x4"):
    """The same op in PyTorch: y = silu(g) * u in fp32, per-group scale (NVFP4:
    e4m3(min(gs * amax / 6, 448)), r = 1 / (sf / gs); MXFP4: 2^ceil(log2(amax
    / 6)) from 2^-127), e2m1 codes packed two a byte, scales swizzled."""
    h = x.shape[-1] // 2
    t = x.shape[0]
    g = x[:, :h].float()
    u = x[:, h:].float()
    y = g / (1.0 + torch.exp(-g)) * u
    group = 16 if nvfp4 else 32
    yg = y.view(t, h // group, group)
    amax = yg.abs().amax(dim=-1, keepdim=True)
    if nvfp4:
        sf = torch.clamp(gs * amax / 6.0, max=448.0).to(torch.float8_e4m3fn)
        sv = sf.float()
        r = torch.where(sv == 0, torch.zeros_like(sv), 1.0 / (sv / gs))
        v = yg * r
        byte = sf.view(torch.uint8)
    else:
        pre = torch.clamp(amax / 6.0, min=2.0 ** -127)
        m, e = torch.frexp(pre)
        e = torch.where(m == 0.5, e - 1, e).clamp(-127, 127)
        v = yg / torch.exp2(e.float())
        byte = (e + 127).to(torch.uint8)
    codes = e2m1_codes(v).view(t, h)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)
    rows = byte.view(t, h // group)
    return packed, swizzle(rows) if layout == "swizzled_128x4" else rows


def scale_bytes(t, h, group):
    return (t + 127) // 128 * 128 * ((h // group + 3) // 4 * 4)


def make_sets(t, h, group, count, layout):
    sets = []
    for _ in range(count):
        x = torch.randn(t, 2 * h, device="cuda", dtype=torch.bfloat16) * 4
        q = torch.empty(t, h // 2, device="cuda", dtype=FP4 if FP4 is not None else torch.uint8)
        tp, ngp = (t + 127) // 128 * 128, (h // group + 3) // 4 * 4
        if layout != "swizzled_128x4":
            tp, ngp = t, h // group
        s = torch.empty(tp, ngp, device="cuda", dtype=torch.uint8)
        sets.append((x, q, s))
    return sets


def check(x, q, s, gs, nvfp4, layout):
    """bqjit against the torch op: scale bytes and codes, each off in at most
    one in 10^4 places (rounding boundaries; the device's expf is not the host's)."""
    q_ref, s_ref = torch_op(x, gs, nvfp4, layout)
    scale_off = int((s.int() != s_ref.int()).sum())
    qb = q.view(torch.uint8)
    codes = torch.stack([qb & 0xF, qb >> 4], -1)
    codes_ref = torch.stack([q_ref & 0xF, q_ref >> 4], -1)
    off = int((codes != codes_ref).sum())
    ok = scale_off <= max(1, s.numel() // 10000) and off <= max(1, codes.numel() // 10000)
    return ok, off / codes.numel(), scale_off


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="bench_fp4.json")
    ap.add_argument("--hidden", default=",".join(str(h) for h in HIDDEN), help="H values (bench.py's grid)")
    ap.add_argument("--tokens", default="64,1024,8192")
    ap.add_argument("--replays", type=int, default=15)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--layout", default="swizzled_128x4", choices=("swizzled_128x4", "bytes"),
                    help="the scales' layout (the issue's target: swizzled_128x4)")
    ap.add_argument("--launches", default="",
                    help="explicit launch shapes to time beside the default, tpg,vec,gpb[,mbs];... "
                         "(mbs: the occupancy promise, min blocks an SM; skipped where G does not fit)")
    args = ap.parse_args()
    launches = parse_launches(args.launches)
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    copy_gbs = copy_bandwidth(flush)
    print(f"device: {props.name}; torch {torch.__version__}; ops {bqjit.ops.OPS_BACKEND}; "
          f"copy bandwidth {copy_gbs:.0f} GB/s", flush=True)
    compiled = None
    if not args.no_compile:
        compiled = torch.compile(torch_op, dynamic=False)
        torch._dynamo.config.cache_size_limit = 1024

    rows = []
    header = (f"{'H':>6} {'T':>5} {'format':<6} | {'bqjit us':>9} {'GB/s':>6} {'%cp=':>5} | "
              f"{'copy us':>8} | {'compile us':>10} {'vs compile':>10} | ok")
    print(header)
    print("-" * len(header), flush=True)
    for h in (int(v) for v in args.hidden.split(",")):
        for t in (int(v) for v in args.tokens.split(",")):
            for nvfp4 in (True, False):
                group = 16 if nvfp4 else 32
                if h % group:
                    continue
                fmt = "nvfp4" if nvfp4 else "mxfp4"
                bytes_moved = t * (2 * h * 2 + h // 2) + (
                    scale_bytes(t, h, group) if args.layout == "swizzled_128x4" else t * (h // group))
                count = max(2, min(64, math.ceil(3 * l2 / bytes_moved)))
                if bytes_moved * count > (12 << 30):
                    count = 2
                sets = make_sets(t, h, group, count, args.layout)
                reps = max(count, 8) if t <= 256 else count
                x0 = sets[0][0]
                amax = float((x0[:, :h].float() * torch.sigmoid(x0[:, :h].float()) * x0[:, h:].float()).abs().max())
                gs = torch.tensor([448.0 * 6.0 / amax], dtype=torch.float32, device="cuda")
                kw = dict(global_scale=gs) if nvfp4 else {}

                def run_bqjit(st, group=group, nvfp4=nvfp4, kw=kw):
                    bqjit.silu_mul_quant(st[0], group, FP4_OUT, args.layout, not nvfp4, out=st[1],
                                         scales_out=st[2], **kw)

                run_bqjit(sets[0])
                torch.cuda.synchronize()
                ok, off, scale_off = check(sets[0][0], sets[0][1], sets[0][2], gs, nvfp4, args.layout)
                t_b, spread = time_graph(run_bqjit, sets, reps, args.replays, flush)
                state = gpu_state()
                explicit = {}
                for launch in launches:
                    tpg, vec, gpb = launch[:3]
                    if group % vec or (group // vec) % tpg or vec < 2:
                        continue
                    shape = {"threads_per_group": tpg, "vec_width": vec, "groups_per_block": gpb}
                    if len(launch) > 3:
                        shape["min_blocks_per_sm"] = launch[3]

                    def run_shape(st, group=group, nvfp4=nvfp4, kw=kw, shape=shape):
                        bqjit.silu_mul_quant(st[0], group, FP4_OUT, args.layout, not nvfp4, out=st[1],
                                             scales_out=st[2], launch=shape, **kw)

                    t_l, _ = time_graph(run_shape, sets, reps, args.replays, flush)
                    explicit[",".join(str(v) for v in launch)] = t_l
                t_c = float("nan")
                if compiled is not None:
                    t_c, _ = time_graph(lambda st, nvfp4=nvfp4: compiled(st[0], gs, nvfp4, args.layout), sets, reps,
                                        args.replays, flush)
                # A device-to-device copy of the same bytes (half read, half written),
                # same method: the bandwidth left at this size.
                copy_sets = [(torch.empty(bytes_moved // 2, dtype=torch.uint8, device="cuda"),
                              torch.empty(bytes_moved // 2, dtype=torch.uint8, device="cuda"))
                             for _ in range(count)]
                t_copy, _ = time_graph(lambda st: st[1].copy_(st[0]), copy_sets, reps, args.replays, flush)
                del copy_sets
                gbs = bytes_moved / (t_b * 1e-6) / 1e9
                row = dict(hidden=h, tokens=t, group=group, format=fmt, layout=args.layout,
                           bytes=bytes_moved, bqjit_us=t_b, bqjit_spread_us=spread, bqjit_gbs=gbs,
                           same_size_copy_us=t_copy, pct_same_size_copy=100 * t_copy / t_b,
                           compile_us=t_c, speedup_vs_compile=t_c / t_b, correct=ok,
                           code_off_fraction=off, scale_bytes_off=scale_off,
                           meets_target=t < 1024 or 100 * t_copy / t_b >= TARGET_PCT, launches=explicit,
                           **state)
                rows.append(row)
                print(f"{h:>6} {t:>5} {fmt:<6} | {t_b:>9.2f} {gbs:>6.0f} {row['pct_same_size_copy']:>4.0f}% | "
                      f"{t_copy:>8.2f} | {t_c:>10.2f} {row['speedup_vs_compile']:>9.2f}x | "
                      f"{'ok' if ok else 'WRONG'}{'' if row['meets_target'] else ' SLOW'}"
                      + "".join(f" | {k} {v:.2f} ({100 * t_copy / v:.0f}%)" for k, v in explicit.items()),
                      flush=True)
                del sets
                torch.cuda.empty_cache()
                with open(args.json, "w") as f:
                    json.dump(dict(device=props.name, torch=torch.__version__, copy_gbs=copy_gbs, rows=rows,
                                   time=time.strftime("%Y-%m-%d %H:%M:%S")), f, indent=1)
    big = [r for r in rows if r["tokens"] >= 1024]
    print(f"%cp=: a copy of the same bytes, same method, time over bqjit's; target at T >= 1024: "
          f">= {TARGET_PCT:.0f}%")
    if big:
        for fmt in ("nvfp4", "mxfp4"):
            sel = [r for r in big if r["format"] == fmt]
            if sel:
                print(f"{fmt} T>=1024: min %same-size copy {min(r['pct_same_size_copy'] for r in sel):.1f}, "
                      f"min speedup vs compile {min(r['speedup_vs_compile'] for r in sel):.2f}x, "
                      f"{sum(r['meets_target'] for r in sel)}/{len(sel)} meet the target")
    print(f"correctness: {sum(r['correct'] for r in rows)}/{len(rows)} ok")
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
