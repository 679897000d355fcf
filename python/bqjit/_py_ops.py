"""The ``torch.ops.bqjit`` ops defined in Python over the ctypes binding: the
fallback of :mod:`bqjit.ops` where the C++ op library is not available. Same
schemas, checks and results; a higher cost per call (Python and ctypes on
every launch). :mod:`bqjit.ops` registers the fake implementations."""

import json
from typing import Any, Dict, Optional, Tuple

import torch

from . import _lib
from .ops import _IN_NAMES, _alloc, _check, _check_fields_text, _check_masked, _check_outputs, _check_static

Tensor = torch.Tensor

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
        h, g, ind, outd, layout, ue8m0, has_ub, masked, arch, launch, fields = key
        spec = {
            "hidden": h,
            "group_size": g,
            "in_dtype": ind,
            "out_dtype": outd,
            "scale_layout": layout,
            "ue8m0": ue8m0,
            "scale_ub": has_ub,
            "masked": masked,
            "arch": arch,
        }
        if launch is not None:
            spec["launch"] = json.loads(launch)
        if fields is not None:
            spec.update(json.loads(fields))
        s = _spec_cache[key] = json.dumps(spec, separators=(",", ":"))
    return s


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _current_stream(device: int) -> int:
    """torch.cuda.current_stream(device).cuda_stream, without building a
    Stream object (a few microseconds per call) where torch allows it."""
    if _raw_stream is not None:
        return _raw_stream(device)
    return torch.cuda.current_stream(device).cuda_stream


def _run(
    x: Tensor, q: Tensor, scales: Tensor, t: int, h: int, ldx: int, group_size: int, out_dtype: str, layout: str,
    ue8m0: bool, scale_ub: Optional[Tensor], launch: Optional[str], fields: Optional[str],
    masked_m: Optional[Tensor] = None, global_scale: Optional[Tensor] = None, pdl: Optional[bool] = None,
) -> None:
    if t == 0 or (masked_m is not None and x.shape[0] == 0):
        return
    device = x.device.index if x.device.index is not None else torch.cuda.current_device()
    esize = x.element_size()
    xp, qp = x.data_ptr(), q.data_ptr()
    if launch is None:
        xa, qa = _pow2_align(xp, ldx * esize), _pow2_align(qp)
        if xa < 16 or qa < 16:
            # The C++ heuristic with narrower vectors, for this spec (its
            # activation can change the occupancy the heuristic asks for).
            base = {"hidden": h, "group_size": group_size, "in_dtype": _IN_NAMES[x.dtype], "arch": "sm_80",
                    "out_dtype": out_dtype, "scale_layout": layout, "ue8m0": ue8m0}
            if fields is not None:
                base.update(json.loads(fields))
            # fp4's q holds two values a byte: a vector of v values stores v / 2 bytes.
            qvec = 2 * qa if out_dtype == "fp4_e2m1" else qa
            launch = json.dumps(_lib.service().default_launch(base, min(xa // esize, qvec)), sort_keys=True)
    masked = masked_m is not None
    key = (h, group_size, _IN_NAMES[x.dtype], out_dtype, layout, ue8m0, scale_ub is not None, masked, _arch(device), launch, fields)
    kernel = _lib.service().kernel(_spec_json(key), device)
    args = _lib.LaunchArgs(
        xp,
        ldx,
        x.shape[1] if masked else t,
        qp,
        scales.data_ptr(),
        0 if scale_ub is None else scale_ub.data_ptr(),
        masked_m.data_ptr() if masked else 0,
        x.shape[0] if masked else 1,
    )
    stream = _current_stream(device)
    gs = 0 if global_scale is None else global_scale.data_ptr()
    if device != torch.cuda.current_device():
        # The legacy default stream resolves through the current context.
        with torch.cuda.device(device):
            kernel.launch(args, stream, gs, pdl)
    else:
        kernel.launch(args, stream, gs, pdl)


def _masked_rows(x: Tensor, masked_m: Tensor, group_size: int, out_dtype: str, layout: str, scale_ub: Any,
                 ue8m0: bool = False, global_scale: Any = None):
    t, h, ldx = _check(x, group_size, out_dtype, layout, scale_ub, True, ue8m0, global_scale)
    pitch = _check_masked(x, masked_m)
    return x.shape[0] * t, h, ldx if pitch is None else pitch


@torch.library.custom_op("bqjit::silu_mul_quant", mutates_args=())
def _silu_mul_quant_op(
    x: Tensor, group_size: int, out_dtype: str, scale_layout: str, ue8m0: bool, scale_ub: Optional[Tensor],
    launch: Optional[str], fields: Optional[str] = None, global_scale: Optional[Tensor] = None,
    pdl: Optional[bool] = None,
) -> Tuple[Tensor, Tensor]:
    _check_static(group_size, out_dtype, scale_layout, ue8m0)
    _check_fields_text(fields)
    t, h, ldx = _check(x, group_size, out_dtype, scale_layout, scale_ub, False, ue8m0, global_scale)
    q, s = _alloc(x, h, group_size, out_dtype, scale_layout)
    _run(x, q, s, t, h, ldx, group_size, out_dtype, scale_layout, ue8m0, scale_ub, launch, fields, None, global_scale,
         pdl)
    return q, s


@torch.library.custom_op("bqjit::silu_mul_quant_out", mutates_args=("q", "scales"))
def _silu_mul_quant_out_op(
    x: Tensor, q: Tensor, scales: Tensor, group_size: int, out_dtype: str, scale_layout: str, ue8m0: bool,
    scale_ub: Optional[Tensor], launch: Optional[str], fields: Optional[str] = None,
    global_scale: Optional[Tensor] = None, pdl: Optional[bool] = None,
) -> None:
    _check_static(group_size, out_dtype, scale_layout, ue8m0)
    _check_fields_text(fields)
    t, h, ldx = _check(x, group_size, out_dtype, scale_layout, scale_ub, False, ue8m0, global_scale)
    _check_outputs(x, q, scales, h, group_size, out_dtype, scale_layout, real=True)
    _run(x, q, scales, t, h, ldx, group_size, out_dtype, scale_layout, ue8m0, scale_ub, launch, fields, None,
         global_scale, pdl)


@torch.library.custom_op("bqjit::silu_mul_quant_masked", mutates_args=())
def _silu_mul_quant_masked_op(
    x: Tensor, masked_m: Tensor, group_size: int, out_dtype: str, scale_layout: str, ue8m0: bool,
    scale_ub: Optional[Tensor], launch: Optional[str], fields: Optional[str] = None,
    global_scale: Optional[Tensor] = None, pdl: Optional[bool] = None,
) -> Tuple[Tensor, Tensor]:
    _check_static(group_size, out_dtype, scale_layout, ue8m0)
    _check_fields_text(fields)
    t, h, ldx = _masked_rows(x, masked_m, group_size, out_dtype, scale_layout, scale_ub, ue8m0, global_scale)
    q, s = _alloc(x, h, group_size, out_dtype, scale_layout, masked=True)
    _run(x, q, s, t, h, ldx, group_size, out_dtype, scale_layout, ue8m0, scale_ub, launch, fields, masked_m,
         global_scale, pdl)
    return q, s


@torch.library.custom_op("bqjit::silu_mul_quant_masked_out", mutates_args=("q", "scales"))
def _silu_mul_quant_masked_out_op(
    x: Tensor, masked_m: Tensor, q: Tensor, scales: Tensor, group_size: int, out_dtype: str, scale_layout: str,
    ue8m0: bool, scale_ub: Optional[Tensor], launch: Optional[str], fields: Optional[str] = None,
    global_scale: Optional[Tensor] = None, pdl: Optional[bool] = None,
) -> None:
    _check_static(group_size, out_dtype, scale_layout, ue8m0)
    _check_fields_text(fields)
    t, h, ldx = _masked_rows(x, masked_m, group_size, out_dtype, scale_layout, scale_ub, ue8m0, global_scale)
    _check_outputs(x, q, scales, h, group_size, out_dtype, scale_layout, real=True, masked=True)
    _run(x, q, scales, t, h, ldx, group_size, out_dtype, scale_layout, ue8m0, scale_ub, launch, fields, masked_m,
         global_scale, pdl)


@torch.library.custom_op("bqjit::kernel_table_size", mutates_args=())
def _kernel_table_size() -> int:
    return len(_lib.service().kernels)
