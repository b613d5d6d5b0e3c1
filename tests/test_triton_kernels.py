"""The fused Triton kernels (backend="triton") against dicache.ops.reference.

On a machine without a GPU the kernels run under the Triton interpreter
(``TRITON_INTERPRET=1``, set here and in conftest.py before triton is
imported); with a GPU and ``TRITON_INTERPRET=0`` they run compiled on CUDA.
Inputs are fresh random tensors (seeded per test for reproducibility);
outputs are poisoned (NaN or a sentinel) beforehand so that every element
must be written.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from dicache.ops import BackendUnavailableError, reference as ref, select_backend  # noqa: E402
from dicache.ops import triton_backend as tb  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() and not tb.interpreter_active() else "cpu")
_WHY_NOT = tb.check_device(DEVICE)
# Tests that launch no kernel run everywhere.
_NO_KERNEL_TESTS = {"test_bench_byte_accounting", "test_check_device_needs_interpreter_on_cpu", "test_kernels_compile_for_sm90"}


@pytest.fixture(autouse=True)
def _needs_kernels(request):
    if _WHY_NOT is not None and request.node.originalname not in _NO_KERNEL_TESTS:
        pytest.skip(f"triton backend unavailable on {DEVICE}: {_WHY_NOT}")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 7, 13), (3, 33, 65), (2, 129, 387)]  # odd N and C; the last has ~1e5 elements
POLICIES = [ref.POLICY_GLOBAL, ref.POLICY_MAX]
MODES = [ref.ERROR_PROBE, ref.ERROR_PROBE_MINUS_INPUT]

# Tolerance table for element-wise outputs: |actual - expected| <= ulps * ulp(expected) + atol,
# where ulp is taken in the output dtype. Both sides compute in fp32 and round once;
# fp32 may differ by fused multiply-adds on a GPU, and the interpreter truncates
# fp32 -> bf16 instead of rounding (1 ulp).
TOLERANCE = {
    torch.float32: dict(ulps=4, atol=1e-6),
    torch.float16: dict(ulps=1, atol=1e-6),
    torch.bfloat16: dict(ulps=1, atol=1e-6),
}
# Sums (and what is derived from them: acc, gamma, den) accumulate in fp32 in a
# different order than torch.sum.
SUM_RTOL = 2e-5
# The reference computes den from p_slot rounded to nearest, the interpreter's
# bf16 p_slot is truncated: den may then differ by about one bf16 ulp on average.
DEN_RTOL = {torch.float32: SUM_RTOL, torch.float16: SUM_RTOL, torch.bfloat16: 1e-2}


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def _gen(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*parts))


def _randn(shape, dtype, gen, scale=1.0, offset=None):
    t = torch.randn(shape, generator=gen) * scale
    if offset is not None:
        t = t + offset.float()
    return t.to(dtype).to(DEVICE)


def _ulp(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One unit in the last place of ``dtype`` at the magnitude of ``t`` (fp32 tensor)."""
    info = torch.finfo(dtype)
    mag = t.abs().clamp_min(info.tiny)
    return torch.exp2(torch.floor(torch.log2(mag))) * info.eps


def assert_close_ulp(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = ""):
    tol = TOLERANCE[dtype]
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert torch.isfinite(a).all(), f"{what}: non-finite values written"
    bound = tol["ulps"] * _ulp(e, dtype) + tol["atol"]
    err = (a - e).abs()
    bad = err > bound
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {a.numel()} elements off; worst |diff| {err.max().item():.3g} "
        f"(dtype {dtype}, {tol})"
    )


def assert_sums_close(actual, expected, rtol=SUM_RTOL, what=""):
    a, e = actual.float().cpu(), expected.float().cpu()
    torch.testing.assert_close(a, e, rtol=rtol, atol=1e-6, equal_nan=True, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------
# probe_decide


def _probe_case(shape, dtype, *, has_old, with_xprev, gen, acc_hi=0.3):
    """Random probe inputs whose error and γ land in interesting ranges."""
    B = shape[0]
    p = _randn(shape, dtype, gen)
    x = _randn(shape, dtype, gen)
    p_prev = _randn(shape, dtype, gen, scale=0.1, offset=p.cpu())  # err ≈ 0.1
    p_old = _randn(shape, dtype, gen, scale=0.3, offset=(p.float() - x.float()).cpu()) if has_old else None
    x_prev = _randn(shape, dtype, gen, scale=0.05, offset=x.cpu()) if with_xprev else None
    if has_old:
        align = ((p.float() - x.float()) - p_old.float()).abs().flatten(1).sum(1).cpu()
        # γ before the clip spans [0.8, 1.8): some samples clipped at each end, some not.
        den = align / (0.8 + torch.rand(B, generator=gen))
    else:
        den = torch.rand(B, generator=gen) * shape[1] * shape[2] + 1.0
    state = dict(
        acc=(torch.rand(B, generator=gen) * acc_hi).to(DEVICE),
        den=den.to(DEVICE),
        sums=torch.full((B, ref.NUM_SUMS), float("nan"), device=DEVICE),  # poisoned outputs
        flag=torch.full((1,), -7, dtype=torch.int32, device=DEVICE),
        gamma=torch.full((B,), float("nan"), device=DEVICE),
    )
    return dict(p=p, x=x, p_prev=p_prev, p_old=p_old, x_prev=x_prev, **state)


def _clone(args):
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


def _run_probe_both(args, scalars, **launch):
    """Run the kernel and the reference on independent copies; return both argument dicts."""
    mine, theirs = _clone(args), _clone(args)
    tb.probe_decide(**mine, **scalars, **launch)
    ref.probe_decide(**theirs, **scalars)
    return mine, theirs


def _assert_probe_equal(mine, theirs, dtype, scalars):
    assert torch.equal(mine["p_prev"], theirs["p_prev"]), "p_prev <- p must be an exact copy"
    if theirs["x_prev"] is not None:
        assert torch.equal(mine["x_prev"], theirs["x_prev"]), "x_prev <- x must be an exact copy"
    assert_sums_close(mine["sums"], theirs["sums"], what="sums")
    assert_sums_close(mine["acc"], theirs["acc"], what="acc")
    assert_sums_close(mine["gamma"], theirs["gamma"], what="gamma")
    assert torch.isfinite(mine["gamma"]).all()
    assert mine["flag"].item() == theirs["flag"].item(), (mine["acc"], scalars["threshold"])


@pytest.mark.parametrize("has_old", [False, True], ids=["one-entry", "two-entries"])
@pytest.mark.parametrize("error_mode", MODES, ids=["probe", "delta-minus"])
@pytest.mark.parametrize("policy", POLICIES, ids=["global", "max"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_probe_decide_matches_reference(dtype, shape, policy, error_mode, has_old):
    gen = _gen("probe", dtype, shape, policy, error_mode, has_old)
    args = _probe_case(shape, dtype, has_old=has_old, with_xprev=error_mode == 1, gen=gen)
    scalars = dict(threshold=0.3, gamma_lo=1.0, gamma_hi=1.5, policy=policy, error_mode=error_mode)
    mine, theirs = _run_probe_both(args, scalars)
    _assert_probe_equal(mine, theirs, dtype, scalars)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_probe_decide_x_prev_copied_in_probe_mode(dtype):
    """x_prev given with error_mode=0: it is refreshed but its sums stay 0."""
    shape = (3, 33, 65)
    args = _probe_case(shape, dtype, has_old=True, with_xprev=True, gen=_gen("xprev", dtype))
    scalars = dict(threshold=0.3, gamma_lo=1.0, gamma_hi=1.5, policy=ref.POLICY_MAX, error_mode=ref.ERROR_PROBE)
    mine, theirs = _run_probe_both(args, scalars)
    _assert_probe_equal(mine, theirs, dtype, scalars)
    assert torch.all(mine["sums"][:, ref.SUM_INPUT_DIFF:] == 0)


@pytest.mark.parametrize("block,iters", [(256, 1), (256, 3), (1024, 2)])
@pytest.mark.parametrize("policy", POLICIES, ids=["global", "max"])
def test_probe_decide_many_programs_and_workspace_reuse(policy, block, iters):
    """Several programs per sample (atomics + ticket epilogue), then a second call
    on the same workspace: its sums must not contain the first call's."""
    shape = (3, 33, 65)  # 2145 elements per sample
    dtype = torch.float32
    gen = _gen("many", policy, block, iters)
    args = _probe_case(shape, dtype, has_old=True, with_xprev=True, gen=gen)
    scalars = dict(threshold=0.5, gamma_lo=1.0, gamma_hi=1.5, policy=policy, error_mode=ref.ERROR_PROBE_MINUS_INPUT)
    mine, theirs = _clone(args), _clone(args)
    for step in range(2):
        tb.probe_decide(**mine, **scalars, block=block, iters=iters)
        ref.probe_decide(**theirs, **scalars)
        _assert_probe_equal(mine, theirs, dtype, scalars)
        # next call: a new probe output, same state tensors
        new_p = _randn(shape, dtype, gen, scale=0.2, offset=mine["p"].cpu())
        mine["p"], theirs["p"] = new_p, new_p.clone()
        mine["sums"].fill_(float("nan"))


def test_probe_decide_flag_both_ways():
    shape = (3, 33, 65)
    for threshold, expected in ((100.0, 1), (1e-3, 0)):
        for policy in POLICIES:
            args = _probe_case(shape, torch.float32, has_old=True, with_xprev=False, gen=_gen("flag", threshold, policy))
            scalars = dict(threshold=threshold, gamma_lo=1.0, gamma_hi=1.5, policy=policy, error_mode=0)
            mine, theirs = _run_probe_both(args, scalars)
            _assert_probe_equal(mine, theirs, torch.float32, scalars)
            assert mine["flag"].item() == expected


def test_probe_decide_policies_differ():
    """One sample moves a lot: policy=max refreshes, policy=global pools it away and reuses."""
    shape = (3, 33, 65)
    gen = _gen("policies")
    args = _probe_case(shape, torch.float32, has_old=True, with_xprev=False, gen=gen, acc_hi=0.0)
    noise = torch.tensor([0.01, 0.5, 0.01]).view(3, 1, 1)  # per-sample rel. L1 ≈ 0.01, 0.5, 0.01
    args["p_prev"] = (args["p"].cpu() + noise * torch.randn(shape, generator=gen)).to(DEVICE)
    for policy, expected in ((ref.POLICY_MAX, 0), (ref.POLICY_GLOBAL, 1)):
        scalars = dict(threshold=0.3, gamma_lo=1.0, gamma_hi=1.5, policy=policy, error_mode=0)
        mine, theirs = _run_probe_both(args, scalars)
        _assert_probe_equal(mine, theirs, torch.float32, scalars)
        assert mine["flag"].item() == expected
        if policy == ref.POLICY_GLOBAL:  # one pooled error and γ for the whole batch
            assert torch.all(mine["acc"] == mine["acc"][0]) and torch.all(mine["gamma"] == mine["gamma"][0])


@pytest.mark.parametrize("policy", POLICIES, ids=["global", "max"])
def test_probe_decide_zero_denominators(policy):
    """den = 0 -> γ = 1 then clipped (here up to gamma_lo = 1.2); Σ|p_prev| = 0 -> err = +inf."""
    shape = (2, 33, 65)
    gen = _gen("zero-den", policy)
    args = _probe_case(shape, torch.float32, has_old=True, with_xprev=False, gen=gen)
    args["den"] = torch.zeros(2, device=DEVICE)
    args["p_prev"] = torch.zeros(shape, device=DEVICE)  # the guard under test needs a zero tensor
    scalars = dict(threshold=0.5, gamma_lo=1.2, gamma_hi=1.5, policy=policy, error_mode=0)
    mine, theirs = _run_probe_both(args, scalars)
    _assert_probe_equal(mine, theirs, torch.float32, scalars)
    assert torch.all(mine["gamma"] == 1.2)
    assert torch.all(torch.isinf(mine["acc"])) and mine["flag"].item() == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("policy", POLICIES, ids=["global", "max"])
@pytest.mark.parametrize("error_mode", MODES, ids=["probe", "delta-minus"])
def test_probe_decide_non_finite_input(policy, error_mode, bad):
    """A NaN/Inf in p: flag 0 (refresh), acc = +inf for the sample(s) it reaches, γ finite."""
    shape = (3, 33, 65)
    gen = _gen("nonfinite", policy, error_mode, bad)
    args = _probe_case(shape, torch.bfloat16, has_old=True, with_xprev=error_mode == 1, gen=gen)
    args["p"][1, 5, 7] = bad
    scalars = dict(threshold=1e6, gamma_lo=1.0, gamma_hi=1.5, policy=policy, error_mode=error_mode)
    mine, theirs = _run_probe_both(args, scalars)
    assert mine["flag"].item() == 0 == theirs["flag"].item()
    assert torch.isfinite(mine["gamma"]).all()
    torch.testing.assert_close(mine["gamma"], theirs["gamma"], rtol=SUM_RTOL, atol=0)
    torch.testing.assert_close(mine["acc"], theirs["acc"], rtol=SUM_RTOL, atol=0)
    assert torch.isinf(mine["acc"][1])
    assert torch.equal(mine["p_prev"].isnan(), theirs["p_prev"].isnan())


def test_probe_decide_one_entry_gamma_is_one():
    """Without p_old, γ = 1 exactly (the reference does not clip it)."""
    args = _probe_case((2, 7, 13), torch.float32, has_old=False, with_xprev=False, gen=_gen("one-entry"))
    scalars = dict(threshold=0.5, gamma_lo=1.2, gamma_hi=1.5, policy=ref.POLICY_MAX, error_mode=0)
    mine, theirs = _run_probe_both(args, scalars)
    _assert_probe_equal(mine, theirs, torch.float32, scalars)
    assert torch.all(mine["gamma"] == 1.0)


def _noncontig(t: torch.Tensor) -> torch.Tensor:
    """The same values in a transposed (non-contiguous) layout."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def _strided(v: torch.Tensor) -> torch.Tensor:
    """A 1-D/2-D state tensor as a strided (non-contiguous) view with the same values."""
    buf = torch.full((v.shape[0], 2, *v.shape[1:]), float("nan"), dtype=v.dtype, device=v.device)
    buf[:, 0] = v
    return buf[:, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_probe_decide_non_contiguous(dtype):
    """Non-contiguous inputs and in-place outputs: results land in the caller's views."""
    shape = (3, 33, 65)
    args = _probe_case(shape, dtype, has_old=True, with_xprev=True, gen=_gen("nc-probe", dtype))
    theirs = _clone(args)
    mine = _clone(args)
    for k in ("p", "x", "p_prev", "p_old", "x_prev"):
        mine[k] = _noncontig(mine[k])
    for k in ("acc", "gamma", "den", "sums"):
        mine[k] = _strided(mine[k])
    assert not any(mine[k].is_contiguous() for k in ("p", "p_prev", "x_prev", "acc", "gamma", "sums"))
    scalars = dict(threshold=0.5, gamma_lo=1.0, gamma_hi=1.5, policy=ref.POLICY_MAX, error_mode=1)
    tb.probe_decide(**mine, **scalars)
    ref.probe_decide(**theirs, **scalars)
    _assert_probe_equal(mine, theirs, dtype, scalars)
    assert torch.equal(mine["p_prev"], mine["p"]) and torch.equal(mine["x_prev"], mine["x"])


def test_probe_decide_rejects_bad_arguments():
    args = _probe_case((2, 7, 13), torch.float32, has_old=True, with_xprev=False, gen=_gen("bad"))
    ok = dict(threshold=0.5, gamma_lo=1.0, gamma_hi=1.5, policy=0, error_mode=0)
    with pytest.raises(ValueError, match="x_prev"):
        tb.probe_decide(**_clone(args), **{**ok, "error_mode": 1})
    with pytest.raises(ValueError, match="policy"):
        tb.probe_decide(**_clone(args), **{**ok, "policy": 7})
    with pytest.raises(ValueError, match="error_mode"):
        tb.probe_decide(**_clone(args), **{**ok, "error_mode": 3})
    bad = _clone(args)
    bad["x"] = bad["x"][:, :-1]
    with pytest.raises(ValueError, match="shape"):
        tb.probe_decide(**bad, **ok)
    bad = _clone(args)
    bad["gamma"] = torch.zeros(3, device=DEVICE)
    with pytest.raises(ValueError, match="gamma"):
        tb.probe_decide(**bad, **ok)


# ---------------------------------------------------------------------------
# reconstruct


@pytest.mark.parametrize("entries", [1, 2, 3], ids=["one-entry", "two-entries", "three-entries"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_reconstruct_matches_reference(dtype, shape, entries):
    gen = _gen("recon", dtype, shape, entries)
    B = shape[0]
    x, r_new = _randn(shape, dtype, gen), _randn(shape, dtype, gen)
    r_old = _randn(shape, dtype, gen) if entries >= 2 else None
    gamma = (1.0 + torch.rand(B, generator=gen)).to(DEVICE)  # a different γ per sample
    # the quadratic's term: R[-3] and a weight per sample of either sign
    oldest = (_randn(shape, dtype, gen), (torch.rand(B, generator=gen) - 0.5).to(DEVICE)) if entries == 3 else ()
    out = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    expected = torch.empty_like(out)
    tb.reconstruct(x, r_new, r_old, gamma, out, *oldest)
    ref.reconstruct(x, r_new, r_old, gamma, expected, *oldest)
    assert_close_ulp(out, expected, dtype, "out")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_reconstruct_non_contiguous_and_in_place(dtype):
    shape = (3, 33, 65)
    gen = _gen("recon-nc", dtype)
    x = _noncontig(_randn(shape, dtype, gen))
    r_new, r_old = _noncontig(_randn(shape, dtype, gen)), _noncontig(_randn(shape, dtype, gen))
    gamma = _strided((1.0 + torch.rand(3, generator=gen)).to(DEVICE))
    expected = torch.empty(shape, dtype=dtype, device=DEVICE)
    ref.reconstruct(x, r_new, r_old, gamma, expected)

    out = _noncontig(torch.full(shape, float("nan"), dtype=dtype, device=DEVICE))
    tb.reconstruct(x, r_new, r_old, gamma, out, block=512)
    assert not out.is_contiguous()
    assert_close_ulp(out, expected, dtype, "non-contiguous out")

    inplace = x.contiguous()  # out aliases x: h overwrites the input
    tb.reconstruct(inplace, r_new, r_old, gamma, inplace)
    assert_close_ulp(inplace, expected, dtype, "out aliasing x")


# ---------------------------------------------------------------------------
# refresh


def _refresh_case(shape, dtype, slot_dtype, has_other, gen):
    B = shape[0]
    return dict(
        h=_randn(shape, dtype, gen),
        p=_randn(shape, dtype, gen),
        x=_randn(shape, dtype, gen),
        r_slot=torch.full(shape, float("nan"), dtype=slot_dtype, device=DEVICE),
        p_slot=torch.full(shape, float("nan"), dtype=slot_dtype, device=DEVICE),
        p_other=_randn(shape, slot_dtype, gen) if has_other else None,
        den=torch.full((B,), float("nan"), device=DEVICE),
        acc=(torch.rand(B, generator=gen) + 0.5).to(DEVICE),
    )


def _check_refresh(mine, theirs, slot_dtype):
    assert_close_ulp(mine["r_slot"], theirs["r_slot"], slot_dtype, "r_slot")
    assert_close_ulp(mine["p_slot"], theirs["p_slot"], slot_dtype, "p_slot")
    assert torch.all(mine["acc"] == 0)
    if theirs["p_other"] is None:
        assert torch.all(mine["den"] == 0)
        return
    # den is computed from the values the kernel stored ...
    own = (mine["p_slot"].float() - mine["p_other"].float()).abs().flatten(1).sum(1)
    assert_sums_close(mine["den"], own, what="den vs stored p_slot")
    # ... and matches the reference up to the rounding of the stored slot.
    assert_sums_close(mine["den"], theirs["den"], rtol=DEN_RTOL[slot_dtype], what="den vs reference")


@pytest.mark.parametrize("has_other", [False, True], ids=["first-entry", "second-entry"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_refresh_matches_reference(dtype, shape, has_other):
    args = _refresh_case(shape, dtype, dtype, has_other, _gen("refresh", dtype, shape, has_other))
    mine, theirs = _clone(args), _clone(args)
    tb.refresh(**mine)
    ref.refresh(**theirs)
    _check_refresh(mine, theirs, dtype)


@pytest.mark.parametrize(
    "dtype,slot_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16)]
)
def test_refresh_slot_dtype_differs(dtype, slot_dtype):
    args = _refresh_case((3, 33, 65), dtype, slot_dtype, True, _gen("refresh-mixed", dtype, slot_dtype))
    mine, theirs = _clone(args), _clone(args)
    tb.refresh(**mine)
    ref.refresh(**theirs)
    _check_refresh(mine, theirs, slot_dtype)


@pytest.mark.parametrize("block,iters", [(256, 1), (512, 3)])
def test_refresh_many_programs_and_workspace_reuse(block, iters):
    """Many programs per sample; probe and refresh alternate on the shared workspace."""
    shape = (3, 33, 65)
    gen = _gen("refresh-many", block, iters)
    for step in range(2):
        args = _refresh_case(shape, torch.float32, torch.float32, True, gen)
        mine, theirs = _clone(args), _clone(args)
        tb.refresh(**mine, block=block, iters=iters)
        ref.refresh(**theirs)
        _check_refresh(mine, theirs, torch.float32)
        pargs = _probe_case(shape, torch.float32, has_old=True, with_xprev=False, gen=gen)
        scalars = dict(threshold=0.5, gamma_lo=1.0, gamma_hi=1.5, policy=1, error_mode=0)
        m, t = _run_probe_both(pargs, scalars, block=block, iters=iters)
        _assert_probe_equal(m, t, torch.float32, scalars)


def test_refresh_non_contiguous():
    shape = (3, 33, 65)
    dtype = torch.float16
    args = _refresh_case(shape, dtype, dtype, True, _gen("refresh-nc"))
    theirs = _clone(args)
    mine = {k: (_noncontig(v) if isinstance(v, torch.Tensor) and v.dim() == 3 else v) for k, v in args.items()}
    mine["den"], mine["acc"] = _strided(args["den"]), _strided(args["acc"])
    assert not mine["r_slot"].is_contiguous() and not mine["den"].is_contiguous()
    tb.refresh(**mine)
    ref.refresh(**theirs)
    _check_refresh(mine, theirs, dtype)


# ---------------------------------------------------------------------------
# backend plumbing


def test_backend_loads_and_selects():
    backend = select_backend("triton", DEVICE)
    assert backend.name == "triton"
    assert backend.probe_decide is tb.probe_decide
    assert tb.check_device(torch.device("cuda")) is None
    assert "meta" in tb.check_device(torch.device("meta"))


def test_check_device_needs_interpreter_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = tb.check_device(torch.device("cpu"))
    assert reason is not None and "TRITON_INTERPRET" in reason
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        select_backend("triton", "cpu")


# ---------------------------------------------------------------------------
# quad_blend


STEPS = [(3.0, 5.0, 6.0), (0.0, 1.0, 2.0)]


def _quad_case(shape, dtype, gen, *, fit=True):
    """Random stored probe residuals and a probe between the line and the quadratic (w inside (0, 1) for most
    samples, the fitted ratio outside [0, 1] for some), γ in [0.8, 1.6]."""
    B = shape[0]
    P0, P1, P2 = (_randn(shape, dtype, gen) for _ in range(3))
    x = _randn(shape, dtype, gen)
    p = _randn(shape, dtype, gen, scale=0.5, offset=(x.float() + P2.float()).cpu())
    # γ kept 0.03 away from 1, where the bend vanishes and w turns sensitive to one rounding of c2(τ)
    # (torch divides a CUDA tensor by a number through its reciprocal, the kernels divide)
    u = torch.rand(B, generator=gen)
    gamma = torch.where(torch.arange(B) % 2 == 0, 1.03 + 0.57 * u, 0.8 + 0.17 * u)
    out = dict(gamma=gamma.to(DEVICE),
               w=(torch.rand(B, generator=gen) if not fit else torch.full((B,), float("nan"))).to(DEVICE),
               c0=torch.full((B,), float("nan"), device=DEVICE), c2=torch.full((B,), float("nan"), device=DEVICE))
    if fit:
        out.update(p=p, x=x, p0=P0, p1=P1, p2=P2)
    return out


def _run_quad_both(args, steps, **kw):
    mine, theirs = _clone(args), _clone(args)
    tb.quad_blend(**mine, t0=steps[0], t1=steps[1], t2=steps[2], **kw)
    kw.pop("block", None), kw.pop("iters", None)
    ref.quad_blend(**theirs, t0=steps[0], t1=steps[1], t2=steps[2], **kw)
    for name in ("w", "c0", "c2"):
        torch.testing.assert_close(mine[name].cpu(), theirs[name].cpu(), rtol=1e-4, atol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")
    return mine, theirs


@pytest.mark.parametrize("stride", [1, 3, 1000], ids=["stride1", "stride3", "stride-beyond-N"])
@pytest.mark.parametrize("policy", POLICIES, ids=["global", "max"])
@pytest.mark.parametrize("shape", SHAPES + [(5,), (2, 9, 3, 5)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_quad_blend_fit_matches_reference(dtype, shape, policy, stride):
    steps = STEPS[stride % 2]
    args = _quad_case(shape, dtype, _gen("quad", dtype, shape, policy, stride))
    mine, _ = _run_quad_both(args, steps, stride=stride, policy=policy)
    assert ((mine["w"] >= 0) & (mine["w"] <= 1)).all()


@pytest.mark.parametrize("steps", STEPS, ids=["steps-3-5-6", "steps-0-1-2"])
def test_quad_blend_without_fit_reads_w(steps):
    args = _quad_case((6, 4, 3), torch.float32, _gen("quad-nofit", steps), fit=False)
    mine, _ = _run_quad_both(args, steps)
    assert torch.equal(mine["w"], args["w"])  # read, not written
    # the blended weights: the line at w = 0 (c0 = 0, c2 = γ), the quadratic's Lagrange weights at w = 1
    for w, (c0, c2) in ((0.0, (torch.zeros(6), args["gamma"])), (1.0, ref.lagrange_weights(args["gamma"], *steps))):
        a = dict(args, w=torch.full((6,), w, device=DEVICE))
        tb.quad_blend(**a, t0=steps[0], t1=steps[1], t2=steps[2])
        torch.testing.assert_close(a["c0"].cpu(), c0.float().cpu(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(a["c2"].cpu(), c2.float().cpu(), rtol=1e-6, atol=1e-6)


def test_quad_blend_fit_finds_the_line_and_the_quadratic():
    """A probe residual on the quadratic through the stored ones gives w = 1, one on the line w = 0, one past
    the quadratic is clipped to 1, and stored residuals that coincide (no bend) give w = 0."""
    g = _gen("quad-exact")
    shape, steps = (3, 17, 8), (0.0, 1.0, 2.0)
    A, Bq, C = (torch.randn(shape, generator=g) for _ in range(3))
    P = [A + Bq * k + C * k * k for k in range(3)]
    x = torch.randn(shape, generator=g)
    gamma = torch.tensor([1.5, 2.0, 1.2])
    tau = (steps[1] + gamma * (steps[2] - steps[1])).view(-1, 1, 1)
    quad, line = A + Bq * tau + C * tau * tau, P[1] + gamma.view(-1, 1, 1) * (P[2] - P[1])
    for probe, want in ((quad, 1.0), (line, 0.0), (quad + 0.5 * (quad - line), 1.0), (line - (quad - line), 0.0)):
        args = dict(gamma=gamma.to(DEVICE), w=torch.full((3,), float("nan"), device=DEVICE),
                    c0=torch.empty(3, device=DEVICE), c2=torch.empty(3, device=DEVICE),
                    p=(x + probe).to(DEVICE), x=x.to(DEVICE), p0=P[0].to(DEVICE), p1=P[1].to(DEVICE),
                    p2=P[2].to(DEVICE))
        mine, _ = _run_quad_both(args, steps, policy=ref.POLICY_MAX)
        torch.testing.assert_close(mine["w"].cpu(), torch.full((3,), want), atol=2e-3, rtol=0)
    same = P[1].to(DEVICE)
    args = dict(gamma=gamma.to(DEVICE), w=torch.full((3,), float("nan"), device=DEVICE),
                c0=torch.empty(3, device=DEVICE), c2=torch.empty(3, device=DEVICE),
                p=(x + quad).to(DEVICE), x=x.to(DEVICE), p0=same, p1=same, p2=same)
    mine, _ = _run_quad_both(args, steps, policy=ref.POLICY_GLOBAL)
    assert torch.equal(mine["w"].cpu(), torch.zeros(3))
    torch.testing.assert_close(mine["c2"].cpu(), gamma)


@pytest.mark.parametrize("block,iters", [(256, 1), (256, 3)])
def test_quad_blend_many_programs_and_workspace_reuse(block, iters):
    """Several programs per sample, calls repeated and interleaved with probe_decide on the same workspace."""
    shape = (2, 129, 40)
    for k in range(3):
        args = _quad_case(shape, torch.bfloat16, _gen("quad-ws", block, iters, k))
        _run_quad_both(args, STEPS[0], stride=2, policy=POLICIES[k % 2], block=block, iters=iters)
        pargs = _probe_case(shape, torch.float32, has_old=True, with_xprev=False, gen=_gen("quad-ws-probe", k))
        scalars = dict(threshold=0.3, gamma_lo=1.0, gamma_hi=1.5, policy=ref.POLICY_MAX, error_mode=ref.ERROR_PROBE)
        mine, theirs = _run_probe_both(pargs, scalars, block=block, iters=iters)
        _assert_probe_equal(mine, theirs, torch.float32, scalars)


def test_quad_blend_non_contiguous_outputs_and_empty():
    args = _quad_case((3, 11, 5), torch.float32, _gen("quad-nc"))
    buf = torch.full((3, 3), float("nan"), device=DEVICE)
    mine = dict(_clone(args), w=buf[:, 0], c0=buf[:, 1], c2=buf[:, 2])
    tb.quad_blend(**mine, t0=3.0, t1=5.0, t2=6.0, stride=2, policy=ref.POLICY_MAX)
    theirs = _clone(args)
    ref.quad_blend(**theirs, t0=3.0, t1=5.0, t2=6.0, stride=2, policy=ref.POLICY_MAX)
    for name in ("w", "c0", "c2"):
        torch.testing.assert_close(mine[name].cpu(), theirs[name].cpu(), rtol=1e-4, atol=1e-4)
    empty = _quad_case((2, 0, 5), torch.float32, _gen("quad-empty"))
    mine, _ = _run_quad_both(empty, STEPS[0], policy=ref.POLICY_MAX)
    assert torch.equal(mine["w"].cpu(), torch.zeros(2))


def test_quad_blend_rejects_bad_arguments():
    args = _quad_case((2, 5, 3), torch.float32, _gen("quad-bad"))
    steps = dict(t0=0.0, t1=1.0, t2=2.0)
    for bad, match in ((dict(args, p0=None), "go together"), (dict(args, stride=0), "stride"),
                       (dict(args, policy=3), "policy"), (dict(args, w=args["w"][:1]), "w must have"),
                       (dict(args, x=args["x"][:, :4]), "x has shape")):
        for impl in (tb.quad_blend, ref.quad_blend):
            with pytest.raises(ValueError, match=match):
                impl(**_clone(bad), **steps)
    with pytest.raises(TypeError, match="p1 must be a float tensor"):
        tb.quad_blend(**dict(_clone(args), p1=args["p1"].to(torch.int32)), **steps)


# ---------------------------------------------------------------------------
# benchmark script: its byte accounting runs anywhere


def _load_bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_triton.py"
    spec = importlib.util.spec_from_file_location("bench_triton", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_bench_byte_accounting():
    bench = _load_bench()
    shape = (2, 75600, 5120)
    n = math.prod(shape)
    # probe (p, p_prev, x, p_old read; p_prev written): 5 tensors
    assert bench.tensor_traffic("probe_decide") == (4, 1)
    assert bench.tensor_traffic("probe_decide", has_old=False) == (2, 1)
    assert bench.tensor_traffic("probe_decide", error_mode=1) == (5, 2)
    assert bench.tensor_traffic("reconstruct") == (3, 1)
    assert bench.tensor_traffic("reconstruct", has_old=False) == (2, 1)
    assert bench.tensor_traffic("reconstruct", has_oldest=True) == (4, 1)
    assert bench.tensor_traffic("refresh") == (4, 2)
    case = bench.Case("reconstruct", shape, torch.bfloat16)
    assert bench.min_bytes(case) == 4 * n * 2 + 4 * 2
    case = bench.Case("reconstruct", shape, torch.bfloat16, has_oldest=True)
    assert bench.min_bytes(case) == 5 * n * 2 + 4 * 2 * 2  # gamma and c_oldest per sample
    assert case.grid_op == "reconstruct3" and case.label.endswith(",three]")
    with pytest.raises(ValueError, match="has_oldest"):
        bench.Case("refresh", shape, torch.float32, has_oldest=True)
    case = bench.Case("probe_decide", shape, torch.float32)
    assert bench.min_bytes(case) == 5 * n * 4 + bench.state_bytes("probe_decide", 2)
    assert bench.gbps(10**9, 1.0) == pytest.approx(1000.0)
    grid = list(bench.cases())
    assert len(grid) == len(bench.SHAPES) * len(bench.DTYPES) * len(bench.GRID_OPS) == 24
    assert {c.shape for c in grid} == {(1, 4096, 3072), (1, 32760, 1536), (2, 75600, 5120)}
    assert [c.grid_op for c in bench.cases(ops=["reconstruct3"])] == ["reconstruct3"] * 6
    with pytest.raises(ValueError, match="ops"):
        list(bench.cases(ops=["reconstruct4"]))
    with pytest.raises(ValueError):
        bench.tensor_traffic("nope")
    if not torch.cuda.is_available():
        assert bench.main([]) == 2  # refuses to "measure" without a GPU


def test_bench_cases_run_and_verify():
    """The benchmark's inputs are valid for both implementations (tiny shapes, on DEVICE)."""
    bench = _load_bench()
    for op in bench.OPS:
        for has_old in (False, True):
            for error_mode in ((0, 1) if op == "probe_decide" else (0,)):
                case = bench.Case(op, (2, 5, 7), torch.bfloat16, has_old=has_old, error_mode=error_mode)
                assert bench.verify(case, DEVICE), case.label
    case = bench.Case("reconstruct", (2, 5, 7), torch.bfloat16, has_oldest=True)
    assert bench.verify(case, DEVICE), case.label


@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract")  # inf - inf, by design
def test_empty_samples():
    """N = 0: no element to read; sums are 0, err = +inf, γ = clip(0) = gamma_lo, den = 0."""
    shape = (2, 0, 5)
    args = _probe_case(shape, torch.float32, has_old=True, with_xprev=True, gen=_gen("empty"))
    args["den"] = torch.ones(2, device=DEVICE)
    scalars = dict(threshold=0.5, gamma_lo=1.1, gamma_hi=1.5, policy=ref.POLICY_MAX, error_mode=1)
    mine, theirs = _run_probe_both(args, scalars)
    _assert_probe_equal(mine, theirs, torch.float32, scalars)
    assert torch.all(mine["gamma"] == 1.1) and mine["flag"].item() == 0
    fargs = _refresh_case(shape, torch.float32, torch.float32, True, _gen("empty-refresh"))
    mine, theirs = _clone(fargs), _clone(fargs)
    tb.refresh(**mine)
    ref.refresh(**theirs)
    assert torch.all(mine["den"] == 0) and torch.all(mine["acc"] == 0)


# ---------------------------------------------------------------------------
# the compiled (non-interpreter) path: build for sm_90 without a GPU

_COMPILE_SNIPPET = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dicache.kernels import cache_ops as k

def build(fn, types, consts):
    names = fn.arg_names
    sig = {n: ("constexpr" if n in consts else types[n]) for n in names}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(n),): v for n, v in consts.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    assert compiled.asm["cubin"]
    return compiled.asm["ptx"]

state = dict(acc_ptr="*fp32", den_ptr="*fp32", sums_ptr="*fp32", gamma_ptr="*fp32", ws_ptr="*fp32",
             flag_ptr="*i32", ticket_ptr="*i32", S="i64", B="i32", iters="i32", num_programs="i32",
             threshold="fp32", gamma_lo="fp32", gamma_hi="fp32")
for dt, full in (("bf16", True), ("fp32", False)):
    big = {n: "*" + dt for n in ("p_ptr", "x_ptr", "p_prev_ptr", "p_old_ptr", "x_prev_ptr", "h_ptr",
                                 "r_slot_ptr", "p_slot_ptr", "p_other_ptr", "r_new_ptr", "r_old_ptr", "out_ptr",
                                 "r_oldest_ptr")}
    types = dict(big, c_oldest_ptr="*fp32", **state)
    ptx = build(k.probe_decide_kernel, types, dict(HAS_OLD=full, HAS_XPREV=full, DELTA_MINUS=full,
                                                   PER_SAMPLE=full, BLOCK=4096, BLOCK_B=4))
    assert "atom.global.gpu.acq_rel.add" in ptx and "atom.global.gpu.acq_rel.exch" in ptx
    build(k.reconstruct_kernel, types, dict(HAS_OLD=full, HAS_OLDEST=full, BLOCK=4096))
    build(k.refresh_kernel, types, dict(HAS_OTHER=full, BLOCK=4096, BLOCK_B=4))
    qtypes = dict(big, p0_ptr="*" + dt, p1_ptr="*" + dt, p2_ptr="*" + dt, w_ptr="*fp32", c0_ptr="*fp32",
                  c2_ptr="*fp32", inner="i64", row_step="i64", n_sub="i64", t0="fp32", t1="fp32", t2="fp32",
                  **state)
    build(k.quad_blend_kernel, qtypes, dict(FIT=full, PER_SAMPLE=full, BLOCK=4096, BLOCK_B=4))
print("compiled")
"""


def test_kernels_compile_for_sm90():
    """The kernels also build for a GPU (Hopper, sm_90) — catches code that only the
    interpreter accepts. Runs in a subprocess without TRITON_INTERPRET."""
    import subprocess

    triton = pytest.importorskip("triton")
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("triton's bundled ptxas is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _COMPILE_SNIPPET], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
