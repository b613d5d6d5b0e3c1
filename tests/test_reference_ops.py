"""The reference ops (the spec every kernel is tested against) against straightforward formulas.

Inputs are built so that γ lands below, inside and above its clip, and so that
denominators vanish; every backend available here runs the same checks.
"""

import pytest
import torch

from dicache import ops
from dicache.ops import reference as ref


def _backends():
    names = ["torch"]
    for name in ("cpu", "triton"):
        if ops.availability("cpu")[name] is None:
            names.append(name)
    return names


def _case(B=2, N=7, C=13, k=1.2, dtype=torch.float32, seed=0):
    """P_new = P_old + d and p − x = P_old + k·d, so the raw γ is exactly |k|."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, C, generator=g)
    p_old = torch.randn(B, N, C, generator=g)
    d = torch.randn(B, N, C, generator=g)
    p_new = p_old + d
    p = x + p_old + k * d
    p_prev = p + 0.1 * torch.randn(B, N, C, generator=g)
    cast = lambda t: t.to(dtype)
    return dict(x=cast(x), p=cast(p), p_prev=cast(p_prev), p_old=cast(p_old), p_new=cast(p_new))


def _run_probe(backend, c, threshold=1.0, lo=1.0, hi=1.5, policy=ref.POLICY_GLOBAL, den=None, with_old=True):
    B = c["x"].shape[0]
    state = dict(
        acc=torch.full((B,), 0.25), sums=torch.full((B, ref.NUM_SUMS), float("nan")),
        flag=torch.full((1,), 7, dtype=torch.int32), gamma=torch.full((B,), float("nan")),
    )
    if den is None:
        den = (c["p_new"].float() - c["p_old"].float()).abs().flatten(1).sum(1)
    p_prev = c["p_prev"].clone()
    ops.load_backend(backend).probe_decide(
        c["p"], c["x"], p_prev, c["p_old"] if with_old else None, None, state["acc"], den, state["sums"],
        state["flag"], state["gamma"], threshold, lo, hi, policy, ref.ERROR_PROBE,
    )
    state["p_prev"] = p_prev
    return state


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("k,expected", [(1.2, 1.2), (0.5, 1.0), (3.0, 1.5), (-1.3, 1.3)])
def test_gamma_clip_both_ends(backend, k, expected):
    c = _case(k=k)
    st = _run_probe(backend, c)
    torch.testing.assert_close(st["gamma"], torch.full((2,), expected), rtol=1e-4, atol=1e-5)
    # the pooled relative L1 error of the probe, added to the incoming acc
    err = (c["p"] - c["p_prev"]).abs().sum() / c["p_prev"].abs().sum()
    torch.testing.assert_close(st["acc"], torch.full((2,), 0.25 + float(err)), rtol=1e-5, atol=1e-6)
    assert int(st["flag"]) == int(0.25 + float(err) < 1.0)
    assert torch.equal(st["p_prev"], c["p"])  # the next baseline is written in the same op
    assert torch.isfinite(st["sums"]).all()


@pytest.mark.parametrize("backend", _backends())
def test_per_sample_policy(backend):
    c = _case(B=3, k=1.2)
    c["p"][1] += 5.0  # sample 1 moves a lot
    st = _run_probe(backend, c, threshold=1.0, policy=ref.POLICY_MAX)
    rel = (c["p"] - c["p_prev"]).abs().flatten(1).sum(1) / c["p_prev"].abs().flatten(1).sum(1)
    torch.testing.assert_close(st["acc"], 0.25 + rel, rtol=1e-5, atol=1e-6)
    assert int(st["flag"]) == 0  # one sample over δ blocks the reuse for all
    assert st["gamma"][1] == pytest.approx(1.5) and st["gamma"][0] == pytest.approx(1.2, rel=1e-4)


@pytest.mark.parametrize("backend", _backends())
def test_zero_denominators_stay_finite(backend):
    c = _case(k=1.2)
    st = _run_probe(backend, c, den=torch.zeros(2), lo=0.5, hi=2.0)
    assert torch.equal(st["gamma"], torch.ones(2))  # fallback γ = 1, inside the clip
    st = _run_probe(backend, c, den=torch.zeros(2), lo=1.2, hi=2.0)
    assert torch.equal(st["gamma"], torch.full((2,), 1.2))  # then clipped
    zero_prev = dict(c, p_prev=torch.zeros_like(c["p_prev"]))
    st = _run_probe(backend, zero_prev)
    assert torch.isinf(st["acc"]).all() and int(st["flag"]) == 0  # Σ|p_prev| = 0: refresh
    nan = dict(c, p=c["p"].clone())
    nan["p"][0, 0, 0] = float("nan")
    st = _run_probe(backend, nan)
    assert int(st["flag"]) == 0 and torch.isfinite(st["gamma"]).all()


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reconstruct_and_one_entry_fallback(backend, dtype):
    g = torch.Generator().manual_seed(3)
    x, r1, r2 = (torch.randn(2, 9, 11, generator=g).to(dtype) for _ in range(3))
    gamma = torch.tensor([1.25, 1.5])
    out = torch.full_like(x, float("nan"))
    ops.load_backend(backend).reconstruct(x, r1, r2, gamma, out)
    expected = torch.stack([x[b].float() + r2[b].float() + gamma[b] * (r1[b].float() - r2[b].float()) for b in range(2)])
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)
    out.fill_(float("nan"))
    ops.load_backend(backend).reconstruct(x, r1, None, gamma, out)
    torch.testing.assert_close(out.float(), x.float() + r1.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", _backends())
def test_refresh_writes_slots_den_and_clears_acc(backend):
    g = torch.Generator().manual_seed(4)
    h, p, x, other = (torch.randn(3, 5, 7, generator=g) for _ in range(4))
    r_slot, p_slot = torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))
    den, acc = torch.full((3,), float("nan")), torch.full((3,), 0.7)
    ops.load_backend(backend).refresh(h, p, x, r_slot, p_slot, other, den, acc)
    torch.testing.assert_close(r_slot, h - x)
    torch.testing.assert_close(p_slot, p - x)
    torch.testing.assert_close(den, ((p - x) - other).abs().flatten(1).sum(1))
    assert torch.equal(acc, torch.zeros(3))
    ops.load_backend(backend).refresh(h, p, x, r_slot, p_slot, None, den, acc)
    assert torch.equal(den, torch.zeros(3))


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("policy", [ref.POLICY_GLOBAL, ref.POLICY_MAX])
def test_quad_blend_reconstructs_the_line_bent_towards_the_quadratic(backend, policy):
    """Residuals on a quadratic in the step: the weights quad_blend fits from probe residuals on a known mix of
    line and quadratic make reconstruct return that same mix of the deep residuals, per sample."""
    g = torch.Generator().manual_seed(5)
    t = (2.0, 4.0, 5.0)
    gamma = torch.tensor([1.4, 1.8, 1.1])
    tau = (t[1] + gamma * (t[2] - t[1])).view(-1, 1, 1)

    def on_quadratic(shape):
        a, b, c = (torch.randn(shape, generator=g) for _ in range(3))
        return [a + b * s + c * s * s for s in t], a + b * tau + c * tau * tau

    (P0, P1, P2), p_quad = on_quadratic((3, 40, 6))
    (R0, R1, R2), r_quad = on_quadratic((3, 40, 6))
    mix = torch.tensor([0.25, 0.6, 1.0]).view(-1, 1, 1)  # how far each sample's probe bends to the quadratic
    p_line, r_line = P1 + gamma.view(-1, 1, 1) * (P2 - P1), R1 + gamma.view(-1, 1, 1) * (R2 - R1)
    x = torch.randn(3, 40, 6, generator=g)
    p = x + p_line + mix * (p_quad - p_line)
    w, c0, c2 = (torch.full((3,), float("nan")) for _ in range(3))
    backend_ops = ops.load_backend(backend)
    backend_ops.quad_blend(gamma, w, c0, c2, *t, p, x, P0, P1, P2, 1, policy)
    if policy == ref.POLICY_MAX:
        torch.testing.assert_close(w, mix.flatten(), atol=1e-4, rtol=0)
    else:  # one weight for the batch, between the samples' own
        assert torch.all(w == w[0]) and 0.25 < float(w[0]) < 1.0
    out = torch.full_like(x, float("nan"))
    backend_ops.reconstruct(x, R2, R1, c2, out, R0, c0)
    wv = w.view(-1, 1, 1)
    torch.testing.assert_close(out, x + r_line + wv * (r_quad - r_line), atol=1e-4, rtol=1e-4)
    # w given, not fitted: 1 is the quadratic's Lagrange weights, 0 the line
    for given, (e0, e2) in ((1.0, ref.lagrange_weights(gamma, *t)), (0.0, (torch.zeros(3), gamma))):
        w.fill_(given)
        backend_ops.quad_blend(gamma, w, c0, c2, *t)
        torch.testing.assert_close(c0, e0, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(c2, e2, atol=1e-6, rtol=1e-6)


def test_backend_dispatch_names_and_auto():
    assert ops.select_backend("torch", "cpu").name == "torch"
    assert ops.select_backend("auto", "cpu").name in ("cpu", "torch")
    with pytest.raises(ValueError, match="backend"):
        ops.select_backend("fast", "cpu")
    reasons = ops.availability("cpu")
    assert reasons["torch"] is None
