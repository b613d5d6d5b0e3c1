"""The decision pattern and the reconstruction against a hand-traced run of the method.

The engine is spied on at its boundary with the hooks: every call's ``x``
(block-0 input) and ``p`` (probe output), the ``h`` it returned on a skip and
the deep output of full calls are recorded. The method of the spec is then
replayed here independently, in plain PyTorch, and compared.
"""

import math

import pytest
import torch

import dicache
from dicache.hooks import session_of

import tiny


def _spy(engine):
    calls = []
    after_probe, after_full = engine.after_probe, engine.after_full

    def probe(x, p):
        rec = {"x": x.clone(), "p": p.clone(), "h": None, "full_h": None}
        calls.append(rec)
        h = after_probe(x, p)
        rec["h"] = None if h is None else h.clone()
        return h

    def full(h):
        calls[-1]["full_h"] = h.clone()
        after_full(h)

    engine.after_probe, engine.after_full = probe, full
    return calls


def _mean_abs(t):
    return t.double().abs().mean()


def hand_trace(calls, cfg, num_steps):
    """Replay the method on recorded tensors; returns [(computed, reason, acc, gamma, h)]."""
    warm = max(1, cfg.warmup if isinstance(cfg.warmup, int) else math.ceil(cfg.warmup * num_steps))
    R, P = [], []
    p_prev, acc = None, 0.0
    out = []
    for i, c in enumerate(calls):
        x, p = c["x"].double(), c["p"].double()
        reason = None
        if i < warm or not R:
            reason = "warmup"
        elif i >= num_steps - int(cfg.force_last_step):
            reason = "last_step"
        if reason is None:
            acc += float(_mean_abs(p - p_prev) / _mean_abs(p_prev))
            if acc < cfg.threshold:
                if len(R) == 2:
                    g = float(_mean_abs((p - x) - P[0]) / _mean_abs(P[1] - P[0]))
                    g = min(max(g, cfg.gamma_clip[0]), cfg.gamma_clip[1])
                    h = x + R[0] + g * (R[1] - R[0])
                    out.append((False, "reuse", acc, g, h))
                else:
                    out.append((False, "reuse_one", acc, None, x + R[1 if len(R) == 2 else 0]))
                p_prev = p
                continue
            reason = "refresh"
        h = c["full_h"].double()
        R = (R + [h - x])[-2:]
        P = (P + [p - x])[-2:]
        out.append((True, reason, acc if reason == "refresh" else None, None, None))
        acc = 0.0
        p_prev = p
    return out


@pytest.mark.parametrize("threshold", [0.15, 0.3])
def test_flux_pipeline_pattern_matches_hand_trace(threshold):
    pipe = tiny.flux_pipeline()
    # the authors' flux settings: warm-up 0.2, last step forced, no cap on reuses
    dicache.enable(pipe, backend="torch", config=dicache.PAPER_PRESETS["flux"], threshold=threshold)
    calls = _spy(session_of(pipe.transformer).engine)
    steps = 12
    tiny.flux_pipeline_call(pipe, steps=steps)
    s = dicache.summary(pipe)
    cfg = s.config
    dicache.disable(pipe)

    trace = hand_trace(calls, cfg, steps)
    got = s.branches["cond"].steps
    assert len(got) == len(trace) == steps
    reasons = [t[1] for t in trace]
    assert [g.reason for g in got] == reasons
    assert [g.computed for g in got] == [t[0] for t in trace]
    # the method's shape: warm-up first, skips after it, a refresh at δ, the last step forced
    assert reasons[:3] == ["warmup"] * 3  # ceil(0.2 * 12)
    assert reasons[-1] == "last_step"
    assert "reuse" in reasons and "refresh" in reasons
    for g, t in zip(got, trace):
        if t[2] is not None:
            assert g.error == pytest.approx(t[2], rel=1e-4)
        if t[3] is not None:
            assert g.gamma == pytest.approx(t[3], rel=1e-4)
    for c, t in zip(calls, trace):
        if not t[0]:
            torch.testing.assert_close(c["h"].double(), t[4], rtol=1e-5, atol=1e-5)


def test_wan_pipeline_one_entry_fallback_and_gamma_clip():
    """Warm-up of one call: the first skips use h = x + R[-1]; later skips align, γ clipped to [1, 2]."""
    pipe = tiny.wan_pipeline()
    dicache.enable(pipe, backend="torch", config=dicache.PAPER_PRESETS["wan"], threshold=0.5, warmup=1)
    calls = _spy(session_of(pipe.transformer).engine)
    tiny.wan_pipeline_call(pipe, steps=10)
    s = dicache.summary(pipe)
    cfg = s.config
    dicache.disable(pipe)
    # calls alternate cond/uncond: replay each branch on its own calls
    for k, name in enumerate(("cond", "uncond")):
        mine = calls[k::2]
        trace = hand_trace(mine, cfg, 10)
        got = s.branches[name].steps
        assert [g.reason for g in got] == [t[1] for t in trace]
        assert "reuse_one" in [t[1] for t in trace]
        for c, t in zip(mine, trace):
            if not t[0]:
                torch.testing.assert_close(c["h"].double(), t[4], rtol=1e-5, atol=1e-5)
        for g in got:
            if g.gamma is not None:
                assert 1.0 <= g.gamma <= 2.0
