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
            if engine.before_probe(x) is not None:  # a follower skipped without its probe
                continue
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
    assert shared.branches["cond"].pattern == "F...F...F."
    # the follower does what the leader did; where the leader reused it skips before its probe
    assert shared.branches["uncond"].pattern == "F___F___F_"
    reasons = [st.reason for st in shared.branches["uncond"].steps]
    assert reasons[1:] == ["follow"] * 9
    u = shared.branches["uncond"]
    assert u.block_evaluations == 3 * M  # three computed calls, no probe on the seven skipped ones
    assert shared.branches["cond"].block_evaluations == 3 * M + 7 * 1
    # the leader's own decisions are unchanged by the follower
    assert [st.reason for st in shared.branches["cond"].steps] == [st.reason for st in separate.branches["cond"].steps]


def test_nonfinite_probe_refreshes_and_a_follower_never_probes():
    follower = scales([0.3] * 9)
    follower[2] = math.nan
    traces = {"cond": scales([0.03] * 9), "uncond": follower}
    # deciding alone, the branch with a non-finite probe refreshes (never reuses on NaN)
    u = drive(DiCacheConfig(threshold=0.5, warmup=1), traces).branches["uncond"]
    assert u.steps[2].computed and u.steps[2].reason == "refresh"
    # shared: the leader reused step 2, the follower skipped it before its probe could run
    shared = drive(DiCacheConfig(threshold=0.1, warmup=1, cfg_decision="shared"), traces)
    assert not shared.branches["cond"].steps[2].computed
    st = shared.branches["uncond"].steps[2]
    assert st.reason == "follow" and not st.computed and not st.probed


def test_threshold_schedule_over_the_steps():
    # constant error 0.1; δ grows from 0.15 at step 0 to 0.51 at step 9: longer skips late
    cfg = DiCacheConfig(threshold=0.15, threshold_end=0.51, warmup=1)
    b = drive(cfg, {"c": scales([0.1] * 9)}, num_steps=10).branches["c"]
    # δ_k = 0.15 + 0.04 k. Hand trace: k1 acc .1<.19 skip; k2 .2<.23 skip; k3 .3≥.27 F;
    # k4 .1 skip; k5 .2 skip; k6 .3<.39 skip; k7 .4<.43 skip; k8 .5≥.47 F; k9 .1 skip
    assert b.pattern == "F..F....F."
    flat = drive(DiCacheConfig(threshold=0.15, warmup=1), {"c": scales([0.1] * 9)}, num_steps=10).branches["c"]
    assert flat.pattern == "F.F.F.F.F."


@pytest.mark.parametrize("target", [1.5, 2.0, 2.2, 3.0])
def test_budget_mode_spends_the_target_evenly(target):
    n = 30
    errors = [0.02] * 10 + [0.3] * 5 + [0.02] * 14  # a burst of motion at steps 10-14
    cfg = DiCacheConfig(target_speedup=target, warmup=0.2)
    b = drive(cfg, {"c": scales(errors)}, num_steps=n).branches["c"]
    speedup = b.block_evaluations_uncached / b.block_evaluations
    assert speedup == pytest.approx(target, rel=0.1)
    assert b.steps[-1].computed and b.steps[-1].reason == "last_step"
    # runs of reuses after the warm-up stay within one of each other: no burst, no dump at the end
    runs = [len(r) for r in b.pattern[6:].split("F")[:-1] if r]
    assert max(runs) - min(runs[:-1] or runs) <= 1, b.pattern


def test_budget_mode_places_refreshes_by_the_error():
    # a rising error (as on real trajectories): at 1.5× the rule refreshes on the error near the end,
    # beyond what the run bounds force
    n = 50
    errors = [0.005 + 0.3 * (k / n) ** 3 for k in range(n - 1)]
    b = drive(DiCacheConfig(target_speedup=1.5, warmup=0.1), {"c": scales(errors)}, num_steps=n).branches["c"]
    late = [st.reason for st in b.steps[40:49] if st.computed]
    assert late.count("refresh") >= 3, b.pattern


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


def _engine_with_stored(cfg, residuals, probes, x):
    """An engine whose branch "c" computed calls 0..len-1 with these deep and probe residuals."""
    engine = DiCacheEngine(cfg, M, "torch")
    for k, (r, q) in enumerate(zip(residuals, probes)):
        engine.begin_call("c", k, 10)
        assert engine.after_probe(x, x + q) is None
        engine.after_full(x + r)
    return engine


@pytest.mark.parametrize("order", [1, 2])
def test_alignment_order_on_a_quadratic_trajectory(order):
    # deep residual R_k = A + B k + C k², probe residual P_k = D k: the probe reads off the step
    # exactly (γ = (t − t1)/(t2 − t1)), so order 2 rebuilds R_t exactly and order 1 misses C.
    g = torch.Generator().manual_seed(1)
    A, B, C = (torch.randn(2, 5, 7, generator=g) for _ in range(3))
    D = torch.rand(2, 5, 7, generator=g) + 0.5
    x = torch.randn(2, 5, 7, generator=g)
    R = [A + B * k + C * k * k for k in range(5)]
    cfg = DiCacheConfig(threshold=1e9, warmup=3, gamma_clip=(0.0, 10.0), alignment_order=order)
    engine = _engine_with_stored(cfg, R[:3], [D * k for k in range(3)], x)
    engine.begin_call("c", 3, 10)
    h = engine.after_probe(x, x + D * 3)
    assert h is not None
    err = (h - (x + R[3])).abs().max().item()
    if order == 2:
        assert err < 1e-4
        assert len(engine.branches["c"].R) == 3  # one more stored pair of tensors
    else:
        assert err > 0.1  # first order extrapolates the line through R_1, R_2
        torch.testing.assert_close(h, x + R[1] + 2.0 * (R[2] - R[1]))
        assert len(engine.branches["c"].R) == 2


def test_alignment_order_2_falls_back_to_first_order_with_two_entries():
    g = torch.Generator().manual_seed(2)
    R = [torch.randn(1, 4, 6, generator=g) for _ in range(2)]
    D = torch.rand(1, 4, 6, generator=g) + 0.5
    x = torch.randn(1, 4, 6, generator=g)
    cfg = DiCacheConfig(threshold=1e9, warmup=2, gamma_clip=(0.0, 10.0), alignment_order=2)
    engine = _engine_with_stored(cfg, R, [D * k for k in range(2)], x)
    engine.begin_call("c", 2, 10)
    h = engine.after_probe(x, x + D * 2)
    torch.testing.assert_close(h, x + R[0] + 2.0 * (R[1] - R[0]))


def test_shared_follower_reuses_with_the_leaders_gamma():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 7, generator=g)
    Rc = [torch.randn(2, 5, 7, generator=g) for _ in range(2)]
    Ru = [torch.randn(2, 5, 7, generator=g) for _ in range(2)]
    D = torch.rand(2, 5, 7, generator=g) + 0.5
    cfg = DiCacheConfig(threshold=1e9, warmup=2, gamma_clip=(1.0, 3.0), cfg_decision="shared")
    engine = DiCacheEngine(cfg, M, "torch")
    for k in range(2):
        for name, R in (("cond", Rc), ("uncond", Ru)):
            engine.begin_call(name, k, 10)
            assert engine.before_probe(x) is None  # computed steps: no skip before the probe
            assert engine.after_probe(x, x + D * (k + 1)) is None
            engine.after_full(x + R[k])
    engine.begin_call("cond", 2, 10)
    assert engine.before_probe(x) is None  # the leader always probes
    hc = engine.after_probe(x, x + D * 2.5)  # γ = (2.5 − 1) / (2 − 1) = 1.5
    torch.testing.assert_close(hc, x + Rc[0] + 1.5 * (Rc[1] - Rc[0]))
    engine.begin_call("uncond", 2, 10)
    hu = engine.before_probe(x)
    assert hu is not None
    torch.testing.assert_close(hu, x + Ru[0] + 1.5 * (Ru[1] - Ru[0]))
    rec = engine.branches["uncond"].records[-1]
    assert rec.reason == "follow" and not rec.probed and not rec.computed
    # separate decisions: the follower would have probed (before_probe never skips)
    sep = DiCacheEngine(cfg.replace(cfg_decision="separate"), M, "torch")
    sep.begin_call("uncond", 5, 10)
    assert sep.before_probe(x) is None


def test_budget_mode_does_not_end_on_a_run_of_reuses():
    # Wan-like: the probe error is small early and large late. The error rule alone spends the budget
    # where the error is large and ran out before the end; the run bounds keep the spacing even.
    n = 50
    errors = [0.005 + 0.3 * (k / n) ** 3 for k in range(n - 1)]
    for target in (2.0, 2.5):
        cfg = DiCacheConfig(target_speedup=target, warmup=0.1)
        b = drive(cfg, {"c": scales(errors)}, num_steps=n).branches["c"]
        speedup = b.block_evaluations_uncached / b.block_evaluations
        assert speedup == pytest.approx(target, rel=0.1)
        tail = len(b.pattern) - len(b.pattern.rstrip("."))
        longest = max(len(r) for r in b.pattern.split("F"))
        assert tail <= longest <= math.ceil(n / (n / target) * 1.5), b.pattern
        assert tail < 4, b.pattern


def test_budget_mode_counts_followers_without_probe():
    n = 40
    traces = {"cond": scales([0.02] * (n - 1)), "uncond": scales([0.02] * (n - 1))}
    for cfg_decision in ("separate", "shared"):
        cfg = DiCacheConfig(target_speedup=2.5, warmup=0.1, cfg_decision=cfg_decision)
        s = drive(cfg, traces, num_steps=n)
        speedup = sum(b.block_evaluations_uncached for b in s.branches.values()) / sum(
            b.block_evaluations for b in s.branches.values())
        assert speedup == pytest.approx(2.5, rel=0.1), (cfg_decision, [b.pattern for b in s.branches.values()])


@pytest.mark.parametrize("bad", [0, 3, "2", 2.0, True, None])
def test_bad_alignment_order(bad):
    model = tiny.flux_transformer()
    with pytest.raises(ValueError, match="alignment_order"):
        dicache.enable(model, alignment_order=bad)
    assert not dicache.is_enabled(model)


def test_engine_factory_extension_point():
    calls = []

    class Counting(DiCacheEngine):
        def after_probe(self, x, p):
            calls.append(self._cur_step)
            return super().after_probe(x, p)

    pipe = tiny.flux_pipeline()
    dicache.enable(pipe, backend="torch", threshold=0.3,
                   engine_factory=lambda cfg, num_blocks, backend: Counting(cfg, num_blocks, backend))
    tiny.flux_pipeline_call(pipe, steps=6)
    assert calls  # the factory's engine served the calls
    assert dicache.summary(pipe).calls == 6
    dicache.disable(pipe)


@pytest.mark.parametrize("factory,err", [(42, TypeError), (lambda cfg, n, b: object(), TypeError)])
def test_bad_engine_factory(factory, err):
    model = tiny.flux_transformer()
    with pytest.raises(err, match="engine_factory"):
        dicache.enable(model, engine_factory=factory)
    assert not dicache.is_enabled(model)
    assert "_diffusers_hook" not in model.__dict__


def test_presets_are_the_studied_rule_and_the_paper_settings_stay_available():
    for family, cfg in dicache.PRESETS.items():
        assert cfg.max_consecutive_reuse == 2 and cfg.cfg_decision == "shared" and cfg.warmup == 0.1, family
        paper = dicache.PAPER_PRESETS[family]
        assert paper.max_consecutive_reuse is None and paper.cfg_decision == "separate" and paper.warmup == 0.2
    assert dicache.PAPER_PRESETS["flux"].threshold == 0.4 and dicache.PAPER_PRESETS["wan"].threshold == 0.08
