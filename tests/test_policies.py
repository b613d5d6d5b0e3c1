"""Decision options on recorded probe traces, driven straight into the engine (no model).

A probe output ``p_k = s_k · base`` with a positive ``base`` has the relative L1
change ``|s_k / s_{k-1} − 1|`` exactly, so each trace below fixes the per-call
error and the expected decisions can be written down by hand.
"""

import math

import pytest
import torch

import dicache
from dicache.config import DiCacheConfig
from dicache.engine import DiCacheEngine
from dicache.summary import summarize

import tiny

M = 10  # blocks of the imaginary model


def scales(errors):
    """Probe scales whose successive relative changes are ``errors``."""
    out = [1.0]
    for e in errors:
        out.append(out[-1] * (1 + e))
    return out


def drive(cfg, traces, num_steps=None):
    """traces: {branch: [scale per call]}, branches called in order at each step."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(2, 6, 8, generator=g) + 0.5
    x = torch.randn(2, 6, 8, generator=g)
    engine = DiCacheEngine(cfg, M, "torch")
    n = len(next(iter(traces.values())))
    for k in range(n):
        for branch, sc in traces.items():
            engine.begin_call(branch, k, num_steps)
            p = base * sc[k]
            if engine.after_probe(x, p) is None:
                engine.after_full(p * 3 + x)
    return summarize(engine, "toy")


def test_trace_driver_reproduces_plain_threshold():
    # error 0.1 per call, δ = 0.25: two skips (0.1, 0.2), refresh at 0.3
    s = drive(DiCacheConfig(threshold=0.25, warmup=1), {"c": scales([0.1] * 9)})
    b = s.branches["c"]
    assert b.pattern == "F..F..F..F"
    assert [round(st.error, 6) for st in b.steps[1:4]] == [0.1, 0.2, 0.3]


def test_cap_on_consecutive_reuses():
    cfg = DiCacheConfig(threshold=100.0, warmup=1, max_consecutive_reuse=2)
    b = drive(cfg, {"c": scales([0.01] * 9)}).branches["c"]
    assert b.pattern == "F..F..F..F"
    assert [st.reason for st in b.steps if st.computed][1:] == ["cap"] * 3
    b = drive(cfg.replace(max_consecutive_reuse=None), {"c": scales([0.01] * 9)}).branches["c"]
    assert b.pattern == "F........."


def test_shared_cfg_decision_follows_the_first_branch():
    traces = {"cond": scales([0.03] * 9), "uncond": scales([0.3] * 9)}
    separate = drive(DiCacheConfig(threshold=0.1, warmup=1), traces)
    assert separate.branches["cond"].pattern == "F...F...F."
    assert separate.branches["uncond"].pattern == "FFFFFFFFFF"
    shared = drive(DiCacheConfig(threshold=0.1, warmup=1, cfg_decision="shared"), traces)
    assert shared.branches["uncond"].pattern == shared.branches["cond"].pattern == "F...F...F."
    reasons = [st.reason for st in shared.branches["uncond"].steps]
    assert reasons[1:] == ["follow"] * 9
    # the leader's own decisions are unchanged by the follower
    assert [st.reason for st in shared.branches["cond"].steps] == [st.reason for st in separate.branches["cond"].steps]


def test_follower_with_nonfinite_probe_still_refreshes():
    follower = scales([0.3] * 9)
    follower[2] = math.nan
    shared = drive(DiCacheConfig(threshold=0.1, warmup=1, cfg_decision="shared"),
                   {"cond": scales([0.03] * 9), "uncond": follower})
    u = shared.branches["uncond"]
    assert not shared.branches["cond"].steps[2].computed
    assert u.steps[2].computed and u.steps[2].reason == "refresh"


def test_threshold_schedule_over_the_steps():
    # constant error 0.1; δ grows from 0.15 at step 0 to 0.51 at step 9: longer skips late
    cfg = DiCacheConfig(threshold=0.15, threshold_end=0.51, warmup=1)
    b = drive(cfg, {"c": scales([0.1] * 9)}, num_steps=10).branches["c"]
    # δ_k = 0.15 + 0.04 k. Hand trace: k1 acc .1<.19 skip; k2 .2<.23 skip; k3 .3≥.27 F;
    # k4 .1 skip; k5 .2 skip; k6 .3<.39 skip; k7 .4<.43 skip; k8 .5≥.47 F; k9 .1 skip
    assert b.pattern == "F..F....F."
    flat = drive(DiCacheConfig(threshold=0.15, warmup=1), {"c": scales([0.1] * 9)}, num_steps=10).branches["c"]
    assert flat.pattern == "F.F.F.F.F."


@pytest.mark.parametrize("target", [1.5, 2.0, 3.0])
def test_budget_mode_spends_the_target(target):
    n = 30
    errors = [0.02] * 10 + [0.3] * 5 + [0.02] * 14  # a burst of motion at steps 10-14
    cfg = DiCacheConfig(target_speedup=target, warmup=0.2)
    b = drive(cfg, {"c": scales(errors)}, num_steps=n).branches["c"]
    speedup = b.block_evaluations_uncached / b.block_evaluations
    assert speedup == pytest.approx(target, rel=0.1)
    if target <= 2.0:
        fulls = [i for i, st in enumerate(b.steps) if st.computed]
        burst = sum(1 for i in fulls if 10 <= i <= 15)
        calm = sum(1 for i in fulls if 16 <= i <= 25)
        assert burst > calm  # spent where the error grows fast


def test_budget_mode_needs_a_step_count():
    with pytest.raises(RuntimeError, match="number of steps"):
        drive(DiCacheConfig(target_speedup=2.0, warmup=1), {"c": scales([0.1] * 5)})


@pytest.mark.parametrize(
    "options,word",
    [
        (dict(max_consecutive_reuse=0), "max_consecutive_reuse"),
        (dict(max_consecutive_reuse=1.5), "max_consecutive_reuse"),
        (dict(cfg_decision="cond"), "cfg_decision"),
        (dict(threshold_end=-1.0), "threshold_end"),
        (dict(target_speedup=1.0), "target_speedup"),
        (dict(target_speedup=float("inf")), "target_speedup"),
    ],
)
def test_bad_policy_values(options, word):
    model = tiny.flux_transformer()
    with pytest.raises(ValueError, match=word):
        dicache.enable(model, **options)
    assert not dicache.is_enabled(model)


def test_budget_mode_on_a_pipeline():
    pipe = tiny.flux_pipeline()
    dicache.enable(pipe, backend="torch", target_speedup=2.0)
    tiny.flux_pipeline_call(pipe, steps=20)
    s = dicache.summary(pipe)
    dicache.disable(pipe)
    b = s.branches["cond"]
    assert b.block_evaluations_uncached / b.block_evaluations == pytest.approx(2.0, rel=0.15)
