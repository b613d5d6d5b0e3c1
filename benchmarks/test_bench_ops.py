"""pytest-benchmark runs of the fused cache ops on CPU (not part of the test suite).

    .venv/bin/python -m pytest benchmarks/test_bench_ops.py                       # small, Flux, Wan sizes
    .venv/bin/python -m pytest benchmarks/test_bench_ops.py -k "1x256x3072 and fp32"   # smoke
    DICACHE_BENCH_BIG=1 .venv/bin/python -m pytest benchmarks/test_bench_ops.py -k 2x75600x5120
    .venv/bin/python -m pytest benchmarks/test_bench_ops.py --benchmark-json ops.json

``pyproject.toml`` sets ``testpaths = ["tests"]``, so a plain ``pytest`` (``scripts/test.sh``) never
collects this file; it runs only when named.

Parametrized over shape × dtype × op × variant, where the variants are those of
``benchmarks/bench_cpu.py``: ``copy`` (``dst.copy_(src)`` between two of the op's tensors, the
bandwidth reference), ``eager`` (the reference ops), ``compiled`` (the reference under
``torch.compile``), the ``torch`` backend (the same functions as ``eager``, timed again here), the
``cpu`` backend (C++ kernels), and ``triton``/``cuda`` (skipped with the reason they cannot run
here). Before timing, each variant is run once against the reference on fresh inputs of the same
shape (of ``[B, 4096, C]`` for the big shape) and must agree.

Shapes: ``1x256x3072``, ``1x1000x1536``, ``1x4096x3072`` (Flux 1024²), ``1x32760x1536`` (Wan 1.3B
480p); ``2x75600x5120`` (Wan 14B 720p with CFG) only with ``DICACHE_BENCH_BIG=1``, where a variant
whose estimated peak memory does not fit is skipped with the estimate. pytest-benchmark times each
test on its own (its usual calibration: ``--benchmark-min-rounds``, ``--benchmark-max-time``);
``extra_info`` holds the fewest bytes, GB/s, and the fraction of the copy bandwidth measured in this
session for the same op, shape and dtype, and a summary table is printed at the end (also written to
``$DICACHE_BENCH_MD`` when set).
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import nullcontext as _nullcontext
from typing import Dict, Tuple

import pytest
import torch

pytest.importorskip("pytest_benchmark")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cpu as bc  # noqa: E402
from bench_triton import Case, min_bytes  # noqa: E402

from dicache.ops import BackendUnavailableError, load_backend, reference  # noqa: E402

BIG = os.environ.get("DICACHE_BENCH_BIG", "") not in ("", "0")
SHAPES = list(bc.SMALL_SHAPES) + [bc.FLUX_SHAPE, bc.WAN_SHAPE] + ([bc.BIG_SHAPE] if BIG else [])
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VARIANTS = ("copy", "eager", "compiled", "torch", "cpu", "triton", "cuda")
CHECK_TOKENS_BIG = 4096  # the correctness check of the big shape runs on [B, 4096, C]

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

CASES = [
    pytest.param(s, d, op, v, id=f"{op}-{v}-{s}-{d}")
    for s in SHAPES for d in DTYPES for op in bc.OPS for v in VARIANTS
]

_results: Dict[Tuple[str, str, str], Dict[str, float]] = {}  # (op, shape, dtype) -> variant -> median s


class _Impls:
    """Backends and compiled ops, loaded once; compiled functions fresh per shape and dtype."""

    def __init__(self):
        self.reasons = bc.unavailable_reasons()
        self.impls: Dict[str, object] = {"eager": reference, "torch": load_backend("torch")}
        try:
            self.impls["cpu"] = load_backend("cpu")
        except BackendUnavailableError as exc:
            self.reasons["cpu"] = str(exc)
        self._compiled_key = None
        self._compiled: Dict[str, object] = {}
        bc.raise_recompile_limit()

    def compiled(self, shape: str, dtype: str):
        if self._compiled_key != (shape, dtype):
            self._compiled = bc._compiled_ops()
            self._compiled_key = (shape, dtype)
        return self._compiled


@pytest.fixture(scope="module")
def impls():
    return _Impls()


class _Pools:
    """One pool of big tensors at a time (the cases are ordered shape-major, then dtype)."""

    def __init__(self):
        self.key = None
        self.pool = None

    def get(self, shape: str, dtype: str) -> bc.Pool:
        if self.key != (shape, dtype):
            if self.pool is not None:
                self.pool.release()
            self.pool = bc.Pool(bc.parse_shape(shape), DTYPES[dtype])
            self.key = (shape, dtype)
        return self.pool


@pytest.fixture(scope="module")
def pools(request):
    p = _Pools()
    yield p
    if p.pool is not None:
        p.pool.release()
    _summary(request.config)


def _summary(config) -> None:
    """GB/s, fraction of copy bandwidth and speedups of everything timed in this session."""
    if not _results:
        return
    lines = ["| op | shape | dtype | variant | median ms | GB/s | of copy | vs eager | vs compiled |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (op, shape, dtype), by_variant in _results.items():
        nbytes = min_bytes(Case(op, bc.parse_shape(shape), DTYPES[dtype]))
        tb = math.prod(bc.parse_shape(shape)) * torch.empty((), dtype=DTYPES[dtype]).element_size()
        copy_gbps = 2 * tb / by_variant["copy"] / 1e9 if "copy" in by_variant else None
        for v, sec in by_variant.items():
            gbps = (2 * tb if v == "copy" else nbytes) / sec / 1e9
            of_copy = f"{gbps / copy_gbps:.2f}" if copy_gbps else "–"
            ve = f"{by_variant['eager'] / sec:.1f}×" if "eager" in by_variant and v != "copy" else "–"
            vc = f"{by_variant['compiled'] / sec:.2f}×" if "compiled" in by_variant and v != "copy" else "–"
            lines.append(f"| {op} | {shape} | {dtype} | {v} | {1e3 * sec:.3f} | {gbps:.1f} | {of_copy} | {ve} | {vc} |")
    text = "\n".join(lines)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None:
        with capture.global_and_fixture_disabled() if capture is not None else _nullcontext():
            reporter.write_line("")
            reporter.write_line("fused ops, medians of this session (pytest-benchmark):")
            for line in lines:
                reporter.write_line(line)
    out = os.environ.get("DICACHE_BENCH_MD")
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


@pytest.mark.parametrize("shape,dtype,op,variant", CASES)
def test_op(benchmark, impls, pools, shape, dtype, op, variant):
    if variant in ("triton", "cuda") or (variant == "cpu" and "cpu" not in impls.impls):
        pytest.skip(f"{variant}: {impls.reasons.get(variant)}")
    dims = bc.parse_shape(shape)
    numel = math.prod(dims)
    pool = pools.get(shape, dtype)
    if variant == "compiled":
        impl = impls.compiled(shape, dtype)[op]
    elif variant != "copy":
        impl = impls.impls[variant]

    # memory: the op's tensors (shared by the variants) plus this variant's temporaries
    tb = pool.tensor_bytes
    need_new = max(0, len(bc.ROLES[op]) - len(pool.tensors)) * tb
    extra = 0.0
    if numel >= 5e7:
        helpers = dict(impls.impls)
        extra = bc.extra_bytes_per_element(variant, op, DTYPES[dtype], helpers) * numel
    usable = bc.available_bytes() - 2 * bc.GiB
    if need_new + extra > usable:
        pytest.skip(f"needs ~{bc.fmt_gb(len(bc.ROLES[op]) * tb + extra)} (the op's tensors + ~{bc.fmt_gb(extra)} "
                    f"temporaries); {bc.fmt_gb(max(0, usable) + len(pool.tensors) * tb)} usable of "
                    f"{bc.fmt_gb(bc.total_bytes())}")

    # correctness once, before timing (this also compiles the compiled variant for checking shape)
    if variant != "copy":
        check_shape = (dims[0], min(dims[1], CHECK_TOKENS_BIG), dims[2]) if numel >= 5e8 else dims
        bad = bc.check_against_reference(impl, op, check_shape, DTYPES[dtype])
        assert not bad, f"{variant} {op} {check_shape} {dtype} disagrees with the reference: {bad}"

    t = pool.take(op)
    s = bc.State(dims[0], numel // dims[0])
    if variant == "copy":
        src, dst = t[bc.ROLES[op][0]], t[bc.COPY_DST[op]]
        fn = lambda: dst.copy_(src)  # noqa: E731
    else:
        fn = bc.call(impl, op, t, s)
    fn()  # warm-up (compilation at this shape)

    benchmark.group = f"{op} {shape} {dtype}"
    benchmark(fn)

    stats = getattr(benchmark, "stats", None)
    if stats is None or getattr(stats, "stats", None) is None:  # --benchmark-disable
        return
    med = stats.stats.median
    key = (op, shape, dtype)
    _results.setdefault(key, {})[variant] = med
    nbytes = 2 * tb if variant == "copy" else min_bytes(Case(op, dims, DTYPES[dtype]))
    benchmark.extra_info["fewest_bytes"] = nbytes
    benchmark.extra_info["GBps"] = nbytes / med / 1e9
    copy = _results[key].get("copy")
    if copy:
        benchmark.extra_info["of_copy_bw"] = (nbytes / med) / (2 * tb / copy)
