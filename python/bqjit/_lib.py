"""ctypes binding of the bqjit C API (include/bqjit/bqjit.h) in libbqjit.so.

Nothing here needs PyTorch or a GPU: the library is opened on first use, a
:class:`Service` compiles specs without a device, and only :meth:`Service.kernel`
and :meth:`Kernel.launch` touch the CUDA driver.

Where the library is looked for, in this order (the first that loads wins):

1. ``$BQJIT_LIBRARY``: a path to ``libbqjit.so``. When set, it is the only
   place tried, so a wrong value is an error rather than a silent fallback.
2. ``libbqjit.so`` inside the installed package directory (``bqjit/``), for a
   wheel that bundles a copy.
3. ``<repo>/build/runtime/libbqjit.so`` relative to this file, which exists
   when the package runs from the source tree (``PYTHONPATH=python``) or is
   installed in editable/develop mode (``pip install -e ./python``).
4. The dynamic loader's search path: ``ctypes.util.find_library("bqjit")``,
   then plain ``libbqjit.so`` (``LD_LIBRARY_PATH``, ``ldconfig``).

Failure to find it is reported at first use (never at ``import bqjit``) as a
:class:`LibraryNotFoundError` (a ``RuntimeError``) naming every place tried.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

__all__ = [
    "BqjitError",
    "LibraryNotFoundError",
    "LaunchArgs",
    "Service",
    "Kernel",
    "STATUS_NAMES",
    "library",
    "library_path",
    "library_version",
    "log_to_python",
    "log_to_stderr",
    "service",
]

# bqjit_status values (bqjit.h); same numbers as bqjit::ErrorCode.
OK = 0
STATUS_NAMES = {
    0: "ok",
    1: "invalid-spec",
    2: "invalid-argument",
    3: "compile-failed",
    4: "cache-error",
    5: "driver-error",
    6: "no-driver",
    7: "arch-mismatch",
    8: "not-in-cache",
    9: "internal",
}
INVALID_SPEC = 1
INVALID_ARGUMENT = 2


class BqjitError(RuntimeError):
    """A failed call of the C API.

    ``code`` is the ``bqjit_status`` number (1 invalid spec, 2 invalid argument,
    3 compile failed, 4 cache, 5 driver, 6 no driver, 7 arch mismatch,
    8 not in cache, 9 internal), ``name`` its short name, and ``message`` the
    text of ``bqjit_last_error()`` (which starts with that name).
    """

    def __init__(self, code: int, message: str, function: str = ""):
        self.code = int(code)
        self.name = STATUS_NAMES.get(self.code, "unknown")
        self.message = message
        self.function = function
        where = f"{function}: " if function else ""
        super().__init__(f"{where}{message or self.name} (bqjit status {self.code})")


class LibraryNotFoundError(RuntimeError):
    """libbqjit.so could not be loaded; the message lists every place tried."""


class LaunchArgs(ctypes.Structure):
    """``bqjit_launch_args``: run-time arguments, device addresses as integers."""

    _fields_ = [
        ("x", ctypes.c_uint64),
        ("ldx", ctypes.c_int64),
        ("tokens", ctypes.c_int64),
        ("q", ctypes.c_uint64),
        ("scales", ctypes.c_uint64),
        ("scale_ub", ctypes.c_uint64),
        ("masked_m", ctypes.c_uint64),
        ("num_experts", ctypes.c_int64),
    ]


class LaunchExtra(ctypes.Structure):
    """``bqjit_launch_extra``: launch arguments after ``bqjit_launch_args`` (NVFP4's global scale)."""

    _fields_ = [
        ("size", ctypes.c_size_t),
        ("global_scale", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
    ]


LAUNCH_PDL = 0x1  # bqjit_launch_extra.flags: a programmatic dependent launch (sm_90+)
LAUNCH_NO_PDL = 0x2  # bqjit_launch_extra.flags: not one, whatever BQJIT_PDL says


# bqjit_log_callback: void (*)(int level, const char* message, void* user).
_LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_NO_LOG_CALLBACK = _LOG_CALLBACK()  # NULL: back to stderr
# bqjit_log_level -> logging level, and back.
_LOG_LEVELS = {1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}

_LIB_NAME = "libbqjit.so"
_lock = threading.Lock()
_service_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_lib_path: Optional[str] = None
_service: Optional["Service"] = None


def _candidates() -> List[Tuple[str, str]]:
    """(description, path-or-name) pairs in search order."""
    env = os.environ.get("BQJIT_LIBRARY")
    if env:
        return [("$BQJIT_LIBRARY", env)]
    here = Path(__file__).resolve().parent
    out = [
        ("package directory", str(here / _LIB_NAME)),
        ("source tree build", str(here.parent.parent / "build" / "runtime" / _LIB_NAME)),
    ]
    found = ctypes.util.find_library("bqjit")
    if found:
        out.append(("ctypes.util.find_library('bqjit')", found))
    out.append(("dynamic loader search path", _LIB_NAME))
    return out


def _declare(lib: ctypes.CDLL) -> None:
    c_int, c_char_p, c_void_p, c_size_t = ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t
    p_void = ctypes.POINTER(c_void_p)
    p_size = ctypes.POINTER(c_size_t)
    sig = {
        "bqjit_last_error": (c_char_p, []),
        "bqjit_version": (c_char_p, []),
        "bqjit_service_create": (c_int, [c_char_p, p_void]),
        "bqjit_service_destroy": (None, [c_void_p]),
        "bqjit_service_finish_variants": (c_int, [c_void_p]),
        "bqjit_service_finish_tuning": (c_int, [c_void_p]),
        "bqjit_compile": (c_int, [c_void_p, c_char_p, c_char_p, c_size_t, p_size]),
        "bqjit_spec_for_device": (c_int, [c_void_p, c_char_p, c_int, c_char_p, c_size_t, p_size]),
        "bqjit_kernel_get": (c_int, [c_void_p, c_char_p, c_int, p_void]),
        "bqjit_kernel_release": (None, [c_void_p]),
        "bqjit_kernel_launch": (c_int, [c_void_p, ctypes.POINTER(LaunchArgs), c_void_p]),
        "bqjit_kernel_launch_ex": (
            c_int,
            [c_void_p, ctypes.POINTER(LaunchArgs), ctypes.POINTER(LaunchExtra), c_void_p],
        ),
        "bqjit_default_launch": (c_int, [c_char_p, c_int, c_char_p, c_size_t, p_size]),
        "bqjit_set_log_callback": (c_int, [_LOG_CALLBACK, c_void_p, c_int]),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)  # AttributeError: not a bqjit library
        fn.restype = restype
        fn.argtypes = argtypes


def library() -> ctypes.CDLL:
    """The loaded libbqjit.so with its C signatures declared (loaded once)."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        tried = []
        for what, path in _candidates():
            is_name = os.sep not in path
            if not is_name and not os.path.exists(path):
                tried.append(f"  {what}: {path} (does not exist)")
                continue
            try:
                lib = ctypes.CDLL(path)
                _declare(lib)
            except (OSError, AttributeError) as e:
                tried.append(f"  {what}: {path} ({e})")
                continue
            _lib, _lib_path = lib, path
            return lib
        hint = (
            "BQJIT_LIBRARY is set, so no other place was tried; fix or unset it."
            if os.environ.get("BQJIT_LIBRARY")
            else "Build it (cmake -S . -B build -G Ninja && ninja -C build bqjit) and set "
            "BQJIT_LIBRARY=/path/to/libbqjit.so, or put it on LD_LIBRARY_PATH."
        )
        raise LibraryNotFoundError(
            "bqjit: could not load libbqjit.so. Tried, in order:\n" + "\n".join(tried) + "\n" + hint
        )


def library_version() -> str:
    """The loaded library's version (bqjit_version()): the package's own, for
    the library a wheel ships."""
    return library().bqjit_version().decode()


def library_path() -> str:
    """Where the loaded library came from (loads it if needed)."""
    library()
    assert _lib_path is not None
    return _lib_path


def _last_error(lib: ctypes.CDLL) -> str:
    raw = lib.bqjit_last_error()
    return raw.decode("utf-8", "replace") if raw else ""


def _check(lib: ctypes.CDLL, status: int, function: str) -> None:
    if status != OK:
        raise BqjitError(status, _last_error(lib), function)


SpecLike = Union[str, bytes, Dict[str, Any]]


def _spec_bytes(spec: SpecLike) -> bytes:
    if isinstance(spec, dict):
        return json.dumps(spec, separators=(",", ":")).encode()
    if isinstance(spec, str):
        return spec.encode()
    if isinstance(spec, bytes):
        return spec
    raise TypeError(f"spec must be a dict or a JSON string, got {type(spec).__name__}")


class Kernel:
    """A kernel loaded on one device (``bqjit_kernel``). Owned by its Service."""

    __slots__ = ("_lib", "_handle", "spec_json", "device", "__weakref__")

    def __init__(self, lib: ctypes.CDLL, handle: int, spec_json: str, device: int):
        self._lib = lib
        self._handle = handle
        self.spec_json = spec_json
        self.device = device

    def launch(self, args: LaunchArgs, stream: int = 0, global_scale: int = 0,
               pdl: Optional[bool] = None) -> None:
        """Enqueues the kernel on ``stream`` (a CUstream as an integer; 0: legacy default).
        ``global_scale``: the device address of NVFP4's fp32 global scale (0: none).
        ``pdl``: whether it is a programmatic dependent launch (sm_90+; ``BQJIT_LAUNCH_PDL``
        or ``BQJIT_LAUNCH_NO_PDL``); None: the service's default (``BQJIT_PDL``, on unless 0)."""
        if not self._handle:
            raise RuntimeError("bqjit: kernel used after its service was closed")
        if global_scale or pdl is not None:
            flags = 0 if pdl is None else LAUNCH_PDL if pdl else LAUNCH_NO_PDL
            extra = LaunchExtra(ctypes.sizeof(LaunchExtra), global_scale, flags)
            status = self._lib.bqjit_kernel_launch_ex(
                self._handle, ctypes.byref(args), ctypes.byref(extra), stream or None
            )
            if status != OK:
                raise BqjitError(status, _last_error(self._lib), "bqjit_kernel_launch_ex")
            return
        status = self._lib.bqjit_kernel_launch(self._handle, ctypes.byref(args), stream or None)
        if status != OK:
            raise BqjitError(status, _last_error(self._lib), "bqjit_kernel_launch")

    def _release(self) -> None:
        if self._handle:
            self._lib.bqjit_kernel_release(self._handle)
            self._handle = None

    def __repr__(self) -> str:
        return f"bqjit.Kernel(device={self.device}, spec={self.spec_json})"


class Service:
    """A ``bqjit_service``: the compiler, the kernel cache and the loaded modules.

    ``cache_dir=None`` configures the disk cache from the environment
    (``BQJIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/bqjit``, else ``~/.cache/bqjit``;
    also ``BQJIT_CACHE_MAX_BYTES``, ``BQJIT_LOG_LEVEL``, ``BQJIT_NO_COMPILE``,
    ``BQJIT_LOCK_TIMEOUT_MS``, ``BQJIT_PDL``); ``""`` disables the disk cache.

    Kernel handles are cached per (spec JSON, device) in :attr:`kernels`.
    The process-wide service returned by :func:`service` is never destroyed
    (it lives until the process exits); services you create yourself can be
    closed with :meth:`close`.
    """

    def __init__(self, cache_dir: Optional[str] = None):
        self._lib = library()
        handle = ctypes.c_void_p()
        arg = None if cache_dir is None else os.fsencode(cache_dir)
        _check(self._lib, self._lib.bqjit_service_create(arg, ctypes.byref(handle)), "bqjit_service_create")
        self._handle = handle.value
        self._kernel_lock = threading.Lock()
        self.kernels: Dict[Tuple[str, int], Kernel] = {}

    # -- metadata ---------------------------------------------------------------
    def _text_call(self, function: str, call) -> str:
        size = 16384
        while True:
            buf = ctypes.create_string_buffer(size)
            needed = ctypes.c_size_t(0)
            status = call(buf, size, ctypes.byref(needed))
            if status == OK:
                return buf.value.decode("utf-8", "replace")
            if status == INVALID_ARGUMENT and needed.value > size:
                size = needed.value
                continue
            raise BqjitError(status, _last_error(self._lib), function)

    def compile(self, spec: SpecLike) -> Dict[str, Any]:
        """Compiles (or finds in the cache) a spec; returns its metadata (key,
        resolved spec, lowered name, resources, sizes). Needs no GPU."""
        self._require_open()
        data = _spec_bytes(spec)
        text = self._text_call(
            "bqjit_compile", lambda b, n, need: self._lib.bqjit_compile(self._handle, data, b, n, need)
        )
        return json.loads(text)

    def default_launch(self, spec: SpecLike, max_vec_width: int = 16) -> Dict[str, Any]:
        """The C++ heuristic's launch shape for ``spec`` with vectors of at
        most ``max_vec_width`` elements (for pointers that are not 16-byte
        aligned). Needs no GPU."""
        self._require_open()
        data = _spec_bytes(spec)
        text = self._text_call(
            "bqjit_default_launch",
            lambda b, n, need: self._lib.bqjit_default_launch(data, int(max_vec_width), b, n, need),
        )
        return json.loads(text)

    def spec_for_device(self, spec: SpecLike, device: int = -1) -> Dict[str, Any]:
        """The spec with ``arch`` set to the device's (needs the CUDA driver)."""
        self._require_open()
        data = _spec_bytes(spec)
        text = self._text_call(
            "bqjit_spec_for_device",
            lambda b, n, need: self._lib.bqjit_spec_for_device(self._handle, data, int(device), b, n, need),
        )
        return json.loads(text)

    # -- kernels ----------------------------------------------------------------
    def kernel(self, spec: SpecLike, device: int) -> Kernel:
        """The kernel of ``spec`` loaded on CUDA device ``device`` (cached).

        The first call for a spec may compile (NVRTC) and load a module; do it
        before a CUDA graph capture (a warm-up call), not inside one."""
        key_text = spec if isinstance(spec, str) else _spec_bytes(spec).decode()
        key = (key_text, int(device))
        k = self.kernels.get(key)
        if k is not None:
            return k
        with self._kernel_lock:
            k = self.kernels.get(key)
            if k is not None:
                return k
            self._require_open()
            handle = ctypes.c_void_p()
            status = self._lib.bqjit_kernel_get(self._handle, key_text.encode(), int(device), ctypes.byref(handle))
            _check(self._lib, status, "bqjit_kernel_get")
            k = Kernel(self._lib, handle.value, key_text, int(device))
            self.kernels[key] = k
            return k

    def finish_variants(self) -> None:
        """Waits until every kernel handed out holds its own launch shape for
        every regime of T. A new spec's first launches use its many-token
        variant while the others compile in the background (the values are
        the same); a launch captured in a CUDA graph waits for its own
        variant by itself, so this is for timing or for a host that wants
        the compiles behind it before it serves."""
        self._require_open()
        _check(self._lib, self._lib.bqjit_service_finish_variants(self._handle),
               "bqjit_service_finish_variants")

    def finish_tuning(self) -> None:
        """Waits until the autotuner (``BQJIT_AUTOTUNE=1``) has finished every
        tuning asked for so far: each regime's first launch asks for one, and
        the winner takes the regime's slot and is stored as a tuning record.
        Returns at once without autotuning."""
        self._require_open()
        _check(self._lib, self._lib.bqjit_service_finish_tuning(self._handle),
               "bqjit_service_finish_tuning")

    # -- lifetime ---------------------------------------------------------------
    def _require_open(self) -> None:
        if not self._handle:
            raise RuntimeError("bqjit: service used after close()")

    def close(self) -> None:
        """Releases every kernel and the service. Launches already enqueued
        must not outlive this (synchronize first)."""
        with self._kernel_lock:
            for k in self.kernels.values():
                k._release()
            self.kernels.clear()
            if self._handle:
                self._lib.bqjit_service_destroy(self._handle)
                self._handle = None

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if not self._handle else f"{len(self.kernels)} kernel(s)"
        return f"bqjit.Service({state})"


_log_lock = threading.Lock()
# The ctypes callback the library holds: it must stay alive while set.
_log_callback: Optional[Any] = None
_log_atexit = False


def _bqjit_level(level: int) -> int:
    """The bqjit_log_level that produces every message at ``level`` or above."""
    if level <= logging.DEBUG:
        return 3
    if level <= logging.INFO:
        return 2
    if level <= logging.WARNING:
        return 1
    return 0


def log_to_python(logger: Union[logging.Logger, str, None] = "bqjit", level: int = logging.DEBUG) -> logging.Logger:
    """Routes bqjit's log messages, process-wide, into Python's :mod:`logging`
    instead of stderr (``bqjit_set_log_callback``).

    Each message becomes one record of ``logger`` (a name or a Logger; default
    ``"bqjit"``): warnings at ``WARNING``; each compile, load from the disk
    cache and eviction at ``INFO`` (``"compiled key=... arch=... ms=... spec=..."``,
    ``"loaded from disk key=... arch=... spec=..."``, ``"evicted key=... bytes=... reason=..."``);
    NVRTC options and cache paths at ``DEBUG``. The logger's own level and
    handlers decide what is shown. Messages below ``level`` are not even
    produced (default ``DEBUG``: all). While routed, ``BQJIT_LOG_LEVEL`` is not
    used. Records come from whichever thread made bqjit log. Returns the logger.
    """
    if logger is None or isinstance(logger, str):
        logger = logging.getLogger(logger or "bqjit")
    if not isinstance(logger, logging.Logger):
        raise TypeError(f"logger must be a logging.Logger, a name or None, got {type(logger).__name__}")
    if not isinstance(level, int) or isinstance(level, bool):
        raise TypeError(f"level must be a logging level (int), got {type(level).__name__}")
    target = logger

    def emit(bq_level: int, message: Optional[bytes], _user: Optional[int]) -> None:
        try:
            py_level = _LOG_LEVELS.get(bq_level, logging.WARNING)
            if target.isEnabledFor(py_level):
                target.log(py_level, (message or b"").decode("utf-8", "replace"))
        except Exception:  # pragma: no cover - never let an exception cross into C
            pass

    _set_log_callback(_LOG_CALLBACK(emit), _bqjit_level(level))
    return logger


def log_to_stderr() -> None:
    """Undoes :func:`log_to_python`: messages go to stderr again, filtered by
    ``BQJIT_LOG_LEVEL`` (``bqjit: <level>: <text>`` lines)."""
    _set_log_callback(None, 1)


def _set_log_callback(callback: Optional[Any], level: int) -> None:
    global _log_callback, _log_atexit
    lib = library()
    with _log_lock:
        # Once this returns, the library no longer calls the previous callback,
        # so it may be released.
        status = lib.bqjit_set_log_callback(_NO_LOG_CALLBACK if callback is None else callback, None, level)
        _check(lib, status, "bqjit_set_log_callback")
        _log_callback = callback
        if callback is not None and not _log_atexit:
            atexit.register(_unset_log_callback_at_exit)
            _log_atexit = True


def _unset_log_callback_at_exit() -> None:
    # A bqjit thread still logging while the interpreter finalizes must not
    # call into Python.
    if _log_callback is not None and _lib is not None:
        _lib.bqjit_set_log_callback(_NO_LOG_CALLBACK, None, 1)


def service() -> Service:
    """The process-wide service used by :func:`bqjit.silu_mul_quant`.

    Created on first use with the configuration from the environment
    (``BQJIT_CACHE_DIR`` and friends; see :class:`Service`). One per process,
    never destroyed, shared by all threads."""
    global _service
    s = _service
    if s is not None:
        return s
    with _service_lock:
        if _service is None:
            _service = Service()
        return _service
