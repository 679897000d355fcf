#!/usr/bin/env python3
"""A few launches of bqjit at one shape, for a profiler: H:T:G (bf16 in, fp8
e4m3 out, row scales unless told otherwise), then optional key=value settings:
out=fp4_e2m1|fp8_e4m3|int8, layout=row|col|swizzled_128x4|..., ue8m0=1,
launch=tpg,vec,gpb, act=silu|swiglu|gelu_tanh|gelu, alpha=, beta=, limit=,
gate_up=split|interleaved, rounding=ceil|floor. NVFP4 (fp4_e2m1 without ue8m0) gets a global scale.
Usage: python3 bench/one_launch.py 14336:8192:128
       python3 bench/one_launch.py 7168:8192:32 out=fp4_e2m1 layout=swizzled_128x4 ue8m0=1"""
import sys

import torch

import bqjit


def main():
    h, t, g = (int(v) for v in sys.argv[1].split(":"))
    opts = dict(kv.split("=", 1) for kv in sys.argv[2:])
    out = opts.get("out", "fp8_e4m3")
    ue8m0 = opts.get("ue8m0", "0") in ("1", "true")
    layout = opts.get("layout", "row")
    kw = {}
    if "launch" in opts:
        tpg, vec, gpb = (int(v) for v in opts["launch"].split(","))
        kw["launch"] = {"threads_per_group": tpg, "vec_width": vec, "groups_per_block": gpb}
    for key, name, conv in (("act", "activation", str), ("alpha", "alpha", float), ("beta", "beta", float),
                            ("limit", "limit", float), ("gate_up", "gate_up", str),
                            ("rounding", "scale_rounding", str)):
        if key in opts:
            kw[name] = conv(opts[key])
    x = torch.randn(t, 2 * h, device="cuda", dtype=torch.bfloat16) * 4
    if out == "fp4_e2m1":
        if not ue8m0:
            kw["global_scale"] = torch.tensor([448.0 * 6.0 / 64.0], device="cuda")
        out_dtype = getattr(torch, "float4_e2m1fn_x2", "fp4_e2m1")
    else:
        out_dtype = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2, "int8": torch.int8}[out]
    for _ in range(4):
        bqjit.silu_mul_quant(x, g, out_dtype, layout, ue8m0, **kw)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
