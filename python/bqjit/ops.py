"""PyTorch front end: ``bqjit.silu_mul_quant``, ``bqjit.silu_mul_quant_masked``
and the ``torch.ops.bqjit`` custom ops.

Importing this module needs no PyTorch: without it, the functions raise a
RuntimeError saying so. With PyTorch, the ops come from the C++ op library
``libbqjit_torch.so`` (argument checks, allocation, the current stream and a
table of loaded kernels in C++, no JSON and no Python per call), built with
the package where torch was importable at build time. Where it is missing or
does not load (a torch other than the one it was built against), the same ops
are defined in Python over the ctypes binding, with one warning; they give the
same results, errors and schemas, at a higher cost per call. ``OPS_BACKEND``
says which is in use ("cpp" or "python"), and ``BQJIT_TORCH_OPS=python``
chooses the Python ones.

The ops (``out_dtype`` is a string there, "fp8_e4m3", "fp8_e5m2", "int8" or
"fp4_e2m1";
``launch`` is None or a JSON object string), usable under
``torch.compile(fullgraph=True)`` (this module holds their fake
implementations) and in CUDA graph capture:

* ``silu_mul_quant(x, group_size, out_dtype, scale_layout, ue8m0, scale_ub,
  launch, fields=None, global_scale=None, pdl=None) -> (q, scales)``
* ``silu_mul_quant_out(x, q, scales, group_size, ...) -> ()``: writes q, scales
* ``silu_mul_quant_masked(x, masked_m, group_size, ...) -> (q, scales)``: a
  MoE batch x [E, T_max, 2H] with masked_m [E] int32 live rows per expert
* ``silu_mul_quant_masked_out(x, masked_m, q, scales, group_size, ...) -> ()``

Scale tensors (T rows, NG = H / G groups, T4 = ceil(T / 4) * 4, NW = ceil(NG / 4)):

============== ======= ================== =========== ==========================
layout         dtype   shape              strides     storage
============== ======= ================== =========== ==========================
row            float32 [..., NG]          contiguous  T * NG floats
col            float32 [T, NG]            (1, T)      NG * T floats
col_tma        float32 [T, NG]            (1, T4)     NG * T4 floats, pad rows 0
ue8m0_packed   int32   [T, NW]            (1, T4)     NW * T4 words, byte j % 4
                                                      of word (j/4, t) = biased
                                                      exponent of the scale
bytes          uint8   [..., NG]          contiguous  T * NG bytes: E8M0, or
                                                      E4M3 for NVFP4
swizzled_128x4 uint8   [Tp, NGp]          contiguous  Tp * NGp bytes (Tp =
                                                      ceil(T/128)*128, NGp =
                                                      ceil(NG/4)*4) in 128x4
                                                      tiles, padding 0
============== ======= ================== =========== ==========================

fp4_e2m1 (docs/contract.md section 8) packs two values a byte, element 2k in the low
nibble: q is ``[..., H // 2]`` of ``torch.float4_e2m1fn_x2`` (uint8 where
torch lacks that type). It is NVFP4 at group_size 16 without ue8m0 (E4M3
scale bytes, and the ops' ``global_scale``, a float32 CUDA tensor of one
element, is required) or MXFP4 at group_size 32 with ue8m0.

The column layouts and swizzled_128x4 take 2-D ``x`` only (a flat token dimension). A masked
batch has these per expert with T = T_max: shape [E, T_max, NG] (or NW), the
expert's block of ``storage`` elements after the previous one's.
"""

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Optional, Tuple

from . import _lib

try:  # PyTorch is optional: the ctypes layer works without it.
    import torch
except ImportError as _e:  # pragma: no cover - exercised only without torch
    torch = None  # type: ignore[assignment]
    _TORCH_IMPORT_ERROR: Optional[BaseException] = _e
else:
    _TORCH_IMPORT_ERROR = None

__all__ = [
    "silu_mul_quant",
    "silu_mul_quant_masked",
    "LAYOUTS",
    "OUT_DTYPES",
    "scale_shape",
    "HAVE_TORCH",
    "OPS_BACKEND",
    "ACTIVATIONS",
]

HAVE_TORCH = torch is not None
LAYOUTS = ("row", "col", "col_tma", "ue8m0_packed", "bytes", "swizzled_128x4")
_LAYOUT_ALIASES = {"e8m0": "bytes"}
ACTIVATIONS = ("silu", "swiglu", "gelu_tanh", "gelu")
GATE_UPS = ("split", "interleaved")
SCALE_ROUNDINGS = ("ceil", "floor")
OUT_DTYPES = ("fp8_e4m3", "fp8_e5m2", "int8", "fp4_e2m1")
MIN_GROUP, MAX_GROUP, MAX_HIDDEN = 16, 1024, 65536
_LAUNCH_KEYS = ("threads_per_group", "vec_width", "groups_per_block")
_LAUNCH_OPTIONAL = ("min_blocks_per_sm",)  # derived by the planner when left out

#: "cpp" (the C++ op library), "python" (the ctypes fallback) or None (no torch).
OPS_BACKEND: Optional[str] = None
#: Why the C++ op library is not in use (None when it is).
OPS_FALLBACK_REASON: Optional[str] = None


# ---- checks that need no tensor (run in the wrappers; constants under dynamo) --


def _check_static(group_size: Any, out_dtype: str, scale_layout: Any, ue8m0: Any) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int, got {group_size!r} ({type(group_size).__name__})")
    if not MIN_GROUP <= group_size <= MAX_GROUP:
        raise ValueError(f"group_size = {group_size}: must be in {MIN_GROUP}..{MAX_GROUP}")
    if not isinstance(scale_layout, str) or (scale_layout not in LAYOUTS and scale_layout not in _LAYOUT_ALIASES):
        raise ValueError(f"scale_layout = {scale_layout!r}: must be one of {', '.join(LAYOUTS)} (alias e8m0)")
    if not isinstance(ue8m0, bool):
        raise TypeError(f"ue8m0 must be a bool, got {ue8m0!r}")
    if out_dtype not in OUT_DTYPES:  # internal names; the wrapper maps torch dtypes
        raise ValueError(f"out_dtype = {out_dtype!r}: must be one of {', '.join(OUT_DTYPES)}")
    layout = _LAYOUT_ALIASES.get(scale_layout, scale_layout)
    nvfp4 = out_dtype == "fp4_e2m1" and not ue8m0
    if out_dtype == "fp4_e2m1":  # docs/contract.md section 8
        if group_size == 16 and ue8m0:
            raise ValueError(
                "out_dtype = 'fp4_e2m1' with group_size = 16 is NVFP4, whose scales are E4M3: ue8m0 must be "
                "False (MXFP4 is group_size = 32 with ue8m0 = True)"
            )
        if group_size == 32 and not ue8m0:
            raise ValueError(
                "out_dtype = 'fp4_e2m1' with group_size = 32 is MXFP4, whose scales are E8M0: ue8m0 must be "
                "True (NVFP4 is group_size = 16 with ue8m0 = False)"
            )
        if group_size not in (16, 32):
            raise ValueError(
                f"group_size = {group_size}: fp4_e2m1 needs G = 16 (NVFP4) or G = 32 with ue8m0 (MXFP4)"
            )
        if nvfp4 and layout not in ("bytes", "swizzled_128x4"):
            raise ValueError(
                f"scale_layout = {scale_layout!r}: NVFP4 (fp4_e2m1, group_size 16) stores E4M3 scale bytes: "
                "must be 'bytes' or 'swizzled_128x4'"
            )
    if scale_layout == "ue8m0_packed" and not ue8m0:
        raise ValueError(
            "scale_layout = 'ue8m0_packed' needs ue8m0 = True (got ue8m0 = False): "
            "packed scales are the exponents of power-of-two scales"
        )
    if layout == "bytes" and not ue8m0 and not nvfp4:
        raise ValueError(
            "scale_layout = 'bytes' needs ue8m0 = True (got ue8m0 = False): its bytes "
            "are the E8M0 exponents of power-of-two scales"
        )
    if layout == "swizzled_128x4" and not ue8m0 and not nvfp4:
        raise ValueError(
            "scale_layout = 'swizzled_128x4' needs ue8m0 = True (got ue8m0 = False): its bytes are E8M0 "
            "exponents (or NVFP4's E4M3); fp32 scales have no 128x4 layout"
        )


def _launch_json(launch: Any) -> Optional[str]:
    """None, a dict {threads_per_group, vec_width, groups_per_block[, min_blocks_per_sm]} or its JSON."""
    if launch is None:
        return None
    if isinstance(launch, str):
        try:
            launch = json.loads(launch)
        except ValueError as e:
            raise ValueError(f"launch = {launch!r}: not valid JSON ({e})") from None
    if (
        not isinstance(launch, dict)
        or not set(_LAUNCH_KEYS) <= set(launch)
        or not set(launch) <= set(_LAUNCH_KEYS + _LAUNCH_OPTIONAL)
    ):
        raise ValueError(
            f"launch = {launch!r}: must be None or a dict with exactly the keys {', '.join(_LAUNCH_KEYS)}"
            f" (and optionally {', '.join(_LAUNCH_OPTIONAL)})"
        )
    keys = [k for k in _LAUNCH_KEYS + _LAUNCH_OPTIONAL if k in launch]
    for k in keys:
        v = launch[k]
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"launch[{k!r}] = {v!r}: must be an int")
    return "{" + ",".join(f'"{k}":{int(launch[k])}' for k in keys) + "}"


def _number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a number or None, got {v!r} ({type(v).__name__})")
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} = {v!r}: must be a finite number")
    return float(v)


def _fields_json(
    activation: Any, alpha: Any, beta: Any, limit: Any, gate_up: Any, scale_rounding: Any, min_scale: Any,
    out_dtype: str, ue8m0: bool
) -> Optional[str]:
    """The spec fields beyond silu's (docs/contract.md sections 6 and 7, and
    min_scale) as the ops' `fields` JSON object, None for the defaults. Checks
    what needs no tensor, naming the argument, its value and the rule; the
    library checks the rest (and rounds the parameters to fp32)."""
    fields = {}
    if activation is not None:
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise ValueError(f"activation = {activation!r}: must be one of {', '.join(ACTIVATIONS)}")
        if activation != "silu":
            fields["activation"] = activation
    for name, v in (("alpha", alpha), ("beta", beta), ("limit", limit)):
        if v is None:
            continue
        v = _number(name, v)
        if activation != "swiglu":
            raise ValueError(f"{name} = {v!r}: applies only to activation 'swiglu' (activation is {activation or 'silu'!r})")
        if name == "limit" and not v > 0:
            raise ValueError(f"limit = {v!r}: must be > 0 (leave it None for no clamp)")
        fields[name] = v
    if gate_up is not None:
        if not isinstance(gate_up, str) or gate_up not in GATE_UPS:
            raise ValueError(f"gate_up = {gate_up!r}: must be one of {', '.join(GATE_UPS)}")
        if gate_up != "split":
            fields["gate_up"] = gate_up
    if scale_rounding is not None:
        if not isinstance(scale_rounding, str) or scale_rounding not in SCALE_ROUNDINGS:
            raise ValueError(f"scale_rounding = {scale_rounding!r}: must be one of {', '.join(SCALE_ROUNDINGS)}")
        if scale_rounding == "floor":
            if not ue8m0:
                raise ValueError("scale_rounding = 'floor' needs ue8m0 = True (it rounds power-of-two scales)")
            if out_dtype == "int8":
                raise ValueError("scale_rounding = 'floor' needs a floating-point out_dtype (got int8)")
            fields["scale_rounding"] = "floor"
    if min_scale is not None:
        v = _number("min_scale", min_scale)
        if not v > 0:
            raise ValueError(f"min_scale = {v!r}: must be > 0 (leave it None for MIN_SCALE of the out_dtype)")
        if fields.get("scale_rounding") == "floor":
            raise ValueError(
                f"min_scale = {v!r}: applies only to scale_rounding 'ceil' (the OCP MX floor rule has no minimum scale)"
            )
        fields["min_scale"] = v
    if not fields:
        return None
    # By hand, not json.dumps: dynamo traces this under torch.compile (a call
    # into json's C encoder would break the graph). Keys in sorted order,
    # floats as repr (exact), strings from the fixed sets above.
    items = []
    for k in sorted(fields):
        v = fields[k]
        items.append(f'"{k}":"{v}"' if isinstance(v, str) else f'"{k}":{v!r}')
    return "{" + ",".join(items) + "}"


def _check_fields_text(fields: Any) -> None:
    """The ops' `fields` argument: None or a JSON object (what the C++ op checks)."""
    if fields is None:
        return
    if not isinstance(fields, str) or len(fields) < 2 or fields[0] != "{" or fields[-1] != "}":
        raise ValueError(f"fields = {fields!r}: must be None or a JSON object of spec fields")


def _check_pdl(pdl: Any) -> None:
    """The ``pdl`` argument: None (the library's default) or a bool."""
    if pdl is not None and not isinstance(pdl, bool):
        raise TypeError(
            f"pdl = {pdl!r} ({type(pdl).__name__}): must be None (the library's default, BQJIT_PDL), True or False"
        )


def scale_shape(
    layout: str, lead: Tuple[int, ...], hidden: int, group_size: int, experts: Optional[int] = None
) -> Tuple[Tuple[int, ...], Optional[Tuple[int, ...]], int]:
    """(shape, strides or None for contiguous, storage elements) of the scale
    tensor for ``x`` of leading shape ``lead`` (T = prod(lead)); with
    ``experts`` = E, of a masked batch whose ``lead`` is (E, T_max)."""
    ng = hidden // group_size
    layout = _LAYOUT_ALIASES.get(layout, layout)
    if experts is not None:
        t = lead[1]
        shape, strides, storage = scale_shape(layout, (t,), hidden, group_size)
        if strides is None:  # row, bytes, swizzled_128x4: one expert's 2-D block is contiguous
            strides = (shape[-1], 1)
        return (experts,) + tuple(shape), (storage,) + tuple(strides), experts * storage
    t = 1
    for d in lead:
        t *= d
    if layout in ("row", "bytes"):
        return tuple(lead) + (ng,), None, t * ng
    if layout == "swizzled_128x4":
        tp, ngp = (t + 127) // 128 * 128, (ng + 3) // 4 * 4
        return (tp, ngp), None, tp * ngp
    t4 = (t + 3) // 4 * 4
    if layout == "col":
        return (t, ng), (1, t), ng * t
    if layout == "col_tma":
        return (t, ng), (1, t4), ng * t4
    nw = (ng + 3) // 4
    return (t, nw), (1, t4), nw * t4


def _not_available(*args: Any, **kwargs: Any):
    raise RuntimeError(f"bqjit's PyTorch ops need PyTorch, which could not be imported: {_TORCH_IMPORT_ERROR}")


_BQJIT_ERROR = re.compile(r"\[bqjit:(\d+)\] ([^:]*): (.*)", re.S)


def _as_bqjit_error(e: RuntimeError) -> RuntimeError:
    """The C++ ops' library errors ("[bqjit:<code>] <function>: ...") as the
    BqjitError the ctypes path raises; other errors unchanged."""
    m = _BQJIT_ERROR.search(str(e))
    if m is None:
        return e
    message = m.group(3)
    name, _, rest = message.partition(": ")
    if name in _lib.STATUS_NAMES.values():
        message = rest
    return _lib.BqjitError(int(m.group(1)), message, m.group(2))


def _op_library_candidates():
    """(path, where) pairs in the order tried, as _lib does for libbqjit.so."""
    env = os.environ.get("BQJIT_TORCH_LIBRARY")
    if env:
        return [(env, "BQJIT_TORCH_LIBRARY")]
    here = Path(__file__).resolve().parent
    return [
        (str(here / "libbqjit_torch.so"), "the package directory"),
        (str(here.parent.parent / "build" / "python" / "csrc" / "libbqjit_torch.so"), "the source tree's build/"),
    ]


def _load_op_library() -> Optional[str]:
    """Loads libbqjit_torch.so into torch.ops; returns None, or why not."""
    if os.environ.get("BQJIT_TORCH_OPS", "") == "python":
        return "BQJIT_TORCH_OPS=python"
    tried = []
    for path, where in _op_library_candidates():
        if not os.path.exists(path):
            tried.append(f"{path} ({where}): not found")
            continue
        try:
            torch.ops.load_library(path)
            return None
        except (OSError, RuntimeError) as e:
            tried.append(f"{path} ({where}): {e}")
    return "libbqjit_torch.so did not load: " + "; ".join(tried)


if torch is not None:
    Tensor = torch.Tensor

    _IN_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    #: torch's packed e2m1 pair type, where torch has it (2.8 and later); else q is uint8.
    FP4_DTYPE = getattr(torch, "float4_e2m1fn_x2", None)
    _OUT_TORCH = {
        "fp8_e4m3": torch.float8_e4m3fn,
        "fp8_e5m2": torch.float8_e5m2,
        "int8": torch.int8,
        "fp4_e2m1": FP4_DTYPE if FP4_DTYPE is not None else torch.uint8,
    }

    def _out_dtype_name(out_dtype: Any) -> str:
        # Comparisons, not a dict lookup keyed by dtype: dynamo traces them.
        if out_dtype is torch.float8_e4m3fn or out_dtype == "fp8_e4m3":
            return "fp8_e4m3"
        if out_dtype is torch.float8_e5m2 or out_dtype == "fp8_e5m2":
            return "fp8_e5m2"
        if out_dtype is torch.int8 or out_dtype == "int8":
            return "int8"
        if (FP4_DTYPE is not None and out_dtype is FP4_DTYPE) or out_dtype == "fp4_e2m1":
            return "fp4_e2m1"
        raise TypeError(
            f"out_dtype = {out_dtype!r}: must be torch.float8_e4m3fn, torch.float8_e5m2 or torch.int8 "
            "(or 'fp8_e4m3', 'fp8_e5m2', 'int8'), or torch.float4_e2m1fn_x2 / 'fp4_e2m1'"
        )

    def _q_columns(h: int, out_dtype: str) -> int:
        """Last dim of q: H, or H // 2 bytes of two e2m1 values."""
        return h // 2 if out_dtype == "fp4_e2m1" else h

    # ---- tensor checks (run by the Python ops and by the fakes; the C++ ops
    # ---- make the same checks with the same messages) ------------------------

    def _scale_dtype(layout: str):
        layout = _LAYOUT_ALIASES.get(layout, layout)
        if layout == "ue8m0_packed":
            return torch.int32
        return torch.uint8 if layout in ("bytes", "swizzled_128x4") else torch.float32

    def _rows(x: Tensor, sizes, strides) -> Tuple[int, int]:
        """(T, ldx): leading dims of (sizes, strides) flattened to T rows of pitch ldx."""
        h2 = sizes[-1]
        lead = sizes[:-1]
        t = 1
        for d in lead:
            t *= d
        # Walk the leading dims from the inside out; size-1 dims carry no stride.
        ldx = None
        expect = None  # stride the next outer dim must have
        for i in range(len(lead) - 1, -1, -1):
            size, stride = lead[i], strides[i]
            if size == 1:
                continue
            if ldx is None:
                ldx = stride
            elif stride != expect:
                raise ValueError(
                    f"x has shape {tuple(sizes)} and strides {tuple(strides)}: its leading dims "
                    "cannot be flattened to rows of one stride (need stride[i] == stride[i+1] * "
                    "size[i+1] for the dims before the last); call x.contiguous() or reshape it"
                )
            expect = stride * size
        if ldx is None:  # at most one row: its pitch does not matter
            ldx = h2
        elif ldx < h2:
            raise ValueError(
                f"x has row stride {ldx} < last dim {h2} (shape {tuple(sizes)}, strides "
                f"{tuple(strides)}): rows must not overlap"
            )
        return t, ldx

    def _check_scalar_tensor(name: str, v: Any, x: Tensor) -> None:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be None or a torch.Tensor, got {type(v).__name__}")
        if v.dtype != torch.float32 or v.numel() != 1 or v.device != x.device:
            raise ValueError(
                f"{name} must be a float32 tensor with one element on x's device ({x.device}), "
                f"got dtype {v.dtype}, {v.numel()} elements, device {v.device}"
            )

    def _check(
        x: Any, group_size: int, out_dtype: str, scale_layout: str, scale_ub: Any, masked: bool = False,
        ue8m0: bool = False, global_scale: Any = None,
    ) -> Tuple[int, int, int]:
        """Validates x, scale_ub and global_scale; returns (T, H, ldx) (per expert when masked)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cuda":
            raise ValueError(f"x must be a CUDA tensor, got a tensor on device '{x.device}'")
        if x.dtype not in _IN_NAMES:
            raise TypeError(f"x.dtype = {x.dtype}: must be torch.bfloat16, torch.float16 or torch.float32")
        if masked and x.dim() != 3:
            raise ValueError(f"x must be [E, T_max, 2H] for a masked batch, got shape {tuple(x.shape)}")
        sizes, strides = tuple(x.shape), tuple(x.stride())
        if masked:
            sizes, strides = sizes[1:], strides[1:]
        if len(sizes) < 1:
            raise ValueError("x must have at least one dimension [..., 2H], got a 0-d tensor")
        h2 = sizes[-1]
        if h2 % 2 != 0 or h2 == 0:
            raise ValueError(f"x.shape[-1] = {h2}: must be 2H, even and > 0 (gate then up)")
        h = h2 // 2
        if h > MAX_HIDDEN:
            raise ValueError(f"x.shape[-1] = {h2}: H = {h} must be <= {MAX_HIDDEN}")
        if strides[-1] != 1:
            raise ValueError(
                f"x.stride(-1) = {strides[-1]}: the last dim of x must be contiguous (stride 1); "
                "rows may be strided"
            )
        if h % group_size != 0:
            raise ValueError(f"group_size = {group_size}: must divide H = {h} (x.shape[-1] = {h2})")
        if _LAYOUT_ALIASES.get(scale_layout, scale_layout) not in ("row", "bytes") and len(sizes) != 2:
            raise ValueError(
                f"scale_layout = {scale_layout!r} needs a 2-D x [T, 2H], got shape {tuple(sizes)}; "
                "flatten the leading dims first (x.view(-1, x.shape[-1]))"
            )
        if scale_ub is not None:
            _check_scalar_tensor("scale_ub", scale_ub, x)
        nvfp4 = out_dtype == "fp4_e2m1" and not ue8m0
        if nvfp4 and scale_ub is not None:
            raise ValueError(
                "scale_ub must be None for NVFP4 (out_dtype 'fp4_e2m1', group_size 16): its block scales are "
                "bounded by 448 and set by global_scale"
            )
        if nvfp4 and global_scale is None:
            raise ValueError(
                "global_scale is None: NVFP4 (out_dtype 'fp4_e2m1', group_size 16) needs a float32 tensor with "
                "one element on x's device (448 * 6 / amax of the tensor, by vLLM's convention)"
            )
        if not nvfp4 and global_scale is not None:
            raise ValueError("global_scale applies only to NVFP4 (out_dtype 'fp4_e2m1', group_size 16)")
        if global_scale is not None:
            _check_scalar_tensor("global_scale", global_scale, x)
        t, ldx = _rows(x, sizes, strides)
        return t, h, ldx

    def _check_masked(x: Tensor, masked_m: Any) -> Optional[int]:
        """Checks masked_m and the expert stride; the row pitch when T_max is 1 (else None)."""
        if not isinstance(masked_m, torch.Tensor):
            raise TypeError(f"masked_m must be a torch.Tensor, got {type(masked_m).__name__}")
        if masked_m.device != x.device:
            raise ValueError(f"masked_m is on device '{masked_m.device}', x on '{x.device}': must be the same device")
        if masked_m.dtype != torch.int32:
            raise TypeError(f"masked_m.dtype = {masked_m.dtype}: must be torch.int32")
        e, t = x.shape[0], x.shape[1]
        if masked_m.dim() != 1 or masked_m.shape[0] != e:
            raise ValueError(f"masked_m.shape = {tuple(masked_m.shape)}: must be ({e},) (one count per expert of x)")
        if e > 1 and masked_m.stride(0) != 1:
            raise ValueError(f"masked_m must be contiguous, got stride {masked_m.stride(0)}")
        if e > 1 and t > 1 and x.stride(0) != t * x.stride(1):
            raise ValueError(
                f"x.stride(0) = {x.stride(0)}: must be T_max * x.stride(1) = {t * x.stride(1)} (experts back to back)"
            )
        if t == 1 and e > 1:
            if x.stride(0) < x.shape[2]:
                raise ValueError(
                    f"x has expert stride {x.stride(0)} < last dim {x.shape[2]} (shape {tuple(x.shape)}, "
                    f"strides {tuple(x.stride())}): rows must not overlap"
                )
            return x.stride(0)
        return None

    def _check_outputs(
        x: Tensor, q: Any, scales: Any, h: int, group_size: int, out_dtype: str, layout: str, real: bool,
        masked: bool = False,
    ) -> None:
        qdt = _OUT_TORCH[out_dtype]
        want_q = tuple(x.shape[:-1]) + (_q_columns(h, out_dtype),)
        if not isinstance(q, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(q).__name__}")
        if not isinstance(scales, torch.Tensor):
            raise TypeError(f"scales_out must be a torch.Tensor, got {type(scales).__name__}")
        if q.device != x.device:
            raise ValueError(f"out is on device '{q.device}', x on '{x.device}': must be the same device")
        if q.dtype != qdt:
            raise TypeError(f"out.dtype = {q.dtype}: must be {qdt} (the out_dtype)")
        if tuple(q.shape) != want_q:
            what = "(x.shape[:-1] + (H // 2,): two e2m1 values a byte)" if out_dtype == "fp4_e2m1" else \
                "(x.shape[:-1] + (H,))"
            raise ValueError(f"out.shape = {tuple(q.shape)}: must be {want_q} {what}")
        if not q.is_contiguous():
            raise ValueError(f"out must be contiguous, got strides {tuple(q.stride())}")
        shape, strides, storage = scale_shape(
            layout, tuple(x.shape[:-1]), h, group_size, x.shape[0] if masked else None
        )
        sdt = _scale_dtype(layout)
        if scales.device != x.device:
            raise ValueError(f"scales_out is on device '{scales.device}', x on '{x.device}': must be the same device")
        if scales.dtype != sdt:
            raise TypeError(f"scales_out.dtype = {scales.dtype}: must be {sdt} for scale_layout {layout!r}")
        if tuple(scales.shape) != shape:
            raise ValueError(f"scales_out.shape = {tuple(scales.shape)}: must be {shape} for scale_layout {layout!r}")
        if strides is None:
            if not scales.is_contiguous():
                raise ValueError(
                    f"scales_out must be contiguous for scale_layout {_LAYOUT_ALIASES.get(layout, layout)!r}, "
                    f"got strides {tuple(scales.stride())}"
                )
            return
        for d in range(len(shape)):
            if shape[d] > 1 and scales.stride(d) != strides[d]:
                raise ValueError(
                    f"scales_out.stride() = {tuple(scales.stride())}: must be {strides} for scale_layout "
                    f"{layout!r} (a {shape} view of a buffer of {storage} elements)"
                )
        if real:
            room = scales.untyped_storage().nbytes() // scales.element_size() - scales.storage_offset()
            if room < storage:
                raise ValueError(
                    f"scales_out has room for {room} elements from its offset: scale_layout {layout!r} "
                    f"writes {storage} (padding rows included); allocate "
                    f"torch.empty({storage}).as_strided({shape}, {strides})"
                )

    def _alloc(x: Tensor, h: int, group_size: int, out_dtype: str, layout: str, masked: bool = False) -> Tuple[Tensor, Tensor]:
        lead = tuple(x.shape[:-1])
        q = torch.empty(lead + (_q_columns(h, out_dtype),), dtype=_OUT_TORCH[out_dtype], device=x.device)
        shape, strides, storage = scale_shape(layout, lead, h, group_size, x.shape[0] if masked else None)
        sdt = _scale_dtype(layout)
        if strides is None:
            s = torch.empty(shape, dtype=sdt, device=x.device)
        else:
            # The kernel writes all of storage (padding rows too), which is more
            # than empty_strided(shape, strides) would hold.
            s = torch.empty(storage, dtype=sdt, device=x.device).as_strided(shape, strides)
        return q, s

    # ---- the ops: C++, or Python over ctypes --------------------------------

    OPS_FALLBACK_REASON = _load_op_library()
    if OPS_FALLBACK_REASON is None:
        OPS_BACKEND = "cpp"
    else:
        OPS_BACKEND = "python"
        if OPS_FALLBACK_REASON != "BQJIT_TORCH_OPS=python":
            warnings.warn(
                f"bqjit: using the Python ops (slower per call): {OPS_FALLBACK_REASON}", RuntimeWarning, stacklevel=2
            )
        from . import _py_ops  # noqa: F401  (defines torch.ops.bqjit.* in Python)

    # ---- fake implementations, for either backend -----------------------------

    @torch.library.register_fake("bqjit::silu_mul_quant")
    def _silu_mul_quant_fake(x, group_size, out_dtype, scale_layout, ue8m0, scale_ub, launch, fields=None,
                             global_scale=None, pdl=None):
        _check_static(group_size, out_dtype, scale_layout, ue8m0)
        _check_fields_text(fields)
        _, h, _ = _check(x, group_size, out_dtype, scale_layout, scale_ub, False, ue8m0, global_scale)
        return _alloc(x, h, group_size, out_dtype, scale_layout)

    @torch.library.register_fake("bqjit::silu_mul_quant_out")
    def _silu_mul_quant_out_fake(x, q, scales, group_size, out_dtype, scale_layout, ue8m0, scale_ub, launch,
                                 fields=None, global_scale=None, pdl=None):
        _check_static(group_size, out_dtype, scale_layout, ue8m0)
        _check_fields_text(fields)
        _, h, _ = _check(x, group_size, out_dtype, scale_layout, scale_ub, False, ue8m0, global_scale)
        _check_outputs(x, q, scales, h, group_size, out_dtype, scale_layout, real=False)
        return None

    @torch.library.register_fake("bqjit::silu_mul_quant_masked")
    def _silu_mul_quant_masked_fake(x, masked_m, group_size, out_dtype, scale_layout, ue8m0, scale_ub, launch,
                                    fields=None, global_scale=None, pdl=None):
        _check_static(group_size, out_dtype, scale_layout, ue8m0)
        _check_fields_text(fields)
        _, h, _ = _check(x, group_size, out_dtype, scale_layout, scale_ub, True, ue8m0, global_scale)
        _check_masked(x, masked_m)
        return _alloc(x, h, group_size, out_dtype, scale_layout, masked=True)

    @torch.library.register_fake("bqjit::silu_mul_quant_masked_out")
    def _silu_mul_quant_masked_out_fake(
        x, masked_m, q, scales, group_size, out_dtype, scale_layout, ue8m0, scale_ub, launch, fields=None,
        global_scale=None, pdl=None,
    ):
        _check_static(group_size, out_dtype, scale_layout, ue8m0)
        _check_fields_text(fields)
        _, h, _ = _check(x, group_size, out_dtype, scale_layout, scale_ub, True, ue8m0, global_scale)
        _check_masked(x, masked_m)
        _check_outputs(x, q, scales, h, group_size, out_dtype, scale_layout, real=False, masked=True)
        return None

    _OP = torch.ops.bqjit.silu_mul_quant.default
    _OP_OUT = torch.ops.bqjit.silu_mul_quant_out.default
    _OP_MASKED = torch.ops.bqjit.silu_mul_quant_masked.default
    _OP_MASKED_OUT = torch.ops.bqjit.silu_mul_quant_masked_out.default
    # What OpOverload.__call__ calls: one Python frame less per eager call.
    _RAW_OP = getattr(_OP, "_op", _OP)
    _RAW_OP_OUT = getattr(_OP_OUT, "_op", _OP_OUT)
    _RAW_OP_MASKED = getattr(_OP_MASKED, "_op", _OP_MASKED)
    _RAW_OP_MASKED_OUT = getattr(_OP_MASKED_OUT, "_op", _OP_MASKED_OUT)
    _is_compiling = torch.compiler.is_compiling
    _E4M3, _E5M2, _I8 = torch.float8_e4m3fn, torch.float8_e5m2, torch.int8

    def _static(group_size: Any, out_dtype: Any, scale_layout: Any, ue8m0: Any) -> str:
        name = _out_dtype_name(out_dtype)
        _check_static(group_size, name, scale_layout, ue8m0)
        return name

    def _check_wrapper_args(x: Any, scale_ub: Any, out: Any, scales_out: Any, global_scale: Any = None) -> None:
        # Type checks the op schema would otherwise report without naming the rule.
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if global_scale is not None and not isinstance(global_scale, torch.Tensor):
            raise TypeError(
                "global_scale must be None or a float32 CUDA tensor with one element, got "
                f"{type(global_scale).__name__}"
            )
        if scale_ub is not None and not isinstance(scale_ub, torch.Tensor):
            raise TypeError(
                f"scale_ub must be None or a float32 CUDA tensor with one element, got {type(scale_ub).__name__}"
            )
        if out is not None and not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be None or a torch.Tensor, got {type(out).__name__}")
        if scales_out is not None and not isinstance(scales_out, torch.Tensor):
            raise TypeError(f"scales_out must be None or a torch.Tensor, got {type(scales_out).__name__}")
        if (out is None) != (scales_out is None):
            missing = "out" if out is None else "scales_out"
            raise ValueError(f"{missing} is None: out and scales_out must be given together")

    def _checked(x, masked_m, group_size, out_dtype, scale_layout, ue8m0, scale_ub, out, scales_out, launch,
                 act=(None, None, None, None, None, None, None), global_scale=None, pdl=None):
        """Every argument check of the wrappers, in Python (the traced path and
        the eager slow path): (out_dtype's name, launch as JSON, fields as JSON).
        `act`: (activation, alpha, beta, limit, gate_up, scale_rounding, min_scale)."""
        _check_wrapper_args(x, scale_ub, out, scales_out, global_scale)
        _check_pdl(pdl)
        if masked_m is not None and not isinstance(masked_m, torch.Tensor):
            raise TypeError(f"masked_m must be a torch.Tensor, got {type(masked_m).__name__}")
        name = _static(group_size, out_dtype, scale_layout, ue8m0)
        return name, _launch_json(launch), _fields_json(*act, name, ue8m0)

    def _checked_call(x, masked_m, group_size, out_dtype, scale_layout, ue8m0, scale_ub, out, scales_out, launch,
                      act, global_scale=None, pdl=None):
        """Both wrappers' path under tracing and for what the eager fast path
        leaves (launch overrides, activations, fp4, other types): every check in
        Python, then the op; eagerly, the library's errors as BqjitError."""
        name, launch_text, fields = _checked(x, masked_m, group_size, out_dtype, scale_layout, ue8m0, scale_ub, out,
                                             scales_out, launch, act, global_scale, pdl)
        lead = (x,) if masked_m is None else (x, masked_m)
        if out is None:
            op, args = (_OP if masked_m is None else _OP_MASKED), lead
        else:
            op, args = (_OP_OUT if masked_m is None else _OP_MASKED_OUT), lead + (out, scales_out)
        args = args + (group_size, name, scale_layout, ue8m0, scale_ub, launch_text, fields)
        if pdl is not None:
            args = args + (global_scale, pdl)
        elif global_scale is not None:
            args = args + (global_scale,)
        if _is_compiling():
            result = op(*args)
        else:
            try:
                result = op(*args)
            except RuntimeError as e:
                raise _as_bqjit_error(e) from None
        return result if out is None else (out, scales_out)

    def _explained(e, x, masked_m, group_size, out_dtype, scale_layout, ue8m0, scale_ub, out, scales_out,
                   global_scale=None):
        """The error of an eager call: the library's as a BqjitError; where the
        op's schema rejected an argument (a message that names no rule), the
        Python checks' error for it."""
        converted = _as_bqjit_error(e) if isinstance(e, RuntimeError) else e
        if converted is e:
            _checked(x, masked_m, group_size, out_dtype, scale_layout, ue8m0, scale_ub, out, scales_out, None,
                     global_scale=global_scale)
        return converted

    def _fast_name(out_dtype: Any) -> Optional[str]:
        # Identity tests: cheaper than hashing a dtype, and dynamo-free.
        if out_dtype is _E4M3:
            return "fp8_e4m3"
        if out_dtype is _E5M2:
            return "fp8_e5m2"
        if out_dtype is _I8:
            return "int8"
        return None

    # ---- the public functions -------------------------------------------------

    def silu_mul_quant(
        x: Tensor,
        group_size: int = 128,
        out_dtype: Any = torch.float8_e4m3fn,
        scale_layout: str = "row",
        ue8m0: bool = False,
        scale_ub: Optional[Tensor] = None,
        *,
        out: Optional[Tensor] = None,
        scales_out: Optional[Tensor] = None,
        launch: Any = None,
        activation: Optional[str] = None,
        alpha: Optional[float] = None,
        beta: Optional[float] = None,
        limit: Optional[float] = None,
        gate_up: Optional[str] = None,
        scale_rounding: Optional[str] = None,
        global_scale: Optional[Tensor] = None,
        min_scale: Optional[float] = None,
        pdl: Optional[bool] = None,
    ) -> Tuple[Tensor, Tensor]:
        """``y = act(gate) * up`` (``silu`` by default) quantized per group of ``group_size`` columns.

        Args:
            x: CUDA tensor ``[..., 2H]`` (bfloat16, float16 or float32): gate in
                ``x[..., :H]``, up in ``x[..., H:]``. The last dim must be
                contiguous; rows may be strided (a slice of a wider tensor), the
                leading dims must flatten to one row stride.
            group_size: G, in 16..1024, dividing H.
            out_dtype: ``torch.float8_e4m3fn``, ``torch.float8_e5m2``, ``torch.int8``
                or ``torch.float4_e2m1fn_x2`` (or "fp4_e2m1" where torch lacks it).
            scale_layout: "row", "col", "col_tma" or "ue8m0_packed" (the column
                layouts need 2-D ``x``); see the module docstring for shapes.
            ue8m0: power-of-two scales (required for "ue8m0_packed").
            scale_ub: None or a float32 CUDA tensor of one element on x's
                device: the upper bound of every scale.
            out, scales_out: write into these (both or neither) and return them;
                shapes, dtypes and strides as the returned tensors would have.
            launch: None (heuristic) or {"threads_per_group", "vec_width",
                "groups_per_block"} to override the launch shape.
            activation: None ("silu"), "swiglu", "gelu_tanh" or "gelu"
                (docs/contract.md section 6).
            alpha, beta, limit: swiglu's parameters (defaults 1, 0, no clamp):
                ``min(g, limit) * sigmoid(alpha * min(g, limit)) *
                (clamp(u, -limit, limit) + beta)``; gpt-oss uses 1.702, 1, 7.
            gate_up: None ("split": gate ``x[..., :H]``, up ``x[..., H:]``) or
                "interleaved" (gate ``x[..., 0::2]``, up ``x[..., 1::2]``).
            scale_rounding: None ("ceil") or "floor", the OCP MX rule for
                power-of-two scales (needs ``ue8m0`` and a floating-point
                output). MXFP8 is ``group_size=32, ue8m0=True,
                scale_rounding="floor"``, with ``scale_layout="bytes"`` for
                E8M0 bytes (uint8 ``[..., NG]``; ``.view(torch.float8_e8m0fnu)``
                gives torch's type) or ``"swizzled_128x4"`` for Blackwell's
                block-scaled GEMMs (uint8 ``[Tp, NGp]``, 128x4 tiles).
            global_scale: NVFP4's global scale (docs/contract.md section 8), a float32
                CUDA tensor of one element on x's device, by vLLM's convention
                ``448 * 6 / amax`` of the tensor; required for NVFP4
                (``out_dtype=torch.float4_e2m1fn_x2`` or "fp4_e2m1",
                ``group_size=16``, ``ue8m0=False``, layout "bytes" or
                "swizzled_128x4": E4M3 scale bytes), refused otherwise. MXFP4 is
                fp4_e2m1 with ``group_size=32, ue8m0=True``. fp4's q is
                ``[..., H // 2]``, two e2m1 values a byte (low nibble first).
            min_scale: None (MIN_SCALE of ``out_dtype``, docs/contract.md
                section 1) or the scale's floor, a number > 0 rounded to fp32
                (a normal fp32; not with ``scale_rounding="floor"``):
                ``s = max(amax / QMAX, min_scale)``. Code that floors amax at
                ``eps`` before dividing by QMAX gets the same scales with
                ``min_scale = fl32(eps / QMAX)`` (vLLM's 1e-10 and 448:
                2.2321428e-13); :mod:`bqjit.fusion` passes it so.
            pdl: None (the library's default: ``BQJIT_PDL``, on from sm_90
                unless 0), True or False: this launch is, or is not, a
                programmatic dependent launch (it may start while the previous
                kernel on the stream finishes, and waits for that kernel's
                writes before it touches memory). No effect on GPUs before
                sm_90. Anything else is a TypeError.

        Returns:
            ``(q, scales)``: q ``[..., H]`` of ``out_dtype``; scales per layout.

        Launches on ``torch.cuda.current_stream(x.device)``. The first call for
        a new specialization compiles with NVRTC (or loads from the disk
        cache): make it before capturing a CUDA graph.
        """
        if not _is_compiling():
            # Eager: the C++ op checks every value with the same messages;
            # Python only maps the dtype, and names the rule where the op's
            # schema rejects a type.
            name = _fast_name(out_dtype)
            if name is not None and launch is None and type(group_size) is int and type(ue8m0) is bool \
                    and (out is None) == (scales_out is None) and activation is None and alpha is None \
                    and beta is None and limit is None and gate_up is None and scale_rounding is None \
                    and global_scale is None and min_scale is None and (pdl is None or pdl is True or pdl is False):
                try:
                    # pdl None is left out: the call of the default stays as short as before.
                    if out is None:
                        if pdl is None:
                            return _RAW_OP(x, group_size, name, scale_layout, ue8m0, scale_ub, None)
                        return _RAW_OP(x, group_size, name, scale_layout, ue8m0, scale_ub, None, None, None, pdl)
                    if pdl is None:
                        _RAW_OP_OUT(x, out, scales_out, group_size, name, scale_layout, ue8m0, scale_ub, None)
                    else:
                        _RAW_OP_OUT(x, out, scales_out, group_size, name, scale_layout, ue8m0, scale_ub, None, None,
                                    None, pdl)
                    return out, scales_out
                except (TypeError, RuntimeError) as e:
                    raise _explained(e, x, None, group_size, out_dtype, scale_layout, ue8m0, scale_ub, out,
                                     scales_out) from None
        return _checked_call(x, None, group_size, out_dtype, scale_layout, ue8m0, scale_ub, out, scales_out, launch,
                             (activation, alpha, beta, limit, gate_up, scale_rounding, min_scale), global_scale, pdl)

    def silu_mul_quant_masked(
        x: Tensor,
        masked_m: Tensor,
        group_size: int = 128,
        out_dtype: Any = torch.float8_e4m3fn,
        scale_layout: str = "row",
        ue8m0: bool = False,
        scale_ub: Optional[Tensor] = None,
        *,
        out: Optional[Tensor] = None,
        scales_out: Optional[Tensor] = None,
        launch: Any = None,
        activation: Optional[str] = None,
        alpha: Optional[float] = None,
        beta: Optional[float] = None,
        limit: Optional[float] = None,
        gate_up: Optional[str] = None,
        scale_rounding: Optional[str] = None,
        global_scale: Optional[Tensor] = None,
        min_scale: Optional[float] = None,
        pdl: Optional[bool] = None,
    ) -> Tuple[Tensor, Tensor]:
        """:func:`silu_mul_quant` of a MoE batch: ``x [E, T_max, 2H]``, expert
        ``e`` with ``masked_m[e]`` live rows (int32 CUDA tensor ``[E]``, read
        by the kernel on the device: no synchronization, graph-capturable).

        Rows ``t >= masked_m[e]`` of ``q`` and ``scales`` are not written
        (with ``out``/``scales_out`` they keep what they held). Every scale
        layout applies per expert with T = T_max: scales ``[E, T_max, NG]``
        (``[E, T_max, NW]`` int32 for "ue8m0_packed"), see the module docstring.
        The other arguments are those of :func:`silu_mul_quant`.
        """
        if not _is_compiling():
            name = _fast_name(out_dtype)
            if name is not None and launch is None and type(group_size) is int and type(ue8m0) is bool \
                    and (out is None) == (scales_out is None) and activation is None and alpha is None \
                    and beta is None and limit is None and gate_up is None and scale_rounding is None \
                    and global_scale is None and min_scale is None and (pdl is None or pdl is True or pdl is False):
                try:
                    if out is None:
                        if pdl is None:
                            return _RAW_OP_MASKED(x, masked_m, group_size, name, scale_layout, ue8m0, scale_ub, None)
                        return _RAW_OP_MASKED(x, masked_m, group_size, name, scale_layout, ue8m0, scale_ub, None,
                                              None, None, pdl)
                    if pdl is None:
                        _RAW_OP_MASKED_OUT(x, masked_m, out, scales_out, group_size, name, scale_layout, ue8m0,
                                           scale_ub, None)
                    else:
                        _RAW_OP_MASKED_OUT(x, masked_m, out, scales_out, group_size, name, scale_layout, ue8m0,
                                           scale_ub, None, None, None, pdl)
                    return out, scales_out
                except (TypeError, RuntimeError) as e:
                    raise _explained(e, x, masked_m, group_size, out_dtype, scale_layout, ue8m0, scale_ub, out,
                                     scales_out) from None
        return _checked_call(x, masked_m, group_size, out_dtype, scale_layout, ue8m0, scale_ub, out, scales_out,
                             launch, (activation, alpha, beta, limit, gate_up, scale_rounding, min_scale), global_scale,
                             pdl)

else:
    silu_mul_quant = _not_available  # type: ignore[assignment]
    silu_mul_quant_masked = _not_available  # type: ignore[assignment]
