#!/usr/bin/env python3
"""A gated MLP block as FP8 serving engines run it, under torch.compile alone
and with bqjit.fusion's pass, in one run (issue 20).

The block: x [T, hidden] bf16 -> gate_up = x @ W_gate_up^T (bf16, [T, 2I]) ->
silu(gate) * up quantized per 1x128 group to fp8 e4m3 (the activation-quant
step, written in PyTorch as vLLM's native reference writes it: fp32, amax
floored at 1e-10, / 448, column-major scales) -> the FP8 down projection with
128x128 block-scaled weights: torch.nn.functional.scaled_mm with
ScalingType.BlockWise1x128 activation scales (column-major, bqjit's "col"
layout) and BlockWise128x128 weight scales where the device's torch supports
it, else torch._scaled_mm (the output says which).

Timing: bench.py's method (bench/bench.py time_graph): a CUDA graph of R
calls over rotating input sets, the L2 flushed before each replay, the median
over replays; every configuration timed twice in the run (rounds A B A B), the
spread being the larger of the two rounds' difference and the replays' range
over the median's 1%. T is dynamic (one compile per model and mode; T = 1 may
add one, as dynamo specializes size 1). Beside the block: the activation-quant
step alone compiled without and with the pass, and bqjit's own op on the same
input (bench.py's measurement of that shape), and the step's share of the
block.

Usage: python3 bench/bench_fusion_mlp.py [--json out.json] [--models llama3-8b,qwen3-8b,qwen3-32b]
                                          [--tokens 1,16,...] [--replays N]
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402  (time_graph, flush_l2, L2_FLUSH_BYTES: bqjit's own method)

import bqjit  # noqa: E402
import bqjit.fusion  # noqa: E402

MODELS = {
    "llama3-8b": (4096, 14336),
    "qwen3-8b": (4096, 12288),
    "qwen3-32b": (5120, 25600),
}
TOKENS = [1, 16, 128, 512, 1024, 4096, 8192]
GROUP = 128
EPS = 1e-10
FP8 = torch.float8_e4m3fn
# What the pass passes for amax.clamp(min=1e-10) / 448: fl32(fl32(1e-10) / 448).
MIN_SCALE = bqjit.fusion._f32_div(bqjit.fusion._f32(EPS), 448.0)


def act_quant(gu):
    """silu(gate) * up, 1x128 fp8 quantization with column-major scales."""
    h = gu.shape[-1] // 2
    y = F.silu(gu[:, :h].float()) * gu[:, h:].float()
    t = y.shape[0]
    yg = y.view(t, h // GROUP, GROUP)
    s = yg.abs().amax(dim=-1, keepdim=True).clamp(min=EPS) / 448.0
    q = (yg / s).clamp(-448.0, 448.0).to(FP8).view(t, h)
    return q, s.view(t, h // GROUP).t().contiguous().t()  # [T, NG], strides (1, T)


def quantize_weight_128x128(w):
    """w [N, K] bf16 -> (fp8 [N, K], scales [N / 128, K / 128]) per 128x128 block."""
    n, k = w.shape
    blocks = w.float().view(n // 128, 128, k // 128, 128)
    amax = blocks.abs().amax(dim=(1, 3), keepdim=True).clamp(min=1e-12)
    s = amax / 448.0
    q = (blocks / s).clamp(-448.0, 448.0).to(FP8).view(n, k)
    return q, s.view(n // 128, k // 128)


def dequant_reference(q, s, wq, ws):
    """fp32 q * s @ (wq * ws)^T, for checking which scaled-mm call is right."""
    t, k = q.shape
    a = q.float().view(t, k // 128, 128) * s.float().unsqueeze(-1)
    n = wq.shape[0]
    b = wq.float().view(n // 128, 128, k // 128, 128) * ws.float().view(n // 128, 1, k // 128, 1)
    return a.view(t, k) @ b.view(n, k).t()


def scaled_mm_candidates():
    """(name, fn(q, s, wq, ws) -> bf16 [T, N]) to try in order."""
    out = []
    if hasattr(F, "scaled_mm") and hasattr(F, "ScalingType"):
        st = F.ScalingType
        out.append(("F.scaled_mm(BlockWise1x128, BlockWise128x128), scale_b [K/128, N/128]",
                    lambda q, s, wq, ws: F.scaled_mm(q, wq.t(), s, st.BlockWise1x128, ws.t(), st.BlockWise128x128,
                                                     output_dtype=torch.bfloat16)))
        out.append(("F.scaled_mm(BlockWise1x128, BlockWise128x128), scale_b [N/128, K/128]",
                    lambda q, s, wq, ws: F.scaled_mm(q, wq.t(), s, st.BlockWise1x128, ws, st.BlockWise128x128,
                                                     output_dtype=torch.bfloat16)))
    out.append(("torch._scaled_mm (1x128 x 128x128 block scales)",
                lambda q, s, wq, ws: torch._scaled_mm(q, wq.t(), scale_a=s, scale_b=ws.t(),
                                                      out_dtype=torch.bfloat16)))
    return out


def choose_scaled_mm(inter, hidden):
    """The first candidate that runs eagerly and compiled, and matches the
    dequantized reference; (name, fn, notes about the others)."""
    notes = []
    x = torch.randn(256, inter, device="cuda", dtype=torch.bfloat16)
    q, s = act_quant(torch.cat([x, x], dim=-1))
    wq, ws = quantize_weight_128x128(torch.randn(hidden, inter, device="cuda", dtype=torch.bfloat16) * 0.02)
    ref = dequant_reference(q, s, wq, ws)
    for name, fn in scaled_mm_candidates():
        try:
            got = fn(q, s, wq, ws).float()
            err = ((got - ref).norm() / ref.norm()).item()
            if not err < 2e-2:
                notes.append(f"{name}: relative error {err:.3g} against the dequantized product")
                continue
            torch._dynamo.reset()
            got_c = torch.compile(fn)(q, s, wq, ws).float()
            err_c = ((got_c - ref).norm() / ref.norm()).item()
            if not err_c < 2e-2:
                notes.append(f"{name}: compiled, relative error {err_c:.3g}")
                continue
            return name, fn, notes
        except Exception as e:  # an API or a device without the recipe: try the next
            notes.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    raise SystemExit("no scaled-mm call works here: " + "; ".join(notes))


def column_major(s):
    """The 1x128 scales as the block-scaled GEMM wants them, strides (1, T):
    at T = 1 Inductor may lay out the [1, NG] result with strides (1, NG),
    which the GEMM refuses although it holds the same bytes."""
    return s if s.stride() == (1, s.shape[0]) else s.t().contiguous().t()


def make_block(mm):
    def block(x, w_gate_up, wq, ws):
        gu = x @ w_gate_up.t()
        q, s = act_quant(gu)
        return mm(q, column_major(s), wq, ws)
    return block


def timed(fn, sets, reps, replays, flush):
    times = []
    med, _ = B.time_graph(fn, sets, reps, replays, flush, times)
    return med, times


def spread_of(runs):
    """Run-to-run spread: the two rounds' difference, or 1% of the median where
    the rounds agree more closely than that."""
    meds = [r[0] for r in runs]
    return max(max(meds) - min(meds), 0.01 * statistics.median(meds))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="bench_fusion_mlp.json")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--tokens", default=",".join(str(t) for t in TOKENS))
    ap.add_argument("--replays", type=int, default=11)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch._dynamo.config.cache_size_limit = 64
    props = torch.cuda.get_device_properties(0)
    flush = torch.empty(B.L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    tokens = [int(t) for t in args.tokens.split(",")]
    print(f"device: {props.name}; torch {torch.__version__}; bqjit {bqjit.__version__} "
          f"({bqjit.ops.OPS_BACKEND} ops)", flush=True)
    result = dict(device=props.name, torch=torch.__version__, bqjit=bqjit.__version__, ops=bqjit.ops.OPS_BACKEND,
                  method="CUDA graph of R calls over rotating x sets, L2 flushed (zero-filled 256 MiB) before each "
                         "replay, median over replays; every configuration timed in two rounds (A B A B)",
                  rows=[], time=time.strftime("%Y-%m-%d %H:%M:%S"))

    for model in args.models.split(","):
        hidden, inter = MODELS[model]
        mm_name, mm, mm_notes = choose_scaled_mm(inter, hidden)
        print(f"\n== {model}: hidden {hidden}, intermediate {inter}; down projection: {mm_name}", flush=True)
        for n in mm_notes:
            print(f"   (not used: {n})")
        w_gate_up = torch.randn(2 * inter, hidden, device="cuda", dtype=torch.bfloat16) * 0.02
        wq, ws = quantize_weight_128x128(torch.randn(hidden, inter, device="cuda", dtype=torch.bfloat16) * 0.02)
        block = make_block(mm)

        torch._dynamo.reset()
        before = bqjit.fusion.stats["rewritten"]
        plain_block = torch.compile(block)
        fused_block = torch.compile(block, backend=bqjit.fusion.backend)
        plain_step = torch.compile(act_quant)
        fused_step = torch.compile(act_quant, backend=bqjit.fusion.backend)
        # One compile each, T dynamic, before anything is timed; check the
        # block's numerics and that the pass rewrote the step.
        x0 = torch.randn(128, hidden, device="cuda", dtype=torch.bfloat16)
        torch._dynamo.mark_dynamic(x0, 0)
        ref = block(x0, w_gate_up, wq, ws).float()
        out_plain = plain_block(x0, w_gate_up, wq, ws).float()
        out_fused = fused_block(x0, w_gate_up, wq, ws).float()
        gu0 = x0 @ w_gate_up.t()
        torch._dynamo.mark_dynamic(gu0, 0)
        plain_step(gu0)
        fused_step(gu0)
        rewritten = bqjit.fusion.stats["rewritten"] - before
        err_plain = ((out_plain - ref).norm() / ref.norm()).item()
        err_fused = ((out_fused - ref).norm() / ref.norm()).item()
        print(f"   pass rewrites: {rewritten} (block and step); block output vs eager: compile alone "
              f"{err_plain:.2e}, with the pass {err_fused:.2e} (relative L2)", flush=True)
        if rewritten < 2:
            print(f"   NOT REWRITTEN: {list(bqjit.fusion.last_declines)[-4:]}", flush=True)

        header = ("| model | T | block compile us | block +pass us | spread us | speedup | verdict | "
                  "step compile us | step +pass us | bqjit op us | +pass / bqjit | share compile | share +pass |")
        print(header)
        print("|" + "---|" * 13, flush=True)
        for t in tokens:
            count = 4
            xs = [(torch.randn(t, hidden, device="cuda", dtype=torch.bfloat16),) for _ in range(count)]
            gus = [(x[0] @ w_gate_up.t(),) for x in xs]
            reps = 8 if t <= 128 else 4 if t <= 1024 else 2
            outs = [(torch.empty(t, inter, device="cuda", dtype=FP8),
                     torch.empty(inter // GROUP * t, device="cuda").as_strided((t, inter // GROUP), (1, t)))
                    for _ in range(count)]
            op_sets = [(g[0],) + o for g, o in zip(gus, outs)]

            def run_plain(st):
                plain_block(st[0], w_gate_up, wq, ws)

            def run_fused(st):
                fused_block(st[0], w_gate_up, wq, ws)

            def run_plain_step(st):
                plain_step(st[0])

            def run_fused_step(st):
                fused_step(st[0])

            def run_op(st):  # bqjit's own benchmark of this shape (bench.py's call)
                bqjit.silu_mul_quant(st[0], GROUP, FP8, "col", out=st[1], scales_out=st[2], min_scale=MIN_SCALE)

            runs = {k: [] for k in ("plain", "fused", "plain_step", "fused_step", "op")}
            for _ in range(2):  # rounds A B A B: the second shows the drift
                runs["plain"].append(timed(run_plain, xs, reps, args.replays, flush))
                runs["fused"].append(timed(run_fused, xs, reps, args.replays, flush))
                runs["plain_step"].append(timed(run_plain_step, gus, reps, args.replays, flush))
                runs["fused_step"].append(timed(run_fused_step, gus, reps, args.replays, flush))
                runs["op"].append(timed(run_op, op_sets, reps, args.replays, flush))
            us = {k: statistics.mean(r[0] for r in v) for k, v in runs.items()}
            spread = max(spread_of(runs["plain"]), spread_of(runs["fused"]))
            diff = us["plain"] - us["fused"]
            verdict = "faster" if diff > spread else "slower" if -diff > spread else "same"
            row = dict(model=model, hidden=hidden, intermediate=inter, tokens=t, down_proj=mm_name,
                       block_compile_us=us["plain"], block_pass_us=us["fused"], spread_us=spread,
                       speedup=us["plain"] / us["fused"], verdict=verdict,
                       step_compile_us=us["plain_step"], step_pass_us=us["fused_step"], bqjit_op_us=us["op"],
                       pass_over_op=us["fused_step"] / us["op"],
                       share_compile=us["plain_step"] / us["plain"], share_pass=us["fused_step"] / us["fused"],
                       rounds_us={k: [r[0] for r in v] for k, v in runs.items()},
                       replay_times_us={k: [r[1] for r in v] for k, v in runs.items()},
                       reps=reps, rewritten=rewritten, err_plain=err_plain, err_pass=err_fused, **B.gpu_state())
            result["rows"].append(row)
            print(f"| {model} | {t} | {us['plain']:.1f} | {us['fused']:.1f} | {spread:.1f} | "
                  f"{row['speedup']:.2f}x | {verdict} | {us['plain_step']:.1f} | {us['fused_step']:.1f} | "
                  f"{us['op']:.1f} | {row['pass_over_op']:.2f} | {100 * row['share_compile']:.0f}% | "
                  f"{100 * row['share_pass']:.0f}% |", flush=True)
            with open(args.json, "w") as f:  # after every row: a killed run keeps its rows
                json.dump(result, f, indent=1)
            del xs, gus, outs, op_sets
            torch.cuda.empty_cache()
        w_gate_up = wq = ws = block = plain_block = fused_block = None  # free before the next model
        torch.cuda.empty_cache()

    rows = result["rows"]
    slower = [r for r in rows if r["verdict"] == "slower"]
    over = [r for r in rows if r["pass_over_op"] > 1.10]
    print(f"\nblocks slower with the pass beyond the spread: {len(slower)} of {len(rows)}; "
          f"faster: {sum(r['verdict'] == 'faster' for r in rows)}; "
          f"step with the pass over 1.10x bqjit's own: {len(over)}")
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
