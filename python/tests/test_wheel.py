"""The installed package as a wheel user gets it (scripts/test.sh's python
stage sets BQJIT_TEST_WHEEL=1 after `pip install .`): the library and the
bqjit command inside the package, no BQJIT_LIBRARY, and a spec compiled with
no GPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("BQJIT_TEST_WHEEL") != "1":
    pytest.skip("tests of an installed wheel: set BQJIT_TEST_WHEEL=1 after `pip install .`", allow_module_level=True)

import bqjit  # noqa: E402

PACKAGE = Path(bqjit.__file__).resolve().parent


def test_library_is_the_one_in_the_package():
    assert "BQJIT_LIBRARY" not in os.environ
    assert Path(bqjit.library_path()).resolve().parent == PACKAGE
    assert (PACKAGE / "bin" / "bqjit").is_file()


def test_compiles_a_spec_without_a_gpu(tmp_path):
    with bqjit.Service(str(tmp_path)) as svc:
        meta = svc.compile({"hidden": 7168, "group_size": 128, "arch": "sm_90"})
    assert meta["cubin_bytes"] > 0 and meta["spec"]["hidden"] == 7168
    assert len(meta["key"]) == 32


def test_python_m_bqjit_runs_the_bundled_command(tmp_path):
    version = subprocess.run(
        [sys.executable, "-m", "bqjit", "version"], capture_output=True, text=True, check=True
    ).stdout
    assert "nvrtc" in version.lower(), version
    env = dict(os.environ, BQJIT_CACHE_DIR=str(tmp_path))
    subprocess.run(
        [sys.executable, "-m", "bqjit", "ptx", "H=2048", "G=128", "--arch", "sm_90"],
        capture_output=True, text=True, check=True, env=env,
    )


def test_prewarm_from_the_wheel_is_what_the_package_finds(tmp_path):
    """A cache prewarmed by `python -m bqjit` has the keys the package asks for:
    the same NVRTC, the same template, the same key rule."""
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"specs": [{"hidden": 1536, "group_size": 128}]}))
    env = dict(os.environ, BQJIT_CACHE_DIR=str(tmp_path / "cache"))
    subprocess.run(
        [sys.executable, "-m", "bqjit", "prewarm", str(manifest), "--arch", "sm_90"],
        capture_output=True, text=True, check=True, env=env,
    )
    with bqjit.Service(str(tmp_path / "cache")) as svc:
        meta = svc.compile({"hidden": 1536, "group_size": 128, "arch": "sm_90"})
    assert meta["compile_ms"] == 0 or meta.get("source") in (None, "disk"), meta


def test_one_version_number():
    """The package, its library and its command carry the VERSION file's number."""
    assert bqjit.__version__ == bqjit.library_version()
    out = subprocess.run([sys.executable, "-m", "bqjit", "version"], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == f"bqjit {bqjit.__version__}", out
