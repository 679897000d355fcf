#!/usr/bin/env python3
"""A few launches of bqjit at one shape, for a profiler: H:T:G (bf16 in, fp8
e4m3 out, row scales). Usage: python3 bench/one_launch.py 14336:8192:128"""
import sys

import torch

import bqjit


def main():
    h, t, g = (int(v) for v in sys.argv[1].split(":"))
    x = torch.randn(t, 2 * h, device="cuda", dtype=torch.bfloat16) * 4
    q = torch.empty(t, h, device="cuda", dtype=torch.float8_e4m3fn)
    s = torch.empty(t, h // g, device="cuda", dtype=torch.float32)
    for _ in range(4):
        bqjit.silu_mul_quant(x, group_size=g, out=q, scales_out=s)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
