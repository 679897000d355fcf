"""GPU tests of the FP4 outputs (docs/contract.md section 8) through the PyTorch op:
NVFP4 (group_size 16, E4M3 scale bytes, a global_scale tensor) and MXFP4
(group_size 32, E8M0), in the bytes and swizzled_128x4 layouts, against a
PyTorch fp32 reference written from the contract; and the interop checks:
torch's float4_e2m1fn_x2 / float8_e8m0fnu / float8_e4m3fn views decode to
the reference values, and unswizzling the 128x4 layout in torch gives the
row-major scales.

Needs PyTorch with a CUDA device; skipped (with the reason) otherwise.
"""
import pytest

torch = pytest.importorskip("torch", reason="bqjit GPU tests need PyTorch, which is not installed")
if not torch.cuda.is_available():
    pytest.skip("bqjit GPU tests need a CUDA device; torch.cuda.is_available() is False", allow_module_level=True)

import bqjit  # noqa: E402
from bqjit import ops  # noqa: E402
from test_bqjit import DEV, make_x  # noqa: E402

_F32 = torch.float32
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=_F32)
# Midpoints of neighbouring e2m1 values: the rounding boundaries.
E2M1_MIDS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=torch.float64)
BOUNDARY_RTOL = 2e-6
FP4 = getattr(torch, "float4_e2m1fn_x2", None)
FP4_OUT = FP4 if FP4 is not None else "fp4_e2m1"


# ---- reference (docs/contract.md section 8), fp32 on the CPU -----------------------------


def e2m1_code(v):
    """saturate_round to e2m1 as 4-bit codes: clamp to 6, nearest, ties to even; sign in bit 3."""
    a = v.abs().clamp(max=6.0)
    code = ((a > 0.25).int() + (a >= 0.75).int() + (a > 1.25).int() + (a >= 1.75).int() + (a > 2.5).int()
            + (a >= 3.5).int() + (a > 5.0).int())
    return code | (torch.signbit(v).int() << 3)


def e2m1_value(code):
    mag = E2M1_VALUES[(code & 7).long()]
    return torch.where((code & 8) != 0, -mag, mag)


def unpack_nibbles(q):
    """[..., H // 2] bytes (any 1-byte dtype) -> [..., H] int codes, element 2k from the low nibble."""
    b = q.view(torch.uint8).cpu().to(torch.int32)
    return torch.stack([b & 0xF, b >> 4], dim=-1).reshape(*b.shape[:-1], b.shape[-1] * 2)


def activations(x):
    h = x.shape[-1] // 2
    xf = x.detach().reshape(-1, 2 * h).to("cpu", _F32)
    g, u = xf[:, :h], xf[:, h:]
    return g / (1.0 + torch.exp(-g)) * u


def fp4_reference(x, nvfp4, global_scale=None, rounding="ceil"):
    """(codes [T, H], scale bytes [T, NG], scale values [T, NG], v = y * r or y / s [T, H],
    the unrounded scale [T, NG])."""
    y = activations(x)
    t, h = y.shape
    g = 16 if nvfp4 else 32
    yg = y.reshape(t, h // g, g)
    amax = torch.nan_to_num(yg.abs(), nan=0.0).amax(-1)
    if nvfp4:
        gs = torch.tensor(float(global_scale), dtype=_F32)
        pre = torch.minimum(gs * amax / torch.tensor(6.0, dtype=_F32), torch.tensor(448.0, dtype=_F32))
        sf = pre.to(torch.float8_e4m3fn)
        byte = sf.view(torch.uint8)
        sv = sf.to(_F32)
        r = torch.where(sv == 0, torch.zeros_like(sv), 1.0 / (sv / gs))
        v = yg * r[..., None]
    else:
        if rounding == "floor":
            _, e2 = torch.frexp(amax.double())
            e = torch.where(amax > 0, e2 - 1 - 2, torch.full_like(e2, -127))
            pre = (amax.double() / 4.0)
        else:
            pre = torch.maximum(amax / torch.tensor(6.0, dtype=_F32), torch.tensor(2.0 ** -127, dtype=_F32)).double()
            m, e2 = torch.frexp(pre)
            e = torch.where(m == 0.5, e2 - 1, e2)
        e = e.clamp(-127, 127)
        byte = (e + 127).to(torch.uint8)
        s64 = torch.ldexp(torch.ones_like(pre), e.double())
        sv = s64.to(_F32)
        v = (yg.double() / s64[..., None]).to(_F32)
    v = v.reshape(t, h)
    return e2m1_code(v), byte, sv, v, pre.double()


def unswizzle(s, t, ng):
    """swizzled_128x4 bytes [Tp, NGp] -> row-major [T, NG] (and checks the padding is 0)."""
    tp, ngp = s.shape
    assert tp == (t + 127) // 128 * 128 and ngp == (ng + 3) // 4 * 4
    rows = s.contiguous().view(tp // 128, ngp // 4, 32, 4, 4).permute(0, 3, 2, 1, 4).reshape(tp, ngp)
    pad = torch.ones(tp, ngp, dtype=torch.bool, device=s.device)
    pad[:t, :ng] = False
    assert torch.all(rows[pad] == 0), "swizzled_128x4 padding must be 0"
    return rows[:t, :ng]


def near_pow2(pre):
    k = torch.round(torch.log2(pre.clamp(min=2.0 ** -140)))
    p = torch.ldexp(torch.ones_like(pre), k)
    return (pre - p).abs() <= BOUNDARY_RTOL * p


def near_e4m3_boundary(pre):
    lo = pre.to(_F32).to(torch.float8_e4m3fn).to(torch.float64)
    # Midpoints either side of the rounded value.
    code = pre.to(_F32).to(torch.float8_e4m3fn).view(torch.uint8).to(torch.int32)
    up = (code + 1).clamp(max=0x7E).to(torch.uint8).view(torch.float8_e4m3fn).to(torch.float64)
    down = (code - 1).clamp(min=0).to(torch.uint8).view(torch.float8_e4m3fn).to(torch.float64)
    mids = torch.stack([(lo + up) / 2, (lo + down) / 2])
    return ((pre[None] - mids).abs() <= BOUNDARY_RTOL * mids.abs()).any(0)


def check_fp4(q, scale_bytes, x, nvfp4, global_scale=None, rounding="ceil"):
    """q [T, H // 2] and row-major scale bytes [T, NG] against the reference:
    scale bytes identical except one step at a boundary of the scale format
    (that group's q is then not compared); codes identical except one step at
    an e2m1 rounding boundary. Returns (values compared, allowances used)."""
    codes, byte, _, v, pre = fp4_reference(x, nvfp4, global_scale, rounding)
    t, h = codes.shape
    g = 16 if nvfp4 else 32
    got_b = scale_bytes.cpu().view(torch.uint8).to(torch.int32)
    diff = got_b != byte.to(torch.int32)
    allowed = near_e4m3_boundary(pre) if nvfp4 else near_pow2(pre)
    one_step = (got_b - byte.to(torch.int32)).abs() == 1
    bad_scales = diff & ~(allowed & one_step)
    assert not bool(bad_scales.any()), f"{int(bad_scales.sum())} scale bytes differ, first at " \
        f"{bad_scales.nonzero()[0].tolist()}"
    got = unpack_nibbles(q).reshape(t, h)
    skip = diff.repeat_interleave(g, dim=1)
    mism = (got != codes) & ~skip
    a = v.abs().double()
    at_boundary = ((a[..., None] - E2M1_MIDS).abs() <= BOUNDARY_RTOL * E2M1_MIDS).any(-1)
    near = (e2m1_value(got) - e2m1_value(codes)).abs() <= 1.0  # a neighbour (steps are at most 2 apart)
    bad = mism & ~(at_boundary & near)
    assert not bool(bad.any()), f"{int(bad.sum())} codes differ, first at {bad.nonzero()[0].tolist()}: " \
        f"device {int(got[tuple(bad.nonzero()[0])])}, reference {int(codes[tuple(bad.nonzero()[0])])}"
    return int((~skip).sum()), int(mism.sum()) + int(diff.sum())


def global_scale_for(x, nvfp4=True):
    """vLLM's 448 * 6 / amax of the tensor's y, as a float32 CUDA tensor."""
    amax = float(activations(x).abs().max())
    return torch.tensor([448.0 * 6.0 / amax], dtype=_F32, device=DEV)


# ---- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("layout", ["bytes", "swizzled_128x4"])
@pytest.mark.parametrize("t", [1, 3, 129])
def test_nvfp4_against_the_contract(dtype, layout, t):
    h = 2064  # NG = 129: padding columns in swizzled_128x4
    x = make_x(t, h, dtype, seed=1800 + t, scale=4.0)
    gs = global_scale_for(x)
    q, s = bqjit.silu_mul_quant(x, 16, FP4_OUT, layout, global_scale=gs)
    assert q.shape == (t, h // 2)
    if FP4 is not None:
        assert q.dtype == FP4
    assert s.dtype == torch.uint8
    rows = unswizzle(s, t, h // 16) if layout == "swizzled_128x4" else s
    n, used = check_fp4(q, rows, x, True, float(gs))
    print(f"[allowance] nvfp4 {dtype} {layout} T={t}: {used} of {n}")


@pytest.mark.parametrize("rounding", [None, "floor"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("layout", ["bytes", "swizzled_128x4"])
def test_mxfp4_against_the_contract(rounding, dtype, layout):
    t, h = 130, 2880  # NG = 90
    x = make_x(t, h, dtype, seed=1900, scale=4.0)
    q, s = bqjit.silu_mul_quant(x, 32, FP4_OUT, layout, True, scale_rounding=rounding)
    rows = unswizzle(s, t, h // 32) if layout == "swizzled_128x4" else s
    check_fp4(q, rows, x, False, rounding=rounding or "ceil")


@pytest.mark.parametrize("gs_value", [448.0 * 6.0, 1e-4])
def test_nvfp4_block_scales_at_448_and_subnormal(gs_value):
    t, h = 64, 7168
    x = make_x(t, h, torch.bfloat16, seed=2000, scale=4.0)
    gs = torch.tensor([gs_value], dtype=_F32, device=DEV)
    q, s = bqjit.silu_mul_quant(x, 16, FP4_OUT, "bytes", global_scale=gs)
    check_fp4(q, s, x, True, gs_value)
    b = s.cpu()
    if gs_value > 1:
        assert int((b == 0x7E).sum()) > b.numel() // 2, "most block scales should be 448"
    else:
        assert bool(torch.all(b < 0x08)), "every block scale should be an E4M3 subnormal"


def test_interop_views_decode_to_the_reference():
    t, h = 133, 2064
    x = make_x(t, h, torch.bfloat16, seed=2100, scale=4.0)
    gs = global_scale_for(x)
    # NVFP4: float4_e2m1fn_x2 q, E4M3 scale bytes as torch.float8_e4m3fn.
    q, s = bqjit.silu_mul_quant(x, 16, FP4_OUT, "bytes", global_scale=gs)
    codes, _, sv, v, _ = fp4_reference(x, True, float(gs))
    if FP4 is not None:
        assert q.dtype == FP4 and q.element_size() == 1
    decoded = e2m1_value(unpack_nibbles(q.view(torch.uint8)))
    want = e2m1_value(codes)
    close = (decoded == want) | ((decoded - want).abs() <= 1.0)
    assert bool(close.all())
    assert float((decoded == want).float().mean()) > 0.999
    scales = s.view(torch.float8_e4m3fn).float().cpu()
    assert float((scales == sv).float().mean()) > 0.999
    # Dequantized: q * scale / global_scale approximates y (within half an e2m1 step of the group).
    y = activations(x)
    deq = decoded.reshape(t, -1, 16) * (scales / float(gs))[..., None]
    err = (deq.reshape(t, h) - y).abs().reshape(t, -1, 16).amax(-1)
    amax = y.abs().reshape(t, -1, 16).amax(-1)
    # Half an e2m1 step is at most 1 (between 4 and 6) in units of sf / gs, and sf is
    # gs * amax / 6 rounded to E4M3 (at most 2^-4 relative); a zero block scale gives zeros.
    bound = torch.where(scales == 0, amax, amax / 6.0 * 1.07) + 1e-30
    assert bool(torch.all(err <= bound)), "NVFP4 dequantization is off by more than half a step"
    # MXFP4: the E8M0 bytes as torch.float8_e8m0fnu decode to the power-of-two scales.
    e8 = getattr(torch, "float8_e8m0fnu", None)
    x2 = make_x(t, 2880, torch.bfloat16, seed=2101, scale=4.0)
    q2, s2 = bqjit.silu_mul_quant(x2, 32, FP4_OUT, "bytes", True)
    _, byte2, sv2, _, _ = fp4_reference(x2, False)
    if e8 is not None:
        got = s2.view(e8).float().cpu()
        assert float((got == sv2).float().mean()) > 0.999
    assert float((s2.cpu() == byte2).float().mean()) > 0.999


def test_unswizzling_in_torch_gives_the_row_major_scales():
    for nvfp4, h, t in ((True, 2064, 1), (True, 7168, 300), (False, 2880, 129)):
        x = make_x(t, h, torch.float16, seed=2200 + t, scale=4.0)
        g = 16 if nvfp4 else 32
        kw = dict(global_scale=global_scale_for(x)) if nvfp4 else {}
        q1, rows = bqjit.silu_mul_quant(x, g, FP4_OUT, "bytes", not nvfp4, **kw)
        q2, swz = bqjit.silu_mul_quant(x, g, FP4_OUT, "swizzled_128x4", not nvfp4, **kw)
        assert swz.shape == ((t + 127) // 128 * 128, (h // g + 3) // 4 * 4)
        assert torch.equal(unswizzle(swz, t, h // g), rows)
        assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8))


def test_masked_swizzled_per_expert():
    e, t_max, h = 3, 200, 2064
    x = torch.stack([make_x(t_max, h, torch.bfloat16, seed=2300 + i, scale=4.0) for i in range(e)])
    masked_m = torch.tensor([200, 0, 129], dtype=torch.int32, device=DEV)
    gs = global_scale_for(x.reshape(-1, 2 * h))
    q, s = bqjit.silu_mul_quant_masked(x, masked_m, 16, FP4_OUT, "swizzled_128x4", global_scale=gs)
    tp, ngp, ng = 256, 132, 129
    assert q.shape == (e, t_max, h // 2) and s.shape == (e, tp, ngp)
    for i, m in enumerate(masked_m.tolist()):
        rows = s[i].contiguous().view(tp // 128, ngp // 4, 32, 4, 4).permute(0, 3, 2, 1, 4).reshape(tp, ngp)
        assert torch.all(rows[t_max:] == 0) and torch.all(rows[:, ng:] == 0), f"expert {i}: padding not 0"
        if m:
            check_fp4(q[i, :m], rows[:m, :ng], x[i, :m], True, float(gs))


def test_fp4_errors_name_the_rule():
    x = make_x(4, 2048, torch.bfloat16)
    gs = torch.ones(1, dtype=_F32, device=DEV)
    with pytest.raises(ValueError, match="global_scale is None: NVFP4"):
        bqjit.silu_mul_quant(x, 16, FP4_OUT, "swizzled_128x4")
    with pytest.raises(ValueError, match="fp4_e2m1 needs G = 16 \\(NVFP4\\) or G = 32 with ue8m0"):
        bqjit.silu_mul_quant(x, 64, FP4_OUT, "bytes", global_scale=gs)
    with pytest.raises(ValueError, match="global_scale applies only to NVFP4"):
        bqjit.silu_mul_quant(x, 32, FP4_OUT, "bytes", True, global_scale=gs)
    with pytest.raises(ValueError, match="scale_ub must be None for NVFP4"):
        bqjit.silu_mul_quant(x, 16, FP4_OUT, "bytes", False, gs, global_scale=gs)
    with pytest.raises(ValueError, match="NVFP4 \\(fp4_e2m1, group_size 16\\) stores E4M3 scale bytes"):
        bqjit.silu_mul_quant(x, 16, FP4_OUT, "row", global_scale=gs)
    with pytest.raises(ValueError, match="swizzled_128x4' needs ue8m0 = True"):
        bqjit.silu_mul_quant(x, 128, torch.float8_e4m3fn, "swizzled_128x4")


def test_fp4_under_torch_compile():
    t, h = 33, 2064
    x = make_x(t, h, torch.bfloat16, seed=2400, scale=4.0)
    gs = global_scale_for(x)

    def f(x, gs):
        return bqjit.silu_mul_quant(x, 16, FP4_OUT, "swizzled_128x4", global_scale=gs)

    q, s = torch.compile(f, fullgraph=True)(x, gs)
    q0, s0 = f(x, gs)
    assert torch.equal(q.view(torch.uint8), q0.view(torch.uint8)) and torch.equal(s, s0)
    assert ops.OPS_BACKEND in ("cpp", "python")
