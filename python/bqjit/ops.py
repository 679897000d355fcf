"""PyTorch front end: ``bqjit.silu_mul_quant`` and the ``bqjit::`` custom ops.

Importing this module needs no PyTorch: without it, :func:`silu_mul_quant`
raises a RuntimeError saying so. With PyTorch, two custom ops are registered
at import (so they work under ``torch.compile(fullgraph=True)`` and in CUDA
graph capture):

* ``torch.ops.bqjit.silu_mul_quant(x, group_size, out_dtype, scale_layout,
  ue8m0, scale_ub, launch) -> (q, scales)``: functional.
* ``torch.ops.bqjit.silu_mul_quant_out(x, q, scales, group_size, out_dtype,
  scale_layout, ue8m0, scale_ub, launch) -> ()``: writes ``q`` and ``scales``.

``out_dtype`` is a string there ("fp8_e4m3", "fp8_e5m2", "int8") and
``launch`` is None or a JSON object string; the Python function below is the
friendly wrapper.

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
============== ======= ================== =========== ==========================

The column layouts take 2-D ``x`` only (a flat token dimension).
"""


import json
from typing import Any, Dict, Optional, Tuple

from . import _lib

try:  # PyTorch is optional: the ctypes layer works without it.
    import torch
except ImportError as _e:  # pragma: no cover - exercised only without torch
    torch = None  # type: ignore[assignment]
    _TORCH_IMPORT_ERROR: Optional[BaseException] = _e
else:
    _TORCH_IMPORT_ERROR = None

__all__ = ["silu_mul_quant", "LAYOUTS", "OUT_DTYPES", "scale_shape", "HAVE_TORCH"]

HAVE_TORCH = torch is not None
LAYOUTS = ("row", "col", "col_tma", "ue8m0_packed")
OUT_DTYPES = ("fp8_e4m3", "fp8_e5m2", "int8")
MIN_GROUP, MAX_GROUP, MAX_HIDDEN = 16, 1024, 65536
_LAUNCH_KEYS = ("threads_per_group", "vec_width", "groups_per_block")
_LAUNCH_OPTIONAL = ("min_blocks_per_sm",)  # derived by the planner when left out


# ---- checks that need no tensor (run in the wrapper; constants under dynamo) --


def _check_static(group_size: Any, out_dtype: str, scale_layout: Any, ue8m0: Any) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int, got {group_size!r} ({type(group_size).__name__})")
    if not MIN_GROUP <= group_size <= MAX_GROUP:
        raise ValueError(f"group_size = {group_size}: must be in {MIN_GROUP}..{MAX_GROUP}")
    if not isinstance(scale_layout, str) or scale_layout not in LAYOUTS:
        raise ValueError(f"scale_layout = {scale_layout!r}: must be one of {', '.join(LAYOUTS)}")
    if not isinstance(ue8m0, bool):
        raise TypeError(f"ue8m0 must be a bool, got {ue8m0!r}")
    if scale_layout == "ue8m0_packed" and not ue8m0:
        raise ValueError(
            "scale_layout = 'ue8m0_packed' needs ue8m0 = True (got ue8m0 = False): "
            "packed scales are the exponents of power-of-two scales"
        )
    if out_dtype not in OUT_DTYPES:  # internal names; the wrapper maps torch dtypes
        raise ValueError(f"out_dtype = {out_dtype!r}: must be one of {', '.join(OUT_DTYPES)}")


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


def scale_shape(layout: str, lead: Tuple[int, ...], hidden: int, group_size: int) -> Tuple[Tuple[int, ...], Optional[Tuple[int, ...]], int]:
    """(shape, strides or None for contiguous, storage elements) of the scale
    tensor for ``x`` of leading shape ``lead`` (T = prod(lead))."""
    ng = hidden // group_size
    t = 1
    for d in lead:
        t *= d
    if layout == "row":
        return tuple(lead) + (ng,), None, t * ng
    t4 = (t + 3) // 4 * 4
    if layout == "col":
        return (t, ng), (1, t), ng * t
    if layout == "col_tma":
        return (t, ng), (1, t4), ng * t4
    nw = (ng + 3) // 4
    return (t, nw), (1, t4), nw * t4


if torch is not None:
    Tensor = torch.Tensor

    _IN_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    _OUT_TORCH = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2, "int8": torch.int8}

    def _out_dtype_name(out_dtype: Any) -> str:
        # Comparisons, not a dict lookup keyed by dtype: dynamo traces them.
        if out_dtype is torch.float8_e4m3fn or out_dtype == "fp8_e4m3":
            return "fp8_e4m3"
        if out_dtype is torch.float8_e5m2 or out_dtype == "fp8_e5m2":
            return "fp8_e5m2"
        if out_dtype is torch.int8 or out_dtype == "int8":
            return "int8"
        raise TypeError(
            f"out_dtype = {out_dtype!r}: must be torch.float8_e4m3fn, torch.float8_e5m2 or torch.int8 "
            "(or 'fp8_e4m3', 'fp8_e5m2', 'int8')"
        )

    # ---- tensor checks (run by the real kernels and by the fakes) -------------

    def _rows(x: Tensor) -> Tuple[int, int]:
        """(T, ldx): leading dims flattened to T rows of pitch ldx elements."""
        h2 = x.shape[-1]
        lead = x.shape[:-1]
        t = 1
        for d in lead:
            t *= d
        # Walk the leading dims from the inside out; size-1 dims carry no stride.
        ldx = None
        expect = None  # stride the next outer dim must have
        for i in range(len(lead) - 1, -1, -1):
            size, stride = lead[i], x.stride(i)
            if size == 1:
                continue
            if ldx is None:
                ldx = stride
            elif stride != expect:
                raise ValueError(
                    f"x has shape {tuple(x.shape)} and strides {tuple(x.stride())}: its leading dims "
                    "cannot be flattened to rows of one stride (need stride[i] == stride[i+1] * "
                    "size[i+1] for the dims before the last); call x.contiguous() or reshape it"
                )
            expect = stride * size
        if ldx is None:  # at most one row: its pitch does not matter
            ldx = h2
        elif ldx < h2:
            raise ValueError(
                f"x has row stride {ldx} < last dim {h2} (shape {tuple(x.shape)}, strides "
                f"{tuple(x.stride())}): rows must not overlap"
            )
        return t, ldx

    def _check(x: Any, group_size: int, out_dtype: str, scale_layout: str, scale_ub: Any) -> Tuple[int, int, int]:
        """Validates x and scale_ub; returns (T, H, ldx)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cuda":
            raise ValueError(f"x must be a CUDA tensor, got a tensor on device '{x.device}'")
        if x.dtype not in _IN_NAMES:
            raise TypeError(f"x.dtype = {x.dtype}: must be torch.bfloat16, torch.float16 or torch.float32")
        if x.dim() < 1:
            raise ValueError("x must have at least one dimension [..., 2H], got a 0-d tensor")
        h2 = x.shape[-1]
        if h2 % 2 != 0 or h2 == 0:
            raise ValueError(f"x.shape[-1] = {h2}: must be 2H, even and > 0 (gate then up)")
        h = h2 // 2
        if h > MAX_HIDDEN:
            raise ValueError(f"x.shape[-1] = {h2}: H = {h} must be <= {MAX_HIDDEN}")
        if x.stride(-1) != 1:
            raise ValueError(
                f"x.stride(-1) = {x.stride(-1)}: the last dim of x must be contiguous (stride 1); "
                "rows may be strided"
            )
        if h % group_size != 0:
            raise ValueError(f"group_size = {group_size}: must divide H = {h} (x.shape[-1] = {h2})")
        if scale_layout != "row" and x.dim() != 2:
            raise ValueError(
                f"scale_layout = {scale_layout!r} needs a 2-D x [T, 2H], got shape {tuple(x.shape)}; "
                "flatten the leading dims first (x.view(-1, x.shape[-1]))"
            )
        if scale_ub is not None:
            if not isinstance(scale_ub, torch.Tensor):
                raise TypeError(f"scale_ub must be None or a torch.Tensor, got {type(scale_ub).__name__}")
            if scale_ub.dtype != torch.float32 or scale_ub.numel() != 1 or scale_ub.device != x.device:
                raise ValueError(
                    f"scale_ub must be a float32 tensor with one element on x's device ({x.device}), "
                    f"got dtype {scale_ub.dtype}, {scale_ub.numel()} elements, device {scale_ub.device}"
                )
        t, ldx = _rows(x)
        return t, h, ldx

    def _check_outputs(x: Tensor, q: Any, scales: Any, h: int, group_size: int, out_dtype: str, layout: str, real: bool) -> None:
        qdt = _OUT_TORCH[out_dtype]
        want_q = tuple(x.shape[:-1]) + (h,)
        if not isinstance(q, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(q).__name__}")
        if not isinstance(scales, torch.Tensor):
            raise TypeError(f"scales_out must be a torch.Tensor, got {type(scales).__name__}")
        if q.device != x.device:
            raise ValueError(f"out is on device '{q.device}', x on '{x.device}': must be the same device")
        if q.dtype != qdt:
            raise TypeError(f"out.dtype = {q.dtype}: must be {qdt} (the out_dtype)")
        if tuple(q.shape) != want_q:
            raise ValueError(f"out.shape = {tuple(q.shape)}: must be {want_q} (x.shape[:-1] + (H,))")
        if not q.is_contiguous():
            raise ValueError(f"out must be contiguous, got strides {tuple(q.stride())}")
        shape, strides, storage = scale_shape(layout, tuple(x.shape[:-1]), h, group_size)
        sdt = torch.int32 if layout == "ue8m0_packed" else torch.float32
        if scales.device != x.device:
            raise ValueError(f"scales_out is on device '{scales.device}', x on '{x.device}': must be the same device")
        if scales.dtype != sdt:
            raise TypeError(f"scales_out.dtype = {scales.dtype}: must be {sdt} for scale_layout {layout!r}")
        if tuple(scales.shape) != shape:
            raise ValueError(f"scales_out.shape = {tuple(scales.shape)}: must be {shape} for scale_layout {layout!r}")
        if strides is None:
            if not scales.is_contiguous():
                raise ValueError(
                    f"scales_out must be contiguous for scale_layout 'row', got strides {tuple(scales.stride())}"
                )
        else:
            for d in range(2):
                if shape[d] > 1 and scales.stride(d) != strides[d]:
                    raise ValueError(
                        f"scales_out.stride() = {tuple(scales.stride())}: must be {strides} for scale_layout "
                        f"{layout!r} (a [{shape[0]}, {shape[1]}] view of a buffer of {storage} elements)"
                    )
            if real:
                room = scales.untyped_storage().nbytes() // scales.element_size() - scales.storage_offset()
                if room < storage:
                    raise ValueError(
                        f"scales_out has room for {room} elements from its offset: scale_layout {layout!r} "
                        f"writes {storage} (padding rows included); allocate "
                        f"torch.empty({storage}).as_strided({shape}, {strides})"
                    )

    def _alloc(x: Tensor, h: int, group_size: int, out_dtype: str, layout: str) -> Tuple[Tensor, Tensor]:
        lead = tuple(x.shape[:-1])
        q = torch.empty(lead + (h,), dtype=_OUT_TORCH[out_dtype], device=x.device)
        shape, strides, storage = scale_shape(layout, lead, h, group_size)
        sdt = torch.int32 if layout == "ue8m0_packed" else torch.float32
        if strides is None:
            s = torch.empty(shape, dtype=sdt, device=x.device)
        else:
            # The kernel writes all of storage (padding rows too), which is more
            # than empty_strided(shape, strides) would hold.
            s = torch.empty(storage, dtype=sdt, device=x.device).as_strided(shape, strides)
        return q, s

    # ---- launching ------------------------------------------------------------

    _arch_by_device: Dict[int, str] = {}
    _spec_cache: Dict[Tuple[Any, ...], str] = {}

    def _arch(device: int) -> str:
        a = _arch_by_device.get(device)
        if a is None:
            major, minor = torch.cuda.get_device_capability(device)
            a = _arch_by_device[device] = f"sm_{major}{minor}"
        return a

    def _pow2_align(*values: int) -> int:
        v = 16
        for x in values:
            v |= x
        return v & -v

    def _spec_json(key: Tuple[Any, ...]) -> str:
        s = _spec_cache.get(key)
        if s is None:
            h, g, ind, outd, layout, ue8m0, has_ub, arch, launch = key
            spec = {
                "hidden": h,
                "group_size": g,
                "in_dtype": ind,
                "out_dtype": outd,
                "scale_layout": layout,
                "ue8m0": ue8m0,
                "scale_ub": has_ub,
                "masked": False,
                "arch": arch,
            }
            if launch is not None:
                spec["launch"] = json.loads(launch)
            s = _spec_cache[key] = json.dumps(spec, separators=(",", ":"))
        return s

    _raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)

    def _current_stream(device: int) -> int:
        """torch.cuda.current_stream(device).cuda_stream, without building a
        Stream object (a few microseconds per call) where torch allows it."""
        if _raw_stream is not None:
            return _raw_stream(device)
        return torch.cuda.current_stream(device).cuda_stream

    def _run(x: Tensor, q: Tensor, scales: Tensor, t: int, h: int, ldx: int, group_size: int, out_dtype: str, layout: str, ue8m0: bool, scale_ub: Optional[Tensor], launch: Optional[str]) -> None:
        if t == 0:
            return
        device = x.device.index if x.device.index is not None else torch.cuda.current_device()
        esize = x.element_size()
        xp, qp = x.data_ptr(), q.data_ptr()
        if launch is None:
            xa, qa = _pow2_align(xp, ldx * esize), _pow2_align(qp)
            if xa < 16 or qa < 16:
                # The C++ heuristic with narrower vectors; the spec's other
                # fields do not change the shape, so a minimal spec will do.
                base = {"hidden": h, "group_size": group_size, "in_dtype": _IN_NAMES[x.dtype], "arch": "sm_80"}
                launch = json.dumps(_lib.service().default_launch(base, min(xa // esize, qa)), sort_keys=True)
        key = (h, group_size, _IN_NAMES[x.dtype], out_dtype, layout, ue8m0, scale_ub is not None, _arch(device), launch)
        kernel = _lib.service().kernel(_spec_json(key), device)
        args = _lib.LaunchArgs(
            xp, ldx, t, qp, scales.data_ptr(), 0 if scale_ub is None else scale_ub.data_ptr(), 0, 1
        )
        stream = _current_stream(device)
        if device != torch.cuda.current_device():
            # The legacy default stream resolves through the current context.
            with torch.cuda.device(device):
                kernel.launch(args, stream)
        else:
            kernel.launch(args, stream)

    # ---- custom ops -------------------------------------------------------------

    @torch.library.custom_op("bqjit::silu_mul_quant", mutates_args=())
    def _silu_mul_quant_op(
        x: Tensor,
        group_size: int,
        out_dtype: str,
        scale_layout: str,
        ue8m0: bool,
        scale_ub: Optional[Tensor],
        launch: Optional[str],
    ) -> Tuple[Tensor, Tensor]:
        _check_static(group_size, out_dtype, scale_layout, ue8m0)
        t, h, ldx = _check(x, group_size, out_dtype, scale_layout, scale_ub)
        q, s = _alloc(x, h, group_size, out_dtype, scale_layout)
        _run(x, q, s, t, h, ldx, group_size, out_dtype, scale_layout, ue8m0, scale_ub, launch)
        return q, s

    @_silu_mul_quant_op.register_fake
    def _silu_mul_quant_fake(x, group_size, out_dtype, scale_layout, ue8m0, scale_ub, launch):
        _check_static(group_size, out_dtype, scale_layout, ue8m0)
        _, h, _ = _check(x, group_size, out_dtype, scale_layout, scale_ub)
        return _alloc(x, h, group_size, out_dtype, scale_layout)

    @torch.library.custom_op("bqjit::silu_mul_quant_out", mutates_args=("q", "scales"))
    def _silu_mul_quant_out_op(
        x: Tensor,
        q: Tensor,
        scales: Tensor,
        group_size: int,
        out_dtype: str,
        scale_layout: str,
        ue8m0: bool,
        scale_ub: Optional[Tensor],
        launch: Optional[str],
    ) -> None:
        _check_static(group_size, out_dtype, scale_layout, ue8m0)
        t, h, ldx = _check(x, group_size, out_dtype, scale_layout, scale_ub)
        _check_outputs(x, q, scales, h, group_size, out_dtype, scale_layout, real=True)
        _run(x, q, scales, t, h, ldx, group_size, out_dtype, scale_layout, ue8m0, scale_ub, launch)

    @_silu_mul_quant_out_op.register_fake
    def _silu_mul_quant_out_fake(x, q, scales, group_size, out_dtype, scale_layout, ue8m0, scale_ub, launch):
        _check_static(group_size, out_dtype, scale_layout, ue8m0)
        _, h, _ = _check(x, group_size, out_dtype, scale_layout, scale_ub)
        _check_outputs(x, q, scales, h, group_size, out_dtype, scale_layout, real=False)
        return None

    # ---- the public function ----------------------------------------------------

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
    ) -> Tuple[Tensor, Tensor]:
        """``y = silu(gate) * up`` quantized per group of ``group_size`` columns.

        Args:
            x: CUDA tensor ``[..., 2H]`` (bfloat16, float16 or float32): gate in
                ``x[..., :H]``, up in ``x[..., H:]``. The last dim must be
                contiguous; rows may be strided (a slice of a wider tensor), the
                leading dims must flatten to one row stride.
            group_size: G, in 16..1024, dividing H.
            out_dtype: ``torch.float8_e4m3fn``, ``torch.float8_e5m2`` or ``torch.int8``.
            scale_layout: "row", "col", "col_tma" or "ue8m0_packed" (the column
                layouts need 2-D ``x``); see the module docstring for shapes.
            ue8m0: power-of-two scales (required for "ue8m0_packed").
            scale_ub: None or a float32 CUDA tensor of one element on x's
                device: the upper bound of every scale.
            out, scales_out: write into these (both or neither) and return them;
                shapes, dtypes and strides as the returned tensors would have.
            launch: None (heuristic) or {"threads_per_group", "vec_width",
                "groups_per_block"} to override the launch shape.

        Returns:
            ``(q, scales)``: q ``[..., H]`` of ``out_dtype``; scales per layout.

        Launches on ``torch.cuda.current_stream(x.device)``. The first call for
        a new specialization compiles with NVRTC (or loads from the disk
        cache): make it before capturing a CUDA graph.
        """
        # Type checks the op schema would otherwise report without naming the rule.
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if scale_ub is not None and not isinstance(scale_ub, torch.Tensor):
            raise TypeError(
                f"scale_ub must be None or a float32 CUDA tensor with one element, got {type(scale_ub).__name__}"
            )
        if out is not None and not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be None or a torch.Tensor, got {type(out).__name__}")
        if scales_out is not None and not isinstance(scales_out, torch.Tensor):
            raise TypeError(f"scales_out must be None or a torch.Tensor, got {type(scales_out).__name__}")
        name = _out_dtype_name(out_dtype)
        _check_static(group_size, name, scale_layout, ue8m0)
        launch_text = _launch_json(launch)
        if out is None and scales_out is None:
            return torch.ops.bqjit.silu_mul_quant(x, group_size, name, scale_layout, ue8m0, scale_ub, launch_text)
        if out is None or scales_out is None:
            missing = "out" if out is None else "scales_out"
            raise ValueError(f"{missing} is None: out and scales_out must be given together")
        torch.ops.bqjit.silu_mul_quant_out(x, out, scales_out, group_size, name, scale_layout, ue8m0, scale_ub, launch_text)
        return out, scales_out

else:

    def silu_mul_quant(*args: Any, **kwargs: Any):  # type: ignore[no-redef]
        """Needs PyTorch, which could not be imported."""
        raise RuntimeError(f"bqjit.silu_mul_quant needs PyTorch, which could not be imported: {_TORCH_IMPORT_ERROR}")
