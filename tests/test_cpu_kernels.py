"""The C++ CPU kernels (``backend="cpu"``, csrc/cpu_ops.cpp) against the reference ops.

Every test draws fresh random inputs (never zeros, except where a guard is
under test), runs the reference (:mod:`dicache.ops.reference`) and the C++
kernels on separate copies of the in-place state, and compares every output.
Outputs the kernels only write are poisoned beforehand (NaN / a sentinel) so
that an element left unwritten shows up.

The first test run builds the extension (~20-40 s on 2 cores, cached in
``~/.cache/dicache`` afterwards).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Dict

import pytest
import torch

from dicache import build
from dicache.ops import BackendUnavailableError, availability, load_backend, reference as R, select_backend

REPO = Path(__file__).resolve().parents[1]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# [B, N, C]: odd sizes (tails of tiles / vectors), B = 1 and B > 1, and one of ~1e6 elements
# (several parallel chunks per row).
SHAPES = [(1, 7, 13), (3, 33, 65), (2, 129, 387), (1, 999, 1001)]

# Tolerances per dtype.
# * elementwise: outputs computed in fp32 and rounded once to the storage dtype (reconstruct's
#   out, refresh's slots). The kernels use the reference's order of operations and
#   round-to-nearest-even, so in practice they match bit for bit (see test_elementwise_bitwise);
#   the table allows about one ulp of the storage dtype.
# * sums: per-sample sums of |.| (and what is derived from them: acc, gamma, den). Inputs of
#   every dtype are widened to fp32 exactly, so only the order of the additions differs from
#   torch's sum.
TOL: Dict[torch.dtype, Dict[str, tuple]] = {
    torch.float32: {"elementwise": (1.2e-7, 1e-6), "sums": (2e-5, 1e-5)},
    torch.float16: {"elementwise": (1e-3, 1e-3), "sums": (2e-5, 1e-5)},
    torch.bfloat16: {"elementwise": (8e-3, 8e-3), "sums": (2e-5, 1e-5)},
}


@pytest.fixture(scope="module")
def cpu():
    """The C++ CPU backend (built on first use). Skips only where building is switched off
    or no C++ compiler exists; a failing build fails the tests."""
    try:
        return load_backend("cpu")
    except BackendUnavailableError as exc:
        if "DICACHE_BUILD_CPU=0" in str(exc):
            pytest.skip(str(exc))
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            pytest.skip(f"no C++ compiler: {exc}")
        raise


def _gen(*key) -> torch.Generator:
    """A generator seeded from the test parameters: fresh inputs per case, reproducible."""
    g = torch.Generator()
    g.manual_seed(zlib.crc32(repr(key).encode()))
    return g


def _randn(shape, dtype, g, scale=1.0, offset=0.0):
    return (torch.randn(shape, generator=g) * scale + offset).to(dtype)


def _assert_close(actual, expected, dtype, kind, what):
    rtol, atol = TOL[dtype][kind]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _atol_sums(dtype, expected):
    """Absolute tolerance for sums, scaled by their magnitude (the relative one dominates)."""
    return TOL[dtype]["sums"][1] * max(1.0, float(expected.abs().max()))


# ---------------------------------------------------------------------------
# probe_decide


def _probe_inputs(shape, dtype, g, has_old, error_mode):
    B = shape[0]
    t = {
        "p": _randn(shape, dtype, g, 1.3, 0.2),
        "x": _randn(shape, dtype, g, 0.9, -0.1),
        "p_prev": _randn(shape, dtype, g, 1.1, 0.15),
        "p_old": _randn(shape, dtype, g, 0.4) if has_old else None,
        "x_prev": _randn(shape, dtype, g, 0.8) if error_mode == R.ERROR_PROBE_MINUS_INPUT else None,
        "acc": torch.rand(B, generator=g) * 0.3,
    }
    # den: the align sums scaled so that gamma lands below, inside and above [1, 1.5].
    if has_old:
        align = R._per_sample_abs_sum((t["p"].float() - t["x"].float()) - t["p_old"].float())
        t["den"] = align / (0.7 + 1.1 * torch.rand(B, generator=g))
    else:
        t["den"] = torch.rand(B, generator=g) * 100 + 1
    return t


def _run_probe(impl, t, threshold, gamma_lo=1.0, gamma_hi=1.5, policy=0, error_mode=0, poison_x_prev=False):
    """Run one implementation on copies of the state; returns every output."""
    B = t["p"].shape[0]
    p_prev = t["p_prev"].clone()
    x_prev = None
    if t.get("x_prev") is not None:
        x_prev = t["x_prev"].clone()
    elif poison_x_prev:
        x_prev = torch.full_like(t["p"], float("nan"))  # write-only in error_mode 0
    acc = t["acc"].clone()
    sums = torch.full((B, R.NUM_SUMS), float("nan"))
    flag = torch.full((1,), -7, dtype=torch.int32)
    gamma = torch.full((B,), float("nan"))
    impl(t["p"], t["x"], p_prev, t["p_old"], x_prev, acc, t["den"], sums, flag, gamma,
         threshold, gamma_lo, gamma_hi, policy, error_mode)
    return {"p_prev": p_prev, "x_prev": x_prev, "acc": acc, "sums": sums, "flag": flag, "gamma": gamma}


def _same(actual, expected, what):
    """Identical values (NaN where NaN), dtype and shape."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _compare_probe(got, want, dtype, what=""):
    _same(got["p_prev"], want["p_prev"], f"{what} p_prev")
    if want["x_prev"] is not None:
        _same(got["x_prev"], want["x_prev"], f"{what} x_prev")
    rtol = TOL[dtype]["sums"][0]
    torch.testing.assert_close(got["sums"], want["sums"], rtol=rtol, atol=_atol_sums(dtype, want["sums"]), equal_nan=True)
    torch.testing.assert_close(got["acc"], want["acc"], rtol=rtol, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(got["gamma"], want["gamma"], rtol=rtol, atol=1e-6, equal_nan=True)
    assert torch.equal(got["flag"], want["flag"]), f"{what} flag {got['flag']} != {want['flag']}"
    # every poisoned output was written
    assert got["flag"].item() in (0, 1)
    assert not torch.isnan(got["gamma"]).any() and torch.isfinite(got["gamma"]).all()
    assert torch.isnan(got["sums"]).sum() == torch.isnan(want["sums"]).sum()


@pytest.mark.parametrize("has_old", [True, False], ids=["old", "no_old"])
@pytest.mark.parametrize("error_mode", [R.ERROR_PROBE, R.ERROR_PROBE_MINUS_INPUT], ids=["err0", "err1"])
@pytest.mark.parametrize("policy", [R.POLICY_GLOBAL, R.POLICY_MAX], ids=["global", "max"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_probe_decide(cpu, dtype, shape, policy, error_mode, has_old):
    g = _gen("probe", dtype, shape, policy, error_mode, has_old)
    t = _probe_inputs(shape, dtype, g, has_old, error_mode)
    # Thresholds on either side of the accumulated errors: once reuse, once refresh.
    dry = _run_probe(R.probe_decide, t, 0.0, policy=policy, error_mode=error_mode)
    for threshold, expect_flag in ((float(dry["acc"].max()) * 1.25 + 1e-3, 1), (float(dry["acc"].min()) * 0.8, 0)):
        kw = dict(threshold=threshold, policy=policy, error_mode=error_mode, poison_x_prev=True)
        want = _run_probe(R.probe_decide, t, **kw)
        got = _run_probe(cpu.probe_decide, t, **kw)
        assert want["flag"].item() == expect_flag
        _compare_probe(got, want, dtype, f"threshold={threshold}")
    if not has_old:
        assert torch.equal(got["gamma"], torch.ones_like(got["gamma"]))
        assert torch.equal(got["sums"][:, R.SUM_ALIGN], torch.zeros(shape[0]))
    if error_mode == R.ERROR_PROBE:
        assert torch.equal(got["sums"][:, R.SUM_INPUT_DIFF:], torch.zeros(shape[0], 2))


def test_probe_gamma_clipping_and_wide_range(cpu):
    """gamma both clipped at each end and passed through unchanged, per sample (policy max)."""
    shape, dtype = (3, 33, 65), torch.float32
    t = _probe_inputs(shape, dtype, _gen("clip"), True, 0)
    align = R._per_sample_abs_sum((t["p"].float() - t["x"].float()) - t["p_old"].float())
    t["den"] = align / torch.tensor([0.5, 1.25, 3.0])  # ratios 0.5, 1.25, 3.0
    for lo, hi, expected in ((1.0, 1.5, [1.0, 1.25, 1.5]), (0.0, 10.0, [0.5, 1.25, 3.0])):
        want = _run_probe(R.probe_decide, t, 1.0, lo, hi, policy=R.POLICY_MAX)
        got = _run_probe(cpu.probe_decide, t, 1.0, lo, hi, policy=R.POLICY_MAX)
        _compare_probe(got, want, dtype)
        torch.testing.assert_close(got["gamma"], torch.tensor(expected), rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------
# guards: zero / non-finite denominators, NaN inputs


GUARD_CASES = ["den_zero", "den_nan", "den_inf", "p_prev_zero", "p_nan", "x_inf", "x_prev_zero", "threshold_nan", "no_old_lo_above_1"]


@pytest.mark.parametrize("policy", [R.POLICY_GLOBAL, R.POLICY_MAX], ids=["global", "max"])
@pytest.mark.parametrize("case", GUARD_CASES)
def test_probe_guards(cpu, case, policy):
    shape, dtype = (3, 33, 65), torch.float32
    error_mode = R.ERROR_PROBE_MINUS_INPUT if case == "x_prev_zero" else R.ERROR_PROBE
    t = _probe_inputs(shape, dtype, _gen("guard", case, policy), case != "no_old_lo_above_1", error_mode)
    threshold, lo, hi = 10.0, 1.2, 1.5
    if case == "den_zero":
        t["den"] = torch.zeros(3)
    elif case == "den_nan":
        t["den"] = torch.full((3,), float("nan"))
    elif case == "den_inf":
        t["den"] = torch.full((3,), float("inf"))
    elif case == "p_prev_zero":
        t["p_prev"] = torch.zeros(shape)
    elif case == "p_nan":
        t["p"][1, 5, 7] = float("nan")
    elif case == "x_inf":
        t["x"][0, 3, 2] = float("inf")
    elif case == "x_prev_zero":
        t["x_prev"] = torch.zeros(shape)
    elif case == "threshold_nan":
        threshold = float("nan")
    want = _run_probe(R.probe_decide, t, threshold, lo, hi, policy=policy, error_mode=error_mode)
    got = _run_probe(cpu.probe_decide, t, threshold, lo, hi, policy=policy, error_mode=error_mode)
    _compare_probe(got, want, dtype, case)
    assert torch.isfinite(got["gamma"]).all()
    # Non-finite or zero denominators of gamma: fallback 1, then clipped to [lo, hi] = [1.2, 1.5].
    # x = inf makes sample 0's align sum infinite (all samples under the global policy).
    fallback = {"den_zero": [0, 1, 2], "den_nan": [0, 1, 2], "den_inf": [0, 1, 2],
                "x_inf": [0, 1, 2] if policy == R.POLICY_GLOBAL else [0]}.get(case, [])
    for b in fallback:
        assert got["gamma"][b].item() == pytest.approx(lo), f"sample {b}: gamma {got['gamma'][b]}"
    if case == "no_old_lo_above_1":
        assert torch.equal(got["gamma"], torch.ones(3)), "one stored residual: gamma = 1, not clipped"
    if case in ("p_prev_zero", "p_nan", "x_prev_zero", "threshold_nan"):
        assert got["flag"].item() == 0
    # A zero or NaN error denominator forces err = inf (refresh).
    infinite = {"p_prev_zero": [0, 1, 2], "x_prev_zero": [0, 1, 2],
                "p_nan": [0, 1, 2] if policy == R.POLICY_GLOBAL else [1]}.get(case, [])
    for b in infinite:
        assert math.isinf(got["acc"][b].item()), f"sample {b}: acc {got['acc'][b]}"


# ---------------------------------------------------------------------------
# reconstruct and refresh


@pytest.mark.parametrize("entries", [3, 2, 1], ids=["three", "two", "one"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_reconstruct(cpu, dtype, shape, entries):
    g = _gen("reconstruct", dtype, shape, entries)
    x, r_new = _randn(shape, dtype, g, 1.0, 0.3), _randn(shape, dtype, g, 0.5)
    r_old = _randn(shape, dtype, g, 0.5, -0.1) if entries >= 2 else None
    gamma = 1.0 + 0.5 * torch.rand(shape[0], generator=g)
    # the quadratic's term: R[-3] and a weight per sample of either sign
    oldest = (_randn(shape, dtype, g, 0.5, 0.2), torch.rand(shape[0], generator=g) - 0.5) if entries == 3 else ()
    want = torch.empty_like(x)
    got = torch.full_like(x, float("nan"))
    R.reconstruct(x, r_new, r_old, gamma, want, *oldest)
    cpu.reconstruct(x, r_new, r_old, gamma, got, *oldest)
    _assert_close(got, want, dtype, "elementwise", "out")
    assert not torch.isnan(got).any()


@pytest.mark.parametrize("has_other", [True, False], ids=["other", "no_other"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_refresh(cpu, dtype, shape, has_other):
    g = _gen("refresh", dtype, shape, has_other)
    B = shape[0]
    h, p, x = _randn(shape, dtype, g, 1.2, 0.1), _randn(shape, dtype, g), _randn(shape, dtype, g, 0.7)
    p_other = _randn(shape, dtype, g, 0.6) if has_other else None
    outs = {}
    for name, impl in (("want", R.refresh), ("got", cpu.refresh)):
        r_slot = torch.full_like(h, float("nan"))
        p_slot = torch.full_like(h, float("nan"))
        den = torch.full((B,), float("nan"))
        acc = torch.rand(B, generator=g) + 0.5
        impl(h, p, x, r_slot, p_slot, p_other, den, acc)
        outs[name] = (r_slot, p_slot, den, acc)
    (r1, p1, d1, a1), (r2, p2, d2, a2) = outs["got"], outs["want"]
    _assert_close(r1, r2, dtype, "elementwise", "r_slot")
    _assert_close(p1, p2, dtype, "elementwise", "p_slot")
    torch.testing.assert_close(d1, d2, rtol=TOL[dtype]["sums"][0], atol=_atol_sums(dtype, d2))
    assert torch.equal(a1, torch.zeros(B)) and torch.equal(a2, torch.zeros(B))
    if not has_other:
        assert torch.equal(d1, torch.zeros(B))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_elementwise_bitwise(cpu, dtype):
    """Same order of fp32 operations and the same rounding as the reference: identical bits."""
    shape = (2, 129, 387)
    g = _gen("bitwise", dtype)
    x, r_new, r_old, h, p = (_randn(shape, dtype, g, s) for s in (1.0, 0.5, 0.5, 1.2, 1.0))
    gamma = torch.tensor([1.1, 1.37])
    a, b = torch.empty_like(x), torch.empty_like(x)
    R.reconstruct(x, r_new, r_old, gamma, a)
    cpu.reconstruct(x, r_new, r_old, gamma, b)
    assert torch.equal(a, b)
    c = torch.tensor([-0.12, 0.31])
    R.reconstruct(x, r_new, r_old, gamma, a, h, c)
    cpu.reconstruct(x, r_new, r_old, gamma, b, h, c)
    assert torch.equal(a, b)
    slots = [torch.empty_like(x) for _ in range(4)]
    R.refresh(h, p, x, slots[0], slots[1], r_old, torch.zeros(2), torch.zeros(2))
    cpu.refresh(h, p, x, slots[2], slots[3], r_old, torch.zeros(2), torch.zeros(2))
    assert torch.equal(slots[0], slots[2]) and torch.equal(slots[1], slots[3])


def test_refresh_den_from_stored_values(cpu):
    """den is computed from p_slot as stored (rounded to bf16), not from the fp32 p - x."""
    shape = (2, 33, 65)
    g = _gen("stored")
    # fp32 inputs, bf16 slots: the kernels compute in fp32 and round to the slot dtype.
    h, p, x = (_randn(shape, torch.float32, g) for _ in range(3))
    p_other = _randn(shape, torch.bfloat16, g)
    res = []
    for impl in (R.refresh, cpu.refresh):
        r_slot = torch.full(shape, float("nan"), dtype=torch.bfloat16)
        p_slot = torch.full(shape, float("nan"), dtype=torch.bfloat16)
        den = torch.full((2,), float("nan"))
        impl(h, p, x, r_slot, p_slot, p_other, den, torch.ones(2))
        res.append((r_slot, p_slot, den))
    assert torch.equal(res[0][0], res[1][0]) and torch.equal(res[0][1], res[1][1])
    torch.testing.assert_close(res[1][2], res[0][2], rtol=2e-5, atol=0)
    unrounded = R._per_sample_abs_sum((p - x) - p_other.float())
    assert not torch.allclose(res[1][2], unrounded, rtol=1e-6, atol=0), "den must use the rounded slot values"


# ---------------------------------------------------------------------------
# layouts and dtypes the fast path does not take


def _noncontig(shape, dtype, g, scale=1.0):
    """A [B, N, C] view of a [B, C, N] tensor: non-contiguous."""
    B, N, C = shape
    t = _randn((B, C, N), dtype, g, scale).transpose(1, 2)
    assert not t.is_contiguous()
    return t


def _strided_vec(values: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous 1-d view."""
    base = torch.full((values.numel(), 2), float("nan"), dtype=values.dtype)
    base[:, 0] = values.flatten()
    v = base[:, 0]
    assert not v.is_contiguous()
    return v


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_noncontiguous(cpu, dtype):
    shape, B = (3, 33, 65), 3
    g = _gen("noncontig", dtype)
    p, x, p_old, x_prev0, p_prev0 = (_noncontig(shape, dtype, g, s) for s in (1.0, 0.8, 0.5, 0.9, 1.1))
    den = _strided_vec(torch.rand(B, generator=g) * 1e3 + 1)
    acc0 = torch.rand(B, generator=g) * 0.1
    res = []
    for impl in (R.probe_decide, cpu.probe_decide):
        p_prev, x_prev = p_prev0.clone().transpose(1, 2).contiguous().transpose(1, 2), x_prev0.clone().transpose(1, 2).contiguous().transpose(1, 2)
        assert not p_prev.is_contiguous()
        acc = _strided_vec(acc0.clone())
        sums = torch.full((R.NUM_SUMS, B), float("nan")).t()  # [B, 5], non-contiguous
        flag = torch.full((1,), -7, dtype=torch.int32)
        gamma = _strided_vec(torch.full((B,), float("nan")))
        impl(p, x, p_prev, p_old, x_prev, acc, den, sums, flag, gamma, 1.0, 1.0, 1.5, R.POLICY_MAX, R.ERROR_PROBE_MINUS_INPUT)
        res.append({"p_prev": p_prev, "x_prev": x_prev, "acc": acc, "sums": sums, "flag": flag, "gamma": gamma})
    _compare_probe(res[1], res[0], dtype, "non-contiguous probe")

    r_new, r_old = _noncontig(shape, dtype, g, 0.5), _noncontig(shape, dtype, g, 0.5)
    gamma = _strided_vec(torch.tensor([1.0, 1.2, 1.5]))
    outs = []
    for impl in (R.reconstruct, cpu.reconstruct):
        out = torch.full((B, shape[2], shape[1]), float("nan"), dtype=dtype).transpose(1, 2)
        impl(x, r_new, r_old, gamma, out)
        outs.append(out)
    _assert_close(outs[1], outs[0], dtype, "elementwise", "non-contiguous out")

    h = _noncontig(shape, dtype, g, 1.2)
    outs = []
    for impl in (R.refresh, cpu.refresh):
        r_slot = torch.full((B, shape[2], shape[1]), float("nan"), dtype=dtype).transpose(1, 2)
        p_slot = torch.full((B, shape[2], shape[1]), float("nan"), dtype=dtype).transpose(1, 2)
        den_o = _strided_vec(torch.full((B,), float("nan")))
        acc = _strided_vec(torch.ones(B))
        impl(h, p, x, r_slot, p_slot, p_old, den_o, acc)
        outs.append((r_slot, p_slot, den_o, acc))
    _assert_close(outs[1][0], outs[0][0], dtype, "elementwise", "non-contiguous r_slot")
    _assert_close(outs[1][1], outs[0][1], dtype, "elementwise", "non-contiguous p_slot")
    torch.testing.assert_close(outs[1][2], outs[0][2], rtol=2e-5, atol=0)
    assert torch.equal(outs[1][3], torch.zeros(B))


def test_mixed_dtypes(cpu):
    """Tensors of different dtypes go through fp32 temporaries and match the reference."""
    shape = (2, 33, 65)
    g = _gen("mixed")
    t = _probe_inputs(shape, torch.bfloat16, g, True, 0)
    t["p_old"] = t["p_old"].float()  # fp32 window slot, bf16 activations
    t["p_prev"] = t["p_prev"].half()
    want = _run_probe(R.probe_decide, t, 5.0)
    got = _run_probe(cpu.probe_decide, t, 5.0)
    _compare_probe(got, want, torch.bfloat16)
    x, r_new, r_old = _randn(shape, torch.bfloat16, g), _randn(shape, torch.float32, g), _randn(shape, torch.float16, g)
    gamma = torch.tensor([1.1, 1.4])
    a, b = torch.empty(shape, dtype=torch.float16), torch.full(shape, float("nan"), dtype=torch.float16)
    R.reconstruct(x, r_new, r_old, gamma, a)
    cpu.reconstruct(x, r_new, r_old, gamma, b)
    assert torch.equal(a, b)


def test_float64(cpu):
    """fp64 tensors: arithmetic in fp32 as the reference (p.float()), stored back in fp64."""
    shape = (2, 33, 65)
    g = _gen("f64")
    x, r_new, r_old = (_randn(shape, torch.float64, g) for _ in range(3))
    gamma = torch.tensor([1.1, 1.4])
    a, b = torch.empty_like(x), torch.full_like(x, float("nan"))
    R.reconstruct(x, r_new, r_old, gamma, a)
    cpu.reconstruct(x, r_new, r_old, gamma, b)
    assert torch.equal(a, b)


def test_deterministic_across_thread_counts(cpu):
    """Chunks do not depend on the thread count: sums identical with 1 and 2 threads."""
    shape = (2, 700, 1001)
    t = _probe_inputs(shape, torch.float32, _gen("threads"), True, 0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run_probe(cpu.probe_decide, t, 1.0)
        torch.set_num_threads(max(2, threads))
        many = _run_probe(cpu.probe_decide, t, 1.0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one["sums"], many["sums"]) and torch.equal(one["gamma"], many["gamma"])


def test_empty_rows(cpu):
    """L = 0: zero sums -> err = inf, flag 0, gamma fallback; nothing to reconstruct."""
    shape = (2, 0, 5)
    t = {"p": torch.empty(shape), "x": torch.empty(shape), "p_prev": torch.empty(shape), "p_old": torch.empty(shape),
         "x_prev": None, "acc": torch.zeros(2), "den": torch.ones(2)}
    want = _run_probe(R.probe_decide, t, 1.0)
    got = _run_probe(cpu.probe_decide, t, 1.0)
    _compare_probe(got, want, torch.float32)
    assert got["flag"].item() == 0


# ---------------------------------------------------------------------------
# quad_blend

QB_TOL = dict(rtol=1e-4, atol=1e-4)  # w, c0, c2: fp32 sums in another order
# [B, N, ...]: odd sizes, a [B] tensor (one element per sample), a 4-d one, and one of ~2e5
# elements per sample (several parallel chunks per sample, starting mid-row for stride > 1).
QB_SHAPES = [(1, 7, 5), (3, 33, 17), (2, 1000, 24), (2, 999, 97), (5,), (2, 9, 4, 3)]
QB_STEPS = [(3.0, 5.0, 6.0), (0.0, 1.0, 2.0)]


def _qb_op():
    return torch.ops.dicache_cpu.quad_blend


def _qb_inputs(shape, dtype, g, w_true=None, noise=0.3):
    """p, x, p0, p1, p2 (dtype) and gamma ([B] fp32 in [0.8, 1.6]). p - x is the line plus
    ``w_true`` (per sample; default random in [-0.3, 1.3]) times the quadratic's correction,
    plus noise scaled by the correction (so w lands inside [0, 1] and clipped at either end)."""
    B = shape[0]
    gamma = 0.8 + 0.8 * torch.rand(B, generator=g)
    P0, P1, P2 = _randn(shape, dtype, g, 1.0, 0.2), _randn(shape, dtype, g, 0.8, -0.1), _randn(shape, dtype, g, 0.9)
    x = _randn(shape, dtype, g, 0.7, 0.1)
    if w_true is None:
        w_true = torch.rand(B, generator=g) * 1.6 - 0.3
    return {"gamma": gamma, "x": x, "p0": P0, "p1": P1, "p2": P2, "w_true": w_true, "noise": noise}


def _qb_set_probe(t, steps):
    """p for the given steps (the correction depends on them)."""
    gamma, x, P0, P1, P2 = t["gamma"], t["x"].float(), t["p0"].float(), t["p1"].float(), t["p2"].float()
    shape = (-1,) + (1,) * (x.dim() - 1)
    l0, l2 = R.lagrange_weights(gamma, *steps)
    gb = gamma.view(shape)
    d21 = P2 - P1
    bend = (l2 - gamma).view(shape) * d21 + l0.view(shape) * (P0 - P1)
    g = _gen("qb_noise", tuple(x.shape), steps)
    scale = bend.reshape(x.shape[0], -1).abs().mean(1).view(shape) if x.numel() else bend
    miss = t["w_true"].view(shape) * bend + t["noise"] * scale * torch.randn(x.shape, generator=g)
    t["p"] = (x + P1 + gb * d21 + miss).to(t["x"].dtype)
    return t


def _qb_run(impl, t, steps, stride=1, policy=R.POLICY_GLOBAL, fit=True, w0=None):
    """Run one implementation on fresh outputs (w poisoned when it is fitted); returns (w, c0, c2).
    The reference cannot fit on [B] tensors (flatten(1)): it gets the same elements as [B, 1]."""
    B = t["gamma"].numel()
    w = torch.full((B,), float("nan")) if fit else w0.clone()
    c0, c2 = torch.full((B,), float("nan")), torch.full((B,), float("nan"))
    probes = [t[k] for k in ("p", "x", "p0", "p1", "p2")] if fit else [None] * 5
    if impl is R.quad_blend and fit and probes[0].dim() == 1:
        probes = [v.unsqueeze(1) for v in probes]
    impl(t["gamma"], w, c0, c2, *steps, *probes, stride, policy)
    return w, c0, c2


def _qb_compare(got, want, what=""):
    for name, a, b in zip(("w", "c0", "c2"), got, want):
        torch.testing.assert_close(a, b, **QB_TOL, msg=lambda m, n=name: f"{what} {n}: {m}")
        assert torch.isfinite(a).all(), f"{what} {name} not written: {a}"


@pytest.mark.parametrize("policy", [R.POLICY_GLOBAL, R.POLICY_MAX], ids=["global", "max"])
@pytest.mark.parametrize("stride", [1, 2, 3, 64])
@pytest.mark.parametrize("shape", QB_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_quad_blend_fit(cpu, dtype, shape, stride, policy):
    g = _gen("quad_blend", dtype, shape, stride, policy)
    t = _qb_inputs(shape, dtype, g)
    for steps in QB_STEPS:
        _qb_set_probe(t, steps)
        want = _qb_run(R.quad_blend, t, steps, stride, policy)
        got = _qb_run(_qb_op(), t, steps, stride, policy)
        _qb_compare(got, want, f"steps={steps}")
        assert ((got[0] >= 0) & (got[0] <= 1)).all()
        if policy == R.POLICY_GLOBAL:
            assert torch.equal(got[0], got[0][:1].expand_as(got[0])), "global: one w for the batch"


@pytest.mark.parametrize("steps", QB_STEPS, ids=["steps356", "steps012"])
@pytest.mark.parametrize("policy", [R.POLICY_GLOBAL, R.POLICY_MAX], ids=["global", "max"])
def test_quad_blend_no_fit(cpu, policy, steps):
    """Without the probe tensors w is read (not written), whatever the policy."""
    B = 5
    g = _gen("quad_blend_nofit", policy, steps)
    t = {"gamma": 0.8 + 0.8 * torch.rand(B, generator=g)}
    w0 = torch.rand(B, generator=g)
    want = _qb_run(R.quad_blend, t, steps, policy=policy, fit=False, w0=w0)
    for impl in (_qb_op(), cpu.quad_blend):
        got = _qb_run(impl, t, steps, policy=policy, fit=False, w0=w0)
        _qb_compare(got, want)
        assert torch.equal(got[0], w0)
    # w = 1: the quadratic's Lagrange weights; w = 0: the line (c0 = 0, c2 = gamma)
    l0, l2 = R.lagrange_weights(t["gamma"], *steps)
    _, c0, c2 = _qb_run(_qb_op(), t, steps, fit=False, w0=torch.ones(B))
    torch.testing.assert_close(c0, l0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(c2, l2, rtol=1e-6, atol=1e-7)
    _, c0, c2 = _qb_run(_qb_op(), t, steps, fit=False, w0=torch.zeros(B))
    assert torch.equal(c0, torch.zeros(B)) and torch.equal(c2, t["gamma"])


def test_quad_blend_recovers_weight_and_clips(cpu):
    """p - x = line + w_true * correction (+ noise): w ~ w_true inside [0, 1], exactly 0 / 1 outside."""
    shape, steps = (4, 65, 33), (3.0, 5.0, 6.0)
    t = _qb_inputs(shape, torch.float32, _gen("qb_clip"), w_true=torch.tensor([-0.5, 1.5, 0.3, 0.8]), noise=0.05)
    t["gamma"] = torch.tensor([0.8, 1.3, 1.6, 1.2])
    _qb_set_probe(t, steps)
    want = _qb_run(R.quad_blend, t, steps, policy=R.POLICY_MAX)
    got = _qb_run(_qb_op(), t, steps, policy=R.POLICY_MAX)
    _qb_compare(got, want)
    w = got[0]
    assert w[0].item() == 0.0 and w[1].item() == 1.0, w
    torch.testing.assert_close(w[2:], torch.tensor([0.3, 0.8]), rtol=0, atol=0.02)
    # pooled: every sample far above 1 -> exactly 1; far below 0 -> exactly 0
    for w_true, expected in ((2.0, 1.0), (-1.0, 0.0)):
        t["w_true"] = torch.full((4,), w_true)
        _qb_set_probe(t, steps)
        want = _qb_run(R.quad_blend, t, steps, policy=R.POLICY_GLOBAL)
        got = _qb_run(_qb_op(), t, steps, policy=R.POLICY_GLOBAL)
        _qb_compare(got, want)
        assert torch.equal(got[0], torch.full((4,), expected))


@pytest.mark.parametrize("policy", [R.POLICY_GLOBAL, R.POLICY_MAX], ids=["global", "max"])
def test_quad_blend_zero_den(cpu, policy):
    """P0 = P1 = P2 -> bend = 0 everywhere -> sum bend^2 = 0 -> w = 0 (c0 = 0, c2 = gamma)."""
    shape, steps = (3, 33, 17), (3.0, 5.0, 6.0)
    g = _gen("qb_den0", policy)
    t = _qb_inputs(shape, torch.float32, g)
    t["p0"], t["p1"], t["p2"] = (t["p1"].clone() for _ in range(3))
    t["p"] = _randn(shape, torch.float32, g, 1.1, 0.3)
    want = _qb_run(R.quad_blend, t, steps, policy=policy)
    got = _qb_run(_qb_op(), t, steps, policy=policy)
    _qb_compare(got, want)
    assert torch.equal(got[0], torch.zeros(3)) and torch.equal(got[1], torch.zeros(3))
    assert torch.equal(got[2], t["gamma"])


@pytest.mark.parametrize("policy", [R.POLICY_GLOBAL, R.POLICY_MAX], ids=["global", "max"])
@pytest.mark.parametrize("shape", [(0, 7, 5), (0,), (2, 0, 5), (2, 7, 0)], ids=lambda s: "x".join(map(str, s)))
def test_quad_blend_empty(cpu, shape, policy):
    """B = 0: nothing to do; no elements to fit on: sums 0 -> w = 0."""
    B = shape[0]
    t = {"gamma": 0.8 + 0.8 * torch.rand(B, generator=_gen("qb_empty", shape)),
         **{k: torch.empty(shape) for k in ("p", "x", "p0", "p1", "p2")}}
    got = _qb_run(_qb_op(), t, (3.0, 5.0, 6.0), 2, policy)
    if B > 0:  # the reference cannot fit an empty batch (reshape(0, -1))
        want = _qb_run(R.quad_blend, t, (3.0, 5.0, 6.0), 2, policy)
        _qb_compare(got, want)
    assert torch.equal(got[0], torch.zeros(B)) and torch.equal(got[1], torch.zeros(B))
    assert torch.equal(got[2], t["gamma"])


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=lambda d: str(d).replace("torch.", ""))
def test_quad_blend_layouts(cpu, dtype):
    """Non-contiguous big tensors and state, mixed dtypes: contiguous copies / temporaries."""
    shape, steps, B = (3, 33, 17), (0.0, 1.0, 2.0), 3
    g = _gen("qb_layouts", dtype)
    t = _qb_inputs(shape, dtype, g)
    _qb_set_probe(t, steps)
    want = _qb_run(R.quad_blend, t, steps, 2, R.POLICY_MAX)
    # the same values in transposed views, a strided gamma, and strided outputs
    nc = dict(t)
    for k in ("p", "x", "p0", "p1", "p2"):
        nc[k] = t[k].transpose(1, 2).contiguous().transpose(1, 2)
        assert not nc[k].is_contiguous()
    nc["gamma"] = _strided_vec(t["gamma"])
    outs = [_strided_vec(torch.full((B,), float("nan"))) for _ in range(3)]
    _qb_op()(nc["gamma"], *outs, *steps, *(nc[k] for k in ("p", "x", "p0", "p1", "p2")), 2, R.POLICY_MAX)
    _qb_compare(outs, want, "non-contiguous")
    # no fit: a strided w is read
    w = _strided_vec(want[0].clone())
    c0, c2 = _strided_vec(torch.full((B,), float("nan"))), _strided_vec(torch.full((B,), float("nan")))
    _qb_op()(nc["gamma"], w, c0, c2, *steps)
    _qb_compare((w, c0, c2), want, "non-contiguous, no fit")
    # mixed dtypes: fp32 window slots
    mixed = dict(t, p0=t["p0"].float(), p1=t["p1"].float())
    _qb_compare(_qb_run(_qb_op(), mixed, steps, 2, R.POLICY_MAX), want, "mixed dtypes")


def test_quad_blend_deterministic_across_thread_counts(cpu):
    shape, steps = (2, 999, 97), (3.0, 5.0, 6.0)
    t = _qb_set_probe(_qb_inputs(shape, torch.float32, _gen("qb_threads")), steps)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _qb_run(_qb_op(), t, steps, 2, R.POLICY_MAX)
        torch.set_num_threads(max(2, threads))
        many = _qb_run(_qb_op(), t, steps, 2, R.POLICY_MAX)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


def test_quad_blend_invalid_arguments(cpu):
    shape, B = (2, 7, 13), 2
    t = _qb_inputs(shape, torch.float32, _gen("qb_errors"))
    _qb_set_probe(t, (3.0, 5.0, 6.0))
    w, c0, c2 = torch.full((B,), 0.5), torch.full((B,), 7.0), torch.full((B,), 7.0)
    args = lambda **kw: dict(  # noqa: E731
        gamma=t["gamma"], w=w, c0=c0, c2=c2, t0=3.0, t1=5.0, t2=6.0, p=t["p"], x=t["x"], p0=t["p0"],
        p1=t["p1"], p2=t["p2"], stride=1, policy=0) | kw
    for bad, exc in (
        (dict(x=torch.randn(2, 7, 14)), ValueError),
        (dict(p2=torch.randn(2, 8, 13)), ValueError),
        (dict(p=torch.randn(3, 7, 13), x=torch.randn(3, 7, 13), p0=torch.randn(3, 7, 13),
              p1=torch.randn(3, 7, 13), p2=torch.randn(3, 7, 13)), ValueError),  # batch != gamma's numel
        (dict(p0=None, p1=None, p2=None), ValueError),  # only some probe tensors
        (dict(p=None), ValueError),
        (dict(stride=0), ValueError),
        (dict(policy=2), ValueError),
        (dict(w=torch.zeros(B, dtype=torch.float64)), TypeError),
        (dict(w=torch.zeros(B + 1)), ValueError),
        (dict(c2=torch.zeros(B - 1)), ValueError),
        (dict(gamma=torch.ones(B, dtype=torch.float16)), TypeError),
        (dict(p1=torch.ones(shape, dtype=torch.int32)), TypeError),
    ):
        with pytest.raises(exc):
            _qb_op()(**args(**bad))
        assert torch.equal(w, torch.full((B,), 0.5)) and torch.equal(c0, torch.full((B,), 7.0)), \
            f"{bad}: nothing may be written before the checks pass"


# ---------------------------------------------------------------------------
# errors


def test_invalid_arguments(cpu):
    shape = (2, 7, 13)
    t = _probe_inputs(shape, torch.float32, _gen("errors"), True, 0)
    p_prev = t["p_prev"].clone()
    args = lambda **kw: dict(  # noqa: E731
        p=t["p"], x=t["x"], p_prev=p_prev, p_old=t["p_old"], x_prev=None, acc=torch.zeros(2), den=t["den"],
        sums=torch.zeros(2, 5), flag=torch.zeros(1, dtype=torch.int32), gamma=torch.zeros(2),
        threshold=1.0, gamma_lo=1.0, gamma_hi=1.5, policy=0, error_mode=0) | kw
    for bad, exc in (
        (dict(policy=2), ValueError),
        (dict(error_mode=3), ValueError),
        (dict(error_mode=1), ValueError),  # needs x_prev
        (dict(acc=torch.zeros(3)), ValueError),
        (dict(acc=torch.zeros(2, dtype=torch.float64)), TypeError),
        (dict(flag=torch.zeros(1, dtype=torch.int64)), TypeError),
        (dict(x=torch.zeros(2, 7, 14)), ValueError),
        (dict(p_old=torch.zeros(2, 7, 13, dtype=torch.int32)), TypeError),
    ):
        with pytest.raises(exc):
            cpu.probe_decide(**args(**bad))
        assert torch.equal(p_prev, t["p_prev"]), f"{bad}: nothing may be written before the checks pass"
    with pytest.raises(ValueError):
        cpu.reconstruct(t["x"], t["p"], None, torch.ones(3), torch.empty(shape))
    with pytest.raises(ValueError):
        cpu.refresh(t["x"], t["p"], t["x"], torch.empty(shape), torch.empty(2, 7, 12), None, torch.zeros(2), torch.zeros(2))


# ---------------------------------------------------------------------------
# dispatch, build info, fallbacks


def test_auto_selects_cpu_backend(cpu):
    assert select_backend("auto", "cpu").name == "cpu"
    assert availability("cpu")["cpu"] is None
    assert cpu.check_device(torch.device("cpu")) is None
    assert "cpu" in cpu.check_device(torch.device("cuda"))


def test_build_info(cpu):
    info = build.build_info()
    c = info["cpu"]
    assert c["built"] and c["reason"] is None
    assert Path(c["library"]).is_file()
    assert c["compiler"] and "-O3" in c["cflags"] and c["rejected"] == []
    assert isinstance(c["seconds"], float) and isinstance(c["cached"], bool)
    assert info["sources"] == str(REPO / "csrc")
    if torch.version.cuda is None:  # a CPU-only torch: CUDA not built, and says why
        assert not info["cuda"]["built"] and "not a CUDA build" in info["cuda"]["reason"]
    json.dumps(info)  # plain data


def _python(code: str, env_extra: Dict[str, str], timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=str(REPO))


_FALLBACK_SCRIPT = """
    import json, logging
    logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(message)s")
    import torch
    from dicache.ops import select_backend
    from dicache import build
    names = [select_backend("auto", "cpu").name for _ in range(3)]
    info = build.build_info()
    print(json.dumps({"names": names, "cpu": {k: info["cpu"][k] for k in ("built", "reason", "cached", "seconds")}}))
"""


def test_disabled_build_falls_back_with_one_log_line(cpu):
    r = _python(_FALLBACK_SCRIPT, {"DICACHE_BUILD_CPU": "0"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["names"] == ["torch"] * 3 and not out["cpu"]["built"]
    assert "DICACHE_BUILD_CPU=0" in out["cpu"]["reason"]
    lines = [line for line in r.stderr.splitlines() if line.startswith("LOG") and "C++ CPU kernels" in line]
    assert len(lines) == 1, r.stderr


def test_failed_build_falls_back_with_one_log_line(cpu, tmp_path):
    # An unknown compiler flag makes the compiler fail at once: a real failed build.
    r = _python(_FALLBACK_SCRIPT, {"DICACHE_BUILD_DIR": str(tmp_path), "DICACHE_CPU_ARCH_FLAGS": "-mno-such-flag-dicache"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["names"] == ["torch"] * 3 and not out["cpu"]["built"]
    assert "build failed" in out["cpu"]["reason"]
    lines = [line for line in r.stderr.splitlines() if line.startswith("LOG") and "C++ CPU kernels" in line]
    assert len(lines) == 1 and "WARNING" in lines[0], r.stderr


def test_cached_load_in_a_new_process(cpu):
    r = _python(_FALLBACK_SCRIPT, {})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["names"] == ["cpu"] * 3
    assert out["cpu"]["built"] and out["cpu"]["cached"], out


def test_sources_ship_as_package_data():
    """pyproject maps dicache.csrc to csrc/ and its package data covers every source file."""
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "dicache.csrc" in cfg["packages"]
    assert cfg["package-dir"]["dicache.csrc"] == "csrc"
    patterns = cfg["package-data"]["dicache.csrc"]
    for f in (REPO / "csrc").iterdir():
        if f.is_file():
            assert any(f.match(pat) for pat in patterns), f"{f.name} would not ship in a wheel"


def test_sources_found_in_installed_layout(tmp_path):
    """In a wheel, csrc/ is installed as dicache/csrc next to build.py: source_dir() finds it there."""
    pkg = tmp_path / "dicache"
    shutil.copytree(REPO / "csrc", pkg / "csrc")
    shutil.copy(REPO / "dicache" / "build.py", pkg / "build.py")
    spec = importlib.util.spec_from_file_location("dicache_build_installed_copy", pkg / "build.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        assert mod.source_dir() == pkg / "csrc"
    finally:
        del sys.modules[spec.name]


# A toolchain whose libraries' C++ exceptions end the process: without the .eh_frame_hdr section the
# unwinder finds no frame data for the library, so an error raised in it aborts (SIGABRT) instead of
# arriving in Python. (On a GPU machine, CXX=/opt/gcc/bin/g++, a relocated g++, did this with SIGSEGV.)
_CRASHING_CXX = """#!/bin/sh
exec c++ "$@" -Wl,--no-eh-frame-hdr
"""

_PROBE_SCRIPT = """
    import json, logging
    logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(message)s")
    import torch
    from dicache import build
    from dicache.ops import select_backend
    name = select_backend("auto", "cpu").name
    info = build.build_info()["cpu"]
    try:
        torch.ops.dicache_cpu.quad_blend(torch.ones(2), torch.zeros(3), torch.zeros(2), torch.zeros(2), 3., 5., 6.)
        raised = None
    except ValueError as exc:
        raised = str(exc)
    print(json.dumps({"name": name, "raised": raised, **{k: info[k] for k in ("built", "cached", "compiler", "rejected")}}))
"""


def test_a_library_whose_errors_crash_is_not_loaded(cpu, tmp_path):
    """The build probes, in a separate process, that an error raised in the library arrives as ValueError;
    a compiler whose library crashes instead is rejected (said once, kept as the verdict) and the next C++
    compiler on PATH builds the library that is loaded."""
    wrapper = tmp_path / "crashing-c++"
    wrapper.write_text(_CRASHING_CXX)
    wrapper.chmod(0o755)
    env = {"CXX": str(wrapper), "DICACHE_BUILD_DIR": str(tmp_path / "cache")}
    outs = []
    for _ in range(2):  # the second process reads both verdicts: nothing is compiled or probed again
        r = _python(_PROBE_SCRIPT, env)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        warned = [line for line in r.stderr.splitlines() if line.startswith("LOG WARNING") and str(wrapper) in line]
        assert len(warned) == 1, r.stderr[-3000:]
    for out in outs:
        assert out["name"] == "cpu" and out["built"], out
        assert out["raised"] and "w must have 2 elements" in out["raised"]
        assert not out["compiler"].startswith(str(wrapper)), out
        assert len(out["rejected"]) == 1 and out["rejected"][0].startswith(str(wrapper)), out
        assert "ended the process (SIGABRT)" in out["rejected"][0], out
    assert not outs[0]["cached"] and outs[1]["cached"], outs
    verdicts = sorted(json.loads(f.read_text())["verdict"] for f in (tmp_path / "cache").rglob(build._PROBE_FILE))
    assert len(verdicts) == 2 and verdicts[1] == "ok" and "SIGABRT" in verdicts[0], verdicts

    # DICACHE_BUILD_PROBE=0: CXX's library (up to date in its folder) is loaded unprobed, and its error crashes
    r = _python(_PROBE_SCRIPT, {**env, "DICACHE_BUILD_PROBE": "0"})
    assert r.returncode == -signal.SIGABRT and "w must have 2 elements" in r.stderr, (r.returncode, r.stderr[-2000:])


def test_compiler_candidates_and_build_key(monkeypatch, tmp_path):
    """As configured first, then the other C++ compilers on PATH (each file once, CC unset); the verdict's key
    follows the compiler and the flags."""
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    plain = build._compiler_candidates()
    assert plain[0] == {} and all(c["CXX"] != "c++" and c["CC"] is None for c in plain[1:])
    assert len({build._resolve(c.get("CXX") or "c++") for c in plain}) == len(plain)
    spec = {"name": "x", "extra_cflags": ["-O3"]}
    key = build._build_key(spec)
    assert build._build_key(dict(spec)) == key and build._build_key({**spec, "extra_cflags": ["-O2"]}) != key
    assert build._build_key({**spec, "verbose": True}) == key  # showing the commands builds the same library

    wrapper = tmp_path / "my-c++"
    wrapper.write_text(_CRASHING_CXX)
    wrapper.chmod(0o755)
    monkeypatch.setenv("CXX", str(wrapper))
    assert build._compiler_candidates()[:2] == [{}, {"CXX": "c++", "CC": None}]
    assert build._build_key(spec) != key
    wrapped_dir = build._build_dir("e", "t")
    with build._compiler_env({"CXX": "c++", "CC": None}):
        assert os.environ["CXX"] == "c++" and "CC" not in os.environ
        assert build._build_key(spec) == key and build._build_dir("e", "t") != wrapped_dir
    assert os.environ["CXX"] == str(wrapper)
