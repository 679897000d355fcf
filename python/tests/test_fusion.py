"""bqjit.fusion: the Inductor pass that rewrites act(gate) * up + per-group
quantization into one torch.ops.bqjit call.

Two devices. On "cuda" (skipped without a GPU): the pass as installed by
``bqjit.fusion.install()`` / ``backend``, rewriting into bqjit's kernel. On
"cpu" (needs only PyTorch): the same pass and the same spellings, rewriting
into a stand-in op of the same schema (``bqjit_fusion_test::silu_mul_quant``,
docs/contract.md written in PyTorch, below), so that the matching, the spec
fields and the scale layouts are checked where no GPU is.

For every spelling: the compiled graph holds the op and no amax, no graph
break (``torch._dynamo.explain``), one compile for every T (T dynamic), and
the outputs equal the uncompiled function's within docs/contract.md's
tolerance. Near misses are left alone, with the reason, and still run.
"""
import json
import math
import os

import pytest

torch = pytest.importorskip("torch", reason="bqjit.fusion tests need PyTorch, which is not installed")
import torch.nn.functional as F  # noqa: E402
import torch._inductor.config as inductor_config  # noqa: E402

from bqjit import fusion  # noqa: E402

HAVE_CUDA = torch.cuda.is_available()
# BQJIT_FUSION_DEVICES=cuda (bench/device_run.sh fusion): the GPU cases only.
DEVICES = os.environ.get("BQJIT_FUSION_DEVICES", "cpu,cuda" if HAVE_CUDA else "cpu").split(",")
_F32 = torch.float32
QMAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0, torch.int8: 127.0}
NAMES = {torch.float8_e4m3fn: "fp8_e4m3", torch.float8_e5m2: "fp8_e5m2", torch.int8: "int8"}
OUT_OF = {v: k for k, v in NAMES.items()}
MIN_SCALE = {"fp8_e4m3": 1.0 / (448.0 * 512.0), "fp8_e5m2": 1.0 / (57344.0 * 512.0), "int8": 2.0**-23}
BOUNDARY_RTOL = 2e-6


# ---- the stand-in op on the CPU: docs/contract.md sections 1 and 2 in PyTorch -------------------------


def pow2_ceil(s):
    """2^ceil(log2(s)) exactly, from the bits, for positive normal fp32 s (at most 2^127)."""
    m, e = torch.frexp(s)
    k = torch.where(m == 0.5, e - 1, e).clamp(max=127).to(torch.int32)
    return ((k + 127) << 23).view(_F32)


def contract(x, group_size, out, layout, ue8m0, fields):
    """(q, scales, v) of docs/contract.md for x [..., 2H]; v = y / s [T, H] before rounding."""
    extra = json.loads(fields) if fields else {}
    h = x.shape[-1] // 2
    lead = tuple(x.shape[:-1])
    xf = x.detach().reshape(-1, 2 * h).to("cpu", _F32)
    g, u = xf[:, :h], xf[:, h:]
    y = g / (1.0 + torch.exp(-g)) * u
    t, ng = y.shape[0], h // group_size
    yg = y.reshape(t, ng, group_size)
    amax = torch.nan_to_num(yg.abs(), nan=0.0).amax(-1) if t else torch.zeros(0, ng)
    s = amax / torch.tensor(QMAX[OUT_OF[out]], dtype=_F32)
    floor = torch.tensor(extra.get("min_scale", MIN_SCALE[out]), dtype=_F32)
    s = torch.maximum(s, floor)
    if ue8m0:
        s = pow2_ceil(s)
    v = (yg / s[..., None]).reshape(t, h)
    if out == "int8":
        q = torch.round(v).clamp(-128, 127).to(torch.int8)
    else:
        q = v.clamp(-QMAX[OUT_OF[out]], QMAX[OUT_OF[out]]).to(OUT_OF[out])
    return q.reshape(lead + (h,)), s, v


def _scales_out(s, layout, lead, ng, device):
    t = math.prod(lead)
    t4 = (t + 3) // 4 * 4
    if layout == "row":
        return s.reshape(lead + (ng,)).to(device)
    rows = t if layout == "col" else t4
    buf = torch.zeros(ng * rows, dtype=_F32, device=device).as_strided((t, ng), (1, rows))
    buf.copy_(s)
    return buf


@torch.library.custom_op("bqjit_fusion_test::silu_mul_quant", mutates_args=())
def stand_in(x: torch.Tensor, group_size: int, out_dtype: str, scale_layout: str, ue8m0: bool,
             scale_ub: torch.Tensor | None, launch: str | None,
             fields: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    assert scale_ub is None and launch is None
    q, s, _ = contract(x, group_size, out_dtype, scale_layout, ue8m0, fields)
    h = x.shape[-1] // 2
    # As the real op: column layouts are views of a larger buffer.
    return q.to(x.device), _scales_out(s, scale_layout, tuple(x.shape[:-1]), h // group_size, x.device)


@stand_in.register_fake
def _stand_in_fake(x, group_size, out_dtype, scale_layout, ue8m0, scale_ub, launch, fields=None):
    h = x.shape[-1] // 2
    lead = tuple(x.shape[:-1])
    ng = h // group_size
    q = x.new_empty(lead + (h,), dtype=OUT_OF[out_dtype])
    if scale_layout == "row":
        return q, x.new_empty(lead + (ng,), dtype=_F32)
    t = lead[0]
    rows = t if scale_layout == "col" else (t + 3) // 4 * 4
    return q, x.new_empty((ng * rows,), dtype=_F32).as_strided((t, ng), (1, rows))


STAND_IN = torch.ops.bqjit_fusion_test.silu_mul_quant.default


# ---- the spellings ----------------------------------------------------------------------------------


def _halves(x):
    h = x.shape[-1] // 2
    xf = x.float()
    return xf[..., :h], xf[..., h:]


def silu_split_row(G=128, out=torch.float8_e4m3fn, eps=1e-10):
    """F.silu over x.float()'s halves; view to [T, NG, G]; amax floored at eps, / QMAX."""
    def f(x):
        g, u = _halves(x)
        y = F.silu(g) * u
        t, h = y.shape
        yg = y.view(t, h // G, G)
        s = yg.abs().amax(dim=-1, keepdim=True).clamp(min=eps) / QMAX[out]
        q = (yg / s).clamp(-QMAX[out], QMAX[out]).to(out)
        return q.view(t, h), s.view(t, h // G)
    return f


def vllm_native(G=128, out=torch.float8_e4m3fn, eps=1e-10):
    """How vLLM's native per-token-group FP8 reference is written (reshaped to
    [T * NG, G], max(dim=-1)[0], floor then / finfo.max, clamp to finfo's
    range), after vLLM's SiluAndMul in fp32."""
    def f(x):
        d = x.shape[-1] // 2
        y = F.silu(x[..., :d].float()) * x[..., d:].float()
        info = torch.iinfo(out) if out == torch.int8 else torch.finfo(out)
        flat = y.reshape(y.numel() // G, G)
        amax = flat.abs().max(dim=-1, keepdim=True)[0].clamp(min=eps).to(torch.float32)
        x_s = amax / info.max
        x_q = flat / x_s
        if out == torch.int8:
            x_q = x_q.round()
        x_q = x_q.clamp(min=info.min, max=info.max).to(out)
        return x_q.reshape(y.shape), x_s.reshape(y.shape[:-1] + (y.shape[-1] // G,))
    return f


def torchao_style(G=64, out=torch.float8_e4m3fn, lb=1e-12):
    """How torchao's per-group float8 quantization is written (choose the
    scale: a reshape to blocks, amax with keepdim, the high-precision lower
    bound on amax, / the dtype's max, scale as float32; quantize: divide,
    clamp to the dtype's range, convert), after chunk() and x * sigmoid(x)."""
    def f(x):
        g, u = x.float().chunk(2, dim=-1)
        y = g * torch.sigmoid(g) * u
        shape = y.shape
        blocks = y.view(*shape[:-1], shape[-1] // G, G)
        max_abs = blocks.abs().amax(dim=-1, keepdim=True)
        max_abs = torch.clamp(max_abs, min=lb)
        scale = (max_abs / torch.finfo(out).max).to(torch.float32)
        fmax = torch.finfo(out).max
        data = torch.clamp(blocks / scale, min=-fmax, max=fmax).to(out)
        return data.view(shape), scale.squeeze(-1)
    return f


def sigmoid_int8_pow2(G=64, eps=1e-12):
    """sigmoid(g) * g * u; unflatten; amax without keepdim, / 127 then floored,
    exp2(ceil(log2)) (power-of-two scales), round, clamp, int8."""
    def f(x):
        g, u = _halves(x)
        y = torch.sigmoid(g) * g * u
        yg = y.unflatten(-1, (-1, G))
        s = torch.exp2(torch.ceil(torch.log2((yg.abs().amax(-1) / 127.0).clamp(min=eps))))
        q = (yg / s.unsqueeze(-1)).round().clamp(-128, 127).to(torch.int8)
        return q.flatten(-2), s
    return f


def explicit_col(G=96, out=torch.float8_e4m3fn, eps=1e-10):
    """g / (1 + exp(-g)) * u written out; scales transposed: s.t().contiguous()."""
    def f(x):
        g, u = _halves(x)
        y = g / (1 + torch.exp(-g)) * u
        t, h = y.shape
        yg = y.view(t, -1, G)
        s = yg.abs().amax(-1, keepdim=True).clamp(min=eps) / QMAX[out]
        q = (yg / s).clamp(min=-QMAX[out], max=QMAX[out]).to(out)
        return q.view(t, h), s.view(t, -1).t().contiguous()
    return f


def pad_col_tma_ue8m0(G=128, out=torch.float8_e4m3fn, eps=1e-12):
    """2 ** ceil(log2(s)) (DeepGEMM's ue8m0), scales transposed and padded to
    ceil(T / 4) * 4 columns (TMA-aligned), returned as the [T, NG] view."""
    def f(x):
        g, u = _halves(x)
        y = F.silu(g) * u
        t, h = y.shape
        yg = y.view(t, h // G, G)
        s = (yg.abs().amax(-1) / QMAX[out]).clamp(min=eps)
        s = torch.pow(2.0, torch.ceil(torch.log2(s)))
        q = (yg / s[..., None]).clamp(-QMAX[out], QMAX[out]).to(out)
        t4 = (t + 3) // 4 * 4
        padded = F.pad(s.t(), (0, t4 - t))
        return q.view(t, h), padded[:, :t].t()
    return f


def e5m2_3d_floor_after(G=64, eps=1e-12):
    """3-D x [B, S, 2H]; the floor on the scale after / QMAX; e5m2."""
    out = torch.float8_e5m2

    def f(x):
        h = x.shape[-1] // 2
        y = F.silu(x[..., :h].float()) * x[..., h:].float()
        b, n, _ = y.shape
        yg = y.view(b, n, h // G, G)
        s = (yg.abs().amax(-1, keepdim=True) / 57344.0).clamp(min=eps)
        q = (yg / s).clamp(-57344.0, 57344.0).to(out)
        return q.view(b, n, h), s.view(b, n, h // G)
    return f


def unflatten_select_abs_first(G=128, out=torch.float8_e4m3fn, eps=1e-10):
    """x.unflatten(-1, (2, H)) and [..., 0, :], [..., 1, :]; |y| before the
    group view, another view for the division."""
    def f(x):
        h = x.shape[-1] // 2
        pair = x.float().unflatten(-1, (2, h))
        g, u = pair[..., 0, :], pair[..., 1, :]
        y = F.silu(g) * u
        t = y.shape[0]
        amax = y.abs().view(t, h // G, G).amax(-1).clamp(min=eps)
        s = amax / QMAX[out]
        q = (y.view(t, h // G, G) / s.unsqueeze(-1)).clamp(-QMAX[out], QMAX[out]).to(out)
        return q.reshape(t, h), s
    return f


def int8_col_bound127(G=128):
    """int8 with clamp(-127, 127), the floor on amax, scales transposed."""
    def f(x):
        g, u = _halves(x)
        y = F.silu(g) * u
        t, h = y.shape
        yg = y.view(t, h // G, G)
        s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-6) / 127.0
        q = torch.clamp(torch.round(yg / s), -127, 127).to(torch.int8)
        return q.view(t, h), s.view(t, -1).t().contiguous()
    return f


def transposed_view_only(G=128, out=torch.float8_e4m3fn, eps=1e-10):
    """Scales returned as s.t(), a view of row-major memory (not made
    contiguous): the pass keeps row layout."""
    def f(x):
        g, u = _halves(x)
        y = F.silu(g) * u
        t, h = y.shape
        yg = y.view(t, h // G, G)
        s = yg.abs().amax(-1, keepdim=True).clamp(min=eps) / QMAX[out]
        q = (yg / s).clamp(-QMAX[out], QMAX[out]).to(out)
        return q.view(t, h), s.view(t, h // G).t()
    return f


# name: (factory, x dtype, H, 3-D, layout the pass must choose, ue8m0)
SPELLINGS = {
    "silu_split_row_g128": (silu_split_row(128), torch.bfloat16, 512, False, "row", False),
    "vllm_native_g128": (vllm_native(128), torch.bfloat16, 768, False, "row", False),
    "torchao_style_g64": (torchao_style(64), torch.bfloat16, 512, False, "row", False),
    "sigmoid_int8_pow2_g64": (sigmoid_int8_pow2(64), torch.float16, 384, False, "row", True),
    "explicit_col_g96": (explicit_col(96), torch.bfloat16, 576, False, "col", False),
    "pad_col_tma_ue8m0_g128": (pad_col_tma_ue8m0(128), torch.bfloat16, 512, False, "col_tma", True),
    "e5m2_3d_floor_after_g64": (e5m2_3d_floor_after(64), torch.bfloat16, 256, True, "row", False),
    "unflatten_select_abs_first_g128": (unflatten_select_abs_first(128), torch.float32, 256, False, "row", False),
    "int8_col_bound127_g128": (int8_col_bound127(128), torch.bfloat16, 512, False, "col", False),
    "vllm_native_int8_g96": (vllm_native(96, torch.int8), torch.bfloat16, 384, False, "row", False),
    "transposed_view_only_g128": (transposed_view_only(128), torch.bfloat16, 256, False, "row", False),
}


# ---- near misses -------------------------------------------------------------------------------------


def reciprocal_multiply(x):
    g, u = _halves(x)
    y = F.silu(g) * u
    yg = y.view(y.shape[0], -1, 128)
    s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
    return (yg * (1.0 / s)).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), s


def amax_times_inverse_qmax(x):
    g, u = _halves(x)
    y = F.silu(g) * u
    yg = y.view(y.shape[0], -1, 128)
    s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) * (1.0 / 448.0)
    return (yg / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), s


def subnormal_floor(x):
    g, u = _halves(x)
    y = F.silu(g) * u
    yg = y.view(y.shape[0], -1, 128)
    s = (yg.abs().amax(-1, keepdim=True) / 448.0).clamp(min=1e-40)
    return (yg / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), s


def no_floor(x):
    g, u = _halves(x)
    y = F.silu(g) * u
    yg = y.view(y.shape[0], -1, 128)
    s = yg.abs().amax(-1, keepdim=True) / 448.0
    return (yg / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), s


def group_straddles_rows(x):  # H = 1000, G = 128: [T * H / 128, 128] groups cross rows
    g, u = _halves(x)
    y = F.silu(g) * u
    flat = y.reshape(-1, 128)
    s = flat.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
    return (flat / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), s


def y_rounded_to_bf16(x):
    h = x.shape[-1] // 2
    y = (F.silu(x[..., :h]) * x[..., h:]).float()  # the activation in bf16
    yg = y.view(y.shape[0], -1, 128)
    s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
    return (yg / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), s


def int8_truncates(x):
    g, u = _halves(x)
    y = F.silu(g) * u
    yg = y.view(y.shape[0], -1, 128)
    s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 127.0
    return (yg / s).clamp(-128, 127).to(torch.int8), s


def wrong_qmax(x):
    g, u = _halves(x)
    y = F.silu(g) * u
    yg = y.view(y.shape[0], -1, 128)
    s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 240.0
    return (yg / s).clamp(-240.0, 240.0).to(torch.float8_e4m3fn), s


def tighter_clamp_first(x):
    g, u = _halves(x)
    y = F.silu(g) * u
    yg = y.view(y.shape[0], -1, 128)
    s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
    return (yg / s).clamp(min=-100.0).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), s


def scale_bounded_above(x):
    g, u = _halves(x)
    y = F.silu(g) * u
    yg = y.view(y.shape[0], -1, 128)
    s = (yg.abs().amax(-1, keepdim=True) / 448.0).clamp(min=1e-12, max=1e-2)
    return (yg / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), s


# name: (function, H, phrase of the reason)
NEAR_MISSES = {
    "reciprocal_multiply": (reciprocal_multiply, 512, "reciprocal"),
    "amax_times_inverse_qmax": (amax_times_inverse_qmax, 512, "instead of dividing"),
    "subnormal_floor": (subnormal_floor, 512, "normal fp32"),
    "no_floor": (no_floor, 512, "no floor"),
    "group_straddles_rows": (group_straddles_rows, 1000, "does not divide H"),
    "y_rounded_to_bf16": (y_rounded_to_bf16, 512, "rounded to torch.bfloat16"),
    "int8_truncates": (int8_truncates, 512, "without round()"),
    "wrong_qmax": (wrong_qmax, 512, "not [-448.0, 448.0]"),
    "tighter_clamp_first": (tighter_clamp_first, 512, "the clamp is [-100.0, 448.0]"),
    "scale_bounded_above": (scale_bounded_above, 512, "bounds the scale above"),
}


# ---- running a function compiled with the pass --------------------------------------------------------


class Capture:
    """Runs after the pass (FusionPass's `then`) and keeps the graph's text."""

    def __init__(self):
        self.graphs = []
        self.calls = []  # the args of every silu_mul_quant node

    def __call__(self, graph):
        self.graphs.append(str(graph))
        self.calls += [n.args for n in graph.nodes if "silu_mul_quant" in str(n.target)]

    def uuid(self):
        return None  # no FX graph cache: every test compiles


def fusion_pass(device, capture):
    if device == "cuda":
        return fusion.FusionPass(then=capture)
    return fusion.FusionPass(devices=("cpu",), op=STAND_IN, then=capture)


class Compiled:
    """fn under torch.compile (Inductor) with the pass; counts compiles."""

    def __init__(self, fn, device):
        from torch._inductor.compile_fx import compile_fx

        self.capture = Capture()
        self.compiles = 0
        p = fusion_pass(device, self.capture)

        def backend(gm, example_inputs):
            self.compiles += 1
            return compile_fx(gm, example_inputs, config_patches={"post_grad_custom_post_pass": p})

        torch._dynamo.reset()
        self.fn = torch.compile(fn, backend=backend, fullgraph=True)

    def __call__(self, x):
        return self.fn(x)

    @property
    def graph(self):
        return "\n".join(self.capture.graphs)


def make_x(lead, h, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, 2 * h, generator=gen) * 2.0
    flat = x.view(-1, 2 * h)
    if flat.shape[0] > 1:
        flat[1, : min(h, 64)] = 0.0  # a zero group: the floor
    return x.to(device, dtype)


def ordinal(q):
    if q.dtype == torch.int8:
        return q.to(torch.int32)
    code = q.view(torch.uint8).to(torch.int32)
    mag = code & 0x7F
    return torch.where(code >= 0x80, -mag, mag)


def compare(x, got, want, fn_name, strides=True):
    """The compiled outputs against the uncompiled ones, by docs/contract.md's
    tolerance: scales within 1e-6 relative (power-of-two scales: one step where
    the unrounded scale is within 2e-6 of a power of two, whose group's q is
    then not compared), q identical except one step where y / s is within 2e-6
    relative of a rounding boundary. Returns (elements, groups) that used the
    allowances."""
    (q, s), (q_ref, s_ref) = got, want
    assert q.shape == q_ref.shape and q.dtype == q_ref.dtype, (q.shape, q_ref.shape, q.dtype, q_ref.dtype)
    assert s.shape == s_ref.shape and s.dtype == s_ref.dtype, (s.shape, s_ref.shape)
    if s_ref.numel() > 1 and strides:
        assert s.stride() == s_ref.stride(), (s.stride(), s_ref.stride())
    q, q_ref = q.cpu(), q_ref.cpu()
    s, s_ref = s.cpu().float(), s_ref.cpu().float()
    h = x.shape[-1] // 2
    t = x.numel() // (2 * h)
    # Scales as [T, NG] whatever their layout: match by value through q's groups.
    s2, s2_ref = s.reshape(-1), s_ref.reshape(-1)
    ng = s2.numel() // t
    g = h // ng
    if s.dim() == 2 and s.shape == (ng, t) and not (ng == t):  # transposed [NG, T]
        s2, s2_ref = s.t().reshape(-1), s_ref.t().reshape(-1)
    elif s.dim() == 2 and s.shape == (t, ng) and s.stride()[0] == 1 and t > 1:
        s2, s2_ref = s.contiguous().reshape(-1), s_ref.contiguous().reshape(-1)
    s2, s2_ref = s2.reshape(t, ng), s2_ref.reshape(t, ng)
    close = (s2 - s2_ref).abs() <= 1e-6 * s2_ref.abs()
    flipped = ~close
    skip = torch.zeros(t, ng, dtype=torch.bool)
    if flipped.any():
        ratio = s2[flipped] / s2_ref[flipped]
        pow2 = (torch.frexp(s2_ref[flipped])[0] == 0.5) & (torch.frexp(s2[flipped])[0] == 0.5)
        assert bool(pow2.all()) and bool(((ratio == 2) | (ratio == 0.5)).all()), \
            f"{fn_name}: {int(flipped.sum())} scales differ beyond 1e-6: {s2[flipped][:8]} vs {s2_ref[flipped][:8]}"
        skip = flipped
    # q: exact, or one step at a rounding boundary of y / s.
    xf = x.detach().reshape(t, 2 * h).cpu().float()
    gate, up = xf[:, :h], xf[:, h:]
    y = (gate / (1.0 + torch.exp(-gate)) * up).reshape(t, ng, g)
    v = y / s2_ref[..., None]
    qa, qb = q.reshape(t, ng, g), q_ref.reshape(t, ng, g)
    a, b = qa.float(), qb.float()
    bad = (a != b) & ~(a.isnan() & b.isnan()) & ~skip[..., None]
    if bad.any():
        step = (ordinal(qa) - ordinal(qb)).abs()
        mid = (a + b) / 2
        near = (v - mid).abs() <= BOUNDARY_RTOL * mid.abs()
        worst = bad & ~((step == 1) & near)
        assert not worst.any(), (f"{fn_name}: {int(worst.sum())} of {q.numel()} values differ beyond the "
                                 f"allowance, e.g. {a[worst][:6].tolist()} vs {b[worst][:6].tolist()}")
    used = int(bad.sum()), int(skip.sum())
    print(f"[fusion] {fn_name}: T={t} allowance used by {used[0]} elements, {used[1]} power-of-two scale steps")
    return used


def lead_of(t, three_d):
    return (2, (t + 1) // 2) if three_d else (t,)


# ---- the tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SPELLINGS))
def test_spelling_is_rewritten_and_equals_the_uncompiled_code(name, device):
    factory, dtype, h, three_d, layout, ue8m0 = SPELLINGS[name]
    fn = factory
    errors = fusion.stats["internal_errors"]
    c = Compiled(fn, device)
    # F.pad by 0 columns (T % 4 == 0) returns its input, so the padded
    # spelling itself has two graphs (pad 0 or not); each serves every T.
    ts = (5, 17, 63, 3, 64, 8) if layout == "col_tma" else (5, 17, 64, 3)
    for i, t in enumerate(ts):
        x = make_x(lead_of(t, three_d), h, dtype, device, seed=10 + i)
        if i == 0:
            torch._dynamo.mark_dynamic(x, 1 if three_d else 0)
        got = c(x)
        want = fn(x)
        # F.pad by 0 columns (T % 4 == 0) returns its input: the uncompiled
        # function's scales are then row-major, the compiled ones col_tma.
        compare(x, got, want, f"{name} on {device}", strides=layout != "col_tma" or t % 4 != 0)
    graphs = 2 if layout == "col_tma" else 1
    assert c.compiles == graphs, f"{name}: {c.compiles} compiles for T in {ts}: T must be dynamic"
    graph = c.graph
    op = "bqjit.silu_mul_quant" if device == "cuda" else "bqjit_fusion_test.silu_mul_quant"
    assert op in graph, f"{name}: not rewritten; declines: {list(fusion.last_declines)[-3:]}\n{graph}"
    assert "amax" not in graph and "aten.max" not in graph, graph
    assert len(c.capture.calls) == graphs
    assert fusion.stats["internal_errors"] == errors, list(fusion.last_declines)[-3:]
    for args in c.capture.calls:
        assert args[3] == layout and args[4] == ue8m0, args


class _Traced(Exception):
    """Raised by the capturing compiler instead of running the graph."""


@pytest.mark.parametrize("name", list(SPELLINGS))
def test_rewrites_into_the_bqjit_op_on_fake_cuda_tensors(name):
    """No GPU needed: dynamo and AOT autograd (Inductor's decompositions)
    trace the spelling on fake CUDA tensors of dynamic T; the pass rewrites
    it into torch.ops.bqjit.silu_mul_quant, whose own fake (the one Inductor
    will call) then runs under the symbolic shapes and gives the shapes,
    dtypes and strides of the original graph's outputs."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._guards import detect_fake_mode
    from torch._inductor.decomposition import select_decomp_table

    fn, dtype, h, three_d, layout, ue8m0 = SPELLINGS[name]
    seen = {}

    def compiler(gm, example_inputs):
        mode = detect_fake_mode(example_inputs)
        with mode:
            seen["before"] = gm(*example_inputs)
        seen["rewritten"] = fusion.rewrite(gm.graph)
        gm.recompile()
        with mode:
            seen["after"] = gm(*example_inputs)
        seen["graph"] = gm.graph

        def run(*args):
            raise _Traced()
        return run

    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=compiler, decompositions=select_decomp_table())
    traced = torch.compile(lambda x: fn(x.to("cuda")), backend=backend, fullgraph=True)
    x = make_x(lead_of(9, three_d), h, dtype, "cpu", seed=1)
    torch._dynamo.mark_dynamic(x, 1 if three_d else 0)
    with pytest.raises(_Traced):
        traced(x)
    assert seen["rewritten"] == 1, list(fusion.last_declines)[-2:]
    calls = [n for n in seen["graph"].nodes if n.target is torch.ops.bqjit.silu_mul_quant.default]
    assert len(calls) == 1 and calls[0].args[3] == layout and calls[0].args[4] == ue8m0, calls
    assert not [n for n in seen["graph"].nodes if "amax" in str(n.target) or "aten.max" in str(n.target)]
    t_sym = calls[0].args[0].meta["val"].shape[1 if three_d else 0]
    assert not isinstance(t_sym, int), "T must be symbolic in the traced graph"
    for a, b in zip(seen["after"], seen["before"]):
        if isinstance(b, torch.Tensor):
            assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device, (a.shape, b.shape)
            assert a.stride() == b.stride(), (a.stride(), b.stride())


@pytest.mark.parametrize("device", DEVICES)
def test_min_scale_comes_from_the_floor(device):
    """eps on amax before / QMAX is min_scale = fl32(eps / QMAX); eps on the
    scale after it is min_scale = eps; SPEC's own floor adds no field."""
    f32 = fusion._f32
    cases = [
        (silu_split_row(128, eps=1e-10), False, fusion._f32_div(f32(1e-10), 448.0)),
        (e5m2_3d_floor_after(64, eps=1e-12), True, f32(1e-12)),
        (silu_split_row(128, eps=1.0 / 512.0), False, None),  # fl32(1/512 / 448) is MIN_SCALE
        (torchao_style(64, lb=1e-4), False, fusion._f32_div(f32(1e-4), 448.0)),
    ]
    assert cases[0][2] == float.fromhex("0x1.f6a246p-43")  # the value tests/test_kernel_spec.cpp pins
    for fn, three_d, min_scale in cases:
        c = Compiled(fn, device)
        x = make_x(lead_of(9, three_d), 256, torch.bfloat16, device, seed=3)
        x.view(-1, 512)[2].mul_(1e-12)  # a row whose groups are all at the floor
        compare(x, c(x), fn(x), fn.__qualname__)
        (args,) = c.capture.calls
        assert args[7] == (None if min_scale is None else '{"min_scale":' + repr(min_scale) + "}"), args


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(NEAR_MISSES))
def test_near_miss_is_not_rewritten_and_still_runs(name, device):
    fn, h, phrase = NEAR_MISSES[name]
    c = Compiled(fn, device)
    fusion.last_declines.clear()
    x = make_x((16,), h, torch.bfloat16, device, seed=5)
    q, s = c(x)
    q_ref, s_ref = fn(x)
    assert q.shape == q_ref.shape and q.dtype == q_ref.dtype and s.shape == s_ref.shape
    assert "silu_mul_quant" not in c.graph
    reasons = [r for _, r in fusion.last_declines]
    assert any(phrase in r for r in reasons), reasons


@pytest.mark.parametrize("device", DEVICES)
def test_no_graph_break(device):
    for name in ("vllm_native_g128", "pad_col_tma_ue8m0_g128", "e5m2_3d_floor_after_g64"):
        fn, dtype, h, three_d = SPELLINGS[name][:4]
        x = make_x(lead_of(6, three_d), h, dtype, device, seed=1)
        explanation = torch._dynamo.explain(fn)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1


def test_debug_log_says_why(caplog):
    import logging

    fn, h, _ = NEAR_MISSES["reciprocal_multiply"]
    c = Compiled(fn, "cpu")
    with caplog.at_level(logging.DEBUG, logger="bqjit.fusion"):
        c(make_x((4,), h, torch.bfloat16, "cpu", seed=2))
    assert any("not rewritten" in r.message and "reciprocal" in r.message for r in caplog.records), caplog.text


def test_install_composes_with_a_pass_already_there():
    seen = []

    class Other(fusion.FusionPass.__mro__[1]):  # CustomGraphPass
        def __call__(self, graph):
            seen.append(sum(1 for n in graph.nodes if "silu_mul_quant" in str(n.target)))

        def uuid(self):
            return "other"

    other = Other()
    with inductor_config.patch(post_grad_custom_post_pass=other, fx_graph_cache=False):
        p = fusion.install(devices=("cpu",))
        try:
            assert inductor_config.post_grad_custom_post_pass is p and p.then is other
            assert fusion.install(devices=("cpu",)) is p  # idempotent
            assert p.uuid() is not None
            p.op = STAND_IN
            torch._dynamo.reset()
            fn = silu_split_row(128)
            x = make_x((6,), 256, torch.bfloat16, "cpu", seed=4)
            compare(x, torch.compile(fn)(x), fn(x), "installed")
            assert seen and seen[-1] == 1  # ours ran first, then the other pass
        finally:
            fusion.uninstall()
        assert inductor_config.post_grad_custom_post_pass is other


@pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA device")
def test_one_line_install_on_the_gpu_and_inductor_code():
    from torch._inductor.utils import run_and_get_code

    fn = vllm_native(128)
    x = make_x((33,), 1024, torch.bfloat16, "cuda", seed=8)
    fusion.install()
    try:
        torch._dynamo.reset()
        compiled = torch.compile(fn)
        got, code = run_and_get_code(compiled, x)
    finally:
        fusion.uninstall()
    text = "\n".join(code)
    assert "bqjit.silu_mul_quant" in text and "amax" not in text, text
    compare(x, got, fn(x), "installed on cuda")
    torch._dynamo.reset()
    got2 = torch.compile(fn, backend=fusion.backend)(x)
    compare(x, got2, fn(x), "backend on cuda")
