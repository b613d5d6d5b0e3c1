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
        p, xx, pp = (_randn((2, 33, 65), torch.float32, g) for _ in range(3))
        res = []
        for impl in (cuda.probe_decide, R.probe_decide):
            st = [pp.clone(), torch.zeros(2, device="cuda"), torch.zeros(2, R.NUM_SUMS, device="cuda"),
                  torch.zeros(1, dtype=torch.int32, device="cuda"), torch.ones(2, device="cuda")]
            impl(p, xx, st[0], None, None, st[1], torch.full((2,), 50.0, device="cuda"), st[2], st[3], st[4],
                 0.5, 1.0, 1.5, R.POLICY_GLOBAL, R.ERROR_PROBE)
            res.append(st)
        _close_sums(res[0][2], res[1][2], f"sums, call {i}")
        assert res[0][3].item() == res[1][3].item()


def test_auto_picks_cuda_on_cuda_tensors(cuda):
    assert select_backend("auto", "cuda").name == "cuda"
