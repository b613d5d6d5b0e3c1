"""The CUDA kernels (``backend="cuda"``, csrc/cuda_kernels.cu) against the reference ops, on a GPU.

Skipped where no CUDA device is available (the sources are compile-checked without a GPU by
``test_cuda_compile.py``). Every case draws fresh random inputs on the GPU, odd shapes included,
runs the reference (:mod:`dicache.ops.reference`, on the same GPU) and the kernels on separate
copies of the in-place state, and compares every output. Outputs the kernels only write are
poisoned first (NaN / a sentinel) so that an element left unwritten shows up.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from dicache.ops import BackendUnavailableError, load_backend, reference as R, select_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# [B, N, C]: tails of vectors and of thread chunks, B = 1 and B > 1, one of ~1e6 elements
SHAPES = [(1, 7, 13), (3, 33, 65), (2, 129, 387), (1, 999, 1001)]
# Elementwise outputs are computed in fp32 and rounded once; on a GPU a fused multiply-add may
# round once where the reference rounds twice: a few fp32 ulps, one ulp of a 16-bit dtype.
ELEMENTWISE = {torch.float32: (5e-7, 1e-6), torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 8e-3)}
SUMS_RTOL = 2e-5  # per-sample sums: fp32, another order of additions


@pytest.fixture(scope="module")
def cuda():
    try:
        return load_backend("cuda")
    except BackendUnavailableError as exc:  # a GPU is there, so the build must work
        pytest.fail(f"the CUDA backend did not build on a machine with a GPU: {exc}")


def _gen(*key) -> torch.Generator:
    g = torch.Generator(device="cuda")
    g.manual_seed(zlib.crc32(repr(key).encode()))
    return g


def _randn(shape, dtype, g, scale=1.0, offset=0.0):
    return (torch.randn(shape, generator=g, device="cuda") * scale + offset).to(dtype)


def _close(got, want, dtype, what):
    rtol, atol = ELEMENTWISE[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _close_sums(got, want, what):
    atol = 1e-5 * max(1.0, float(want.nan_to_num().abs().max()))
    torch.testing.assert_close(got, want, rtol=SUMS_RTOL, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("has_old", [True, False], ids=["old", "no_old"])
@pytest.mark.parametrize("error_mode", [R.ERROR_PROBE, R.ERROR_PROBE_MINUS_INPUT], ids=["err0", "err1"])
@pytest.mark.parametrize("policy", [R.POLICY_GLOBAL, R.POLICY_MAX], ids=["global", "max"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_probe_decide(cuda, dtype, shape, policy, error_mode, has_old):
    g = _gen("probe", dtype, shape, policy, error_mode, has_old)
    B = shape[0]
    p, x = _randn(shape, dtype, g, 1.3, 0.2), _randn(shape, dtype, g, 0.9, -0.1)
    p_prev = _randn(shape, dtype, g, 1.1, 0.15)
    p_old = _randn(shape, dtype, g, 0.4) if has_old else None
    x_prev = _randn(shape, dtype, g, 0.8) if error_mode == R.ERROR_PROBE_MINUS_INPUT else None
    acc = torch.rand(B, generator=g, device="cuda") * 0.3
    den = torch.rand(B, generator=g, device="cuda") * 100 + 1
    if has_old:  # γ lands below, inside and above [1, 1.5]
        align = R._per_sample_abs_sum((p.float() - x.float()) - p_old.float())
        den = align / (0.7 + 1.1 * torch.rand(B, generator=g, device="cuda"))
    outs = []
    for impl in (cuda.probe_decide, R.probe_decide):
        state = dict(p_prev=p_prev.clone(), x_prev=None if x_prev is None else x_prev.clone(), acc=acc.clone(),
                     sums=torch.full((B, R.NUM_SUMS), float("nan"), device="cuda"),
                     flag=torch.full((1,), -7, dtype=torch.int32, device="cuda"),
                     gamma=torch.full((B,), float("nan"), device="cuda"))
        impl(p, x, state["p_prev"], p_old, state["x_prev"], state["acc"], den, state["sums"], state["flag"],
             state["gamma"], 0.35, 1.0, 1.5, policy, error_mode)
        outs.append(state)
    got, want = outs
    assert torch.equal(got["p_prev"], want["p_prev"])
    if x_prev is not None:
        assert torch.equal(got["x_prev"], want["x_prev"])
    _close_sums(got["sums"], want["sums"], "sums")
    _close_sums(got["acc"], want["acc"], "acc")
    _close_sums(got["gamma"], want["gamma"], "gamma")
    assert got["flag"].item() == want["flag"].item() and got["flag"].item() in (0, 1)
    assert torch.isfinite(got["gamma"]).all()


@pytest.mark.parametrize("entries", [3, 2, 1], ids=["three", "two", "one"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_reconstruct(cuda, dtype, shape, entries):
    g = _gen("reconstruct", dtype, shape, entries)
    x, r_new = _randn(shape, dtype, g), _randn(shape, dtype, g, 0.5)
    r_old = _randn(shape, dtype, g, 0.5) if entries >= 2 else None
    gamma = 1 + 0.5 * torch.rand(shape[0], generator=g, device="cuda")
    # the quadratic's term: R[-3] and a weight per sample of either sign
    oldest = (_randn(shape, dtype, g, 0.5), torch.rand(shape[0], generator=g, device="cuda") - 0.5) if entries == 3 else ()
    got = torch.full(shape, float("nan"), dtype=dtype, device="cuda")
    want = torch.full_like(got, float("nan"))
    cuda.reconstruct(x, r_new, r_old, gamma, got, *oldest)
    R.reconstruct(x, r_new, r_old, gamma, want, *oldest)
    assert not got.isnan().any()
    _close(got, want, dtype, "out")


@pytest.mark.parametrize("has_other", [True, False], ids=["other", "no_other"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_refresh(cuda, dtype, shape, has_other):
    g = _gen("refresh", dtype, shape, has_other)
    B = shape[0]
    h, p, x = _randn(shape, dtype, g, 1.2), _randn(shape, dtype, g), _randn(shape, dtype, g, 0.7)
    p_other = _randn(shape, dtype, g, 0.9) if has_other else None
    outs = []
    for impl in (cuda.refresh, R.refresh):
        o = dict(r_slot=torch.full(shape, float("nan"), dtype=dtype, device="cuda"),
                 p_slot=torch.full(shape, float("nan"), dtype=dtype, device="cuda"),
                 den=torch.full((B,), float("nan"), device="cuda"), acc=torch.full((B,), 5.0, device="cuda"))
        impl(h, p, x, o["r_slot"], o["p_slot"], p_other, o["den"], o["acc"])
        outs.append(o)
    got, want = outs
    _close(got["r_slot"], want["r_slot"], dtype, "r_slot")
    _close(got["p_slot"], want["p_slot"], dtype, "p_slot")
    _close_sums(got["den"], want["den"], "den")
    assert torch.equal(got["acc"], want["acc"])


def test_non_contiguous_and_repeated_calls(cuda):
    """Strided inputs and in-place outputs go through temporaries; the reduction's workspace is reused."""
    g = _gen("strided")
    base = _randn((2, 64, 96), torch.float32, g)
    x = base.transpose(1, 2)  # [2, 96, 64], not contiguous
    r_new, r_old = _randn((2, 96, 64), torch.float32, g), _randn((2, 96, 64), torch.float32, g)
    gamma = torch.tensor([1.2, 1.4], device="cuda")
    out = torch.full((2, 64, 96), float("nan"), device="cuda").transpose(1, 2)
    cuda.reconstruct(x, r_new, r_old, gamma, out)
    want = torch.empty_like(out)
    R.reconstruct(x, r_new, r_old, gamma, want)
    _close(out, want, torch.float32, "strided out")
    for i in range(3):  # the workspace must be left zeroed between launches
        _probe_decide_both(cuda, g, f"call {i}")


def _probe_decide_both(cuda, g, what):
    """One probe_decide on fresh inputs through the kernels and the reference: same sums and flag."""
    p, xx, pp = (_randn((2, 33, 65), torch.float32, g) for _ in range(3))
    res = []
    for impl in (cuda.probe_decide, R.probe_decide):
        st = [pp.clone(), torch.zeros(2, device="cuda"), torch.zeros(2, R.NUM_SUMS, device="cuda"),
              torch.zeros(1, dtype=torch.int32, device="cuda"), torch.ones(2, device="cuda")]
        impl(p, xx, st[0], None, None, st[1], torch.full((2,), 50.0, device="cuda"), st[2], st[3], st[4],
             0.5, 1.0, 1.5, R.POLICY_GLOBAL, R.ERROR_PROBE)
        res.append(st)
    _close_sums(res[0][2], res[1][2], f"sums, {what}")
    assert res[0][3].item() == res[1][3].item()


def test_auto_picks_cuda_on_cuda_tensors(cuda):
    assert select_backend("auto", "cuda").name == "cuda"


# ---------------------------------------------------------------------------
# quad_blend (torch.ops.dicache_cuda.quad_blend against reference.quad_blend)

# The shapes of the other ops plus a [B] tensor (one element per sample).
QUAD_SHAPES = SHAPES + [(5,)]
QUAD_STEPS = [(3.0, 5.0, 6.0), (0.0, 1.0, 2.0)]
QUAD_TOL = dict(rtol=1e-4, atol=1e-4)


def _quad_op():
    return torch.ops.dicache_cuda.quad_blend


def _quad_gamma(B, g):
    """γ in [0.8, 1.6], kept 0.03 away from 1: at γ = 1 the bend vanishes (c2(τ) = γ, c0(τ) = 0), and the
    fitted w of a bend that small turns on the last ulp of c2(τ) (the reference divides by a reciprocal)."""
    u = torch.rand(B, generator=g, device="cuda")
    return torch.where(u < 0.25, 0.8 + 0.68 * u, 1.03 + (u - 0.25) * (0.57 / 0.75))


def _quad_inputs(shape, dtype, g, steps):
    """γ [B] and the probe tensors p, x, p0, p1, p2 in ``dtype``, built so that the fitted w lands inside
    (0, 1) (mostly): p − x is the line, plus a per-sample share of the bend, plus noise."""
    B = shape[0]
    gamma = _quad_gamma(B, g)
    p0, p1, p2 = _randn(shape, dtype, g, 0.8, 0.1), _randn(shape, dtype, g), _randn(shape, dtype, g, 1.1, -0.2)
    x = _randn(shape, dtype, g, 0.9)
    l0, l2 = R.lagrange_weights(gamma, *steps)
    view = (-1,) + (1,) * (len(shape) - 1)
    P0, P1, P2 = p0.float(), p1.float(), p2.float()
    d21 = P2 - P1
    bend = (l2 - gamma).view(view) * d21 + l0.view(view) * (P0 - P1)
    share = (0.15 + 0.7 * torch.rand(B, generator=g, device="cuda")).view(view)
    noise = 0.05 * torch.randn(shape, generator=g, device="cuda")
    p = (x.float() + P1 + gamma.view(view) * d21 + share * bend + noise).to(dtype)
    return gamma, (p, x, p0, p1, p2)


def _run_quad(impl, gamma, w, steps, probes, stride, policy):
    """Runs ``impl`` on fresh state ([B] fp32 each): w is the given one (read without probes) or NaN (written),
    c0 and c2 are NaN (always written). Returns (w, c0, c2)."""
    B = gamma.numel()
    w = w.clone() if w is not None else torch.full((B,), float("nan"), device="cuda")
    c0, c2 = torch.full((B,), float("nan"), device="cuda"), torch.full((B,), float("nan"), device="cuda")
    probes = probes if probes is not None else (None,) * 5
    impl(gamma, w, c0, c2, *steps, *probes, stride, policy)
    return w, c0, c2


def _compare_quad(got, want, what):
    for name, a, b in zip(("w", "c0", "c2"), got, want):
        assert not a.isnan().any(), f"{what}: {name} left unwritten: {a}"
        torch.testing.assert_close(a, b, **QUAD_TOL, msg=lambda m: f"{what}: {name}: {m}")


@pytest.mark.parametrize("policy", [R.POLICY_GLOBAL, R.POLICY_MAX], ids=["global", "max"])
@pytest.mark.parametrize("shape", QUAD_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_quad_blend(cuda, dtype, shape, policy):
    """Fitted w (strides 1, 2, 3 and one beyond N) and given w, both step patterns."""
    op = _quad_op()
    n = shape[1] if len(shape) >= 2 else 1
    for steps in QUAD_STEPS:
        g = _gen("quad_blend", dtype, shape, policy, steps)
        gamma, probes = _quad_inputs(shape, dtype, g, steps)
        for stride in (1, 2, 3, n + 1):
            what = f"steps {steps}, stride {stride}"
            got = _run_quad(op, gamma, None, steps, probes, stride, policy)
            want = _run_quad(R.quad_blend, gamma, None, steps, probes, stride, policy)
            _compare_quad(got, want, what)
            assert ((got[0] >= 0) & (got[0] <= 1)).all(), f"{what}: w = {got[0]}"
        # w given (not fitted): read, left as it is
        w = torch.rand(shape[0], generator=g, device="cuda")
        got = _run_quad(op, gamma, w, steps, None, 1, policy)
        want = _run_quad(R.quad_blend, gamma, w, steps, None, 1, policy)
        assert torch.equal(got[0], w)
        _compare_quad(got, want, f"steps {steps}, w given")


@pytest.mark.parametrize("shape", [(4, 37), (2, 9, 5, 7)], ids=lambda s: "x".join(map(str, s)))
def test_quad_blend_other_ranks(cuda, shape):
    """[B, N] (one element per index of dim 1) and [B, N, H, W] (the subsample runs over dim 1 only)."""
    op = _quad_op()
    steps = QUAD_STEPS[0]
    g = _gen("quad_blend_ranks", shape)
    gamma, probes = _quad_inputs(shape, torch.float32, g, steps)
    for policy in (R.POLICY_GLOBAL, R.POLICY_MAX):
        for stride in (1, 2, 3, shape[1] + 1):
            got = _run_quad(op, gamma, None, steps, probes, stride, policy)
            want = _run_quad(R.quad_blend, gamma, None, steps, probes, stride, policy)
            _compare_quad(got, want, f"policy {policy}, stride {stride}")


def test_quad_blend_mixed_dtypes(cuda):
    """Probe tensors of several dtypes, or fp64: computed in fp32 through temporaries."""
    op = _quad_op()
    steps, shape = QUAD_STEPS[0], (3, 33, 65)
    g = _gen("quad_blend_mixed")
    gamma, probes = _quad_inputs(shape, torch.float32, g, steps)
    mixed = tuple(t.to(d) for t, d in zip(probes, (torch.bfloat16, torch.float32, torch.float16, torch.float16,
                                                   torch.float32)))
    wide = tuple(t.double() for t in probes)
    for what, ps in (("mixed", mixed), ("fp64", wide)):
        for policy in (R.POLICY_GLOBAL, R.POLICY_MAX):
            got = _run_quad(op, gamma, None, steps, ps, 2, policy)
            want = _run_quad(R.quad_blend, gamma, None, steps, ps, 2, policy)
            _compare_quad(got, want, f"{what}, policy {policy}")


@pytest.mark.parametrize("policy", [R.POLICY_GLOBAL, R.POLICY_MAX], ids=["global", "max"])
def test_quad_blend_no_bend(cuda, policy):
    """P0 = P1 = P2: Σ bend² = 0 -> w = 0 exactly, c0 = 0, c2 = γ."""
    op = _quad_op()
    shape, steps = (3, 33, 65), QUAD_STEPS[0]
    g = _gen("quad_blend_no_bend", policy)
    gamma = _quad_gamma(shape[0], g)
    p, x, pp = _randn(shape, torch.float16, g), _randn(shape, torch.float16, g), _randn(shape, torch.float16, g)
    for stride in (1, 3):
        w, c0, c2 = _run_quad(op, gamma, None, steps, (p, x, pp, pp, pp), stride, policy)
        assert torch.equal(w, torch.zeros_like(w)), w
        assert torch.equal(c0, torch.zeros_like(c0)), c0
        assert torch.equal(c2, gamma), (c2, gamma)
        want = _run_quad(R.quad_blend, gamma, None, steps, (p, x, pp, pp, pp), stride, policy)
        assert torch.equal(want[0], w)


def test_quad_blend_empty(cuda):
    """B = 0: nothing to do; N = 0: no elements to fit on -> w = 0 (the epilogue still runs)."""
    op = _quad_op()
    steps = QUAD_STEPS[0]
    empty = tuple(torch.empty(0, 5, 3, device="cuda") for _ in range(5))
    e = torch.empty(0, device="cuda")
    op(e, e.clone(), e.clone(), e.clone(), *steps, *empty, 2, R.POLICY_GLOBAL)
    op(e, e.clone(), e.clone(), e.clone(), *steps, None, None, None, None, None, 1, R.POLICY_MAX)
    g = _gen("quad_blend_empty")
    gamma = _quad_gamma(2, g)
    no_rows = tuple(torch.empty(2, 0, 8, device="cuda", dtype=torch.bfloat16) for _ in range(5))
    for policy in (R.POLICY_GLOBAL, R.POLICY_MAX):
        got = _run_quad(op, gamma, None, steps, no_rows, 3, policy)
        want = _run_quad(R.quad_blend, gamma, None, steps, no_rows, 3, policy)
        assert torch.equal(got[0], torch.zeros(2, device="cuda"))
        _compare_quad(got, want, f"N = 0, policy {policy}")
    torch.cuda.synchronize()


def test_quad_blend_strided_state(cuda):
    """gamma, w, c0, c2 as strided views: read and written through temporaries, neighbours untouched."""
    op = _quad_op()
    shape, steps = (4, 33, 65), QUAD_STEPS[0]
    g = _gen("quad_blend_strided")
    gamma, probes = _quad_inputs(shape, torch.bfloat16, g, steps)
    w_given = torch.rand(4, generator=g, device="cuda")
    for fit in (True, False):
        for policy in (R.POLICY_GLOBAL, R.POLICY_MAX):
            buf = torch.full((4, 8), -3.0, device="cuda")
            gs, ws, c0s, c2s = buf[:, 0], buf[:, 2], buf[:, 4], buf[:, 6]
            gs.copy_(gamma)
            ws.copy_(w_given)
            if fit:
                ws.fill_(float("nan"))
            c0s.fill_(float("nan"))
            c2s.fill_(float("nan"))
            op(gs, ws, c0s, c2s, *steps, *(probes if fit else (None,) * 5), 2, policy)
            want = _run_quad(R.quad_blend, gamma, None if fit else w_given, steps, probes if fit else None, 2,
                             policy)
            _compare_quad((ws, c0s, c2s), want, f"fit {fit}, policy {policy}")
            assert torch.equal(gs, gamma)
            untouched = buf[:, 1::2]
            assert torch.equal(untouched, torch.full_like(untouched, -3.0)), buf


def test_quad_blend_repeated_calls_share_the_workspace(cuda):
    """Repeated calls on one stream, interleaved with probe_decide (same ticket counter), then on a side stream."""
    op = _quad_op()
    steps = QUAD_STEPS[0]
    g = _gen("quad_blend_repeat")

    def one_round(i):
        for shape, policy in (((3, 129, 387), R.POLICY_GLOBAL), ((2, 999, 64), R.POLICY_MAX)):
            gamma, probes = _quad_inputs(shape, torch.float16, g, steps)
            got = _run_quad(op, gamma, None, steps, probes, 2, policy)
            want = _run_quad(R.quad_blend, gamma, None, steps, probes, 2, policy)
            _compare_quad(got, want, f"round {i}, {shape}")
        _probe_decide_both(cuda, g, f"probe_decide, round {i}")

    for i in range(4):
        one_round(i)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(4, 6):
            one_round(i)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


# Bad arguments must raise ValueError, not crash: on the H200 of 2026-12-04 argument errors thrown by both
# extensions (6 of these 8 cases) ended the process with SIGSEGV when they were built by that machine's
# CXX=/opt/gcc/bin/g++ (a relocated g++), and raised ValueError when built by /usr/bin/g++. dicache.build now
# loads only a library whose errors were seen to raise in a probe process (else it tries other compilers).
# Each case runs in its own process, so a crash fails that case alone and the rest of the run goes on.
_BAD_PRELUDE = """
import torch
from dicache.ops import load_backend, reference as R
load_backend("cuda")
op, d = torch.ops.dicache_cuda, "cuda"
g = torch.rand(2, device=d) + 1
z = lambda: torch.zeros(2, device=d)
p, x, p0, p1, p2 = (torch.randn(2, 7, 13, device=d) for _ in range(5))
"""
_BAD_CASES = {
    "probe_decide_acc_size": "probe_decide(p, x, p0.clone(), p1, None, torch.zeros(3, device=d), z(), "
                             "torch.zeros(2, 5, device=d), torch.zeros(1, dtype=torch.int32, device=d), z(), "
                             "0.3, 1.0, 1.5, 0, 0)",
    "reconstruct_gamma_size": "reconstruct(x, p0, p1, torch.zeros(3, device=d), torch.empty_like(x))",
    "quad_some_probes": "quad_blend(g, z(), z(), z(), 3., 5., 6., p, x, None, None, None, 1, 0)",
    "quad_one_probe": "quad_blend(g, z(), z(), z(), 3., 5., 6., None, None, None, None, p2, 1, 0)",
    "quad_stride_0": "quad_blend(g, z(), z(), z(), 3., 5., 6., p, x, p0, p1, p2, 0, 0)",
    "quad_stride_0_no_fit": "quad_blend(g, z(), z(), z(), 3., 5., 6., None, None, None, None, None, 0, 0)",
    "quad_policy_2": "quad_blend(g, z(), z(), z(), 3., 5., 6., p, x, p0, p1, p2, 1, 2)",
    "quad_w_size": "quad_blend(g, torch.zeros(3, device=d), z(), z(), 3., 5., 6.)",
}


def test_the_loaded_library_passed_the_build_probe(cuda):
    """dicache.build loads the CUDA library only once a probe process saw its errors raise ValueError; a compiler
    it rejected (on the H200 of 2026-12-04 that would be CXX=/opt/gcc/bin/g++) is listed with what happened."""
    import json
    from pathlib import Path

    from dicache import build

    info = build.build_info(build=False)["cuda"]
    assert info["built"], info
    for entry in info["rejected"]:
        assert "ended the process" in entry or "instead of" in entry, entry
    saved = json.loads((Path(info["build_dir"]) / build._PROBE_FILE).read_text())
    assert saved["verdict"] == "ok", saved


@pytest.mark.parametrize("case", sorted(_BAD_CASES))
def test_bad_input_raises_value_error(cuda, case):
    """The kernel op raises ValueError (in a process of its own); for quad_blend the reference does too."""
    import subprocess
    import sys

    code = _BAD_PRELUDE + f"""
for impl in ((op, R) if "quad_blend" in {_BAD_CASES[case]!r} else (op,)):
    try:
        impl.{_BAD_CASES[case]}
    except ValueError:
        continue
    raise SystemExit(f"{{impl}} did not raise ValueError")
print("raised")
"""
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "raised" in done.stdout, (done.returncode, done.stderr[-2000:])


@pytest.mark.parametrize("load", [False, True], ids=["torch_alone", "with_our_extension_loaded"])
def test_a_torch_error_on_cuda_tensors_raises(cuda, load):
    """torch's own C++ errors raise on CUDA tensors, before and after our extension is loaded (on the H200 of
    2026-12-04 they did, while those of our extensions built by CXX=/opt/gcc/bin/g++ crashed)."""
    import subprocess
    import sys

    code = ("import torch\n" + ("from dicache.ops import load_backend\nload_backend('cuda')\n" if load else "")
            + "try:\n    torch.zeros(2, device='cuda') + torch.zeros(3, device='cuda')\n"
            + "except RuntimeError:\n    print('raised')\n")
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "raised" in done.stdout, (done.returncode, done.stderr[-2000:])
