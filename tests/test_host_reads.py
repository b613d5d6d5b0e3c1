"""Per decided call, the decision flag is the only value DiCache reads back to the host.

Device-to-host reads of a tensor's value (``.item()``, ``bool(t)``, ``float(t)``)
all go through ``aten._local_scalar_dense``; a dispatch mode counts them inside
each transformer call, with and without DiCache. ``.tolist()`` reads without
dispatching, so it is counted by wrapping it (one read per call, whatever its length).
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dicache
from dicache import ops

import tiny


class _CountScalarReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _reads_per_call(pipe, call):
    counts = []
    mode = {}

    def pre(module, args, kwargs):
        mode["m"] = _CountScalarReads()
        mode["m"].__enter__()

    def post(module, args, kwargs, output):
        mode["m"].__exit__(None, None, None)
        counts.append(mode["m"].count)

    tolist = torch.Tensor.tolist

    def counted_tolist(t):
        if "m" in mode:
            mode["m"].count += 1
        return tolist(t)

    h1 = pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = pipe.transformer.register_forward_hook(post, with_kwargs=True)
    torch.Tensor.tolist = counted_tolist
    try:
        call(pipe)
    finally:
        torch.Tensor.tolist = tolist
        h1.remove()
        h2.remove()
    return counts


def _reads_with_dicache(family, steps, **options):
    """(reads per call without DiCache, with it, the calls' records in pipeline order) on a tiny pipeline."""
    make, call = {
        "flux": (tiny.flux_pipeline, lambda p: tiny.flux_pipeline_call(p, steps=steps)),
        "wan": (tiny.wan_pipeline, lambda p: tiny.wan_pipeline_call(p, steps=steps)),
    }[family]
    pipe = make()
    baseline = _reads_per_call(pipe, call)
    dicache.enable(pipe, **options)
    cached = _reads_per_call(pipe, call)
    s = dicache.summary(pipe)
    dicache.disable(pipe)
    # calls interleave branches in pipeline order; rebuild the per-call decision kind in that order
    steps = [b.steps for b in s.branches.values()]
    order = [st for group in zip(*steps) for st in group]
    assert len(order) == len(cached) == len(baseline)
    return baseline, cached, order, s


def _backends():
    return [n for n in ("torch", "triton", "cpu") if ops.availability("cpu")[n] is None]


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("family", ["flux", "wan"])
def test_only_the_flag_is_read_back(family, backend):
    baseline, cached, order, s = _reads_with_dicache(family, 8, backend=backend, threshold=0.3)
    assert s.skipped_calls > 0
    for base, got, st in zip(baseline, cached, order):
        # a call reads the flag when its own probe decided: not when forced (warm-up, last step, cap,
        # following a computing leader) nor when it followed a reusing leader without a probe
        decided = st.reason in ("refresh", "reuse", "reuse_one") or (st.reason == "follow" and st.probed
                                                                     and not st.computed)
        extra = got - base if st.computed else got - min(baseline)
        # a skipped call runs fewer blocks, so its own reads can only be fewer than a full call's
        assert extra <= int(decided), (st, base, got)
        if st.computed:
            assert got - base == int(decided), (st, base, got)


# hindsight: the correction reads nothing
@pytest.mark.parametrize("options", [{}, dict(gamma_source="steps", alignment_order="auto", hindsight=0.5)])
@pytest.mark.parametrize("family", ["flux", "wan"])
def test_planned_runs_read_one_value_per_computed_call_and_none_when_skipping(family, options):
    baseline, cached, order, s = _reads_with_dicache(family, 12, backend="torch", threshold=100.0, warmup=2,
                                                     plan_runs=True, max_extrapolation=1.0, **options)
    if options:
        assert all(b.hindsight_runs > 0 for b in s.branches.values())
    assert {st.reason for st in order if not st.computed} <= {"planned", "follow"}
    assert any(st.reason == "planned" for st in order)
    for base, got, st in zip(baseline, cached, order):
        if st.computed:
            assert got - base <= 1, (st, base, got)  # the error its probe measured, to plan the next run
        else:
            assert got - min(baseline) <= 0, (st, base, got)  # a planned or following skip reads nothing


# ---------------------------------------------------------------------------
# What a probed skip dispatches: with a fused backend, the fused ops and a few allocations, no elementwise
# PyTorch op (each would be one more launch on a GPU; "auto" once cost ~40 of them, 24 % of a block at
# Flux.1 size on an H200).


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif(ops.availability("cpu")["cpu"] is not None, reason="the C++ CPU kernels are not built here")
@pytest.mark.parametrize("order", [1, 2, "auto"])
def test_a_probed_skip_dispatches_the_fused_ops_only(order):
    from dicache.engine import DiCacheEngine

    g = torch.Generator().manual_seed(0)
    R, P = ([torch.randn(2, 64, 8, generator=g) for _ in range(3)] for _ in range(2))
    x = torch.randn(2, 64, 8, generator=g)
    engine = DiCacheEngine(dicache.DiCacheConfig(threshold=1e9, warmup=3, alignment_order=order), 4, "cpu")
    for k, (r, q) in enumerate(zip(R, P)):
        engine.begin_call("c", k, 10)
        assert engine.after_probe(x, x + q) is None
        engine.after_full(x + r)
    p = x + 1.1 * P[2]
    engine.begin_call("c", 3, 10)  # 10 steps: γ from the probe, so "auto" fits its weight on it
    with _RecordOps() as rec:
        assert engine.after_probe(x, p) is not None
    fused = [op for op in rec.ops if op.startswith("dicache_cpu.")]
    want = ["dicache_cpu.probe_decide"] + (["dicache_cpu.quad_blend"] if order != 1 else []) + ["dicache_cpu.reconstruct"]
    assert fused == want, rec.ops
    # besides them: the error and γ kept for the summary (clones), the flag read, the weights' buffers
    others = [op for op in rec.ops if not op.startswith("dicache_cpu.")]
    assert set(others) <= {"aten.clone", "aten._local_scalar_dense", "aten.empty_like", "aten.ones_like"}, others
    assert len(others) <= 6, others
