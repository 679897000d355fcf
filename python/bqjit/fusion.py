"""A PyTorch Inductor pass that finds ``act(gate) * up`` followed by per-group
quantization in a model's graph and replaces both with one
``torch.ops.bqjit.silu_mul_quant`` call, so that a model gets bqjit's fused
kernel with no change to its code.

Enabling it takes one line, before the model is compiled::

    bqjit.fusion.install()                                    # every torch.compile
    model = torch.compile(model, backend=bqjit.fusion.backend)  # or one model

``install()`` sets ``torch._inductor.config.post_grad_custom_post_pass``,
keeping (and running after ours) any pass already there; ``uninstall()``
restores it. ``backend`` is Inductor with the pass for that model only.

What is rewritten (in the post-grad ATen graph; each a dataflow, not a fixed
spelling):

* the activation: ``y = silu(g) * u`` with ``g`` and ``u`` the two halves of
  the last dim of one tensor ``x`` (``x[..., :H]``/``x[..., H:]``, ``chunk``,
  ``split``, ``unflatten`` + select), upcast exactly to fp32 (``.float()``
  before or after the slicing), ``silu`` written ``F.silu(g)``,
  ``g / (1 + exp(-g))``, ``g * torch.sigmoid(g)`` (in any order of the three
  factors);
* per-group quantization of ``y``: a view to groups of ``G`` columns (any
  view whose last dim is ``G``, ``G`` dividing ``H``), ``abs`` then
  ``amax(-1)`` (or ``max(dim=-1)[0]``), division by QMAX, a floor
  (``clamp(min=eps)`` on amax before the division or on the scale after it),
  optionally power-of-two rounding (``exp2(ceil(log2(s)))`` or
  ``2 ** ceil(log2(s))``), ``y / scale``, a clamp to ``+-QMAX`` (fp8) or
  ``round`` and a clamp to ``[-128 or -127, 127]`` (int8), ``.to(dtype)``
  (``float8_e4m3fn``, ``float8_e5m2``, ``int8``);
* the scales row-major ``[..., NG]`` (any view of them), transposed and
  materialized (``s.t().contiguous()``: layout ``col``), or transposed into a
  TMA-aligned buffer of ``ceil(T / 4) * 4`` columns (``F.pad`` of the
  transposed scales, or zeros with the scales copied into ``[:, :T]``:
  layout ``col_tma``). Column layouts need a 2-D ``x``.

The floor maps to the spec field ``min_scale``: ``amax.clamp(min=eps) / QMAX``
is ``min_scale = fl32(eps / QMAX)`` (fp32 division by QMAX is monotone, so
``fl(max(a, e) / Q) == max(fl(a / Q), fl(e / Q))`` for every amax ``a``), and
``(amax / QMAX).clamp(min=eps)`` is ``min_scale = eps``.

What is not rewritten, with the reason logged at debug level on the
``bqjit.fusion`` logger (``logging.getLogger("bqjit.fusion").setLevel(
logging.DEBUG)``): anything whose results would differ from the code's own
beyond docs/contract.md's tolerance: multiplying by a reciprocal of the scale
(or amax by 1 / QMAX), y rounded to bf16/fp16 before the quantization, a QMAX
or clamp bound that is not the output type's, no floor (0 / 0 for a zero
group), a floor that is no normal fp32, an upper bound on the scale, a group
size that does not divide H (groups straddling rows), int8 without ``round``,
a symbolic H or G, tensors not on the GPU.

Numerics that still differ, by design and within docs/contract.md's tolerance:
the kernel evaluates ``silu(g)`` as ``g / (1 + exp(-g))`` (spellings with
``sigmoid`` round their last bit differently), rounds power-of-two scales
exactly from the fp32 bits (``torch.log2`` may round ``log2(s)`` to an integer
where ``s`` lies within about 1e-6 relative above a power of two), and ignores
NaN in amax (``torch.amax`` propagates it). Without the pass, Inductor itself
replaces ``amax / 448.0`` by ``amax * (1 / 448.0)``, which is not exact
either: with it, the scales are those of the uncompiled code.

Why a graph walk rather than ``torch._inductor.pattern_matcher`` patterns: one
pattern per spelling would be the product of the activation forms (3), the
ways to split x (4), the upcast positions (2), amax or max (2), the floor's
place (2), power-of-two forms (3), keepdim and unsqueeze (2), the scale
layouts (5) and the output types' clamp/round chains (3) -- thousands of
traced patterns, each exact about argument order and constants. The walk
follows the dataflow from each ``amax`` and checks every numeric detail on
the way (the constants, true division, the dtypes), so it can also say
precisely why a near miss is left alone.
"""

import logging
import math
import operator
import struct
from collections import Counter, deque
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import ops as _ops

__all__ = ["install", "uninstall", "backend", "FusionPass", "rewrite", "stats", "last_declines"]

log = logging.getLogger("bqjit.fusion")

#: Counters over the process: "rewritten", "declined" (candidates left alone),
#: "internal_errors" (declined because the pass itself failed: a bug to report).
stats: Counter = Counter()
#: The most recent (candidate node, reason) pairs of declined candidates.
last_declines: deque = deque(maxlen=64)

_FLT_MIN = 1.1754943508222875e-38  # the smallest normal fp32
_OUT_NAMES = {"float8_e4m3fn": "fp8_e4m3", "float8_e5m2": "fp8_e5m2", "int8": "int8"}
_QMAX = {"fp8_e4m3": 448.0, "fp8_e5m2": 57344.0, "int8": 127.0}
# docs/contract.md section 1's MIN_SCALE, as fp32 values.
_MIN_SCALE = {"fp8_e4m3": 1.0 / (448.0 * 512.0), "fp8_e5m2": 1.0 / (57344.0 * 512.0), "int8": 2.0**-23}


def _f32(v: float) -> float:
    """v rounded to fp32 (nearest even), as a Python float."""
    return struct.unpack("<f", struct.pack("<f", v))[0]


def _f32_div(a: float, b: float) -> float:
    """The correctly rounded fp32 quotient of two fp32 values (the double
    quotient rounded once more is correctly rounded: 53 >= 2 * 24 + 2)."""
    return _f32(a / b)


def _pow2_ceil(v: float) -> float:
    """2^ceil(log2(v)) of a positive normal fp32, exactly, at most 2^127."""
    m, e = math.frexp(v)
    k = e - 1 if m == 0.5 else e
    return 2.0 ** min(k, 127)


class _NoMatch(Exception):
    """A candidate that is not rewritten; the message says why."""


if _ops.HAVE_TORCH:
    import torch
    import torch.fx
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    aten = torch.ops.aten
    prims = torch.ops.prims
    _F32 = torch.float32
    _EXACT_UPCAST = (torch.bfloat16, torch.float16, torch.float32)
    _VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
    _ALLOCS = (aten.full.default, aten.zeros.default, aten.empty.memory_format, aten.empty_strided.default,
               aten.new_zeros.default, aten.new_full.default, aten.new_empty.default)
    _DEFAULT_OP = torch.ops.bqjit.silu_mul_quant.default

    # ---- graph helpers ------------------------------------------------------------------

    def _val(n: Any):
        return n.meta.get("val") if isinstance(n, torch.fx.Node) else None

    def _dtype(n: Any):
        v = _val(n)
        return getattr(v, "dtype", None)

    def _is(n: Any, *targets) -> bool:
        return isinstance(n, torch.fx.Node) and n.op == "call_function" and n.target in targets

    def _arg(n: torch.fx.Node, i: int, name: str, default: Any = None) -> Any:
        if len(n.args) > i:
            return n.args[i]
        return n.kwargs.get(name, default)

    def _number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def _static(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def _last_dim(dim: Any, ndim: int) -> bool:
        return _static(dim) and (dim == -1 or dim == ndim - 1)

    def _peel_upcast(n: Any) -> Any:
        """Through exact conversions to fp32 (from bf16, fp16 or fp32)."""
        while _is(n, prims.convert_element_type.default) and n.args[1] is _F32 and \
                _dtype(n.args[0]) in _EXACT_UPCAST:
            n = n.args[0]
        return n

    def _contiguous(v: Any) -> bool:
        """Row-major strides (sizes 1 aside), decided without adding guards."""
        expect: Any = 1
        for size, stride in zip(reversed(v.shape), reversed(v.stride())):
            if not _sym_equal(size, 1) and not _sym_equal(stride, expect):
                return False
            expect = expect * size
        return True

    def _sym_equal(a: Any, b: Any) -> bool:
        """a == b for ints or SymInts, without adding a guard (False when unknown)."""
        if _static(a) and _static(b):
            return a == b
        try:
            from torch.fx.experimental.symbolic_shapes import statically_known_true

            return bool(statically_known_true(a == b))
        except Exception:  # pragma: no cover - an expression torch cannot compare
            return False

    def _same_shape(a: Sequence[Any], b: Sequence[Any]) -> bool:
        return len(a) == len(b) and all(_sym_equal(p, q) for p, q in zip(a, b))

    def _peel_noop(n: Any) -> Any:
        """Through conversions of fp32 to fp32 (no-ops that a spelling may leave)."""
        while _is(n, prims.convert_element_type.default) and n.args[1] is _F32 and _dtype(n.args[0]) is _F32:
            n = n.args[0]
        return n

    # ---- the activation: y = silu(g) * u over the halves of x -----------------------------

    def _half(n: Any, h: int) -> Tuple[Any, str]:
        """(x, "gate" or "up") for a node that is an exact fp32 upcast of
        x[..., :H] or x[..., H:] (x's last dim 2H)."""
        n = _peel_upcast(n)
        src, part = None, None
        if _is(n, aten.slice.Tensor):
            src = n.args[0]
            dim = _arg(n, 1, "dim", 0)
            start = _arg(n, 2, "start", None)
            end = _arg(n, 3, "end", None)
            step = _arg(n, 4, "step", 1)
            v = _val(src)
            if v is None or step != 1 or not _last_dim(dim, v.dim()) or v.shape[-1] != 2 * h:
                raise _NoMatch(f"{n.name} is not a half of the last dim of a [..., {2 * h}] tensor")
            start = 0 if start is None else start
            if start == 0 and end == h:
                part = "gate"
            elif start == h and _static(end) and end >= 2 * h:
                part = "up"
        elif _is(n, operator.getitem) and _is(n.args[0], aten.split.Tensor, aten.split_with_sizes.default):
            split = n.args[0]
            src = split.args[0]
            v = _val(src)
            size = _arg(split, 1, "split_size" if split.target is aten.split.Tensor else "split_sizes")
            dim = _arg(split, 2, "dim", 0)
            ok = size == h if split.target is aten.split.Tensor else list(size) == [h, h]
            if v is None or not ok or not _last_dim(dim, v.dim()) or v.shape[-1] != 2 * h:
                raise _NoMatch(f"{n.name} is not a half of the last dim of a [..., {2 * h}] tensor")
            part = ("gate", "up")[n.args[1]] if n.args[1] in (0, 1) else None
        elif _is(n, aten.select.int) and _is(n.args[0], *_VIEWS):
            # x.unflatten(-1, (2, H))[..., 0, :] and [..., 1, :]
            view = n.args[0]
            src = view.args[0]
            v, vv = _val(src), _val(view)
            dim = n.args[1]
            if v is not None and vv is not None and vv.dim() == v.dim() + 1 and v.shape[-1] == 2 * h and \
                    tuple(vv.shape[-2:]) == (2, h) and dim in (-2, vv.dim() - 2) and n.args[2] in (0, 1):
                part = ("gate", "up")[n.args[2]]
        if part is None:
            raise _NoMatch(f"{n.name} ({n.target}) is not x[..., :H] or x[..., H:] of one tensor x")
        return _peel_upcast(src), part

    def _silu_arg(n: Any) -> Optional[Any]:
        """g where n is silu(g) as aten.silu or g / (1 + exp(-g)); else None."""
        if _is(n, aten.silu.default):
            return n.args[0]
        if _is(n, aten.div.Tensor) and isinstance(n.args[1], torch.fx.Node):
            g, den = n.args
            if _is(den, aten.add.Tensor) and _arg(den, 2, "alpha", 1) == 1:
                a, b = den.args[0], den.args[1]
                e = a if b == 1 else b if a == 1 else None
                if _is(e, aten.exp.default) and _is(e.args[0], aten.neg.default) and e.args[0].args[0] is g:
                    return g
        return None

    def _mul_leaves(n: Any, out: List[Any], nodes: List[Any]) -> None:
        if _is(n, aten.mul.Tensor) and all(isinstance(a, torch.fx.Node) for a in n.args[:2]):
            nodes.append(n)
            _mul_leaves(n.args[0], out, nodes)
            _mul_leaves(n.args[1], out, nodes)
        else:
            out.append(n)

    def _activation(y: Any, h: int) -> Any:
        """x (the kernel's input) where y = silu(gate) * up in fp32 over x's halves."""
        if _is(y, prims.convert_element_type.default) and _dtype(y.args[0]) in (torch.bfloat16, torch.float16):
            raise _NoMatch(f"y is rounded to {_dtype(y.args[0])} before the quantization ({y.args[0].name}); "
                           "bqjit keeps y in fp32, so the scales and values would differ")
        y = _peel_noop(y)
        if _dtype(y) is not _F32:
            raise _NoMatch(f"y ({y.name}) is {_dtype(y)}, not float32: bqjit keeps y in fp32")
        leaves: List[Any] = []
        muls: List[Any] = []
        _mul_leaves(y, leaves, muls)
        for m in muls:
            if _dtype(m) is not _F32:
                raise _NoMatch(f"{m.name} multiplies in {_dtype(m)}, not float32")
        gate = None
        others: List[Any] = []
        sig = None
        for leaf in leaves:
            g = _silu_arg(leaf)
            if g is not None and gate is None:
                if _dtype(leaf) is not _F32:
                    raise _NoMatch(f"silu ({leaf.name}) is computed in {_dtype(leaf)}, not float32")
                gate = g
            elif _is(leaf, aten.sigmoid.default) and sig is None:
                if _dtype(leaf) is not _F32:
                    raise _NoMatch(f"sigmoid ({leaf.name}) is computed in {_dtype(leaf)}, not float32")
                sig = leaf
            else:
                others.append(leaf)
        if gate is not None and sig is None and len(others) == 1:
            up = others[0]
        elif gate is None and sig is not None and len(others) == 2:
            gate = sig.args[0]
            half = _half(gate, h)
            same = [o for o in others if _half(o, h) == half]
            if not same:
                raise _NoMatch(f"{sig.name}: sigmoid(g) is not multiplied by the same g")
            others.remove(same[0])
            up = others[0]
        else:
            names = ", ".join(f"{leaf.name} ({leaf.target})" for leaf in leaves)
            raise _NoMatch(f"y ({y.name}) is not silu(g) * u (factors: {names})")
        if _dtype(gate) is not _F32:
            raise _NoMatch(f"silu's input {gate.name} is {_dtype(gate)}, not float32")
        xg, pg = _half(gate, h)
        xu, pu = _half(up, h)
        if (pg, pu) != ("gate", "up") or xg is not xu:
            raise _NoMatch(f"silu is applied to {pg} of {xg.name} and multiplied by {pu} of {xu.name}: "
                           "not gate = x[..., :H], up = x[..., H:] of one x")
        return xg

    # ---- the scale: amax -> floors, / QMAX, power of two ------------------------------------

    def _pow2_arg(n: Any) -> Optional[Any]:
        """s where n is exp2(ceil(log2(s))) or 2 ** ceil(log2(s)); else None."""
        if _is(n, aten.exp2.default):
            c = n.args[0]
        elif _is(n, aten.pow.Scalar) and n.args[0] == 2:
            c = n.args[1]
        else:
            return None
        if _is(c, aten.ceil.default) and _is(c.args[0], aten.log2.default):
            return c.args[0].args[0]
        return None

    def _scale_chain(d: Any, amax: Any) -> Tuple[List[Tuple], Any]:
        """The ops from amax to the divisor d, in order: ("floor", c), ("div", c),
        ("pow2",); and the scale node (d without a trailing unsqueeze)."""
        ops: List[Tuple] = []
        n = d
        scale = d
        if _is(n, aten.unsqueeze.default) and _last_dim(n.args[1], _val(n).dim()):
            n = scale = n.args[0]
        elif _is(n, *_VIEWS) and _val(n) is not None and _val(n.args[0]) is not None and \
                _same_shape(_val(n).shape, tuple(_val(n.args[0]).shape) + (1,)):
            n = scale = n.args[0]
        while n is not amax:
            if not isinstance(n, torch.fx.Node):
                raise _NoMatch(f"the divisor {d.name} is not computed from amax")
            if _dtype(n) is not _F32:
                raise _NoMatch(f"the scale is {_dtype(n)} at {n.name}, not float32")
            t = n.target
            if _is(n, prims.convert_element_type.default) and _peel_noop(n) is not n:
                n = n.args[0]
            elif _is(n, aten.clamp_min.default) and _number(n.args[1]):
                ops.append(("floor", float(n.args[1])))
                n = n.args[0]
            elif _is(n, aten.clamp_max.default):
                raise _NoMatch(f"{n.name} bounds the scale above (clamp max={n.args[1]}); not matched")
            elif _is(n, aten.clamp.default):
                lo, hi = _arg(n, 1, "min"), _arg(n, 2, "max")
                if hi is not None:
                    raise _NoMatch(f"{n.name} bounds the scale above (clamp max={hi}); not matched")
                if not _number(lo):
                    raise _NoMatch(f"{n.name} clamps with a tensor bound; not matched")
                ops.append(("floor", float(lo)))
                n = n.args[0]
            elif _is(n, aten.div.Tensor) and _number(n.args[1]):
                ops.append(("div", float(n.args[1])))
                n = n.args[0]
            elif _is(n, aten.mul.Tensor) and _number(n.args[1]):
                raise _NoMatch(f"{n.name} multiplies amax by {n.args[1]!r} (a reciprocal of QMAX?) instead of "
                               "dividing by QMAX: the rounding differs from a true division")
            elif _pow2_arg(n) is not None:
                ops.append(("pow2",))
                n = _pow2_arg(n)
            else:
                raise _NoMatch(f"{n.name} ({t}) in the scale computation is not matched")
        ops.reverse()
        return ops, scale

    def _min_scale(ops: List[Tuple], out: str) -> Tuple[float, bool]:
        """(min_scale as an fp32 value, ue8m0) from the scale ops, after the checks."""
        kinds = [o[0] for o in ops]
        if kinds.count("div") != 1:
            raise _NoMatch(f"the scale divides by a constant {kinds.count('div')} times; once by QMAX is matched")
        if kinds.count("pow2") > 1 or ("pow2" in kinds and kinds[-1] != "pow2"):
            raise _NoMatch("the power-of-two rounding is not the last step of the scale (a floor or division "
                           "after it)")
        q = ops[kinds.index("div")][1]
        if q != _QMAX[out]:
            raise _NoMatch(f"the scale divides amax by {q!r}, but the QMAX of {out} is {_QMAX[out]!r}")
        before = [o[1] for o in ops[:kinds.index("div")] if o[0] == "floor"]
        after = [o[1] for o in ops[kinds.index("div"):] if o[0] == "floor"]
        if not before and not after:
            raise _NoMatch("the scale has no floor: an all-zero group would give 0 / 0 = NaN, and bqjit floors it")
        if any(not abs(e) < 3.4028235e38 for e in before + after):
            raise _NoMatch(f"a floor of the scale ({before + after}) is not a finite fp32")
        floors = [_f32_div(_f32(e), _f32(q)) for e in before] + [_f32(e) for e in after]
        m = max(floors)
        if not m >= _FLT_MIN or math.isinf(m):
            raise _NoMatch(f"the scale's floor is {m!r} (from clamp(min=...) {before + after}): bqjit's min_scale "
                           "must be a normal fp32 >= 2^-126")
        return m, "pow2" in kinds

    # ---- the quantization of y / s -----------------------------------------------------------

    def _quant_chain(div: Any) -> Tuple[Any, str, Optional[float], Optional[float], bool]:
        """From y / s to the conversion: (convert node, out name, lo, hi, rounded);
        lo and hi are the bounds that act (the tightest of several clamps)."""
        n = div
        lo = hi = None
        rounded = False
        while True:
            nxt = [u for u in n.users if _is(u, aten.clamp_min.default, aten.clamp_max.default, aten.clamp.default,
                                             aten.round.default, prims.convert_element_type.default)]
            if len(nxt) != 1:
                raise _NoMatch(f"y / scale ({div.name}) does not lead to one conversion to fp8 or int8")
            n = nxt[0]
            if n.target is prims.convert_element_type.default:
                name = _OUT_NAMES.get(str(n.args[1]).replace("torch.", ""))
                if name is None:
                    raise _NoMatch(f"{n.name} converts to {n.args[1]}, not float8_e4m3fn, float8_e5m2 or int8")
                return n, name, lo, hi, rounded
            if n.target is aten.round.default:
                rounded = True
                continue
            if n.target is aten.clamp_min.default:
                new_lo, new_hi = n.args[1], None
            elif n.target is aten.clamp_max.default:
                new_lo, new_hi = None, n.args[1]
            else:
                new_lo, new_hi = _arg(n, 1, "min"), _arg(n, 2, "max")
            if (new_lo is not None and not _number(new_lo)) or (new_hi is not None and not _number(new_hi)):
                raise _NoMatch(f"{n.name} clamps with a tensor bound")
            if new_lo is not None:
                lo = new_lo if lo is None else max(lo, new_lo)
            if new_hi is not None:
                hi = new_hi if hi is None else min(hi, new_hi)

    def _check_quant(out: str, lo: Any, hi: Any, rounded: bool) -> None:
        qmax = _QMAX[out]
        if out == "int8":
            if not rounded:
                raise _NoMatch("int8: y / scale is converted without round() (truncation toward zero), "
                               "bqjit rounds half to even")
            if hi != 127 or lo not in (-128, -127):
                raise _NoMatch(f"int8: the clamp is [{lo}, {hi}], not [-128 or -127, 127]")
        else:
            if rounded:
                raise _NoMatch(f"{out}: y / scale is rounded to an integer before the conversion")
            if lo != -qmax or hi != qmax:
                raise _NoMatch(f"{out}: the clamp is [{lo}, {hi}], not [-{qmax}, {qmax}]")

    # ---- the scales' consumers: which layout --------------------------------------------------

    def _through_views(n: Any, stop: Any) -> bool:
        while n is not stop:
            if not (_is(n, *_VIEWS) or _is(n, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)):
                return False
            n = n.args[0]
        return True

    def _column_use(scale: Any, quotient_user: Any, t: Any, ng: int):
        """("col" | "col_tma", the node to replace, kind) when every use of the
        scales other than the division is one transposed materialization:
        s.view(T, NG).t() made contiguous (col), or padded to T4 columns (col_tma);
        else None (row: the uses read a view of row-major scales)."""
        users = [u for u in scale.users if u is not quotient_user]
        if len(users) != 1:
            return None
        n = users[0]
        # Down through views to [T, NG], then the transposition.
        while (_is(n, *_VIEWS) or _is(n, aten.squeeze.dim, aten.squeeze.dims)) and len(n.users) == 1:
            n = next(iter(n.users))
        if not (_is(n, aten.permute.default) and list(n.args[1]) in ([1, 0], [-1, -2], [-1, 0], [1, -2])
                and _through_views(n.args[0], scale)):
            return None
        v = _val(n)
        if v is None or v.dim() != 2 or not _sym_equal(v.shape[0], ng) or not _sym_equal(v.shape[1], t):
            return None
        if len(n.users) != 1:
            return None
        m = next(iter(n.users))
        t4 = (t + 3) // 4 * 4
        mv = _val(m)
        if not isinstance(mv, torch.Tensor) or mv.dtype is not _F32:
            return None
        # clone(memory_format=contiguous) is .contiguous(); a clone that
        # preserves the format copies the row-major memory: row.
        if _is(m, aten.clone.default) and m.kwargs.get("memory_format") is torch.contiguous_format and \
                _contiguous(mv):
            return "col", m, "transposed"
        if _is(m, aten.copy.default) and m.args[1] is n and _is(m.args[0], *_ALLOCS):
            if mv.dim() == 2 and _sym_equal(mv.shape[0], ng) and _sym_equal(mv.shape[1], t) and _contiguous(mv):
                return "col", m, "transposed"
            return None
        if _is(m, aten.constant_pad_nd.default) and m.args[0] is n:
            pad = list(m.args[1])
            value = _arg(m, 2, "value", 0.0)
            if len(pad) == 2 and pad[0] == 0 and value == 0 and mv.dim() == 2 and _sym_equal(mv.shape[1], t4):
                return "col_tma", m, "padded"
            return None
        if _is(m, aten.slice_scatter.default) and m.args[1] is n and _is(m.args[0], aten.full.default) and \
                m.args[0].args[1] == 0:
            dim, start, end = _arg(m, 2, "dim", 0), _arg(m, 3, "start", None), _arg(m, 4, "end", None)
            step = _arg(m, 5, "step", 1)
            if dim in (1, -1) and start in (0, None) and _sym_equal(end, t) and step == 1 and \
                    _sym_equal(mv.shape[1], t4):
                return "col_tma", m, "padded"
        return None

    # ---- matching one candidate ------------------------------------------------------------------

    class _Match:
        def __init__(self, **kw: Any) -> None:
            self.__dict__.update(kw)

    def _match(red: torch.fx.Node, devices: Sequence[str]) -> _Match:
        # The reduction: amax(|yg|, -1) or max(|yg|, -1)[0].
        if red.target is aten.amax.default:
            src = red.args[0]
            dims = list(_arg(red, 1, "dim", []))
            keep = bool(_arg(red, 2, "keepdim", False))
            amax = red
            if len(dims) != 1 or not _last_dim(dims[0], _val(src).dim()):
                raise _NoMatch(f"{red.name} reduces dims {dims}, not the last one")
        else:
            src = red.args[0]
            keep = bool(_arg(red, 2, "keepdim", False))
            if not _last_dim(_arg(red, 1, "dim"), _val(src).dim()):
                raise _NoMatch(f"{red.name} reduces dim {_arg(red, 1, 'dim')}, not the last one")
            values = [u for u in red.users if _is(u, operator.getitem) and u.args[1] == 0]
            rest = [u for u in red.users if u not in values and not (_is(u, operator.getitem) and u.args[1] == 1
                                                                      and not u.users)]
            if rest or len(values) != 1:
                raise _NoMatch(f"{red.name}: the indices of max() are used")
            amax = values[0]
        # |y| in groups: abs(view(y)) or view(abs(y)).
        if _is(src, aten.abs.default) and _is(src.args[0], *_VIEWS):
            group_view = src.args[0]
            y = group_view.args[0]
        elif _is(src, *_VIEWS) and _is(src.args[0], aten.abs.default):
            group_view = src
            y = src.args[0].args[0]
        else:
            raise _NoMatch(f"{red.name} does not reduce |y| viewed in groups")
        yv, gv = _val(y), _val(group_view)
        if yv is None or gv is None:
            raise _NoMatch(f"{red.name}: no shapes in the graph")
        h, g = yv.shape[-1], gv.shape[-1]
        if not _static(h) or not _static(g):
            raise _NoMatch(f"H = {h} or G = {g} is symbolic: bqjit specializes on both (compile with static "
                           "hidden sizes, e.g. torch._dynamo.mark_dynamic(x, 0) for T alone, not dynamic=True)")
        if h % g != 0:
            raise _NoMatch(f"G = {g} does not divide H = {h}: the groups straddle rows")
        if not _ops.MIN_GROUP <= g <= _ops.MAX_GROUP or h > _ops.MAX_HIDDEN:
            raise _NoMatch(f"G = {g} or H = {h} is outside bqjit's range (G in {_ops.MIN_GROUP}.."
                           f"{_ops.MAX_GROUP}, H <= {_ops.MAX_HIDDEN})")
        if not _contiguous(yv):
            raise _NoMatch(f"y ({y.name}) is not contiguous: its groups are not G consecutive columns")
        # y / s: the numerator a view of y in groups, the divisor computed from amax.
        numerators = [group_view] if group_view.args[0] is y else []
        numerators += [u for u in y.users if _is(u, *_VIEWS) and u is not group_view and _val(u) is not None
                       and _same_shape(_val(u).shape, gv.shape)]
        found = None
        reasons = []
        for num in numerators:
            for u in num.users:
                if _is(u, aten.div.Tensor) and u.args[0] is num and isinstance(u.args[1], torch.fx.Node):
                    dv = _val(u.args[1])
                    if dv is None or not _same_shape(dv.shape, tuple(gv.shape[:-1]) + (1,)):
                        reasons.append(f"{u.name} divides y by {u.args[1].name}, which is not one value per group")
                        continue
                    try:
                        found = (u, num) + _scale_chain(u.args[1], amax)
                        break
                    except _NoMatch as e:
                        reasons.append(str(e))
                elif _is(u, aten.mul.Tensor) and num in u.args:
                    other = u.args[1] if u.args[0] is num else u.args[0]
                    while _is(other, aten.mul.Tensor) and other.args[1] == 1:  # 1.0 / s: reciprocal(s) * 1.0
                        other = other.args[0]
                    if _is(other, aten.reciprocal.default) or (_is(other, aten.div.Tensor) and _number(other.args[0])):
                        raise _NoMatch(f"{u.name} multiplies y by the reciprocal of the scale ({other.name}), "
                                       "not a true division y / scale: the rounding differs")
                    if isinstance(other, torch.fx.Node):
                        reasons.append(f"{u.name} multiplies y by {other.name} (an inverse scale?), not y / scale")
            if found:
                break
        if not found:
            raise _NoMatch("no y / scale with the scale computed from amax" + (": " + "; ".join(reasons)
                                                                                if reasons else ""))
        div, numerator, ops, scale = found
        convert, out, lo, hi, rounded = _quant_chain(div)
        _check_quant(out, lo, hi, rounded)
        min_scale, ue8m0 = _min_scale(ops, out)
        x = _activation(y, h)
        xv = _val(x)
        if xv is None or xv.device.type not in devices:
            raise _NoMatch(f"x ({x.name}) is on {getattr(xv, 'device', None)}, not on {', '.join(devices)}")
        if xv.dtype not in _EXACT_UPCAST:
            raise _NoMatch(f"x ({x.name}) is {xv.dtype}: bqjit reads bf16, fp16 or fp32")
        lead = tuple(xv.shape[:-1])
        quotient_user = div if scale is div.args[1] else div.args[1]
        layout, replace_scales, kind = "row", None, None
        if xv.dim() == 2:
            col = _column_use(scale, quotient_user, xv.shape[0], h // g)
            if col is not None:
                layout, replace_scales, kind = col
        return _Match(red=red, amax=amax, keep=keep, x=x, h=h, g=g, out=out, ue8m0=ue8m0, min_scale=min_scale,
                      convert=convert, scale=scale, layout=layout, replace_scales=replace_scales, kind=kind,
                      lead=lead, numerator=numerator)

    # ---- the rewrite -----------------------------------------------------------------------------

    def _fields(m: _Match) -> Optional[str]:
        default = _f32(_MIN_SCALE[m.out])
        same = _pow2_ceil(m.min_scale) == _pow2_ceil(default) if m.ue8m0 else m.min_scale == default
        return None if same else '{"min_scale":' + repr(m.min_scale) + "}"

    def _shape_args(graph: torch.fx.Graph, shape: Sequence[Any], x: torch.fx.Node, xv: Any) -> List[Any]:
        """FX arguments for a view to `shape`: ints, sym_size nodes of x, at most one -1."""
        args: List[Any] = []
        unknown = 0
        for d in shape:
            if _static(d):
                args.append(d)
                continue
            for i, xd in enumerate(xv.shape):
                if not _static(xd) and _sym_equal(xd, d):
                    node = graph.call_function(aten.sym_size.int, (x, i))
                    node.meta["val"] = xd
                    args.append(node)
                    break
            else:
                unknown += 1
                args.append(-1)
        if unknown > 1:
            raise _NoMatch(f"cannot express the view to {tuple(shape)} (two symbolic sizes)")
        return args

    def _rewrite_one(graph: torch.fx.Graph, m: _Match, op: Any) -> None:
        before = set(graph.nodes)
        try:
            _insert(graph, m, op)
        except Exception:
            for n in reversed([n for n in graph.nodes if n not in before]):
                graph.erase_node(n)
            raise

    def _insert(graph: torch.fx.Graph, m: _Match, op: Any) -> None:
        xv = _val(m.x)
        fields = _fields(m)
        args = (m.x, m.g, m.out, m.layout, m.ue8m0, None, None, fields)
        try:
            with xv.fake_mode:
                qv, sv = op(xv, *args[1:])
        except Exception as e:
            raise _NoMatch(f"bqjit's op refuses the match: {e}") from None
        with graph.inserting_before(m.scale):
            node = graph.call_function(op, args)
            node.meta["val"] = (qv, sv)
            q = graph.call_function(operator.getitem, (node, 0))
            q.meta["val"] = qv
            s = graph.call_function(operator.getitem, (node, 1))
            s.meta["val"] = sv
            conv_v = _val(m.convert)
            q_view = graph.call_function(aten.view.default, (q, _shape_args(graph, conv_v.shape, m.x, xv)))
            q_view.meta["val"] = qv.view(conv_v.shape)
            if m.layout == "row":
                scale_v = _val(m.scale)
                s_view = graph.call_function(aten.view.default, (s, _shape_args(graph, scale_v.shape, m.x, xv)))
                s_view.meta["val"] = sv.view(scale_v.shape)
                new_scales, old_scales = s_view, m.scale
            elif m.kind == "transposed":
                new_scales = graph.call_function(aten.permute.default, (s, [1, 0]))
                new_scales.meta["val"] = sv.permute(1, 0)
                old_scales = m.replace_scales
            else:  # col_tma padded to [NG, T4]: the op's buffer itself
                t = xv.shape[0]
                if _static(t):
                    t4 = (t + 3) // 4 * 4
                else:
                    tn = graph.call_function(aten.sym_size.int, (m.x, 0))
                    tn.meta["val"] = t
                    a = graph.call_function(operator.add, (tn, 3))
                    a.meta["val"] = t + 3
                    f = graph.call_function(operator.floordiv, (a, 4))
                    f.meta["val"] = (t + 3) // 4
                    t4 = graph.call_function(operator.mul, (f, 4))
                    t4.meta["val"] = (t + 3) // 4 * 4
                ng = m.h // m.g
                new_scales = graph.call_function(aten.as_strided.default, (s, [ng, t4], [t4, 1]))
                t4v = (xv.shape[0] + 3) // 4 * 4
                new_scales.meta["val"] = torch.as_strided(sv, (ng, t4v), (t4v, 1))
                old_scales = m.replace_scales
        m.convert.replace_all_uses_with(q_view)
        old_scales.replace_all_uses_with(new_scales)

    def rewrite(graph: "torch.fx.Graph", devices: Sequence[str] = ("cuda",), op: Any = None) -> int:
        """Rewrites every match in `graph` (a post-grad FX graph with fake
        tensor metadata) into `op` (torch.ops.bqjit.silu_mul_quant by
        default; tests give another op of its schema); returns how many.
        Candidates are the amax/max reductions of |view(y)|; those left
        alone are logged at debug level with the reason and counted in
        ``stats["declined"]``."""
        op = _DEFAULT_OP if op is None else op
        candidates = [n for n in graph.nodes if _is(n, aten.amax.default, aten.max.dim)
                      and (_is(n.args[0], aten.abs.default) or (_is(n.args[0], *_VIEWS)
                                                                 and _is(n.args[0].args[0], aten.abs.default)))]
        done = 0
        for red in candidates:
            try:
                m = _match(red, devices)
                _rewrite_one(graph, m, op)
            except _NoMatch as e:
                stats["declined"] += 1
                last_declines.append((red.name, str(e)))
                log.debug("not rewritten: %s: %s", red.name, e)
                continue
            except Exception as e:  # never break a compile: leave the graph as it was
                stats["declined"] += 1
                stats["internal_errors"] += 1
                last_declines.append((red.name, f"internal error: {e!r}"))
                log.debug("not rewritten: %s: internal error", red.name, exc_info=True)
                continue
            done += 1
            stats["rewritten"] += 1
            log.debug("rewritten: %s -> %s(H=%d, G=%d, %s, %s, ue8m0=%s, min_scale=%r) of %s", red.name,
                      getattr(op, "__name__", op), m.h, m.g, m.out, m.layout, m.ue8m0, m.min_scale, m.x.name)
        if done:
            graph.eliminate_dead_code()
            graph.lint()
        return done

    class FusionPass(CustomGraphPass):
        """The pass as Inductor's post-grad custom pass (``__call__(graph)``),
        with a ``uuid()`` over this file's source and the options, so that
        Inductor's FX graph cache keys on it. ``then``: a pass to run after
        ours (the one ``install()`` found installed)."""

        def __init__(self, devices: Sequence[str] = ("cuda",), op: Any = None, then: Any = None) -> None:
            self.devices = tuple(devices)
            self.op = op
            self.then = then

        def __call__(self, graph: "torch.fx.Graph") -> None:
            rewrite(graph, self.devices, self.op)
            if self.then is not None:
                self.then(graph)

        def uuid(self) -> Optional[Any]:
            then = None
            if self.then is not None:
                then = self.then.uuid() if hasattr(self.then, "uuid") else None
                if then is None:  # a pass without a uuid: no caching, as Inductor does for it
                    return None
            extra = f"{self.devices}|{self.op}|{then!r}"
            return get_hash_for_files((__file__,), extra)

    _installed: Dict[str, Any] = {}

    def install(devices: Sequence[str] = ("cuda",)) -> FusionPass:
        """Installs the pass for every later ``torch.compile`` (Inductor's
        ``post_grad_custom_post_pass``), before any pass already there, which
        then runs after it. Idempotent; returns the installed pass."""
        import torch._inductor.config as config

        current = config.post_grad_custom_post_pass
        if isinstance(current, FusionPass) and _installed.get("pass") is current:
            return current
        p = FusionPass(devices, then=current)
        _installed["pass"], _installed["previous"] = p, current
        config.post_grad_custom_post_pass = p
        return p

    def uninstall() -> None:
        """Restores the post-grad pass that ``install()`` found."""
        import torch._inductor.config as config

        if "pass" in _installed and config.post_grad_custom_post_pass is _installed["pass"]:
            config.post_grad_custom_post_pass = _installed["previous"]
        _installed.clear()

    def backend(gm: "torch.fx.GraphModule", example_inputs: List[Any], **kwargs: Any):
        """A ``torch.compile`` backend: Inductor with the pass (for this model
        only; a pass installed in Inductor's config runs after ours)::

            model = torch.compile(model, backend=bqjit.fusion.backend)
        """
        import torch._inductor.config as config
        from torch._inductor.compile_fx import compile_fx

        current = config.post_grad_custom_post_pass
        p = current if isinstance(current, FusionPass) else FusionPass(then=current)
        return compile_fx(gm, example_inputs, config_patches={"post_grad_custom_post_pass": p}, **kwargs)

else:  # pragma: no cover - exercised only without torch

    def _needs_torch(*args: Any, **kwargs: Any):
        raise RuntimeError("bqjit.fusion needs PyTorch, which could not be imported")

    install = uninstall = backend = rewrite = _needs_torch  # type: ignore[assignment]
    FusionPass = None  # type: ignore[assignment,misc]
