"""The ctypes layer alone: needs libbqjit.so, but neither PyTorch nor a GPU
(bqjit_compile runs NVRTC without a device). Without the library these tests
fail (LibraryNotFoundError names every place tried): they are never skipped."""
import ctypes
import json
import os
import subprocess
import sys

import pytest

import bqjit
from bqjit import _lib

SPEC = {
    "hidden": 1024,
    "group_size": 128,
    "in_dtype": "bf16",
    "out_dtype": "fp8_e4m3",
    "scale_layout": "row",
    "ue8m0": False,
    "scale_ub": False,
    "masked": False,
    "arch": "sm_90",
}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    s = bqjit.Service(str(tmp_path_factory.mktemp("cache")))
    yield s
    s.close()


def test_compile_metadata(svc):
    meta = svc.compile(SPEC)
    assert meta["spec"]["hidden"] == 1024
    assert meta["spec"]["arch"] == "sm_90"
    # The resolved launch shape carries the occupancy the planner derived.
    assert set(meta["spec"]["launch"]) == {"threads_per_group", "vec_width", "groups_per_block", "min_blocks_per_sm"}
    assert meta["cubin_bytes"] > 0
    assert meta["lowered_name"].startswith("_Z")
    assert len(meta["key"]) >= 16
    # JSON text and dict give the same kernel.
    assert svc.compile(json.dumps(SPEC))["key"] == meta["key"]


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("group_size", 100, "group_size"),
        ("group_size", 8, "group_size"),
        ("scale_layout", "diag", "scale_layout"),
        ("out_dtype", "fp4", "out_dtype"),
        ("arch", "sm_70", "arch"),
        ("bogus", 1, "bogus"),
    ],
)
def test_bad_spec_is_bqjit_error(svc, field, value, needle):
    spec = dict(SPEC, **{field: value})
    with pytest.raises(bqjit.BqjitError) as info:
        svc.compile(spec)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.code == 1 and err.name == "invalid-spec"
    assert needle in err.message and str(value) in err.message


def test_recompile_in_fresh_cache(tmp_path):
    """The same spec compiled by two services with separate cache dirs (a
    cleared or relocated bqjit cache). Both must succeed: a cache hit in some
    other layer (e.g. the driver's ~/.nv/ComputeCache, which NVRTC uses when a
    driver is installed) must not break the second compile."""
    spec = dict(SPEC, hidden=3 * 128 * 5, group_size=128, in_dtype="fp16")
    metas = []
    for name in ("a", "b"):
        with bqjit.Service(str(tmp_path / name)) as s:
            metas.append(s.compile(spec))
    assert metas[0]["key"] == metas[1]["key"]
    # Registers and stack come from the cubin and always agree; spills come
    # from ptxas's log, which NVRTC leaves empty when the driver's compute
    # cache answers the second compile (reported as -1, unknown).
    for key in ("registers", "stack_frame_bytes"):
        assert metas[0]["resources"][key] == metas[1]["resources"][key]


def test_finish_variants_and_tuning_return_and_need_an_open_service(tmp_path):
    """With nothing compiling in the background it returns at once; after
    close() it is an error, not a call on a freed handle."""
    s = bqjit.Service(str(tmp_path / "cache"))
    s.compile(SPEC)
    assert s.finish_variants() is None
    assert s.finish_tuning() is None
    s.close()
    with pytest.raises(RuntimeError, match="after close"):
        s.finish_variants()
    with pytest.raises(RuntimeError, match="after close"):
        s.finish_tuning()


def test_packed_needs_ue8m0(svc):
    with pytest.raises(bqjit.BqjitError, match="ue8m0") as info:
        svc.compile(dict(SPEC, scale_layout="ue8m0_packed", ue8m0=False))
    assert info.value.code == 1


def test_invalid_json(svc):
    with pytest.raises(bqjit.BqjitError) as info:
        svc.compile("{not json")
    assert info.value.code == 1


def test_launch_override(svc):
    spec = dict(SPEC, launch={"threads_per_group": 4, "vec_width": 4, "groups_per_block": 16})
    launch = svc.compile(spec)["spec"]["launch"]
    assert {k: launch[k] for k in spec["launch"]} == spec["launch"]
    assert launch["min_blocks_per_sm"] >= 0  # derived: 0 leaves registers to ptxas
    # Given, it is kept.
    given = dict(SPEC, launch=dict(spec["launch"], min_blocks_per_sm=2))
    assert svc.compile(given)["spec"]["launch"] == given["launch"]
    with pytest.raises(bqjit.BqjitError, match="launch.vec_width") as info:
        svc.compile(dict(SPEC, launch={"threads_per_group": 4, "vec_width": 3, "groups_per_block": 16}))
    assert info.value.code == 1


def test_default_launch_caps_vector_width(svc):
    """bqjit_default_launch: uncapped it is the shape a compile resolves to;
    capped, the vector width obeys the cap and the shape still compiles."""
    for g in (16, 48, 64, 96, 128, 192, 1024):
        for in_dtype, esize in (("bf16", 2), ("fp32", 4)):
            spec = dict(SPEC, hidden=g * 6, group_size=g, in_dtype=in_dtype)
            meta = svc.compile(spec)
            assert svc.default_launch(spec) == meta["spec"]["launch"]
            for cap in (1, 2, 4):
                launch = svc.default_launch(spec, cap)
                assert launch["vec_width"] <= cap
                assert svc.compile(dict(spec, launch=launch))["spec"]["launch"] == launch

def test_library_search_reports_every_place(tmp_path):
    """A missing library is a RuntimeError at first use naming where it looked,
    and `import bqjit` itself still works."""
    code = (
        "import bqjit\n"
        "try:\n"
        "    bqjit.service()\n"
        "except RuntimeError as e:\n"
        "    print(type(e).__name__); print(e)\n"
    )
    env = dict(os.environ, BQJIT_LIBRARY=str(tmp_path / "nope" / "libbqjit.so"))
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(bqjit.__file__)))
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "LibraryNotFoundError" in out
    assert "$BQJIT_LIBRARY" in out and "nope" in out and "does not exist" in out


def test_candidates_without_env(monkeypatch):
    monkeypatch.delenv("BQJIT_LIBRARY", raising=False)
    places = [what for what, _ in _lib._candidates()]
    assert places[0] == "package directory"
    assert places[1] == "source tree build"
    assert places[-1] == "dynamic loader search path"


def test_kernel_launch_pdl_flags():
    """Kernel.launch's ``pdl``: None leaves it to the library's default
    (BQJIT_PDL, on unless 0) through bqjit_kernel_launch; True and False pass
    BQJIT_LAUNCH_PDL and BQJIT_LAUNCH_NO_PDL in bqjit_launch_extra.flags. A
    stand-in for the library records the calls (no GPU needed)."""
    calls = []

    class Recorder:
        def bqjit_kernel_launch(self, handle, args, stream):
            calls.append(("launch", handle))
            return _lib.OK

        def bqjit_kernel_launch_ex(self, handle, args, extra, stream):
            e = extra._obj
            calls.append(("launch_ex", handle, e.size, e.global_scale, e.flags))
            return _lib.OK

        def bqjit_kernel_release(self, handle):
            pass

    kernel = _lib.Kernel(Recorder(), 7, "{}", 0)
    args = _lib.LaunchArgs()
    size = ctypes.sizeof(_lib.LaunchExtra)
    kernel.launch(args)
    kernel.launch(args, pdl=True)
    kernel.launch(args, pdl=False)
    kernel.launch(args, global_scale=64)
    kernel.launch(args, global_scale=64, pdl=False)
    assert calls == [
        ("launch", 7),
        ("launch_ex", 7, size, 0, _lib.LAUNCH_PDL),
        ("launch_ex", 7, size, 0, _lib.LAUNCH_NO_PDL),
        ("launch_ex", 7, size, 64, 0),
        ("launch_ex", 7, size, 64, _lib.LAUNCH_NO_PDL),
    ]
    assert (_lib.LAUNCH_PDL, _lib.LAUNCH_NO_PDL) == (0x1, 0x2)  # bqjit.h's BQJIT_LAUNCH_*
