"""The PyTorch ops' per-call ``pdl`` (programmatic dependent launch): None
leaves it to the library's default (BQJIT_PDL, on from sm_90 unless 0), True
and False ask for it or decline it (BQJIT_LAUNCH_PDL / BQJIT_LAUNCH_NO_PDL in
bqjit_launch_extra.flags).

The checks of the argument, its way from the public functions into the ops,
the ops' schemas and the Python ops' launch flags (against a recording
stand-in for the library) run on the CPU. test_pdl_cuda_graph_edge_types
captures two calls in a CUDA graph and reads the type of the edge between
their kernel nodes from the driver; it needs a GPU of sm_90 or newer and
skips itself (with the reason) otherwise.
"""
import ctypes
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="bqjit's PyTorch ops need PyTorch, which is not installed")

import bqjit  # noqa: E402
from bqjit import ops  # noqa: E402

OP_NAMES = ("silu_mul_quant", "silu_mul_quant_out", "silu_mul_quant_masked", "silu_mul_quant_masked_out")
PDL_CASES = (None, True, False)


def _op(name):
    return getattr(torch.ops.bqjit, name).default


# ---- the argument (CPU) ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 0, "yes", 1.0, "True"])
@pytest.mark.parametrize("variant", ["plain", "out", "masked", "masked_out"])
def test_pdl_other_than_none_true_false_is_a_type_error(value, variant):
    x = torch.zeros(4, 512, dtype=torch.bfloat16)
    kwargs = {}
    if variant.endswith("out"):
        kwargs = {"out": torch.empty(4, 256, dtype=torch.float8_e4m3fn), "scales_out": torch.empty(4, 2)}
    with pytest.raises(TypeError) as e:
        if variant.startswith("masked"):
            bqjit.silu_mul_quant_masked(x[None], torch.zeros(1, dtype=torch.int32), 128, pdl=value, **kwargs)
        else:
            bqjit.silu_mul_quant(x, 128, pdl=value, **kwargs)
    text = str(e.value)
    assert text.startswith(f"pdl = {value!r} ({type(value).__name__}): "), text
    assert "must be None (the library's default, BQJIT_PDL), True or False" in text, text


@pytest.mark.parametrize("op", OP_NAMES)
def test_pdl_in_the_schema_of_the_loaded_ops(op):
    """Both backends (the C++ op library and the Python ops) take it last, optional."""
    schema = str(_op(op)._schema)
    assert "Tensor? global_scale=None, bool? pdl=None)" in schema, (ops.OPS_BACKEND, schema)


@pytest.mark.parametrize("op", OP_NAMES)
def test_pdl_in_the_schema_of_the_cpp_op_library(op):
    if ops.OPS_BACKEND != "cpp":
        pytest.skip(f"the C++ op library is not loaded (ops backend {ops.OPS_BACKEND}: {ops.OPS_FALLBACK_REASON})")
    assert "bool? pdl=None" in str(_op(op)._schema)


class _RecordingOp:
    """Stands in for an op (`via`: the raw op of the eager fast path, or the
    overload of the checked path): records whether ``pdl`` was given, and its value."""

    def __init__(self, name, via, calls):
        self.name = name
        self.via = via
        self.calls = calls
        self.index = [a.name for a in _op(name)._schema.arguments].index("pdl")

    def __call__(self, *args, **kwargs):
        pdl = args[self.index] if len(args) > self.index else kwargs.get("pdl")
        self.calls.append((self.name, self.via, len(args) > self.index or "pdl" in kwargs, pdl))
        return None if self.name.endswith("_out") else (None, None)


@pytest.mark.parametrize("pdl", PDL_CASES)
@pytest.mark.parametrize("path", ["fast", "checked"])
def test_pdl_reaches_the_op(monkeypatch, pdl, path):
    """bqjit.silu_mul_quant / silu_mul_quant_masked, with out= and without, on
    the eager fast path and the path of every check in Python (taken by
    torch.compile and by keywords such as activation), hand ``pdl`` to the op
    (and leave it out when None: the op's default)."""
    calls = []
    for raw, overload, name in (("_RAW_OP", "_OP", "silu_mul_quant"), ("_RAW_OP_OUT", "_OP_OUT", "silu_mul_quant_out"),
                                ("_RAW_OP_MASKED", "_OP_MASKED", "silu_mul_quant_masked"),
                                ("_RAW_OP_MASKED_OUT", "_OP_MASKED_OUT", "silu_mul_quant_masked_out")):
        monkeypatch.setattr(ops, raw, _RecordingOp(name, "fast", calls))
        monkeypatch.setattr(ops, overload, _RecordingOp(name, "checked", calls))
    extra = {} if path == "fast" else {"activation": "swiglu"}
    x = torch.zeros(4, 512, dtype=torch.bfloat16)
    xm, m = x[None], torch.zeros(1, dtype=torch.int32)
    q, s = torch.empty(4, 256, dtype=torch.float8_e4m3fn), torch.empty(4, 2)
    bqjit.silu_mul_quant(x, 128, pdl=pdl, **extra)
    bqjit.silu_mul_quant(x, 128, out=q, scales_out=s, pdl=pdl, **extra)
    bqjit.silu_mul_quant_masked(xm, m, 128, pdl=pdl, **extra)
    bqjit.silu_mul_quant_masked(xm, m, 128, out=q[None], scales_out=s[None], pdl=pdl, **extra)
    given = pdl is not None
    assert calls == [(name, path, given, pdl) for name in OP_NAMES]


# The Python ops (BQJIT_TORCH_OPS=python) in a process of their own, since the
# C++ op library may hold torch.ops.bqjit here: a stand-in for libbqjit.so
# records the launches; the tensor checks, which want CUDA tensors, are
# replaced by ones that take contiguous CPU tensors.
_FALLBACK_SCRIPT = r"""
import ctypes, json, math, sys
import torch
import bqjit
from bqjit import _lib, _py_ops, ops
assert ops.OPS_BACKEND == "python", ops.OPS_FALLBACK_REASON
calls = []

class Library:
    def bqjit_kernel_launch(self, handle, args, stream):
        calls.append(["launch"])
        return _lib.OK

    def bqjit_kernel_launch_ex(self, handle, args, extra, stream):
        e = extra._obj
        calls.append(["launch_ex", e.size == ctypes.sizeof(_lib.LaunchExtra), e.global_scale, e.flags])
        return _lib.OK

class Service:
    def kernel(self, spec, device):
        return _lib.Kernel(Library(), 7, spec, device)

    def default_launch(self, spec, max_vec_width):
        return {"threads_per_group": 32, "vec_width": 8, "groups_per_block": 1}

def rows(x, group_size, out_dtype, layout, scale_ub, masked=False, ue8m0=False, global_scale=None):
    sizes = tuple(x.shape[1:] if masked else x.shape)
    return math.prod(sizes[:-1]), sizes[-1] // 2, sizes[-1]

_lib.service = lambda: Service()
_py_ops._check = rows
_py_ops._check_masked = lambda x, masked_m: None
_py_ops._check_outputs = lambda *args, **kwargs: None
_py_ops._current_stream = lambda device: 0
_py_ops._arch = lambda device: "sm_90"
torch.cuda.current_device = lambda: 0

x = torch.zeros(4, 512, dtype=torch.bfloat16)
m = torch.full((1,), 4, dtype=torch.int32)
q, s = torch.empty(4, 256, dtype=torch.float8_e4m3fn), torch.empty(4, 2)
for pdl in (None, True, False):
    bqjit.silu_mul_quant(x, 128, pdl=pdl)
    bqjit.silu_mul_quant(x, 128, out=q, scales_out=s, pdl=pdl)
    bqjit.silu_mul_quant_masked(x[None], m, 128, pdl=pdl)
    bqjit.silu_mul_quant_masked(x[None], m, 128, out=q[None], scales_out=s[None], pdl=pdl)
    bqjit.silu_mul_quant(x, 128, pdl=pdl, activation="swiglu")
print(json.dumps(calls))
"""


def test_python_ops_pass_the_pdl_flags():
    """The Python ops' launches: None through bqjit_kernel_launch (the
    library's default), True / False through bqjit_kernel_launch_ex with
    BQJIT_LAUNCH_PDL / BQJIT_LAUNCH_NO_PDL, for each of the four ops."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(bqjit.__file__)))
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, BQJIT_TORCH_OPS="python", PYTHONPATH=path)
    done = subprocess.run([sys.executable, "-c", _FALLBACK_SCRIPT], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    calls = json.loads(done.stdout.strip().splitlines()[-1])
    per_pdl = 5
    assert len(calls) == 3 * per_pdl, calls
    assert calls[:per_pdl] == [["launch"]] * per_pdl
    assert calls[per_pdl:2 * per_pdl] == [["launch_ex", True, 0, bqjit._lib.LAUNCH_PDL]] * per_pdl
    assert calls[2 * per_pdl:] == [["launch_ex", True, 0, bqjit._lib.LAUNCH_NO_PDL]] * per_pdl


# ---- CUDA graphs on the GPU ------------------------------------------------------------------------

CU_GRAPH_NODE_TYPE_KERNEL = 0
CU_GRAPH_DEPENDENCY_TYPE_DEFAULT = 0
CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC = 1


class _EdgeData(ctypes.Structure):
    """CUgraphEdgeData (CUDA 12.3)."""

    _fields_ = [
        ("from_port", ctypes.c_ubyte),
        ("to_port", ctypes.c_ubyte),
        ("type", ctypes.c_ubyte),
        ("reserved", ctypes.c_ubyte * 5),
    ]


class _GraphQueries:
    """cuGraphGetNodes, cuGraphNodeGetType and cuGraphGetEdges_v2 (with edge
    data) of libcuda.so.1; ``missing`` says why they are not all there."""

    def __init__(self):
        self.missing = None
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            self.missing = f"libcuda.so.1 does not load: {e}"
            return
        p_node = ctypes.POINTER(ctypes.c_void_p)
        p_size = ctypes.POINTER(ctypes.c_size_t)
        sigs = {
            "cuGraphGetNodes": [ctypes.c_void_p, p_node, p_size],
            "cuGraphNodeGetType": [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)],
            "cuGraphGetEdges_v2": [ctypes.c_void_p, p_node, p_node, ctypes.POINTER(_EdgeData), p_size],
        }
        for name, argtypes in sigs.items():
            fn = getattr(lib, name, None)
            if fn is None:
                self.missing = f"the driver's libcuda.so.1 has no {name} (edge types need CUDA 12.3 or newer)"
                return
            fn.restype = ctypes.c_int
            fn.argtypes = argtypes
            setattr(self, name, fn)

    def _check(self, status, what):
        assert status == 0, f"{what} returned CUresult {status}"

    def nodes(self, graph):
        """([kernel nodes], [type of every node]) of ``graph``."""
        n = ctypes.c_size_t(0)
        self._check(self.cuGraphGetNodes(graph, None, ctypes.byref(n)), "cuGraphGetNodes")
        nodes = (ctypes.c_void_p * max(n.value, 1))()
        self._check(self.cuGraphGetNodes(graph, nodes, ctypes.byref(n)), "cuGraphGetNodes")
        kernels, kinds = [], []
        for i in range(n.value):
            kind = ctypes.c_int(-1)
            self._check(self.cuGraphNodeGetType(nodes[i], ctypes.byref(kind)), "cuGraphNodeGetType")
            kinds.append(kind.value)
            if kind.value == CU_GRAPH_NODE_TYPE_KERNEL:
                kernels.append(nodes[i])
        return kernels, kinds

    def edges(self, graph, node_count):
        """[(from, to, type)] of every edge of ``graph``. Room for more edges
        than a DAG of ``node_count`` nodes has, so no count query: one with
        null edge data may be refused as lossy where an edge is programmatic."""
        room = max(node_count * node_count, 1)
        src, dst, data = (ctypes.c_void_p * room)(), (ctypes.c_void_p * room)(), (_EdgeData * room)()
        n = ctypes.c_size_t(room)
        self._check(self.cuGraphGetEdges_v2(graph, src, dst, data, ctypes.byref(n)), "cuGraphGetEdges_v2")
        return [(src[i], dst[i], data[i].type) for i in range(n.value)]


def _require_sm90_graphs():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device; torch.cuda.is_available() is False")
    major, minor = torch.cuda.get_device_capability()
    if major < 9:
        pytest.skip(f"programmatic dependent launch needs sm_90 or newer; the device is sm_{major}{minor}")
    if not hasattr(torch.cuda.CUDAGraph, "raw_cuda_graph"):
        pytest.skip(f"torch {torch.__version__} has no CUDAGraph.raw_cuda_graph()")
    try:
        torch.cuda.CUDAGraph(keep_graph=True)
    except TypeError as e:
        pytest.skip(f"torch {torch.__version__} has no CUDAGraph(keep_graph=True): {e}")
    queries = _GraphQueries()
    if queries.missing:
        pytest.skip(queries.missing)
    return queries


def _inputs(variant, seed):
    """(x, masked_m or None). Made before any capture: a tensor made inside
    one would add a node of its own. A masked batch has every row live, so
    that every byte of the outputs is written."""
    t, h = 24, 1024
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = (torch.randn(t, 2 * h, generator=gen) * 3).to("cuda", torch.bfloat16)
    if not variant.startswith("masked"):
        return x, None
    x = x.view(2, t // 2, 2 * h)
    return x, torch.full((x.shape[0],), x.shape[1], dtype=torch.int32, device=x.device)


def _call(variant, inputs, pdl, outputs=None):
    """One op call of `variant`: the functional form, or the out= form into `outputs`."""
    g = 128
    x, m = inputs
    if m is not None:
        if outputs is None:
            return bqjit.silu_mul_quant_masked(x, m, g, pdl=pdl)
        return bqjit.silu_mul_quant_masked(x, m, g, out=outputs[0], scales_out=outputs[1], pdl=pdl)
    if outputs is None:
        return bqjit.silu_mul_quant(x, g, pdl=pdl)
    return bqjit.silu_mul_quant(x, g, out=outputs[0], scales_out=outputs[1], pdl=pdl)


def _expected_edge(pdl):
    if pdl is None:
        return CU_GRAPH_DEPENDENCY_TYPE_DEFAULT if os.environ.get("BQJIT_PDL") == "0" \
            else CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC
    return CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC if pdl else CU_GRAPH_DEPENDENCY_TYPE_DEFAULT


def _same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


_EDGE_NAMES = {CU_GRAPH_DEPENDENCY_TYPE_DEFAULT: "default", CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC: "programmatic"}


@pytest.mark.parametrize("pdl", PDL_CASES)
@pytest.mark.parametrize("variant", ["plain", "out", "masked", "masked_out"])
def test_pdl_cuda_graph_edge_types(variant, pdl):
    """Two calls captured back to back on one stream: the edge between their
    kernel nodes is programmatic for pdl=True (and for None, unless
    BQJIT_PDL=0), default for pdl=False; replayed, the graph gives what
    uncaptured calls give."""
    queries = _require_sm90_graphs()
    inputs = [_inputs(variant, 40), _inputs(variant, 41)]
    # Uncaptured, on a side stream as torch asks of warm-ups: compiles (or loads)
    # the kernel and gives the reference outputs.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        refs = [_call(variant, inp, pdl) for inp in inputs]
        outputs = None
        if variant.endswith("out"):
            outputs = [(torch.empty_like(q), torch.empty_like(s)) for q, s in refs]
            for inp, out in zip(inputs, outputs):
                _call(variant, inp, pdl, out)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    if outputs is not None:
        for (q_ref, s_ref), (q, s) in zip(refs, outputs):
            assert _same(q, q_ref) and _same(s, s_ref), "the out= form differs from the functional one"

    graph = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(graph):
        got = [_call(variant, inp, pdl, None if outputs is None else outputs[i]) for i, inp in enumerate(inputs)]
    raw = graph.raw_cuda_graph()
    kernels, kinds = queries.nodes(raw)
    assert len(kernels) == 2, f"node types {kinds}: expected two kernel nodes (CU_GRAPH_NODE_TYPE_KERNEL = 0)"
    between = [(a, b, kind) for a, b, kind in queries.edges(raw, len(kinds)) if a in kernels and b in kernels]
    assert len(between) == 1, f"edges between the two kernel nodes: {between} (node types {kinds})"
    want = _expected_edge(pdl)
    kind = between[0][2]
    assert kind == want, (
        f"pdl={pdl!r} (BQJIT_PDL={os.environ.get('BQJIT_PDL')!r}): the edge is "
        f"{_EDGE_NAMES.get(kind, kind)}, expected {_EDGE_NAMES[want]}"
    )

    if outputs is not None:
        for q, s in outputs:
            q.view(torch.uint8).fill_(0x5A)
            s.view(torch.uint8).fill_(0x5A)
    graph.replay()
    torch.cuda.synchronize()
    for i, ((q_ref, s_ref), (q, s)) in enumerate(zip(refs, got)):
        assert _same(q, q_ref), f"call {i}: q of the replayed graph differs from the uncaptured call's"
        assert _same(s, s_ref), f"call {i}: scales of the replayed graph differ from the uncaptured call's"


def test_pdl_under_torch_compile():
    """torch.compile(fullgraph=True) keeps ``pdl`` in the op's call, and the
    compiled function gives the eager results."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device; torch.cuda.is_available() is False")
    torch._dynamo.reset()
    seen = []

    def backend(gm, example_inputs):
        seen.extend(n for n in gm.graph.nodes if n.op == "call_function" and "bqjit" in str(n.target))
        return gm.forward

    @torch.compile(fullgraph=True, backend=backend)
    def f(x):
        return bqjit.silu_mul_quant(x, 128, pdl=False)

    x, _ = _inputs("plain", 42)
    q, s = f(x)
    q_ref, s_ref = bqjit.silu_mul_quant(x, 128, pdl=False)
    assert len(seen) == 1, seen
    node = seen[0]
    index = [a.name for a in node.target._schema.arguments].index("pdl")
    pdl = node.args[index] if len(node.args) > index else node.kwargs.get("pdl")
    assert pdl is False, node.format_node()
    assert _same(q, q_ref) and _same(s, s_ref)
