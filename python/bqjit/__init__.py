"""bqjit: fused act(gate) * up + per-group FP8/INT8/FP4 quantization, JIT-compiled
with NVRTC by libbqjit.so; PyTorch ops in C++ (libbqjit_torch.so), the rest
through ctypes.

    import bqjit
    q, scales = bqjit.silu_mul_quant(x, group_size=128)          # x: CUDA [..., 2H]

``import bqjit`` needs neither PyTorch nor a GPU nor the library itself: the
library is loaded on first use (see :mod:`bqjit._lib` for where it is looked
for; ``BQJIT_LIBRARY`` names it explicitly), and :func:`silu_mul_quant` needs
PyTorch. :class:`Service` (compile specs to cubins, no GPU needed) works
without PyTorch.
"""

from ._lib import (
    BqjitError,
    Kernel,
    LaunchArgs,
    LibraryNotFoundError,
    Service,
    library,
    library_path,
    library_version,
    log_to_python,
    log_to_stderr,
    service,
)
from .ops import HAVE_TORCH, LAYOUTS, OUT_DTYPES, scale_shape, silu_mul_quant, silu_mul_quant_masked
from . import vllm


def __getattr__(name: str):
    # bqjit.fusion (the torch.compile pass) on first use: it imports
    # torch._inductor, which `import bqjit` alone should not pay for.
    if name == "fusion":
        import importlib

        return importlib.import_module(".fusion", __name__)
    raise AttributeError(f"module 'bqjit' has no attribute {name!r}")


def _version() -> str:
    """The installed package's version; from the source tree, the VERSION file
    beside it (the one version number of bqjit)."""
    from importlib import metadata
    from pathlib import Path

    source = Path(__file__).resolve().parent.parent.parent / "VERSION"
    if source.is_file() and (Path(__file__).resolve().parent.parent / "tests").is_dir():
        return source.read_text().strip()
    try:
        return metadata.version("bqjit")
    except metadata.PackageNotFoundError:  # pragma: no cover - unpacked without metadata
        return "unknown"


__version__ = _version()

__all__ = [
    "BqjitError",
    "HAVE_TORCH",
    "Kernel",
    "LAYOUTS",
    "LaunchArgs",
    "LibraryNotFoundError",
    "OUT_DTYPES",
    "Service",
    "library",
    "library_path",
    "library_version",
    "log_to_python",
    "log_to_stderr",
    "scale_shape",
    "service",
    "silu_mul_quant",
    "silu_mul_quant_masked",
    "vllm",
    "fusion",
    "__version__",
]
