"""GPU tests of what the C++ op library adds: which backend serves the ops,
MoE masked batches (docs/contract.md section 3) from PyTorch under eager, CUDA graphs
and torch.compile, the vLLM-shaped entry points, and the C++ checks giving
the fakes' errors word for word.

Needs PyTorch with a CUDA device; skipped (with the reason) otherwise.
BQJIT_EXPECT_OPS=cpp (set by bench/device_run.sh) makes a missing C++ op
library a failure rather than a silent fallback.
"""
import os

import pytest

torch = pytest.importorskip("torch", reason="bqjit GPU tests need PyTorch, which is not installed")
if not torch.cuda.is_available():
    pytest.skip("bqjit GPU tests need a CUDA device; torch.cuda.is_available() is False", allow_module_level=True)

import bqjit  # noqa: E402
from bqjit import ops  # noqa: E402
from test_bqjit import DEV, LAYOUT_CASES, _F32, check, make_x  # noqa: E402

SENTINEL_Q = 0x5A  # a byte no kernel output is checked to equal by chance: checked position by position


def test_ops_backend_is_the_expected_one():
    want = os.environ.get("BQJIT_EXPECT_OPS")
    if want is None:
        pytest.skip(f"BQJIT_EXPECT_OPS not set; backend is {ops.OPS_BACKEND} ({ops.OPS_FALLBACK_REASON})")
    assert ops.OPS_BACKEND == want, ops.OPS_FALLBACK_REASON


# ---- masked batches ------------------------------------------------------------------------------------


def make_batch(e, t_max, h, dtype, seed):
    x = torch.stack([make_x(t_max, h, dtype, seed=seed + i) for i in range(e)])
    return x


def masked_outputs(e, t_max, h, g, layout, out_dtype=torch.float8_e4m3fn):
    """q and scales filled with sentinels, in the masked layout."""
    shape, strides, storage = bqjit.scale_shape(layout, (e, t_max), h, g, experts=e)
    sdt = torch.int32 if layout == "ue8m0_packed" else _F32
    q = torch.full((e, t_max, h), SENTINEL_Q, dtype=torch.uint8, device=DEV).view(out_dtype)
    s = torch.full((storage,), -7, dtype=sdt, device=DEV).as_strided(shape, strides)
    return q, s


def check_masked(x, masked_m, q, s, g, layout, ue8m0, out="fp8_e4m3", untouched=True):
    """Each expert's live rows against the reference; rows past masked_m[e]
    (and their scales, padding rows included) still hold the sentinels."""
    e, t_max, h2 = x.shape
    h, ng = h2 // 2, h2 // 2 // g
    _, strides, storage = bqjit.scale_shape(layout, (e, t_max), h, g, experts=e)
    counts = masked_m.cpu().tolist()
    for i in range(e):
        m = counts[i]
        if m > 0:
            xs = x[i, :m]
            qs = q[i, :m]
            if layout == "row":
                ss = s[i, :m]
            else:
                # One expert's block, viewed as the 2-D layout of T = T_max,
                # then its first m rows (padding rows of col_tma / packed
                # layouts are not written for a masked batch).
                ss = s[i][:m]
            check_rows(xs, qs, ss, g, out, layout, ue8m0, t_max)
        if untouched:
            rest = q[i, m:].view(torch.uint8)
            assert torch.all(rest == SENTINEL_Q), f"expert {i}: q rows past masked_m[{i}] = {m} were written"
            per = storage // e
            block = torch.as_strided(s, (per,), (1,), s.storage_offset() + i * per)
            if layout == "row":
                dead = block.view(t_max, ng)[m:]
            else:  # [columns, rows]: T_max rows, or T4 with the padding rows
                rows = t_max if layout == "col" else (t_max + 3) // 4 * 4
                dead = block.view(-1, rows)[:, m:]
            assert torch.all(dead == -7), f"expert {i}: scales of rows past masked_m[{i}] = {m} were written"


def check_rows(x, q, s, g, out, layout, ue8m0, t_max):
    """check() for m live rows of one expert whose scales are laid out for T = t_max."""
    m, h = x.shape[0], x.shape[1] // 2
    if layout == "row":
        check(x, q, s.contiguous(), g, out, "row", ue8m0)
        return
    # Re-pack the live rows into the 2-D layout of T = m, which check() reads.
    shape, strides, storage = bqjit.scale_shape(layout, (m,), h, g)
    sdt = s.dtype
    buf = torch.zeros(storage, dtype=sdt, device=DEV).as_strided(shape, strides)
    buf.copy_(s)
    check(x, q, buf, g, out, layout, ue8m0)


@pytest.mark.parametrize("layout,ue8m0", LAYOUT_CASES)
def test_masked_every_layout(layout, ue8m0):
    e, t_max, h, g = 5, 13, 512, 128
    x = make_batch(e, t_max, h, torch.bfloat16, seed=100)
    masked_m = torch.tensor([13, 0, 1, 7, 12], dtype=torch.int32, device=DEV)
    q, s = masked_outputs(e, t_max, h, g, layout)
    q2, s2 = bqjit.silu_mul_quant_masked(x, masked_m, g, torch.float8_e4m3fn, layout, ue8m0, out=q, scales_out=s)
    assert q2 is q and s2 is s
    torch.cuda.synchronize()
    check_masked(x, masked_m, q, s, g, layout, ue8m0)
    # The functional form: the same values where written, the same layout.
    qf, sf = bqjit.silu_mul_quant_masked(x, masked_m, g, torch.float8_e4m3fn, layout, ue8m0)
    assert qf.shape == q.shape and sf.shape == s.shape and sf.stride() == s.stride() and sf.dtype == s.dtype
    check_masked(x, masked_m, qf, sf, g, layout, ue8m0, untouched=False)


@pytest.mark.parametrize("dtype,out", [(torch.float16, torch.int8), (torch.float32, torch.float8_e5m2)])
def test_masked_other_dtypes_and_scale_ub(dtype, out):
    e, t_max, h, g = 3, 9, 384, 96
    x = make_batch(e, t_max, h, dtype, seed=200)
    masked_m = torch.tensor([9, 4, 0], dtype=torch.int32, device=DEV)
    ub = torch.tensor([0.01], device=DEV)
    name = {torch.int8: "int8", torch.float8_e5m2: "fp8_e5m2"}[out]
    q, s = masked_outputs(e, t_max, h, g, "row", out)
    bqjit.silu_mul_quant_masked(x, masked_m, g, out, "row", False, ub, out=q, scales_out=s)
    torch.cuda.synchronize()
    for i, m in enumerate(masked_m.tolist()):
        if m:
            check(x[i, :m], q[i, :m], s[i, :m].contiguous(), g, name, "row", False, ub)
        assert torch.all(q[i, m:].view(torch.uint8) == SENTINEL_Q)


def test_masked_one_row_per_expert_with_expert_stride():
    """T_max = 1: the row pitch is the expert stride (a slice of a wider tensor)."""
    e, h, g = 4, 256, 128
    wide = make_batch(e, 1, 2 * h, torch.bfloat16, seed=300)  # [E, 1, 4H]
    x = wide[:, :, : 2 * h]
    masked_m = torch.tensor([1, 0, 1, 1], dtype=torch.int32, device=DEV)
    q, s = masked_outputs(e, 1, h, g, "row")
    bqjit.silu_mul_quant_masked(x, masked_m, g, out=q, scales_out=s)
    torch.cuda.synchronize()
    check_masked(x, masked_m, q, s, g, "row", False)


@pytest.mark.parametrize("layout,ue8m0", [("row", False), ("col_tma", True), ("ue8m0_packed", True)])
def test_masked_cuda_graph_reads_masked_m_on_the_device(layout, ue8m0):
    e, t_max, h, g = 4, 16, 512, 128
    x = make_batch(e, t_max, h, torch.bfloat16, seed=400)
    masked_m = torch.tensor([16, 3, 0, 9], dtype=torch.int32, device=DEV)
    q, s = masked_outputs(e, t_max, h, g, layout)
    bqjit.silu_mul_quant_masked(x, masked_m, g, torch.float8_e4m3fn, layout, ue8m0, out=q, scales_out=s)  # warm
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        bqjit.silu_mul_quant_masked(x, masked_m, g, torch.float8_e4m3fn, layout, ue8m0, out=q, scales_out=s)
    for counts, seed in (([5, 16, 1, 0], 401), ([0, 0, 16, 2], 402)):
        x.copy_(make_batch(e, t_max, h, torch.bfloat16, seed=seed))
        masked_m.copy_(torch.tensor(counts, dtype=torch.int32))
        fresh_q, fresh_s = masked_outputs(e, t_max, h, g, layout)
        q.copy_(fresh_q)
        s.as_strided((s.untyped_storage().nbytes() // s.element_size(),), (1,), 0).fill_(-7)
        graph.replay()
        torch.cuda.synchronize()
        check_masked(x, masked_m, q, s, g, layout, ue8m0)


def test_masked_torch_compile_fullgraph_no_graph_break():
    torch._dynamo.reset()
    e, t_max, h, g = 3, 8, 256, 64

    def f(x, masked_m):
        return bqjit.silu_mul_quant_masked(x * 2, masked_m, g, torch.float8_e4m3fn, "col_tma", True)

    x = make_batch(e, t_max, h, torch.bfloat16, seed=500)
    masked_m = torch.tensor([8, 2, 5], dtype=torch.int32, device=DEV)
    explanation = torch._dynamo.explain(f)(x, masked_m)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    q, s = torch.compile(f, fullgraph=True)(x, masked_m)
    q_e, s_e = f(x, masked_m)
    assert s.shape == s_e.shape and s.stride() == s_e.stride()
    for i, m in enumerate(masked_m.tolist()):
        assert torch.equal(q[i, :m].view(torch.uint8), q_e[i, :m].view(torch.uint8))
        assert torch.equal(s[i][:m], s_e[i][:m])


def test_plain_op_torch_compile_has_no_graph_break():
    torch._dynamo.reset()

    def f(x):
        return bqjit.silu_mul_quant(x, 128, torch.float8_e4m3fn, "col", False)

    explanation = torch._dynamo.explain(f)(make_x(5, 512, torch.bfloat16))
    assert explanation.graph_break_count == 0, explanation.break_reasons


# ---- the same errors from C++ and from the fakes --------------------------------------------------------------


def _error_of(fn):
    try:
        fn()
    except (ValueError, TypeError, RuntimeError) as e:
        return type(e), str(e).split("\n")[0]
    return None


def _fake_args(args):
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    return mode, [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]


ERROR_CASES = [
    ("silu_mul_quant", lambda x, m: (x[:, :511], 128, "fp8_e4m3", "row", False, None, None)),
    ("silu_mul_quant", lambda x, m: (x, 96, "fp8_e4m3", "row", False, None, None)),
    ("silu_mul_quant", lambda x, m: (x.double(), 128, "fp8_e4m3", "row", False, None, None)),
    ("silu_mul_quant", lambda x, m: (x.view(2, 2, 512), 128, "fp8_e4m3", "col", False, None, None)),
    ("silu_mul_quant", lambda x, m: (x, 128, "fp8_e4m3", "row", False, torch.ones(2, device=DEV), None)),
    ("silu_mul_quant", lambda x, m: (torch.zeros(1, 512, device=DEV).expand(4, 512), 128, "int8", "row", False, None, None)),
    ("silu_mul_quant_out", lambda x, m: (x, torch.empty(4, 256, dtype=torch.int8, device=DEV),
                                         torch.empty(4, 2, device=DEV), 128, "fp8_e4m3", "row", False, None, None)),
    ("silu_mul_quant_out", lambda x, m: (x, torch.empty(4, 256, dtype=torch.int8, device=DEV),
                                         torch.empty(4, 2, device=DEV), 128, "int8", "col", False, None, None)),
    ("silu_mul_quant_out", lambda x, m: (x, torch.empty(4, 256, dtype=torch.int8, device=DEV),
                                         torch.empty(4, 3, device=DEV), 128, "int8", "row", False, None, None)),
    ("silu_mul_quant_masked", lambda x, m: (x, m, 128, "fp8_e4m3", "row", False, None, None)),
    ("silu_mul_quant_masked", lambda x, m: (x.view(2, 2, 512), m, 128, "fp8_e4m3", "row", False, None, None)),
    ("silu_mul_quant_masked", lambda x, m: (x.view(2, 2, 512), m[:2].long(), 128, "fp8_e4m3", "row", False, None, None)),
    ("silu_mul_quant_masked", lambda x, m: (x.view(2, 2, 512)[:, :1].expand(2, 2, 512), m[:2], 128,
                                            "fp8_e4m3", "row", False, None, None)),
]


@pytest.mark.parametrize("case", range(len(ERROR_CASES)))
def test_cpp_checks_and_fakes_raise_the_same_error(case):
    name, make = ERROR_CASES[case]
    op = getattr(torch.ops.bqjit, name).default
    x = make_x(4, 256, torch.bfloat16, seed=600)
    m = torch.tensor([4, 1, 0, 2], dtype=torch.int32, device=DEV)
    args = make(x, m)
    real = _error_of(lambda: op(*args))
    assert real is not None, f"{name}: no error for case {case}"
    mode, fargs = _fake_args(args)
    with mode:
        fake = _error_of(lambda: op(*fargs))
    assert fake == real, f"{name} case {case}: C++ {real} vs fake {fake}"


def test_library_errors_are_bqjit_errors():
    x = make_x(9, 256, torch.bfloat16, seed=18)
    with pytest.raises(bqjit.BqjitError, match="vec_width") as info:
        bqjit.silu_mul_quant_masked(
            x.view(1, 9, 512), torch.tensor([9], dtype=torch.int32, device=DEV), 128,
            launch={"threads_per_group": 2, "vec_width": 3, "groups_per_block": 8},
        )
    assert info.value.code == 1


# ---- vLLM-shaped entry points -----------------------------------------------------------------------------


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.float8_e4m3fn, torch.int8])
def test_vllm_silu_and_mul_per_block_quant(transposed, out_dtype):
    t, h, g = 11, 512, 64
    x = make_x(t, h, torch.bfloat16, seed=700)
    out = torch.empty(t, h, dtype=out_dtype, device=DEV)
    ng = h // g
    scales = torch.empty(ng, t, device=DEV) if transposed else torch.empty(t, ng, device=DEV)
    ub = torch.tensor([0.02], device=DEV)
    assert bqjit.vllm.silu_and_mul_per_block_quant(out, x, scales, g, ub, transposed) is None
    name = "int8" if out_dtype == torch.int8 else "fp8_e4m3"
    check(x, out, scales.t() if transposed else scales, g, name, "col" if transposed else "row", False, ub)
    if transposed:  # the [T, NG] view with strides (1, T) works the same
        scales2 = torch.empty(ng, t, device=DEV).t()
        bqjit.vllm.silu_and_mul_per_block_quant(out, x, scales2, g, ub, True)
        assert torch.equal(scales2, scales.t())


@pytest.mark.parametrize("use_ue8m0", [False, True])
def test_vllm_silu_mul_fp8_quant_deep_gemm(use_ue8m0):
    e, t, h, g = 4, 10, 512, 128
    y = make_batch(e, t, h, torch.bfloat16, seed=800)
    counts = torch.tensor([10, 0, 3, 7], dtype=torch.int64, device=DEV)  # vLLM passes any int dtype
    y_q, y_s = bqjit.vllm.silu_mul_fp8_quant_deep_gemm_cuda(y, counts, 16, g, use_ue8m0)
    assert y_q.shape == (e, t, h) and y_q.dtype == torch.float8_e4m3fn
    assert y_s.shape == (e, t, h // g) and y_s.stride() == (t * (h // g), 1, t) and y_s.dtype == torch.float32
    for i, m in enumerate(counts.tolist()):
        if m:
            check_rows(y[i, :m], y_q[i, :m], y_s[i][:m], g, "fp8_e4m3", "col", use_ue8m0, t)


# ---- activations, gate/up layouts, MX rounding (docs/contract.md sections 6 and 7) --------------------------


def act_reference(x, group_size, out, activation="silu", alpha=None, beta=None, limit=None, gate_up="split",
                  ue8m0=False, rounding="ceil"):
    """(q, s, v) of docs/contract.md sections 1, 6 and 7 in fp32 on the CPU, written
    from the contract (not from the kernel)."""
    from test_bqjit import MIN_SCALE, OUT, QMAX, pow2_ceil

    f32 = torch.float32
    h = x.shape[-1] // 2
    xf = x.detach().reshape(-1, 2 * h).to("cpu", f32)
    g, u = (xf[:, 0::2], xf[:, 1::2]) if gate_up == "interleaved" else (xf[:, :h], xf[:, h:])
    if activation == "silu":
        y = g / (1.0 + torch.exp(-g)) * u
    elif activation == "swiglu":
        a = torch.tensor(1.0 if alpha is None else alpha, dtype=f32)
        b = torch.tensor(0.0 if beta is None else beta, dtype=f32)
        if limit is not None:
            lim = torch.tensor(limit, dtype=f32)
            g = torch.where(g > lim, lim, g)  # NaN passes through
            u = torch.where(u > lim, lim, torch.where(u < -lim, -lim, u))
        y = g * (1.0 / (1.0 + torch.exp(-(a * g)))) * (u + b if beta else u)
    elif activation == "gelu_tanh":
        w = (2.0 / torch.pi) ** 0.5 * (g + 0.044715 * g * g * g)
        y = (0.5 * g * (1.0 + torch.tanh(w.double())).float()) * u
    else:
        y = (0.5 * g * torch.erfc(-g.double() / 2.0 ** 0.5).float()) * u
    t, ng = y.shape[0], h // group_size
    yg = y.reshape(t, ng, group_size)
    amax = torch.nan_to_num(yg.abs(), nan=0.0).amax(-1)
    if rounding == "floor":
        emax = {"fp8_e4m3": 8, "fp8_e5m2": 15}[out]
        _, e2 = torch.frexp(amax)  # amax = m * 2^e2, 0.5 <= m < 1: floor(log2(amax)) = e2 - 1
        e = torch.where(amax > 0, e2.to(torch.int32) - 1 - emax, torch.full_like(e2, -127, dtype=torch.int32))
        e = e.clamp(-127, 127)
        s = torch.ldexp(torch.ones_like(amax, dtype=torch.float64), e.double()).to(f32)
        v = (yg.double() / torch.ldexp(torch.ones_like(amax, dtype=torch.float64), e.double())[..., None]).float()
        byte = (e + 127).to(torch.uint8)
    else:
        s = torch.maximum(amax / torch.tensor(QMAX[out], dtype=f32), MIN_SCALE[out])
        if ue8m0:
            s = pow2_ceil(s)
        v = yg / s[..., None]
        byte = ((s.view(torch.int32) >> 23) & 0xFF).to(torch.uint8)
    v = v.reshape(t, h)
    if out == "int8":
        q = torch.round(v).clamp(-128, 127).to(torch.int8)
    else:
        q = v.clamp(-QMAX[out], QMAX[out]).to(OUT[out])
    return q, s, v, byte


ACT_CASES = [
    # activation, alpha, beta, limit, gate_up, out, layout, ue8m0, rounding, G
    ("swiglu", 1.702, 1.0, 7.0, "interleaved", "fp8_e4m3", "row", False, None, 64),
    ("swiglu", 1.702, 1.0, 7.0, "interleaved", "fp8_e4m3", "bytes", True, "floor", 32),
    ("swiglu", None, None, 7.0, "split", "int8", "col", False, None, 96),
    ("gelu_tanh", None, None, None, None, "fp8_e4m3", "row", False, None, 128),
    ("gelu", None, None, None, None, "fp8_e5m2", "col_tma", True, None, 128),
    ("silu", None, None, None, "interleaved", "fp8_e4m3", "e8m0", True, "floor", 32),
]


@pytest.mark.parametrize("case", range(len(ACT_CASES)))
@pytest.mark.parametrize("masked", [False, True])
def test_activation_keywords_against_the_contract(case, masked):
    from test_bqjit import OUT, compare_q, scales_matrix

    activation, alpha, beta, limit, gate_up, out, layout, ue8m0, rounding, g = ACT_CASES[case]
    t, h = 37, 768
    if masked and layout not in ("row", "bytes", "e8m0"):
        pytest.skip("the masked case of a row-major layout covers the masked path")
    x = make_x(t, h, torch.bfloat16, seed=900 + case, scale=4.0)
    kw = dict(activation=activation, alpha=alpha, beta=beta, limit=limit, gate_up=gate_up, scale_rounding=rounding)
    if masked:
        counts = torch.tensor([t], dtype=torch.int32, device=DEV)
        q, s = bqjit.silu_mul_quant_masked(x.view(1, t, 2 * h), counts, g, OUT[out], layout, ue8m0, **kw)
        q, s = q[0], s[0]
    else:
        q, s = bqjit.silu_mul_quant(x, g, OUT[out], layout, ue8m0, **kw)
    q_ref, s_ref, v_ref, byte_ref = act_reference(
        x, g, out, activation or "silu", alpha, beta, limit, gate_up or "split", ue8m0, rounding or "ceil")
    if layout in ("bytes", "e8m0"):
        assert s.dtype == torch.uint8 and s.shape == (t, h // g)
        got = s.cpu()
        off = (got.to(torch.int32) - byte_ref.to(torch.int32)).abs()
        assert int(off.max()) == 0, f"{int((off != 0).sum())} E8M0 bytes differ"
        # q against the device's own scale (docs/contract.md section 1's rule for
        # power-of-two scales), which here equals the reference's.
    else:
        sm = scales_matrix(s, layout, t, h // g)
        torch.testing.assert_close(sm, s_ref, rtol=1e-6, atol=0)
    compare_q(q, q_ref, v_ref, out)


def test_activation_keyword_errors_name_the_rule():
    x = make_x(4, 256, torch.bfloat16)
    with pytest.raises(ValueError, match="activation = 'relu': must be one of silu, swiglu, gelu_tanh, gelu"):
        bqjit.silu_mul_quant(x, 128, activation="relu")
    with pytest.raises(ValueError, match="alpha = 1.702: applies only to activation 'swiglu'"):
        bqjit.silu_mul_quant(x, 128, alpha=1.702)
    with pytest.raises(ValueError, match="limit = -1.0: must be > 0"):
        bqjit.silu_mul_quant(x, 128, activation="swiglu", limit=-1)
    with pytest.raises(ValueError, match="scale_rounding = 'floor' needs ue8m0 = True"):
        bqjit.silu_mul_quant(x, 128, scale_rounding="floor")
    with pytest.raises(ValueError, match="needs a floating-point out_dtype"):
        bqjit.silu_mul_quant(x, 128, torch.int8, ue8m0=True, scale_rounding="floor")
    with pytest.raises(ValueError, match="scale_layout = 'bytes' needs ue8m0 = True"):
        bqjit.silu_mul_quant(x, 128, scale_layout="bytes")
    with pytest.raises(ValueError, match="gate_up = 'mixed'"):
        bqjit.silu_mul_quant(x, 128, gate_up="mixed")
    with pytest.raises(bqjit.BqjitError, match="scale_ub"):  # the library's rule: no bound under floor
        bqjit.silu_mul_quant(x, 32, ue8m0=True, scale_rounding="floor", scale_ub=torch.ones(1, device=DEV))


def test_swiglu_with_defaults_is_silu_and_shares_its_kernel():
    x = make_x(9, 512, torch.bfloat16, seed=950)
    q1, s1 = bqjit.silu_mul_quant(x, 128)
    n = torch.ops.bqjit.kernel_table_size()
    q2, s2 = bqjit.silu_mul_quant(x, 128, activation="swiglu", alpha=1.0, beta=0.0)
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s1, s2)
    # Another table entry (another fields text), the same cache key: the library finds the same kernel.
    assert torch.ops.bqjit.kernel_table_size() == n + 1


def test_activation_keywords_under_torch_compile():
    torch._dynamo.reset()

    def f(x):
        return bqjit.silu_mul_quant(x, 32, torch.float8_e4m3fn, "bytes", True, activation="swiglu", alpha=1.702,
                                    beta=1.0, limit=7.0, gate_up="interleaved", scale_rounding="floor")

    x = make_x(6, 576, torch.bfloat16, seed=960)
    assert torch._dynamo.explain(f)(x).graph_break_count == 0
    q, s = torch.compile(f, fullgraph=True)(x)
    q_e, s_e = f(x)
    assert torch.equal(q.view(torch.uint8), q_e.view(torch.uint8)) and torch.equal(s, s_e)


# ---- min_scale: the scale's floor as a spec field ------------------------------------------------------


VLLM_FLOOR = 2.2321428e-13  # fl32(fl32(1e-10) / 448): vLLM floors amax at 1e-10, then divides by 448


@pytest.mark.parametrize("out,layout,ue8m0,min_scale", [
    ("fp8_e4m3", "row", False, VLLM_FLOOR),
    ("fp8_e4m3", "col", False, 1e-3),
    ("fp8_e4m3", "col_tma", True, 1e-3),
    ("int8", "row", False, 3e-3),
    ("fp8_e5m2", "ue8m0_packed", True, 1e-5),
])
def test_min_scale_keyword_against_the_contract(out, layout, ue8m0, min_scale):
    t, h, g = 19, 768, 96
    x = make_x(t, h, torch.bfloat16, seed=970, scale=0.5)
    x[3].zero_()  # an all-zero row: every group at the floor
    q, s = bqjit.silu_mul_quant(x, g, {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2,
                                       "int8": torch.int8}[out], layout, ue8m0, min_scale=min_scale)
    check(x, q, s, g, out, layout, ue8m0, None, min_scale)
    from test_bqjit import pow2_ceil, scales_matrix
    sm = scales_matrix(s, layout, t, h // g)
    floor = torch.tensor(min_scale, dtype=_F32)
    if ue8m0:
        floor = pow2_ceil(floor)
    assert torch.all(sm[3] == floor), "the zero row's scales must be the floor"
    assert torch.all(sm >= floor)


def test_min_scale_under_torch_compile_and_masked():
    torch._dynamo.reset()

    def f(x):
        return bqjit.silu_mul_quant(x, 128, torch.float8_e4m3fn, "col", False, min_scale=VLLM_FLOOR)

    x = make_x(7, 512, torch.bfloat16, seed=980)
    assert torch._dynamo.explain(f)(x).graph_break_count == 0
    q, s = torch.compile(f, fullgraph=True)(x)
    q_e, s_e = f(x)
    assert torch.equal(q.view(torch.uint8), q_e.view(torch.uint8)) and torch.equal(s, s_e)
    counts = torch.tensor([7, 2], dtype=torch.int32, device=DEV)
    xm = torch.stack([x, x])
    qm, sm = bqjit.silu_mul_quant_masked(xm, counts, 128, min_scale=1e-3)
    check(x, qm[0], sm[0].contiguous(), 128, "fp8_e4m3", "row", False, None, 1e-3)


def test_min_scale_default_value_shares_the_kernel_and_errors_name_the_rule():
    x = make_x(5, 256, torch.bfloat16, seed=990)
    q1, s1 = bqjit.silu_mul_quant(x, 128)
    default = float(torch.tensor(1.0 / (448.0 * 512.0), dtype=_F32))
    q2, s2 = bqjit.silu_mul_quant(x, 128, min_scale=default)
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s1, s2)
    with pytest.raises(ValueError, match="min_scale = 0.0: must be > 0"):
        bqjit.silu_mul_quant(x, 128, min_scale=0.0)
    with pytest.raises(TypeError, match="min_scale must be a number"):
        bqjit.silu_mul_quant(x, 128, min_scale="1e-10")
    with pytest.raises(ValueError, match="applies only to scale_rounding 'ceil'"):
        bqjit.silu_mul_quant(x, 32, ue8m0=True, scale_rounding="floor", min_scale=1e-10)
    with pytest.raises(bqjit.BqjitError, match="min_scale"):  # the library's rule: a normal fp32
        bqjit.silu_mul_quant(x, 128, min_scale=1e-40)
