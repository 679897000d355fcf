"""bqjit.log_to_python: the library's log messages as records of Python's
logging. Needs libbqjit.so (and fails without it), neither PyTorch nor a GPU."""
import gc
import logging
import threading

import pytest

import bqjit

SPEC = {"hidden": 1024, "group_size": 128, "in_dtype": "bf16", "out_dtype": "fp8_e4m3", "arch": "sm_90"}


def compile_then_load(cache_dir):
    """One service compiles SPEC into `cache_dir`, a second one (empty memory)
    reads it from there. Returns the key."""
    keys = []
    for _ in range(2):
        with bqjit.Service(str(cache_dir)) as s:
            keys.append(s.compile(SPEC)["key"])
    assert keys[0] == keys[1]
    return keys[0]


def messages(caplog, name, level):
    return [r.getMessage() for r in caplog.records if r.name == name and r.levelno == level]


@pytest.fixture
def back_to_stderr():
    yield
    bqjit.log_to_stderr()


def test_load_from_disk_is_an_info_record(tmp_path, caplog, back_to_stderr):
    logger = bqjit.log_to_python("bqjit.test")
    assert logger is logging.getLogger("bqjit.test")
    gc.collect()  # the ctypes callback must be kept alive by the binding
    caplog.set_level(logging.DEBUG, logger="bqjit.test")
    key = compile_then_load(tmp_path)
    infos = messages(caplog, "bqjit.test", logging.INFO)
    loads = [m for m in infos if m.startswith(f"loaded from disk key={key} arch=sm_90 spec=H=1024 G=128 ")]
    assert len(loads) == 1, infos
    debugs = messages(caplog, "bqjit.test", logging.DEBUG)
    assert any(m == f"cache entry read key={key} path={tmp_path}/v1/entries/{key}" for m in debugs), debugs
    assert any(m.startswith(f"cache root={tmp_path}/v1 ") for m in debugs), debugs


def test_the_logger_level_and_the_level_argument_filter(tmp_path, caplog, back_to_stderr):
    bqjit.log_to_python("bqjit.test")
    caplog.set_level(logging.INFO, logger="bqjit.test")
    compile_then_load(tmp_path / "a")
    assert messages(caplog, "bqjit.test", logging.INFO)
    assert not messages(caplog, "bqjit.test", logging.DEBUG)

    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="bqjit.test")
    bqjit.log_to_python(logging.getLogger("bqjit.test"), level=logging.WARNING)
    compile_then_load(tmp_path / "b")
    assert not [r for r in caplog.records if r.name == "bqjit.test"], "info and debug were produced"


def test_records_come_from_other_threads_and_stop_after_log_to_stderr(tmp_path, caplog, back_to_stderr):
    bqjit.log_to_python("bqjit.test")
    caplog.set_level(logging.INFO, logger="bqjit.test")
    keys = []
    t = threading.Thread(target=lambda: keys.append(compile_then_load(tmp_path / "thread")))
    t.start()
    t.join()
    assert keys and any(m.startswith(f"loaded from disk key={keys[0]}") for m in messages(caplog, "bqjit.test", logging.INFO))

    bqjit.log_to_stderr()
    caplog.clear()
    compile_then_load(tmp_path / "after")
    assert not [r for r in caplog.records if r.name == "bqjit.test"]


def test_bad_arguments_are_type_errors():
    with pytest.raises(TypeError, match="logger must be"):
        bqjit.log_to_python(3)
    with pytest.raises(TypeError, match="level must be"):
        bqjit.log_to_python("bqjit.test", level="info")
