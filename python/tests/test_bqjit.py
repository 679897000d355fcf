"""GPU tests of bqjit.silu_mul_quant against a PyTorch fp32 reference of docs/contract.md
section 1 (numerics) and section 2 (scale layouts).

Needs PyTorch with a CUDA device and libbqjit.so; skipped (with the reason)
otherwise. Run with -s to see how many elements used the rounding-boundary
allowance of docs/contract.md ("Tests report how many elements used that allowance").
"""
import math

import pytest

torch = pytest.importorskip("torch", reason="bqjit GPU tests need PyTorch, which is not installed")
if not torch.cuda.is_available():
    pytest.skip("bqjit GPU tests need a CUDA device; torch.cuda.is_available() is False", allow_module_level=True)

import bqjit  # noqa: E402

DEV = torch.device("cuda")
OUT = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2, "int8": torch.int8}
IN = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_F32 = torch.float32
QMAX = {"fp8_e4m3": 448.0, "fp8_e5m2": 57344.0, "int8": 127.0}
# MIN_SCALE computed in fp32 as the kernel does.
MIN_SCALE = {
    "fp8_e4m3": torch.tensor(1.0, dtype=_F32) / torch.tensor(448.0 * 512.0, dtype=_F32),
    "fp8_e5m2": torch.tensor(1.0, dtype=_F32) / torch.tensor(57344.0 * 512.0, dtype=_F32),
    "int8": torch.tensor(2.0**-23, dtype=_F32),
}
BOUNDARY_RTOL = 2e-6
ALLOWANCE = {"used": 0, "compared": 0}


# ---- reference (docs/contract.md section 1), fp32 on the CPU -----------------------------


def pow2_ceil(s):
    """2^ceil(log2(s)) exactly, for positive normal fp32 s."""
    m, e = torch.frexp(s)  # s = m * 2^e, 0.5 <= m < 1
    k = torch.where(m == 0.5, e - 1, e).to(torch.int32)
    return ((k + 127) << 23).view(_F32)


def reference(x, group_size, out, ue8m0=False, scale_ub=None, min_scale=None):
    """(q [T, H] of out dtype, s [T, NG] fp32, v = y / s [T, H] fp32) for x [..., 2H];
    `min_scale` (a number, rounded to fp32) replaces MIN_SCALE."""
    h = x.shape[-1] // 2
    xf = x.detach().reshape(-1, 2 * h).to("cpu", _F32)
    g, u = xf[:, :h], xf[:, h:]
    y = g / (1.0 + torch.exp(-g)) * u
    t, ng = y.shape[0], h // group_size
    yg = y.reshape(t, ng, group_size)
    amax = yg.abs().amax(-1) if t else torch.zeros(0, ng)
    s = amax / torch.tensor(QMAX[out], dtype=_F32)
    if scale_ub is not None:
        s = torch.minimum(s, scale_ub.detach().to("cpu").reshape(()))
    s = torch.maximum(s, MIN_SCALE[out] if min_scale is None else torch.tensor(min_scale, dtype=_F32))
    if ue8m0:
        s = pow2_ceil(s)
    v = (yg / s[..., None]).reshape(t, h)
    if out == "int8":
        q = torch.round(v).clamp(-128, 127).to(torch.int8)  # half to even, saturate
    else:
        q = v.clamp(-QMAX[out], QMAX[out]).to(OUT[out])  # round to nearest even
    return q, s, v


# ---- comparison --------------------------------------------------------------------


def scales_matrix(s, layout, t, ng):
    """Checks dtype/shape/strides/padding of the returned scales; returns [T, NG] fp32 on the CPU."""
    t4 = (t + 3) // 4 * 4
    nw = (ng + 3) // 4
    if layout == "row":
        assert s.dtype == _F32 and s.is_contiguous()
        return s.reshape(t, ng).cpu()
    if layout == "col":
        assert s.dtype == _F32 and s.shape == (t, ng)
        if t > 1 and ng > 1:
            assert s.stride() == (1, t)
        return s.cpu()
    if layout == "col_tma":
        assert s.dtype == _F32 and s.shape == (t, ng)
        if ng > 1:
            assert s.stride(1) == t4
        if t > 1:
            assert s.stride(0) == 1
        buf = torch.as_strided(s, (ng, t4), (t4, 1)).cpu()
        assert torch.all(buf[:, t:] == 0), "col_tma padding rows must be written as 0"
        return buf[:, :t].t()
    assert layout == "ue8m0_packed"
    assert s.dtype == torch.int32 and s.shape == (t, nw)
    if nw > 1:
        assert s.stride(1) == t4
    if t > 1:
        assert s.stride(0) == 1
    words = torch.as_strided(s, (nw, t4), (t4, 1)).cpu().contiguous()
    by = words.view(torch.uint8).reshape(nw, t4, 4).permute(1, 0, 2).reshape(t4, nw * 4)
    assert torch.all(by[t:] == 0), "ue8m0_packed padding rows must be 0"
    assert torch.all(by[:, ng:] == 0), "ue8m0_packed unused bytes of the last word must be 0"
    exps = by[:t, :ng].to(torch.int32)
    assert torch.all(exps > 0)
    return (exps << 23).view(_F32)


def _ordinal(q, out):
    """Signed position on the number line of the output type (+0 and -0 coincide)."""
    if out == "int8":
        return q.to(torch.int32)
    code = q.view(torch.uint8).to(torch.int32)
    mag = code & 0x7F
    return torch.where(code >= 0x80, -mag, mag)


def compare_q(q, q_ref, v_ref, out):
    """Exact, except one step where v_ref is within 2e-6 relative of a rounding
    boundary (docs/contract.md section 1). Returns how many elements used the allowance."""
    q = q.cpu().reshape(q_ref.shape)
    a, b = q.to(_F32), q_ref.to(_F32)
    bad = a != b
    n = int(bad.sum())
    ALLOWANCE["compared"] += q.numel()
    if n == 0:
        return 0
    step = (_ordinal(q, out) - _ordinal(q_ref, out)).abs()
    mid = (a + b) / 2
    near = (v_ref - mid).abs() <= BOUNDARY_RTOL * mid.abs()
    allowed = bad & (step == 1) & near
    worst = bad & ~allowed
    if worst.any():
        idx = worst.nonzero()[:8].tolist()
        detail = [(i, float(a[tuple(i)]), float(b[tuple(i)]), float(v_ref[tuple(i)])) for i in idx]
        pytest.fail(f"{int(worst.sum())} of {q.numel()} quantized values differ beyond the allowance: "
                    f"(index, got, want, y/s) {detail}")
    ALLOWANCE["used"] += n
    return n


def check(x, q, s, group_size, out, layout, ue8m0=False, scale_ub=None, min_scale=None):
    h = x.shape[-1] // 2
    lead = tuple(x.shape[:-1])
    t, ng = math.prod(lead), h // group_size
    assert q.shape == lead + (h,) and q.dtype == OUT[out] and q.is_contiguous() and q.device == x.device
    q_ref, s_ref, v_ref = reference(x, group_size, out, ue8m0, scale_ub, min_scale)
    sm = scales_matrix(s, layout, t, ng)
    torch.testing.assert_close(sm, s_ref, rtol=1e-6, atol=0)
    used = compare_q(q, q_ref, v_ref, out)
    print(f"[bqjit] {tuple(x.shape)} {x.dtype} G={group_size} {out} {layout} ue8m0={ue8m0} "
          f"ub={scale_ub is not None}: boundary allowance used by {used} of {q.numel()} elements")
    return used


def make_x(t, h, dtype, seed=0, scale=3.0, lead=None):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(t, 2 * h, generator=gen) * scale
    if t > 1:
        x[1, : min(h, 64)] = 0.0  # a zero group: amax 0, the MIN_SCALE path
    x = x.to(DEV, dtype)
    return x if lead is None else x.reshape(*lead, 2 * h)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print(f"\n[bqjit] boundary allowance used by {ALLOWANCE['used']} of {ALLOWANCE['compared']} compared elements")


# ---- numerics ------------------------------------------------------------------------


@pytest.mark.parametrize("in_name", list(IN))
@pytest.mark.parametrize("out", list(OUT))
def test_dtypes(in_name, out):
    x = make_x(33, 512, IN[in_name], seed=1)
    q, s = bqjit.silu_mul_quant(x, 128, OUT[out])
    check(x, q, s, 128, out, "row")


def test_large_hidden_and_defaults():
    x = make_x(16, 7168, torch.bfloat16, seed=2)
    q, s = bqjit.silu_mul_quant(x)  # G=128, e4m3, row
    assert s.shape == (16, 56)
    check(x, q, s, 128, "fp8_e4m3", "row")


def test_extreme_values():
    x = make_x(8, 256, torch.float32, seed=3, scale=40.0)  # silu saturates, large y
    x[2, :256] = -100.0  # silu(-100) ~ 0
    for out in OUT:
        q, s = bqjit.silu_mul_quant(x, 64, OUT[out])
        check(x, q, s, 64, out, "row")


LAYOUT_CASES = [
    ("row", False),
    ("row", True),
    ("col", False),
    ("col", True),
    ("col_tma", False),
    ("col_tma", True),
    ("ue8m0_packed", True),
]


@pytest.mark.parametrize("t", [1, 7, 300])
@pytest.mark.parametrize("group_size", [64, 96, 128, 192])
@pytest.mark.parametrize("layout,ue8m0", LAYOUT_CASES)
def test_layouts(layout, ue8m0, group_size, t):
    h = 384 if group_size != 64 else 448  # NG = 7 (G=64): the packed layout has a partial last word
    x = make_x(t, h, torch.bfloat16, seed=t + group_size)
    q, s = bqjit.silu_mul_quant(x, group_size, torch.float8_e4m3fn, layout, ue8m0)
    shape, strides, storage = bqjit.scale_shape(layout, (t,), h, group_size)
    assert tuple(s.shape) == shape
    if strides is not None:
        assert s.stride() == strides
        assert s.untyped_storage().nbytes() >= storage * s.element_size()
    check(x, q, s, group_size, "fp8_e4m3", layout, ue8m0)


@pytest.mark.parametrize("out", list(OUT))
@pytest.mark.parametrize("layout,ue8m0", [("row", False), ("col_tma", True), ("ue8m0_packed", True)])
def test_layouts_other_outputs(out, layout, ue8m0):
    x = make_x(13, 768, torch.float16, seed=4)
    q, s = bqjit.silu_mul_quant(x, 128, OUT[out], layout, ue8m0)
    check(x, q, s, 128, out, layout, ue8m0)


def test_zero_tokens():
    x = torch.empty(0, 512, device=DEV, dtype=torch.bfloat16)
    for layout, ue8m0 in LAYOUT_CASES:
        q, s = bqjit.silu_mul_quant(x, 128, torch.int8, layout, ue8m0)
        assert q.shape == (0, 256)
        assert s.numel() == 0


# ---- strided and batched inputs ------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 8, 1, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_strided_rows(offset, dtype):
    """x is a column slice of a wider tensor; an offset that breaks 16-byte
    alignment makes the binding pick a narrower vector width."""
    h, t, pad = 256, 19, 40 + offset
    wide = make_x(t, h + pad, dtype, seed=5)  # [t, 2h + 2*pad]
    x = wide[:, offset : offset + 2 * h]
    assert x.stride() == (2 * h + 2 * pad, 1)
    for layout, ue8m0 in [("row", False), ("col", False), ("col_tma", True), ("ue8m0_packed", True)]:
        q, s = bqjit.silu_mul_quant(x, 128, torch.float8_e4m3fn, layout, ue8m0)
        check(x, q, s, 128, "fp8_e4m3", layout, ue8m0)


def test_row_slice_and_step():
    h = 256
    base = make_x(40, h, torch.float16, seed=6)
    x = base[3:30:3]  # strided rows: stride 3 * 2H
    assert x.stride(0) == 3 * 2 * h
    q, s = bqjit.silu_mul_quant(x, 64, torch.int8)
    check(x, q, s, 64, "int8", "row")


def test_3d_input():
    b, sq, h = 3, 5, 384
    x = make_x(b * sq, h, torch.bfloat16, seed=7, lead=(b, sq))
    q, s = bqjit.silu_mul_quant(x, 96, torch.float8_e5m2)
    assert q.shape == (b, sq, h) and s.shape == (b, sq, h // 96)
    check(x, q, s, 96, "fp8_e5m2", "row")


def test_3d_strided_flattenable():
    b, sq, h = 2, 6, 256
    wide = make_x(b * sq, h + 32, torch.bfloat16, seed=8, lead=(b, sq))
    x = wide[..., : 2 * h]  # rows of pitch 2h + 64, flattenable
    q, s = bqjit.silu_mul_quant(x, 128)
    check(x, q, s, 128, "fp8_e4m3", "row")


def test_3d_not_flattenable_raises():
    x = make_x(12, 256, torch.bfloat16, seed=9, lead=(4, 3)).transpose(0, 1)  # [3, 4, 2H]
    with pytest.raises(ValueError, match="flatten"):
        bqjit.silu_mul_quant(x, 128)
    with pytest.raises(ValueError, match="scale_layout"):
        bqjit.silu_mul_quant(make_x(12, 256, torch.bfloat16, lead=(4, 3)), 128, scale_layout="col")


# ---- scale upper bound ------------------------------------------------------------------------


@pytest.mark.parametrize("out", list(OUT))
@pytest.mark.parametrize("layout,ue8m0", [("row", False), ("col", True), ("ue8m0_packed", True)])
def test_scale_ub(out, layout, ue8m0):
    x = make_x(50, 512, torch.bfloat16, seed=10)
    _, s_ref, _ = reference(x, 128, out)
    ub = torch.median(s_ref).reshape(1).to(DEV)  # half the groups get clamped
    q, s = bqjit.silu_mul_quant(x, 128, OUT[out], layout, ue8m0, scale_ub=ub)
    check(x, q, s, 128, out, layout, ue8m0, scale_ub=ub)
    q_ref, _, _ = reference(x, 128, out, ue8m0, ub)
    assert (q_ref.to(_F32).abs() >= QMAX[out]).any(), "the bound should make some values saturate"


# ---- out= form --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout,ue8m0", LAYOUT_CASES)
def test_out_form(layout, ue8m0):
    t, h, g = 21, 512, 128
    x = make_x(t, h, torch.bfloat16, seed=11)
    shape, strides, storage = bqjit.scale_shape(layout, (t,), h, g)
    sdt = torch.int32 if layout == "ue8m0_packed" else _F32
    q = torch.full((t, h), 7, dtype=torch.int8, device=DEV)
    if strides is None:
        s = torch.full(shape, -1.0, dtype=sdt, device=DEV)
    else:
        s = torch.full((storage,), -1, dtype=sdt, device=DEV).as_strided(shape, strides)
    q2, s2 = bqjit.silu_mul_quant(x, g, torch.int8, layout, ue8m0, out=q, scales_out=s)
    assert q2 is q and s2 is s
    check(x, q, s, g, "int8", layout, ue8m0)


def test_out_form_errors():
    t, h, g = 8, 256, 128
    x = make_x(t, h, torch.bfloat16)
    q = torch.empty(t, h, dtype=torch.float8_e4m3fn, device=DEV)
    s = torch.empty(t, h // g, device=DEV)
    with pytest.raises(ValueError, match="out.shape"):
        bqjit.silu_mul_quant(x, g, out=q[:, :128], scales_out=s)
    with pytest.raises(TypeError, match="out.dtype"):
        bqjit.silu_mul_quant(x, g, out=q.view(torch.int8), scales_out=s)
    with pytest.raises(ValueError, match="out must be contiguous"):
        bqjit.silu_mul_quant(x, g, out=torch.empty(h, t, dtype=q.dtype, device=DEV).t(), scales_out=s)
    with pytest.raises(ValueError, match="out is on device"):
        bqjit.silu_mul_quant(x, g, out=q.cpu(), scales_out=s)
    with pytest.raises(ValueError, match="scales_out.shape"):
        bqjit.silu_mul_quant(x, g, out=q, scales_out=s[:, :1])
    with pytest.raises(TypeError, match="scales_out.dtype"):
        bqjit.silu_mul_quant(x, g, out=q, scales_out=s.half())
    with pytest.raises(ValueError, match="scales_out.stride"):
        bqjit.silu_mul_quant(x, g, scale_layout="col", out=q, scales_out=s)  # row-major, col wanted
    with pytest.raises(ValueError, match="scales_out has room"):
        tight = torch.empty_strided((5, 2), (1, 8), device=DEV)  # 13 floats: padding rows need 16
        bqjit.silu_mul_quant(make_x(5, h, torch.bfloat16), g, scale_layout="col_tma",
                             out=q[:5], scales_out=tight)
    with pytest.raises(ValueError, match="scales_out"):
        bqjit.silu_mul_quant(x, g, out=q)


# ---- torch.compile and CUDA graphs -----------------------------------------------------------------------


def test_opcheck():
    x = make_x(9, 256, torch.bfloat16, seed=12)
    for layout, ue8m0 in LAYOUT_CASES:
        torch.library.opcheck(
            torch.ops.bqjit.silu_mul_quant.default,
            (x, 64, "int8", layout, ue8m0, None, None),  # opcheck cannot compare fp8 tensors
            test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
        )
        shape, strides, storage = bqjit.scale_shape(layout, (9,), 256, 64)
        sdt = torch.int32 if layout == "ue8m0_packed" else _F32
        s = torch.empty(storage, dtype=sdt, device=DEV)
        s = s.view(shape) if strides is None else s.as_strided(shape, strides)
        q = torch.empty(9, 256, dtype=torch.int8, device=DEV)
        torch.library.opcheck(
            torch.ops.bqjit.silu_mul_quant_out.default,
            (x, q, s, 64, "int8", layout, ue8m0, None, None),
            test_utils=("test_schema", "test_faketensor"),
        )


@pytest.mark.parametrize("layout,ue8m0", [("row", False), ("col", False), ("col_tma", True), ("ue8m0_packed", True)])
def test_torch_compile_fullgraph(layout, ue8m0):
    torch._dynamo.reset()
    ub = torch.tensor([0.05], device=DEV)

    @torch.compile(fullgraph=True)
    def f(x):
        q, s = bqjit.silu_mul_quant(x * 2, 128, torch.float8_e4m3fn, layout, ue8m0, ub)
        return q, s

    for t in (7, 33):
        x = make_x(t, 512, torch.bfloat16, seed=t)
        q, s = f(x)
        q_e, s_e = bqjit.silu_mul_quant(x * 2, 128, torch.float8_e4m3fn, layout, ue8m0, ub)
        assert s.shape == s_e.shape and s.stride() == s_e.stride()
        check(x * 2, q, s, 128, "fp8_e4m3", layout, ue8m0, ub)


def test_torch_compile_out_form():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True)
    def f(x, q, s):
        bqjit.silu_mul_quant(x, 64, torch.int8, "col", out=q, scales_out=s)
        return q.float().sum()

    x = make_x(10, 256, torch.float16, seed=13)
    q = torch.empty(10, 256, dtype=torch.int8, device=DEV)
    s = torch.empty(4 * 10, device=DEV).as_strided((10, 4), (1, 10))
    total = f(x, q, s)
    check(x, q, s, 64, "int8", "col")
    assert float(total) == float(q.float().sum())


@pytest.mark.parametrize("layout,ue8m0", [("row", False), ("col_tma", False), ("ue8m0_packed", True)])
def test_cuda_graph(layout, ue8m0):
    t, h, g = 64, 1024, 128
    x_static = make_x(t, h, torch.bfloat16, seed=14)
    ub = torch.tensor([1.0], device=DEV)
    q_out = torch.empty(t, h, dtype=torch.float8_e4m3fn, device=DEV)
    shape, strides, storage = bqjit.scale_shape(layout, (t,), h, g)
    sdt = torch.int32 if layout == "ue8m0_packed" else _F32
    s_buf = torch.empty(storage, dtype=sdt, device=DEV)
    s_out = s_buf.view(shape) if strides is None else s_buf.as_strided(shape, strides)

    # Warm-up outside the capture: compiles (or loads) and loads the module.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        bqjit.silu_mul_quant(x_static, g, torch.float8_e4m3fn, layout, ue8m0, ub)
        bqjit.silu_mul_quant(x_static, g, torch.float8_e4m3fn, layout, ue8m0, ub, out=q_out, scales_out=s_out)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q, s = bqjit.silu_mul_quant(x_static, g, torch.float8_e4m3fn, layout, ue8m0, ub)
        bqjit.silu_mul_quant(x_static, g, torch.float8_e4m3fn, layout, ue8m0, ub, out=q_out, scales_out=s_out)

    for seed in (15, 16):
        x_static.copy_(make_x(t, h, torch.bfloat16, seed=seed))
        graph.replay()
        torch.cuda.synchronize()
        check(x_static, q, s, g, "fp8_e4m3", layout, ue8m0, ub)
        check(x_static, q_out, s_out, g, "fp8_e4m3", layout, ue8m0, ub)


def test_stream_is_current_stream():
    x = make_x(64, 1024, torch.bfloat16, seed=17)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)  # delays the next op on this stream
        x2 = x + 0  # written on `stream` after the sleep
        q, s = bqjit.silu_mul_quant(x2, 128)  # reads garbage unless it runs on `stream` too
    stream.synchronize()
    check(x, q, s, 128, "fp8_e4m3", "row")


def test_launch_override_and_bqjit_error():
    x = make_x(9, 256, torch.bfloat16, seed=18)
    q, s = bqjit.silu_mul_quant(x, 128, launch={"threads_per_group": 2, "vec_width": 4, "groups_per_block": 8})
    check(x, q, s, 128, "fp8_e4m3", "row")
    with pytest.raises(bqjit.BqjitError, match="launch.vec_width") as info:
        bqjit.silu_mul_quant(x, 128, launch={"threads_per_group": 2, "vec_width": 3, "groups_per_block": 8})
    assert info.value.code == 1 and isinstance(info.value, RuntimeError)


def test_repeated_calls_reuse_the_kernel():
    """The first call of a specialization puts its kernel in the ops' table;
    repeating it (or another T) adds nothing."""
    x = make_x(4, 256, torch.bfloat16, seed=19)
    bqjit.silu_mul_quant(x, 128)
    n = torch.ops.bqjit.kernel_table_size()
    bqjit.silu_mul_quant(x, 128)
    bqjit.silu_mul_quant(make_x(9, 256, torch.bfloat16, seed=20), 128)
    assert torch.ops.bqjit.kernel_table_size() == n
    bqjit.silu_mul_quant(x, 64)
    assert torch.ops.bqjit.kernel_table_size() == n + 1


# ---- argument errors ------------------------------------------------------------------------------------------


def test_errors():
    x = make_x(4, 256, torch.bfloat16)
    with pytest.raises(ValueError, match="x must be a CUDA tensor"):
        bqjit.silu_mul_quant(x.cpu(), 128)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        bqjit.silu_mul_quant([1.0, 2.0], 128)
    with pytest.raises(TypeError, match=r"x\.dtype"):
        bqjit.silu_mul_quant(x.to(torch.float64), 128)
    with pytest.raises(TypeError, match=r"x\.dtype"):
        bqjit.silu_mul_quant(x.to(torch.int32), 128)
    with pytest.raises(ValueError, match=r"x\.shape\[-1\] = 511"):
        bqjit.silu_mul_quant(x[:, :511], 128)
    with pytest.raises(ValueError, match=r"x\.stride\(-1\)"):
        bqjit.silu_mul_quant(torch.zeros(4, 1024, device=DEV, dtype=torch.bfloat16)[:, ::2], 128)
    with pytest.raises(ValueError, match="group_size = 96: must divide H = 256"):
        bqjit.silu_mul_quant(x, 96)
    with pytest.raises(ValueError, match=r"group_size = 8: must be in 16\.\.1024"):
        bqjit.silu_mul_quant(x, 8)
    with pytest.raises(ValueError, match="group_size = 2048"):
        bqjit.silu_mul_quant(make_x(2, 4096, torch.bfloat16), 2048)
    with pytest.raises(TypeError, match="group_size must be an int"):
        bqjit.silu_mul_quant(x, 128.0)
    with pytest.raises(ValueError, match="scale_layout = 'diag'"):
        bqjit.silu_mul_quant(x, 128, scale_layout="diag")
    with pytest.raises(TypeError, match="out_dtype"):
        bqjit.silu_mul_quant(x, 128, torch.float16)
    with pytest.raises(TypeError, match="out_dtype"):
        bqjit.silu_mul_quant(x, 128, "fp4")
    with pytest.raises(ValueError, match="ue8m0_packed.*ue8m0 = True"):
        bqjit.silu_mul_quant(x, 128, scale_layout="ue8m0_packed")
    with pytest.raises(TypeError, match="scale_ub"):
        bqjit.silu_mul_quant(x, 128, scale_ub=0.5)
    with pytest.raises(ValueError, match="scale_ub"):
        bqjit.silu_mul_quant(x, 128, scale_ub=torch.tensor([0.5], device=DEV, dtype=torch.float64))
    with pytest.raises(ValueError, match="scale_ub"):
        bqjit.silu_mul_quant(x, 128, scale_ub=torch.tensor([0.5, 0.5], device=DEV))
    with pytest.raises(ValueError, match="scale_ub"):
        bqjit.silu_mul_quant(x, 128, scale_ub=torch.tensor([0.5]))
    with pytest.raises(ValueError, match="launch"):
        bqjit.silu_mul_quant(x, 128, launch={"vec_width": 4})
    with pytest.raises(ValueError, match="rows must not overlap"):
        bqjit.silu_mul_quant(torch.zeros(1, 512, device=DEV, dtype=torch.bfloat16).expand(4, 512), 128)


def test_autotune_tunes_the_first_calls_regime(tmp_path):
    """BQJIT_AUTOTUNE=1, in a process of its own (the variable is read when the
    service is made; the Python ops launch through bqjit.service()): the first
    call asks for its regime to be tuned, finish_tuning() waits for it, the
    record of this GPU model is then in the cache, and the next call (with the
    winner) writes the same bytes."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import os, torch, bqjit
        torch.manual_seed(0)
        x = (torch.randn(1000, 4096, device="cuda") * 4).to(torch.bfloat16)  # H 2048: few-token
        q1, s1 = bqjit.silu_mul_quant(x, 128)
        torch.cuda.synchronize()
        bqjit.service().finish_tuning()
        q2, s2 = bqjit.silu_mul_quant(x, 128)
        torch.cuda.synchronize()
        assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8)), "q changed"
        assert torch.equal(s1, s2), "scales changed"
        tuned = sorted(os.listdir(os.path.join(os.environ["BQJIT_CACHE_DIR"], "v1", "tuned")))
        print("records", len(tuned), tuned)
        """
    )
    env = dict(os.environ, BQJIT_AUTOTUNE="1", BQJIT_TORCH_OPS="python", BQJIT_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "records 1 " in r.stdout and ".few-token.json" in r.stdout, r.stdout
