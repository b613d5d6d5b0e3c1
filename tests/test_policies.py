"""Decision options on recorded probe traces, driven straight into the engine (no model).

A probe output ``p_k = s_k · base`` with a positive ``base`` has the relative L1
change ``|s_k / s_{k-1} − 1|`` exactly, so each trace below fixes the per-call
error and the expected decisions can be written down by hand.
"""

import json
import math

import pytest
import torch

import dicache
import dicache.budget as budget_mod
from dicache.config import REACH_MIN_STEPS, SPAN_POWER_MIN, STEPS_GAMMA_MIN_STEPS, WALK_COSINE, DiCacheConfig
from dicache.budget import FINAL_RUN, ONLINE_MAX_GROWTH, Budget, cut_before_final, overruns_final
from dicache.engine import DiCacheEngine
from dicache.state import (BranchState, cosine_of, increments_sums, next_shortening, planned_error, span_power,
                           span_power_sample)
from dicache.summary import BranchSummary, summarize

import tiny

M = 10  # blocks of the imaginary model


def scales(errors):
    """Probe scales whose successive relative changes are ``errors``."""
    out = [1.0]
    for e in errors:
        out.append(out[-1] * (1 + e))
    return out


def drive(cfg, traces, num_steps=None, step_sizes=None):
    """traces: {branch: [scale per call]}, branches called in order at each step; ``step_sizes``: what a pipeline's
    scheduler would tell."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(2, 6, 8, generator=g) + 0.5
    x = torch.randn(2, 6, 8, generator=g)
    engine = DiCacheEngine(cfg, M, "torch")
    engine.set_step_sizes(step_sizes)
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


def test_step_size_power_scales_the_threshold_by_the_step_sizes():
    # constant error 0.1, δ = 0.25, step sizes 1 for steps 0-5 and 4 from 6 on (median 1): with p = 0.5 δ halves on the
    # large steps, where one skip (0.1 < 0.125) is all a run may take; without it two skips as everywhere
    sizes = [1.0] * 6 + [4.0] * 4
    errors = scales([0.1] * 9)
    flat = drive(DiCacheConfig(threshold=0.25, warmup=1), {"c": errors}, num_steps=10, step_sizes=sizes)
    assert flat.branches["c"].pattern == "F..F..F..F"
    cfg = DiCacheConfig(threshold=0.25, warmup=1, step_size_power=0.5)
    b = drive(cfg, {"c": errors}, num_steps=10, step_sizes=sizes).branches["c"]
    # k1 .1 k2 .2 skip; k3 .3 F; k4, k5 skip; k6 .3 ≥ .125 F; k7 .1 < .125 skip; k8 .2 F; k9 .1 skip
    assert b.pattern == "F..F..F.F."
    # the step sizes' median, not their mean: sizes 1, 1, 1, 2, 9, … scale δ by √(1/9) on the step of size 9
    engine = DiCacheEngine(cfg, M, "torch")
    engine.set_step_sizes([1.0, 1.0, 1.0, 2.0, 9.0])
    engine.begin_call("c", 4, 5)
    assert engine._threshold(engine._cur) == pytest.approx(0.25 / 3)
    engine.abort_call()
    # the budget's fixed-δ rule (what its replay solves δ on) scales δ the same way: at δ = 0.35 the engine computes
    # the calls at 0, 4, 6 and 8, the simulation as many
    wide = DiCacheConfig(threshold=0.35, warmup=1, step_size_power=0.5)
    assert drive(wide, {"c": errors}, num_steps=10, step_sizes=sizes).branches["c"].pattern == "F...F.F.F."
    sim = Budget(wide, M)
    sim.step_sizes = sizes
    assert sim.simulate_calls([0.1] * 10, 10, 0.35) == (4, 0)
    sim.step_sizes = None
    assert sim.simulate_calls([0.1] * 10, 10, 0.35) == (3, 0)  # F...F...F.
    # nothing changes without step sizes or where runs are planned
    assert drive(cfg, {"c": errors}, num_steps=10).branches["c"].pattern == "F..F..F..F"
    planned = dict(threshold=0.25, warmup=1, plan_runs=True)
    assert (drive(DiCacheConfig(**planned, step_size_power=0.5), {"c": errors}, num_steps=10, step_sizes=sizes)
            .branches["c"].pattern
            == drive(DiCacheConfig(**planned), {"c": errors}, num_steps=10, step_sizes=sizes).branches["c"].pattern)


def test_a_negligible_last_step_forces_the_step_before_it():
    # SD3's scheduler (FlowMatchEulerDiscreteScheduler, shift 3) ends its schedule on σ = 0.0089 → 0: the step that
    # denoises last is the one before, forced too where final steps are forced and the pipeline tells the step sizes
    from diffusers import FlowMatchEulerDiscreteScheduler

    from dicache.config import FINAL_STEP_RATIO, negligible_final_steps

    sd3 = FlowMatchEulerDiscreteScheduler(shift=3.0)
    for n in (20, 28, 50):
        sd3.set_timesteps(n)
        sig = sd3.sigmas.tolist()
        assert sig[-2] == pytest.approx(0.0089, abs=2e-4)
        assert negligible_final_steps([a - b for a, b in zip(sig, sig[1:])]) == 1
    assert negligible_final_steps([0.05] * 9) == 0
    assert negligible_final_steps([0.02 * 1.5 ** k for k in range(9)]) == 0  # growing to the end
    assert negligible_final_steps([0.1, 0.2, 0.2 * FINAL_STEP_RATIO]) == 0  # a quarter is not under a quarter
    assert negligible_final_steps([0.1, 0.2, 0.04, 0.001]) == 2  # counted back from the last
    assert negligible_final_steps([0.0, 0.0]) == 0 and negligible_final_steps([0.3]) == 0

    errors = scales([0.1] * 9)  # δ 1e9: every decided call skips, so the pattern shows the forced calls
    tail, even = [0.1] * 9 + [0.01], [0.1] * 10
    cfg = DiCacheConfig(threshold=1e9, warmup=1, force_last_step=True)
    b = drive(cfg, {"c": errors}, num_steps=10, step_sizes=tail).branches["c"]
    assert b.pattern == "F.......FF" and [st.reason for st in b.steps[8:]] == ["last_step"] * 2
    assert drive(cfg, {"c": errors}, num_steps=10, step_sizes=even).branches["c"].pattern == "F........F"
    assert drive(cfg, {"c": errors}, num_steps=10).branches["c"].pattern == "F........F"  # sizes not told
    assert drive(cfg.replace(force_last_step=0.2), {"c": errors}, num_steps=10,
                 step_sizes=tail).branches["c"].pattern == "F......FFF"  # two final steps, one more
    # no final step forced: none added
    free = cfg.replace(force_last_step=False)
    assert drive(free, {"c": errors}, num_steps=10, step_sizes=tail).branches["c"].pattern == "F........."
    # the trajectory's config: one copy per config and count; sizes of another trajectory length are not read
    assert cfg.on_trajectory(10, True, tail) is cfg.on_trajectory(10, True, tail)
    assert cfg.on_trajectory(10, True, tail).last_calls(10) == 2
    assert cfg.on_trajectory(10, True, even) is cfg and cfg.on_trajectory(12, True, tail) is cfg
    # the budget (at least the last step computed) reserves the step before a negligible last one too
    budgeted = free.replace(target_speedup=2.0)
    assert budgeted.on_trajectory(10, True, tail).last_calls(10) == 2 and budgeted.last_calls(10) == 1
    b = drive(budgeted, {"c": errors}, num_steps=10, step_sizes=tail).branches["c"]
    assert [st.reason for st in b.steps[8:]] == ["last_step"] * 2
    b = drive(budgeted, {"c": errors}, num_steps=10, step_sizes=even).branches["c"]
    assert b.steps[8].reason != "last_step" and b.steps[9].reason == "last_step"


def test_probe_threshold_replaces_delta_where_the_probe_decides():
    """``probe_threshold``: δ where the probe decides each call; where runs are planned ``threshold``; a δ schedule
    starts from it; an ``enable(threshold=…)`` clears the preset's; the header says both."""
    errors = {"c": scales([0.1] * 9)}

    def pattern(cfg, **kw):
        return drive(cfg, errors, num_steps=10, **kw).branches["c"].pattern

    both = DiCacheConfig(threshold=0.15, probe_threshold=0.25, warmup=1)
    assert pattern(both) == pattern(DiCacheConfig(threshold=0.25, warmup=1)) == "F..F..F..F"
    assert pattern(DiCacheConfig(threshold=0.15, warmup=1)) == "F.F.F.F.F."
    # runs planned: the probe of a computed call plans each run on threshold, probe_threshold left out
    planned = dict(warmup=1, plan_runs=True)
    assert pattern(both.replace(plan_runs=True)) == pattern(DiCacheConfig(threshold=0.15, **planned))
    assert pattern(DiCacheConfig(threshold=0.15, **planned)) != pattern(DiCacheConfig(threshold=0.25, **planned))
    # a δ schedule moves from the δ at the start, here the probe's (test_threshold_schedule_over_the_steps's pattern)
    assert pattern(DiCacheConfig(threshold=9.0, probe_threshold=0.15, threshold_end=0.51, warmup=1)) == "F..F....F."
    # the Wan preset: 0.26 where the probe decides (flow matching under 25 steps), 0.16 where runs are planned
    wan = dicache.PRESETS["wan"]
    got = [wan.on_trajectory(n, flow).threshold_at(n) for n, flow in ((20, True), (None, None), (30, True), (50, True),
                                                                     (20, False))]
    assert got == [0.26, 0.26, 0.16, 0.16, 0.16]  # a DDPM-family schedule takes γ from the steps: planned
    assert all(cfg.probe_threshold is None for f, cfg in dicache.PRESETS.items() if f != "wan")
    # resolve: a δ asked for applies everywhere, unless probe_threshold is asked for too
    model = tiny.wan_transformer()
    for options, expected in (({}, 0.26), ({"threshold": 0.3}, None), ({"threshold_end": 0.3}, None),
                              ({"threshold": 0.3, "probe_threshold": 0.5}, 0.5), ({"max_consecutive_reuse": 3}, 0.26)):
        dicache.enable(model, backend="torch", **options)
        s = dicache.summary(model)
        dicache.disable(model)
        assert s.config.probe_threshold == expected, options
        said = f"δ={s.config.threshold:g} ({expected:g} where the probe decides)" if expected else "probe decides)"
        assert (said in str(s)) == (expected is not None), (options, str(s))


def test_the_wan_preset_s_probe_threshold_through_a_pipeline():
    """``dicache.enable(pipe)`` on a Wan pipeline decides as at δ = 0.26 at 20 steps (the probe decides each call)
    and as at δ = 0.16 at 30 (runs planned); the two δ make different patterns at both step counts. The summary
    names the δ the trajectory decided on."""
    pipe = tiny.wan_pipeline()
    got, rules = {}, {}
    for steps in (20, 30):
        for delta in (None, 0.26, 0.16):
            dicache.enable(pipe, backend="torch", **({} if delta is None else {"threshold": delta}))
            tiny.wan_pipeline_call(pipe, steps=steps)
            s = dicache.summary(pipe)
            got[steps, delta], rules[steps, delta] = s.branches["cond"].pattern, s.rule
            dicache.disable(pipe)
    assert got[20, None] == got[20, 0.26] != got[20, 0.16]
    assert got[30, None] == got[30, 0.16] != got[30, 0.26]
    assert rules[20, None] == "δ=0.26 (probe_threshold)" and rules[30, None] == "δ=0.16"
    assert rules[20, 0.26] == "δ=0.26" and rules[20, 0.16] == "δ=0.16"  # a δ asked for: no probe_threshold


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


def drive_twice(cfg, traces, num_steps):
    """Two trajectories on one engine (the second a new pipeline call): the summary of the second."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(2, 6, 8, generator=g) + 0.5
    x = torch.randn(2, 6, 8, generator=g)
    engine = DiCacheEngine(cfg, M, "torch")
    n = len(next(iter(traces.values())))
    for _ in range(2):
        engine.reset()
        for k in range(n):
            for branch, sc in traces.items():
                engine.begin_call(branch, k, num_steps)
                if engine.before_probe(x) is not None:
                    continue
                p = base * sc[k]
                if engine.after_probe(x, p) is None:
                    engine.after_full(p * 3 + x)
    return engine, summarize(engine, "toy")


@pytest.mark.parametrize("target", [1.5, 2.0, 3.0])
def test_budget_mode_replays_the_previous_error_profile(target):
    # the second call of a step count decides by the fixed-δ rule (run_power included) with the δ that
    # spends the budget on the first call's error profile: its pattern is the hand-tuned δ's
    n = 50
    errors = [0.005 + 0.3 * (k / n) ** 3 for k in range(n - 1)]
    cfg = DiCacheConfig(target_speedup=target, warmup=0.1, run_power=1.0)
    engine, s = drive_twice(cfg, {"c": scales(errors)}, n)
    b = s.branches["c"]
    delta = engine._budget._solved[("c", n)]
    fixed = drive(DiCacheConfig(threshold=delta, warmup=0.1, run_power=1.0, force_last_step=True),
                  {"c": scales(errors)}, num_steps=n).branches["c"]
    assert b.pattern == fixed.pattern
    assert b.budget == f"replay, δ={delta:.3g}" and f"target_speedup={target:g}" in str(s)
    assert b.block_evaluations_uncached / b.block_evaluations == pytest.approx(target, rel=0.1)
    # the rising error: runs of reuses shorten towards the end (the online rule keeps them even)
    runs = [len(r) for r in b.pattern[5:].split("F") if r]
    assert runs[0] > runs[-1], b.pattern


def test_budget_mode_without_replay_decides_every_call_online():
    class Online(DiCacheEngine):
        replay_budget = False

    n = 30
    errors = [0.02] * 10 + [0.3] * 5 + [0.02] * 14
    cfg = DiCacheConfig(target_speedup=2.0, warmup=0.2)
    first = drive(cfg, {"c": scales(errors)}, num_steps=n).branches["c"]
    engine = Online(cfg, M, "torch")
    g = torch.Generator().manual_seed(0)
    base, x = torch.rand(2, 6, 8, generator=g) + 0.5, torch.randn(2, 6, 8, generator=g)
    for _ in range(2):
        engine.reset()
        for k, sc in enumerate(scales(errors)):
            engine.begin_call("c", k, n)
            if engine.after_probe(x, base * sc) is None:
                engine.after_full(base * sc * 3 + x)
    s = summarize(engine, "toy").branches["c"]
    assert engine._budget.profiles == {} and engine.budget_rule("c") == "online" and s.budget == "online"
    assert s.pattern == first.pattern  # the second call decides exactly as a first call


def test_budget_solve_finds_the_count_nearest_the_budget_a_quarter_up_its_range():
    g = torch.Generator().manual_seed(3)
    n = 40
    incs = (0.01 + 0.2 * torch.rand(n, generator=g)).tolist()
    for power in (0.0, 1.0):
        bud = Budget(DiCacheConfig(target_speedup=2.0, warmup=0.1, run_power=power), M)
        grid = [10 ** (i / 50.0) for i in range(-250, 150)]
        reachable = sorted({bud.simulate(incs, n, d) for d in grid})
        for budget in (12.3, 17.5, 25.0):
            delta = bud.solve(dict(enumerate(incs)), n, budget)
            want = min(reachable, key=lambda c: (abs(c - budget), c))
            assert bud.simulate(incs, n, delta) == want
    # a constant increment 0.1, no run rule: runs of j reuses for δ in (0.1·j, 0.1·(j+1)]; the solved δ sits
    # a quarter of the way up its range (in log scale), not at an edge where another profile's noise would tip it
    bud = Budget(DiCacheConfig(target_speedup=2.0, warmup=1), M)
    flat = {k: 0.1 for k in range(1, 21)}
    delta = bud.solve(flat, 21, 8.0)  # "F..F..F..F..F..F..F.F": 8 computed calls, runs of 2, δ in (0.2, 0.3]
    assert bud.simulate([0.1] * 21, 21, delta) == 8
    assert delta == pytest.approx(0.2 ** 0.75 * 0.3 ** 0.25, rel=0.06)
    assert 0.2 * 1.06 < delta < math.sqrt(0.2 * 0.3) / 1.03  # off the edge, below the middle


def test_budget_solve_counts_the_probes_that_predictive_skips_save():
    flat = [0.1] * 21
    cfg = DiCacheConfig(target_speedup=2.0, warmup=1, run_power=0, predictive_skip=True)
    bud = Budget(cfg, M)
    # δ = 0.25: "F..F._F._…F._F.F": the first run probes every call (one entry stored), later runs skip the
    # second call's probe; the last call is computed (budget mode)
    assert bud.simulate_calls(flat, 21, 0.25) == (8, 5)
    assert bud.simulate_calls(flat, 21, 0.35) == (6, 4)  # runs of three: the middle call unprobed
    assert Budget(cfg.replace(predictive_skip=False), M).simulate_calls(flat, 21, 0.25) == (8, 0)
    assert bud.simulate(flat, 21, 0.25) == 8
    prof = dict(enumerate(flat))
    # 6.9 calls: without the credit 6 is nearer; with 0.1 of a call per saved probe the runs of two earn 0.5
    # and 8 is nearer (|8 − 7.4| against |6 − 7.3|)
    assert bud.simulate(flat, 21, bud.solve(prof, 21, 6.9)) == 6
    assert bud.simulate(flat, 21, bud.solve(prof, 21, 6.9, credit=0.1)) == 8


def test_budget_mode_first_call_is_online_and_profiles_survive_reset_per_step_count():
    n = 30
    errors = [0.02] * 10 + [0.3] * 5 + [0.02] * 14
    cfg = DiCacheConfig(target_speedup=2.0, warmup=0.2)
    engine, s = drive_twice(cfg, {"c": scales(errors)}, n)
    assert ("c", n) in engine._budget.profiles
    first = drive(cfg, {"c": scales(errors)}, num_steps=n).branches["c"]
    assert first.budget == "online"
    assert s.branches["c"].block_evaluations_uncached / s.branches["c"].block_evaluations == pytest.approx(2.0, rel=0.1)
    # the profile is the mean over the finished trajectories of the step count
    b = engine._budget
    assert b._seen[("c", n)] == 1
    engine.reset()
    assert b._seen[("c", n)] == 2 and b.profiles[("c", n)][12] == pytest.approx(0.3, rel=1e-4)
    # another step count has no profile: its first call is online again
    assert ("c", n + 5) not in b.profiles and b._replay_delta(BranchState("c"), n + 5, 1) is None


@pytest.mark.parametrize("last", [0, 1, 2, 3])
def test_force_last_step_computes_the_final_steps(last):
    # error 0.01 per call and a huge δ: everything after the warm-up is skipped but the final `last` steps
    n = 12
    b = drive(DiCacheConfig(threshold=100.0, warmup=1, force_last_step=last), {"c": scales([0.01] * (n - 1))},
              num_steps=n).branches["c"]
    assert b.pattern == "F" + "." * (n - 1 - last) + "F" * last
    assert [st.reason for st in b.steps[n - last:]] == ["last_step"] * last
    # True is one step, False none
    assert DiCacheConfig(force_last_step=True).last_calls(n) == 1 and DiCacheConfig().last_calls(n) == 0


@pytest.mark.parametrize("n,last", [(20, 1), (25, 1), (30, 2), (50, 2), (100, 4)])
def test_force_last_step_as_a_ratio_of_the_steps(n, last):
    # 0.04 of the steps, rounded up (0.04·25 is one call, whatever the float product's last bit)
    cfg = DiCacheConfig(threshold=100.0, warmup=1, force_last_step=0.04)
    assert cfg.last_calls(n) == last
    b = drive(cfg, {"c": scales([0.01] * (n - 1))}, num_steps=n).branches["c"]
    assert b.pattern == "F" + "." * (n - 1 - last) + "F" * last
    assert [st.reason for st in b.steps[n - last:]] == ["last_step"] * last
    # no step count: the ratio cannot be applied and no final step is known (budget mode: at least one)
    assert cfg.last_calls(None) == 1 and cfg.replace(target_speedup=2.0).last_calls(None) == 1


@pytest.mark.parametrize("last", [1, 2])
def test_budget_mode_reserves_the_final_steps(last):
    n = 30
    errors = [0.02] * (n - 1)
    cfg = DiCacheConfig(target_speedup=2.0, warmup=0.1, force_last_step=last)
    b = drive(cfg, {"c": scales(errors)}, num_steps=n).branches["c"]
    assert b.pattern.endswith("F" * last) and [st.reason for st in b.steps[n - last:]] == ["last_step"] * last
    assert b.block_evaluations_uncached / b.block_evaluations == pytest.approx(2.0, rel=0.1)
    # budget mode computes the last step even when the config says none
    assert DiCacheConfig(target_speedup=2.0, force_last_step=False).last_calls(n) == 1


def test_budget_mode_online_skips_its_first_decided_call_until_an_error_is_measured():
    # a warm-up of one call measures no error: the first decided call has no rate to spend the budget by.
    # Computing it (as the online rule did) spent a call of the budget on no information, and the budget
    # then skipped a late call instead (FF.F.F.F.F.F.F.FFFFF on the 20-step models at 1.5×); it now skips
    n, errors = 12, [0.02] * 11
    cfg = DiCacheConfig(target_speedup=1.5, warmup=1, force_last_step=1)
    b = drive(cfg, {"c": scales(errors)}, num_steps=n).branches["c"]
    assert b.pattern.startswith("F.F")
    # ... unless the call's own probe error is not finite (a zero first probe): then it is computed, and the
    # next call, whose error is the first finite one, skips
    b = drive(cfg, {"c": [0.0] + scales(errors[1:])}, num_steps=n).branches["c"]
    assert b.pattern.startswith("FF.") and not math.isfinite(b.steps[1].error)
    # a rate measured in a longer warm-up decides the first call as before: e·S/F_left = 0.02·9/4.56 ≈ 0.04,
    # so an error of 0.02 skips and one of 0.5 is computed
    cfg = DiCacheConfig(target_speedup=1.5, warmup=2, force_last_step=1)
    assert drive(cfg, {"c": scales(errors)}, num_steps=n).branches["c"].pattern.startswith("FF.")
    jump = [0.02, 0.5] + errors[2:]
    assert drive(cfg, {"c": scales(jump)}, num_steps=n).branches["c"].pattern.startswith("FFF")


def test_budget_mode_spends_its_last_fraction_of_a_call_before_the_final_step():
    # 12 calls at 1.5×: a budget of 7.56 computed calls. Spent to its floor, the online rule skipped the
    # call before the forced last one (F.F.F.F.F.F) for 0.56 of a call; to the nearest call it computes it
    n, errors = 12, [0.02] * 11
    b = drive(DiCacheConfig(target_speedup=1.5, warmup=1, force_last_step=1), {"c": scales(errors)},
              num_steps=n).branches["c"]
    assert b.pattern == "F.F.F.F.FFFF"
    assert b.block_evaluations_uncached / b.block_evaluations == pytest.approx(1.5, rel=0.1)
    assert Budget._compute_all(1.6, 2) and not Budget._compute_all(1.4, 2) and Budget._compute_all(0.56, 1)


@pytest.mark.parametrize("target", [2.0, 2.5, 3.0])
def test_budget_mode_with_predictive_skips_credits_the_probes_it_saves(target):
    # a growing error; with predictive_skip some skips run no probe: the budget buys m/(M − m) of a computed call
    # with each, so the savings stay on target instead of overshooting it
    n, errors = 30, [0.02 + 0.001 * k for k in range(29)]
    cfg = DiCacheConfig(target_speedup=target, warmup=1, force_last_step=1)
    plain = drive(cfg, {"c": scales(errors)}, num_steps=n).branches["c"]
    pred = drive(cfg.replace(predictive_skip=True), {"c": scales(errors)}, num_steps=n).branches["c"]
    unprobed = sum(st.reason == "predicted" for st in pred.steps)
    assert unprobed >= 3 and all(not st.probed for st in pred.steps if st.reason == "predicted")
    for b in (plain, pred):
        assert b.block_evaluations_uncached / b.block_evaluations == pytest.approx(target, rel=0.06)
    # the credit is spent on computed calls: without it the same run computes fewer and overshoots the target

    credit = Budget._probe_credit
    try:
        Budget._probe_credit = lambda self, branches: 0.0
        uncredited = drive(cfg.replace(predictive_skip=True), {"c": scales(errors)}, num_steps=n).branches["c"]
    finally:
        Budget._probe_credit = credit
    if unprobed / (M - 1) >= 0.5:  # the blocks of at least half a computed call saved
        assert pred.full_calls > uncredited.full_calls
        assert pred.block_evaluations > uncredited.block_evaluations


def test_budget_mode_needs_a_step_count():
    with pytest.raises(RuntimeError, match="number of steps"):
        drive(DiCacheConfig(target_speedup=2.0, warmup=1), {"c": scales([0.1] * 5)})


def test_budget_from_a_step_count_on():
    """``target_min_steps``: the budget on trajectories of at least that many steps; a shorter one, or one of unknown
    length (which would raise without it), decides on δ exactly as the same config without the budget."""
    cfg = DiCacheConfig(target_speedup=2.0, target_min_steps=20, threshold=0.25, warmup=1)
    fixed = cfg.replace(target_speedup=None, target_min_steps=None)
    assert [cfg.budgets(n) for n in (None, 8, 19, 20, 50)] == [False, False, False, True, True]
    assert cfg.replace(target_min_steps=None).budgets(None) and not fixed.budgets(50)
    errors = [0.02, 0.3, 0.02, 0.02, 0.25, 0.02, 0.02, 0.02, 0.3, 0.02, 0.02]  # 12 calls
    for n in (None, 12):
        got, want = (drive(c, {"c": scales(errors)}, num_steps=n) for c in (cfg, fixed))
        assert got.branches["c"].pattern == want.branches["c"].pattern and "." in want.branches["c"].pattern
        assert got.config == fixed and got.enabled_config == cfg and got.branches["c"].budget is None
        assert got.rule == "δ=0.25, no budget under 20 steps or without a step count"
    long = drive(cfg, {"c": scales([0.02] * 29)}, num_steps=30)
    b = long.branches["c"]
    assert long.config == cfg and long.enabled_config is None and b.budget is not None
    assert b.block_evaluations_uncached / b.block_evaluations == pytest.approx(2.0, rel=0.1)


@pytest.mark.parametrize(
    "options,word",
    [
        (dict(max_consecutive_reuse=0), "max_consecutive_reuse"),
        (dict(max_consecutive_reuse=1.5), "max_consecutive_reuse"),
        (dict(cfg_decision="cond"), "cfg_decision"),
        (dict(threshold_end=-1.0), "threshold_end"),
        (dict(step_size_power=-0.5), "step_size_power"),
        (dict(step_size_power=2.5), "step_size_power"),
        (dict(step_size_power="0.5"), "step_size_power"),
        (dict(step_size_power=float("nan")), "step_size_power"),
        (dict(target_speedup=1.0), "target_speedup"),
        (dict(target_speedup=float("inf")), "target_speedup"),
        (dict(target_min_steps=0), "target_min_steps"),
        (dict(target_min_steps=20.0), "target_min_steps"),
        (dict(target_min_steps=True), "target_min_steps"),
        (dict(run_power=-1.0), "run_power"),
        (dict(run_power=float("inf")), "run_power"),
        (dict(run_power="1"), "run_power"),
        (dict(predictive_skip=1), "predictive_skip"),
        (dict(predictive_skip="yes"), "predictive_skip"),
        (dict(gamma_source="step"), "gamma_source"),
        (dict(gamma_source=None), "gamma_source"),
        (dict(quad_balance=0), "quad_balance"),
        (dict(quad_balance=-0.5), "quad_balance"),
        (dict(quad_balance=1.5), "quad_balance"),
        (dict(quad_balance=float("nan")), "quad_balance"),
        (dict(quad_balance=True), "quad_balance"),
        (dict(quad_balance="0.5"), "quad_balance"),
        (dict(quad_balance="Auto"), "quad_balance"),
        (dict(quad_reach=1), "quad_reach"),
        (dict(quad_reach="yes"), "quad_reach"),
        (dict(quad_reach=None), "quad_reach"),
        (dict(quad_reach="Spaced"), "quad_reach"),
        (dict(quad_reach="after_warmup"), "quad_reach"),
        (dict(quad_reach=True, quad_reach_blend=1.5), "quad_reach_blend"),
        (dict(quad_reach=True, quad_reach_blend=-0.1), "quad_reach_blend"),
        (dict(quad_reach=True, quad_reach_blend=float("nan")), "quad_reach_blend"),
        (dict(quad_reach=True, quad_reach_blend=True), "quad_reach_blend"),
        (dict(quad_reach=True, quad_reach_blend="0.5"), "quad_reach_blend"),
        (dict(reconstruct_at="proj_out"), "reconstruct_at"),
        (dict(reconstruct_at=None), "reconstruct_at"),
        (dict(span_power=0.1), "span_power"),
        (dict(span_power=1.5), "span_power"),
        (dict(span_power=float("nan")), "span_power"),
        (dict(span_power=True), "span_power"),
        (dict(span_power="auto"), "span_power"),
        (dict(span_power=None), "span_power"),
        (dict(probe_threshold=-0.1), "probe_threshold"),
        (dict(probe_threshold=float("nan")), "probe_threshold"),
        (dict(probe_threshold="0.2"), "probe_threshold"),
        (dict(probe_threshold=True), "probe_threshold"),
    ],
)
def test_bad_policy_values(options, word):
    model = tiny.flux_transformer()
    with pytest.raises(ValueError, match=word):
        dicache.enable(model, **options)
    assert not dicache.is_enabled(model)


def test_planned_budget_mode_on_a_pipeline():
    # 40 steps: the preset plans the runs (γ from the steps), so the skips run no block and the budget is N/s
    pipe = tiny.flux_pipeline()
    dicache.enable(pipe, backend="torch", target_speedup=2.5)
    out = tiny.flux_pipeline_call(pipe, steps=40)
    s = dicache.summary(pipe)
    dicache.disable(pipe)
    b = s.branches["cond"]
    # the pipeline's scheduler told the step sizes: the first call predicted the errors from them
    assert b.budget == "planned, online, step sizes" and "." not in b.pattern and b.pattern.count("F") == 16, b.pattern
    assert b.block_evaluations_uncached / b.block_evaluations == pytest.approx(2.5)
    assert torch.isfinite(out).all()


def test_budget_mode_on_a_pipeline():
    pipe = tiny.flux_pipeline()
    dicache.enable(pipe, backend="torch", target_speedup=2.0)
    tiny.flux_pipeline_call(pipe, steps=20)
    s = dicache.summary(pipe)
    # the scheduler told the engine its step sizes |σ_k − σ_(k+1)| (the online rule predicts the errors by them)
    sig = pipe.scheduler.sigmas.tolist()
    told = dicache.hooks.session_of(pipe.transformer).engine._budget.step_sizes
    assert told == pytest.approx([abs(sig[k] - sig[k + 1]) for k in range(20)]) and len(sig) == 21
    dicache.disable(pipe)
    b = s.branches["cond"]
    assert b.block_evaluations_uncached / b.block_evaluations == pytest.approx(2.0, rel=0.15)
    # the header says where γ comes from (the preset: the steps from STEPS_GAMMA_MIN_STEPS steps on, else the clipped probe's)
    plan = f", runs planned (skips unprobed, runs only shortening) on ≥ {STEPS_GAMMA_MIN_STEPS} steps)"
    assert f"γ from the steps on ≥ {STEPS_GAMMA_MIN_STEPS} steps, else γ∈[1, 1.5]{plan}" in str(s)
    # plan_runs="auto" follows γ's source: planned at any count with the steps', never with the probe's
    for source, text in (("steps", "γ from the steps, runs planned (skips unprobed, runs only shortening))"),
                         ("probe", "γ∈[1, 1.5])")):
        dicache.enable(pipe, backend="torch", target_speedup=2.0, gamma_source=source)
        tiny.flux_pipeline_call(pipe, steps=6)
        assert text in str(dicache.summary(pipe)), source
        dicache.disable(pipe)
    dicache.enable(pipe, backend="torch", target_speedup=2.0, monotone_runs=False)
    tiny.flux_pipeline_call(pipe, steps=6)
    assert f", runs planned (skips unprobed) on ≥ {STEPS_GAMMA_MIN_STEPS} steps)" in str(dicache.summary(pipe))
    dicache.disable(pipe)


def test_step_size_power_reads_the_pipeline_s_step_sizes():
    """Through a pipeline: the scheduler's step sizes scale the preset's δ where the probe decides (20 steps), the
    header says so, and the decisions change with it; where runs are planned (40 steps) nothing changes."""
    import statistics

    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = tiny.flux_pipeline()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # steps growing towards the end, as FLUX.1's
    patterns = {}
    for power in (0.5, 0.0):
        dicache.enable(pipe, backend="torch", threshold=0.2, step_size_power=power)
        tiny.flux_pipeline_call(pipe, steps=20)
        engine = dicache.hooks.session_of(pipe.transformer).engine
        sizes = engine._budget.step_sizes
        engine.begin_call("probe", 19, 20)
        scaled = engine._threshold(engine._cur)
        engine.abort_call()
        s = dicache.summary(pipe)
        patterns[power] = s.branches["cond"].pattern
        tiny.flux_pipeline_call(pipe, steps=40)
        patterns[power, 40] = dicache.summary(pipe).branches["cond"].pattern
        dicache.disable(pipe)
        assert scaled == pytest.approx(0.2 * (statistics.median(sizes) / sizes[19]) ** power)
        said = "δ=0.2, δ × (median step size / the call's)^0.5 where the probe decides, γ" in str(s)
        assert said == (power == 0.5)
    assert sizes[19] > statistics.median(sizes)  # the flow-matching schedule's steps grow towards the end
    # the call before the forced last one, on the second largest step: skipped at the same δ everywhere, computed
    # with δ scaled down there
    assert patterns[0.0][-3:] == "F.F" and patterns[0.5][-3:] == ".FF"
    assert patterns[0.5, 40] == patterns[0.0, 40]


@pytest.mark.parametrize("steps", [20, 40])  # every call probed; runs planned
def test_budget_profiles_replay_from_the_first_call_of_another_process(steps):
    # a first call predicts the errors online; the profile it measured, saved as JSON and given to a fresh enable,
    # makes the first call there replay as the second call of the measuring process does
    pipe = tiny.flux_pipeline()
    dicache.enable(pipe, backend="torch", target_speedup=2.5)
    assert dicache.summary(pipe).budget_profiles == ()  # no trajectory yet
    tiny.flux_pipeline_call(pipe, steps=steps)
    first = dicache.summary(pipe)
    saved = json.loads(json.dumps(first.budget_profiles))
    tiny.flux_pipeline_call(pipe, steps=steps)
    second = dicache.summary(pipe).branches["cond"]
    dicache.disable(pipe)
    assert "online" in first.branches["cond"].budget and "replay" in second.budget
    assert f"budget profiles: cond at {steps} steps (1 trajectory); another process" in str(first)
    (record,) = saved
    assert record["branch"] == "cond" and record["steps"] == steps and record["trajectories"] == 1
    assert record["blocks"] == first.num_blocks and len(record["increments"]) >= steps // 2
    assert (record["probe_depth"], record["error"]) == (first.config.probe_depth, first.config.error)
    dicache.enable(pipe, backend="torch", target_speedup=2.5, budget_profiles=saved)
    tiny.flux_pipeline_call(pipe, steps=steps)
    again = dicache.summary(pipe)
    dicache.disable(pipe)
    assert again.branches["cond"].budget == second.budget and again.branches["cond"].pattern == second.pattern
    assert again.budget_profiles[0]["trajectories"] == 2  # folded in as the measuring process's second call
    # another step count has no profile: its first call is online
    dicache.enable(pipe, backend="torch", target_speedup=2.5, budget_profiles=saved)
    tiny.flux_pipeline_call(pipe, steps=steps + 2)
    assert "online" in dicache.summary(pipe).branches["cond"].budget
    dicache.disable(pipe)
    # without a budget no profile is kept
    dicache.enable(pipe, backend="torch", threshold=0.3)
    tiny.flux_pipeline_call(pipe, steps=steps)
    assert dicache.summary(pipe).budget_profiles == ()
    dicache.disable(pipe)


def _profile_record(**change):
    cfg = tiny.flux_transformer().config
    record = {"branch": "cond", "steps": 6, "blocks": cfg.num_layers + cfg.num_single_layers, "probe_depth": 1,
              "error": "probe", "trajectories": 1, "power": 1.0,
              "increments": [[k, 0.01 * (k + 1)] for k in range(1, 6)]}
    record.update(change)
    return record


@pytest.mark.parametrize(
    "profiles, error, word",
    [
        ({"branch": "cond"}, TypeError, "list of dicts"),
        ("cond", TypeError, "list of dicts"),
        ([3], TypeError, "record 0 must be a dict"),
        ([{"branch": "cond"}], ValueError, "lacks"),
        ([_profile_record(branch="")], ValueError, "branch"),
        ([_profile_record(steps=1.5)], ValueError, "steps"),
        ([_profile_record(trajectories=0)], ValueError, "trajectories"),
        ([_profile_record(blocks=3)], ValueError, "model of 3 blocks"),
        ([_profile_record(probe_depth=0)], ValueError, "probe_depth must be"),
        ([_profile_record(probe_depth=2)], ValueError, "measured with probe_depth=2"),  # another probe: another error
        ([_profile_record(error="probe_minus_input")], ValueError, "error='probe_minus_input'"),
        ([_profile_record(power=0.1)], ValueError, "power"),
        ([_profile_record(power=float("nan"))], ValueError, "power"),
        ([_profile_record(increments=[[1, float("nan")]] + [[k, 0.1] for k in range(2, 6)])], ValueError, "finite"),
        ([_profile_record(increments=[[6, 0.1]] + [[k, 0.1] for k in range(1, 5)])], ValueError, "0 <= step < 6"),
        ([_profile_record(increments=[[1, 0.1], [1, 0.2], [2, 0.1]])], ValueError, "distinct"),
        ([_profile_record(increments=[[1, 0.1], [2, 0.1]])], ValueError, "at least 3"),
        ([_profile_record(), _profile_record()], ValueError, "two records"),
        ([_profile_record(branch="1:cond")], ValueError, None),  # one transformer: a branch of that name, fine
    ],
)
def test_bad_budget_profiles(profiles, error, word):
    pipe = tiny.flux_pipeline()
    if word is None:  # (the last case is accepted, with a budget to replay it)
        dicache.enable(pipe, backend="torch", target_speedup=2.0, budget_profiles=profiles)
        dicache.disable(pipe)
        with pytest.raises(ValueError, match="target_speedup"):  # a fixed δ replays no profile
            dicache.enable(pipe, backend="torch", threshold=0.3, budget_profiles=profiles)
        assert not dicache.is_enabled(pipe)
        return
    with pytest.raises(error, match="budget_profiles") as e:
        dicache.enable(pipe, backend="torch", target_speedup=2.0, budget_profiles=profiles)
    assert word in str(e.value)
    assert not dicache.is_enabled(pipe)


def test_budget_profiles_of_a_pipeline_with_two_transformers():
    # Wan 2.2's experts: summary names the second's branches "1:cond", and budget_profiles routes them back to it
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=tiny.wan_transformer(0),
                       transformer_2=tiny.wan_transformer(1), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                       boundary_ratio=0.5)
    blocks = len(pipe.transformer.blocks)
    record = dict(_profile_record(), blocks=blocks)
    dicache.enable(pipe, backend="torch", target_speedup=2.0,
                   budget_profiles=[record, dict(record, branch="1:uncond", steps=8)])
    engines = [dicache.hooks.session_of(m).engine for m in (pipe.transformer, pipe.transformer_2)]
    assert [[(r["branch"], r["steps"]) for r in e.budget_profiles()] for e in engines] == [[("cond", 6)],
                                                                                            [("uncond", 8)]]
    dicache.disable(pipe)

    class Online(DiCacheEngine):
        replay_budget = False

    with pytest.raises(ValueError, match="replay_budget = False"):  # an engine that never replays refuses them
        dicache.enable(pipe, backend="torch", target_speedup=2.0, budget_profiles=[record], engine_factory=Online)
    assert not dicache.is_enabled(pipe)
    with pytest.raises(ValueError, match="names transformer 2"):
        dicache.enable(pipe, backend="torch", target_speedup=2.0, budget_profiles=[dict(record, branch="2:cond")])
    assert not dicache.is_enabled(pipe)


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


def test_alignment_order_auto_follows_the_probe():
    g = torch.Generator().manual_seed(4)
    A, B, C = (torch.randn(2, 5, 7, generator=g) for _ in range(3))
    D, E = (torch.rand(2, 5, 7, generator=g) + 0.5 for _ in range(2))
    x = torch.randn(2, 5, 7, generator=g)
    R = [A + B * k + C * k * k for k in range(5)]
    cfg = DiCacheConfig(threshold=1e9, warmup=3, gamma_clip=(0.0, 10.0), alignment_order="auto")
    # a probe residual on a straight line: the line misses nothing of it, so the quadratic gets no weight
    engine = _engine_with_stored(cfg, R[:3], [D * k for k in range(3)], x)
    engine.begin_call("c", 3, 10)
    h = engine.after_probe(x, x + D * 3)
    torch.testing.assert_close(engine.branches["c"].quad_weight, torch.zeros(2))
    torch.testing.assert_close(h, x + R[1] + 2.0 * (R[2] - R[1]))
    # a probe residual that bends off its line (a small curvature across the line's direction, so the
    # L1 step γ still reads off the step): the fit bends the line most of the way to the quadratic
    E = 0.05 * torch.randn(2, 5, 7, generator=g)
    P = [D * k + E * k * k for k in range(5)]
    errs = {}
    for order in (1, "auto"):
        engine = _engine_with_stored(cfg.replace(alignment_order=order), R[:3], P[:3], x)
        engine.begin_call("c", 3, 10)
        h = engine.after_probe(x, x + P[3])
        errs[order] = (h - (x + R[3])).abs().mean().item()
    w = engine.branches["c"].quad_weight
    assert w.shape == (2,) and bool((w > 0.5).all()) and bool((w <= 1).all())
    assert errs["auto"] < 0.5 * errs[1]
    assert len(engine.branches["c"].R) == 3  # auto stores three entries


@pytest.mark.parametrize("policy", ["max", "global"])
def test_alignment_order_auto_weight_is_the_least_squares_fit(policy):
    # random stored entries at steps 0, 1, 2 and an unaligned probe: w is the clipped least-squares weight of
    # (quadratic − line) fitting (measured − line) on the probe residuals, per sample or pooled over the batch,
    # and the deep output is the line plus w times the quadratic's correction, built from the same weights
    g = torch.Generator().manual_seed(11)
    shape = (3, 9, 5)
    R = [torch.randn(*shape, generator=g) for _ in range(3)]
    P = [torch.randn(*shape, generator=g) * 0.3 + k for k in range(3)]
    x = torch.randn(*shape, generator=g)
    line3, quad3 = 2 * P[2] - P[1], P[0] - 3 * P[1] + 3 * P[2]  # the two extrapolations to step 3
    p_new = x + 0.5 * (line3 + quad3) + 0.1 * torch.randn(*shape, generator=g)
    cfg = DiCacheConfig(threshold=1e9, warmup=3, gamma_clip=(0.0, 10.0), alignment_order="auto",
                        batch_policy=policy)
    engine = _engine_with_stored(cfg, R, P, x)
    engine.begin_call("c", 3, 10)
    h = engine.after_probe(x, p_new)
    state = engine.branches["c"]
    gam = state.gamma.view(-1, 1, 1)
    tau = 1.0 + gam  # t1 = 1, t2 = 2
    c0 = (tau - 1) * (tau - 2) / 2.0  # Lagrange weights of steps 0 and 2 at τ
    c2 = tau * (tau - 1) / 2.0
    c1 = 1 - c0 - c2

    def line(E):
        return E[1] + gam * (E[2] - E[1])

    def quad(E):
        return c0 * E[0] + c1 * E[1] + c2 * E[2]

    miss, bend = (p_new - x) - line(P), quad(P) - line(P)
    dims = (0, 1, 2) if policy == "global" else (1, 2)
    w = ((miss * bend).sum(dims) / (bend * bend).sum(dims)).clamp(0, 1).expand(3)
    assert 0 < float(w.min()) and float(w.max()) < 1  # an interior fit: the clip does not hide the formula
    torch.testing.assert_close(state.quad_weight, w, rtol=1e-4, atol=1e-5)
    wv = w.view(-1, 1, 1)
    torch.testing.assert_close(h, x + line(R) + wv * (quad(R) - line(R)), rtol=1e-4, atol=1e-4)


def test_alignment_order_auto_shared_follower_takes_the_leaders_choice():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 5, 7, generator=g)
    D, E = torch.rand(2, 5, 7, generator=g) + 0.5, 0.05 * torch.randn(2, 5, 7, generator=g)
    cfg = DiCacheConfig(threshold=1e9, warmup=3, gamma_clip=(0.0, 10.0), alignment_order="auto",
                        cfg_decision="shared")
    engine = DiCacheEngine(cfg, M, "torch")
    for k in range(3):
        for name in ("cond", "uncond"):
            engine.begin_call(name, k, 10)
            assert engine.after_probe(x, x + D * k + E * k * k) is None
            engine.after_full(x + (D * k + E * k * k) * 3)
    engine.begin_call("cond", 3, 10)
    h_cond = engine.after_probe(x, x + D * 3 + E * 9)
    assert h_cond is not None
    w = engine.branches["cond"].quad_weight
    assert bool((w > 0).all())
    engine.begin_call("uncond", 3, 10)
    h_uncond = engine.before_probe(x)  # followed without a probe, with the leader's γ and weight
    assert h_uncond is not None
    assert engine.branches["uncond"].quad_weight is w
    torch.testing.assert_close(h_uncond, h_cond)  # the same stored entries: the same reconstruction


def _quadratic_entries_at_0_2_4(cfg, g, num_steps, flow_matching=None):
    """An engine whose branch "c" computed steps 0, 2 and 4 (random probe residuals) of the deep trajectory
    ``R(k) = A + B k + C k²``; returns the engine, the block input x and R. ``flow_matching``: what a pipeline
    would have told the engine of its scheduler."""
    A, B, C = (torch.randn(2, 5, 7, generator=g) for _ in range(3))
    x = torch.randn(2, 5, 7, generator=g)

    def R(k):
        return A + B * k + C * k * k

    engine = DiCacheEngine(cfg, M, "torch")
    engine.flow_matching = flow_matching
    for k in (0, 2, 4):
        engine.begin_call("c", k, num_steps)
        engine._forced = "test"  # computed: store the entry of step k
        assert engine.after_probe(x, x + torch.randn(2, 5, 7, generator=g)) is None
        engine.after_full(x + R(k))
    return engine, x, R


@pytest.mark.parametrize("order", [1, 2])
def test_gamma_source_steps_places_the_call_at_its_step(order):
    # stored entries at steps 0, 2, 4 (two calls apart) of a quadratic deep trajectory, and a probe that
    # says nothing useful about the step (a random residual): with gamma_source="steps", γ is the step
    # distance (t − t1)/(t2 − t1), unclipped, whatever the probe says; order 2 rebuilds R_t exactly at
    # steps 5 and 7, order 1 follows the line through the two newest. "probe" reads a different γ.
    g = torch.Generator().manual_seed(21)
    for source in ("steps", "probe"):
        cfg = DiCacheConfig(threshold=1e9, warmup=0, gamma_clip=(1.0, 1.5), alignment_order=order,
                            gamma_source=source)
        engine, x, R = _quadratic_entries_at_0_2_4(cfg, g, 10)
        for t in (5, 7):
            engine.begin_call("c", t, 10)
            h = engine.after_probe(x, x + torch.randn(2, 5, 7, generator=g))
            assert h is not None
            gam = engine.branches["c"].gamma
            if source == "probe":
                assert float(gam.max()) <= 1.5  # the probe's γ, clipped
                continue
            torch.testing.assert_close(gam, torch.full_like(gam, (t - 2) / 2))  # unclipped: 1.5, 2.5
            want = x + R(t) if order == 2 else x + R(2) + (t - 2) / 2 * (R(4) - R(2))
            torch.testing.assert_close(h, want, rtol=1e-4, atol=1e-4)


def _jittered_trajectory(seed, steps):
    """A deep trajectory with jitter: the generator (for the probes' draws after it), an input ``x`` and ``R(k) = A +
    B·k`` plus noise of 0.3 per element at each of ``steps`` steps."""
    g = torch.Generator().manual_seed(seed)
    A, B = (torch.randn(2, 5, 7, generator=g) for _ in range(2))
    noise = {k: 0.3 * torch.randn(2, 5, 7, generator=g) for k in range(steps)}
    x = torch.randn(2, 5, 7, generator=g)
    return g, x, lambda k: A + B * k + noise[k]


def _calls_on_entries(engine, x, R, g, steps, computed):
    """Run the calls at ``steps`` of branch ``c`` (30 steps in all): those in ``computed`` forced, storing the entry
    ``x + R(k)``, the others skipped; returns ``{step: (output, quadratic weight)}`` of the skipped ones."""
    outs = {}
    for k in steps:
        engine.begin_call("c", k, 30)
        if k in computed:
            engine._forced = "test"  # computed: store the entry of step k
            assert engine.before_probe(x) is None
            assert engine.after_probe(x, x + torch.randn(2, 5, 7, generator=g)) is None
            engine.after_full(x + R(k))
            continue
        h = engine.before_probe(x)
        if h is None:
            h = engine.after_probe(x, x + torch.randn(2, 5, 7, generator=g))
        assert h is not None, k
        outs[k] = (h.clone(), engine.branches["c"].quad_weight)
    return outs


def _quad_through(x, R, k, t0, t1, t2):
    """``x`` plus the quadratic through the residuals ``R`` at steps ``t0 < t1 < t2``, at step ``k``."""
    c = [(k - t1) * (k - t2) / ((t0 - t1) * (t0 - t2)), (k - t0) * (k - t2) / ((t1 - t0) * (t1 - t2)),
         (k - t0) * (k - t1) / ((t2 - t0) * (t2 - t1))]
    return x + c[0] * R(t0) + c[1] * R(t1) + c[2] * R(t2)


@pytest.mark.parametrize("planned", [False, True])
def test_quad_balance_takes_the_line_through_unbalanced_entries(planned):
    # entries at steps 0, 1 and 4 (the warm-up's pair and one three steps on) of a deep trajectory with jitter:
    # with γ from the steps the quadratic through them weighs 4.5, −7, 3.5 at step 7 and amplifies the jitter;
    # quad_balance takes the line through the two newest there (spacings 1 and 3: 1 < 0.5·3), and the quadratic
    # again once the entries are balanced (steps 1, 4, 6: spacings 3 and 2)
    g, x, R = _jittered_trajectory(31, 12)

    def run(balance, flow_matching=None):
        cfg = DiCacheConfig(threshold=1e9, warmup=0, alignment_order="auto", gamma_source="steps",
                            quad_balance=balance, plan_runs=planned)
        engine = DiCacheEngine(cfg, M, "torch")
        engine.flow_matching = flow_matching  # as a pipeline's scheduler tells it
        return _calls_on_entries(engine, x, R, g, range(8), (0, 1, 4, 6))

    def line(k, t1, t2):
        return x + R(t1) + (k - t1) / (t2 - t1) * (R(t2) - R(t1))

    def quad(k, t0, t1, t2):
        return _quad_through(x, R, k, t0, t1, t2)

    balanced, whole = run(0.5), run(None)
    # after steps 0, 1, 4: unbalanced
    torch.testing.assert_close(balanced[5][0], line(5, 1, 4), rtol=1e-4, atol=1e-4)
    assert balanced[5][1] is None
    torch.testing.assert_close(whole[5][0], quad(5, 0, 1, 4), rtol=1e-4, atol=1e-4)
    # the line's error on the jittering trajectory is the smaller one there
    assert (balanced[5][0] - (x + R(5))).abs().mean() < (whole[5][0] - (x + R(5))).abs().mean()
    for out in (balanced, whole):  # after steps 1, 4, 6: balanced, the quadratic for both
        torch.testing.assert_close(out[7][0], quad(7, 1, 4, 6), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out[7][1], torch.ones(2))
    # a bound of 1 takes the quadratic only through evenly spaced entries
    assert run(1.0)[7][1] is None
    # "auto": the bound of 0.5 on a flow-matching trajectory and where the scheduler is not known, none on a
    # DDPM-family scheduler's
    for flow_matching, same in ((True, balanced), (None, balanced), (False, whole)):
        auto = run("auto", flow_matching)
        for k in (5, 7):
            torch.testing.assert_close(auto[k][0], same[k][0], rtol=1e-5, atol=1e-5)
            assert (auto[k][1] is None) == (same[k][1] is None), (flow_matching, k)


@pytest.mark.parametrize("planned", [False, True])
def test_quad_reach_takes_the_line_past_the_entries_shorter_spacing(planned):
    # entries at steps 10, 12 and 13 (a call computed out of step among entries three apart) of a deep trajectory
    # with jitter; balanced at quad_balance 0.5 (spacings 2 and 1), so the quadratic is taken whole, but at step 15
    # its weights are 1, −5, 5: quad_reach takes the line through 12 and 13 there (2 steps past 13 > spacing 1) and
    # keeps the quadratic at step 14 (1 step past); without it, the quadratic at both
    from dicache.state import within_reach

    assert within_reach(10, 12, 13, 14) and not within_reach(10, 12, 13, 15)
    assert within_reach(4, 7, 10, 13) and not within_reach(4, 7, 10, 14)  # even spacing 3: three steps on
    assert within_reach(1, 2, 4, 5) and not within_reach(1, 2, 4, 6)  # the presets' first run after the warm-up
    g, x, R = _jittered_trajectory(37, 20)

    def run(reach):
        cfg = DiCacheConfig(threshold=1e9, warmup=0, alignment_order="auto", gamma_source="steps",
                            quad_balance=0.5, quad_reach=reach, plan_runs=planned)
        return _calls_on_entries(DiCacheEngine(cfg, M, "torch"), x, R, g, (10, 12, 13, 14, 15), (10, 12, 13))

    def quad(k, t0, t1, t2):
        return _quad_through(x, R, k, t0, t1, t2)

    reach, whole = run(True), run(False)
    for out in (reach, whole):  # step 14, one step past the newest: the quadratic either way
        torch.testing.assert_close(out[14][0], quad(14, 10, 12, 13), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(whole[15][0], quad(15, 10, 12, 13), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(reach[15][0], x + R(12) + 3 * (R(13) - R(12)), rtol=1e-4, atol=1e-4)
    assert reach[15][1] is None and whole[15][1] is not None
    # the line's error on the jittering trajectory is the smaller one there
    assert (reach[15][0] - (x + R(15))).abs().mean() < (whole[15][0] - (x + R(15))).abs().mean()


@pytest.mark.parametrize("planned", [False, True])
def test_quad_reach_spaced_keeps_the_quadratic_through_neighbouring_entries(planned):
    # the presets' first run after the warm-up stores entries at steps 1, 2 and 4: at step 6 (two steps past the newest,
    # beyond the shorter spacing 1) quad_reach=True takes the line through 2 and 4; "spaced" keeps the quadratic there
    # (its two oldest entries are neighbouring steps). Through entries 4, 7, 11 (a run that lengthens) both take the
    # line at step 15 (four steps past 11, beyond spacing 3) and the quadratic at step 14
    from dicache.state import reach_tested

    assert reach_tested(True, 1, 2) and not reach_tested("spaced", 1, 2) and not reach_tested(False, 4, 7)
    assert reach_tested("spaced", 4, 7) and reach_tested(True, 4, 7)
    g, x, R = _jittered_trajectory(41, 20)

    def run(reach, steps, computed):
        cfg = DiCacheConfig(threshold=1e9, warmup=0, alignment_order="auto", gamma_source="steps",
                            quad_balance=0.5, quad_reach=reach, plan_runs=planned)
        return _calls_on_entries(DiCacheEngine(cfg, M, "torch"), x, R, g, steps, computed)

    def line(k, t1, t2):
        return x + R(t1) + (k - t1) / (t2 - t1) * (R(t2) - R(t1))

    warm = {reach: run(reach, (1, 2, 4, 6), (1, 2, 4)) for reach in (False, True, "spaced")}
    for reach in (False, "spaced"):
        torch.testing.assert_close(warm[reach][6][0], _quad_through(x, R, 6, 1, 2, 4), rtol=1e-4, atol=1e-4)
        assert warm[reach][6][1] is not None
    torch.testing.assert_close(warm[True][6][0], line(6, 2, 4), rtol=1e-4, atol=1e-4)
    assert warm[True][6][1] is None
    longer = {reach: run(reach, (4, 7, 11, 14, 15), (4, 7, 11)) for reach in (False, True, "spaced")}
    for reach, out in longer.items():
        torch.testing.assert_close(out[14][0], _quad_through(x, R, 14, 4, 7, 11), rtol=1e-4, atol=1e-4)
        want = _quad_through(x, R, 15, 4, 7, 11) if reach is False else line(15, 7, 11)
        torch.testing.assert_close(out[15][0], want, rtol=1e-4, atol=1e-4)
        assert (out[15][1] is None) == (reach is not False), reach


@pytest.mark.parametrize("planned", [False, True])
def test_quad_reach_blend_hedges_between_the_line_and_the_quadratic_beyond_the_reach(planned):
    # entries at steps 10, 12, 13 (a call computed out of step) and 1, 2, 4 (the warm-up's) of a jittering trajectory:
    # beyond the reach (step 15; step 6 for True) quad_reach_blend=w takes line + w·(quadratic − line), within it (step
    # 14) the quadratic whole; "spaced" leaves the warm-up's entries to the quadratic whatever w; 0 is the line
    g, x, R = _jittered_trajectory(43, 20)

    def run(reach, blend, steps, computed):
        cfg = DiCacheConfig(threshold=1e9, warmup=0, alignment_order="auto", gamma_source="steps",
                            quad_balance=0.5, quad_reach=reach, quad_reach_blend=blend, plan_runs=planned)
        return _calls_on_entries(DiCacheEngine(cfg, M, "torch"), x, R, g, steps, computed)

    def line(k, t1, t2):
        return x + R(t1) + (k - t1) / (t2 - t1) * (R(t2) - R(t1))

    quad15, line15 = _quad_through(x, R, 15, 10, 12, 13), line(15, 12, 13)
    for reach in (True, "spaced"):
        for blend in (0.0, 0.3, 1.0):
            out = run(reach, blend, (10, 12, 13, 14, 15), (10, 12, 13))
            torch.testing.assert_close(out[14][0], _quad_through(x, R, 14, 10, 12, 13), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(out[15][0], line15 + blend * (quad15 - line15), rtol=1e-4, atol=1e-4)
            if blend == 0:
                assert out[15][1] is None
            else:
                torch.testing.assert_close(out[15][1], torch.full_like(out[15][1], blend))
    # without quad_reach nothing lies beyond the reach: the quadratic whatever the blend (a preset's blend with
    # quad_reach=False is not an error)
    torch.testing.assert_close(run(False, 0.5, (10, 12, 13, 15), (10, 12, 13))[15][0], quad15, rtol=1e-4, atol=1e-4)
    quad6, line6 = _quad_through(x, R, 6, 1, 2, 4), line(6, 2, 4)
    warm = {reach: run(reach, 0.3, (1, 2, 4, 6), (1, 2, 4)) for reach in (True, "spaced")}
    torch.testing.assert_close(warm[True][6][0], line6 + 0.3 * (quad6 - line6), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(warm["spaced"][6][0], quad6, rtol=1e-4, atol=1e-4)
    # on the jittering trajectory the half blend's error at step 15 is smaller than the quadratic's
    err = {b: (run(True, b, (10, 12, 13, 15), (10, 12, 13))[15][0] - (x + R(15))).abs().mean() for b in (0.5, 1)}
    assert err[0.5] < err[1], err


@pytest.mark.parametrize("flow_matching", [None, True, False])
@pytest.mark.parametrize("num_steps", [8, 20, STEPS_GAMMA_MIN_STEPS - 1, STEPS_GAMMA_MIN_STEPS, 50, None])
def test_gamma_source_auto_takes_the_steps_on_long_or_ddpm_trajectories(num_steps, flow_matching):
    # gamma_source="auto" (the presets'): the step distance from STEPS_GAMMA_MIN_STEPS steps on, and at any known
    # step count on a DDPM-family scheduler's trajectory (flow_matching False), where alignment_order="auto" then
    # takes the quadratic whole (w = 1): exact on a quadratic trajectory whatever the probe says; on shorter
    # flow-matching (or unknown) trajectories and unknown step counts the probe's clipped γ and its fitted weight
    g = torch.Generator().manual_seed(23)
    cfg = DiCacheConfig(threshold=1e9, warmup=0, gamma_clip=(1.0, 1.5), alignment_order="auto",
                        gamma_source="auto", plan_runs=False, run_power="auto")
    engine, x, R = _quadratic_entries_at_0_2_4(cfg, g, num_steps, flow_matching)
    engine.begin_call("c", 7, num_steps)
    h = engine.after_probe(x, x + torch.randn(2, 5, 7, generator=g))
    state = engine.branches["c"]
    steps = num_steps is not None and (num_steps >= STEPS_GAMMA_MIN_STEPS or flow_matching is False)
    assert cfg.gamma_from_steps(num_steps, flow_matching) == steps
    # the trajectory's config: γ's source resolved where only the scheduler's family decides it (one copy per config)
    resolved = steps and num_steps < STEPS_GAMMA_MIN_STEPS
    assert engine.config == (cfg.replace(gamma_source="steps") if resolved else cfg)
    assert engine.config is cfg.on_trajectory(num_steps, flow_matching)
    assert engine.config.run_power_at(num_steps) == (2.0 if steps else 1.0)
    if steps:
        torch.testing.assert_close(state.gamma, torch.full_like(state.gamma, 2.5))
        torch.testing.assert_close(state.quad_weight, torch.ones_like(state.gamma))
        torch.testing.assert_close(h, x + R(7), rtol=1e-4, atol=1e-4)
    else:
        assert float(state.gamma.max()) <= 1.5
        assert (h - (x + R(7))).abs().max().item() > 0.1


def test_gamma_source_steps_with_predictive_skip_and_a_shared_follower():
    # the unprobed calls (a predicted skip, a CFG follower) sit at their steps too
    g = torch.Generator().manual_seed(22)
    x = torch.randn(1, 4, 6, generator=g)
    R = [torch.randn(1, 4, 6, generator=g) for _ in range(2)]
    cfg = DiCacheConfig(threshold=1e9, warmup=2, gamma_source="steps", predictive_skip=True,
                        cfg_decision="shared")
    engine = DiCacheEngine(cfg, M, "torch")
    for k in range(2):
        for name in ("cond", "uncond"):
            engine.begin_call(name, k, 10)
            assert engine.after_probe(x, x + 0.1 * k) is None
            engine.after_full(x + R[k])
    for t in (2, 3):
        engine.begin_call("cond", t, 10)
        h = engine.before_probe(x)  # step 3: predicted without a probe
        if h is None:
            assert t == 2
            h = engine.after_probe(x, x + 0.1 * t)
        assert h is not None and engine.branches["cond"].records[-1].probed == (t == 2)
        torch.testing.assert_close(h, x + R[0] + t * (R[1] - R[0]))
        engine.begin_call("uncond", t, 10)
        h_u = engine.before_probe(x)
        assert h_u is not None
        torch.testing.assert_close(h_u, x + R[0] + t * (R[1] - R[0]))


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


@pytest.mark.parametrize("bad", [0, 3, "2", 2.0, True, None, "Auto"])
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
        assert cfg.max_consecutive_reuse is None and cfg.cfg_decision == "shared" and cfg.warmup == 0.05, family
        assert cfg.run_power == "auto" and cfg.force_last_step == 0.04 and cfg.predictive_skip, family
        assert cfg.alignment_order == "auto" and cfg.gamma_source == "auto" and cfg.quad_balance == "auto", family
        # the quadratic's entries balanced on flow-matching (and unknown) trajectories, any on a DDPM-family one
        assert [cfg.quad_balance_at(f) for f in (True, None, False)] == [0.5, 0.5, None], family
        assert cfg.plan_runs == "auto" and cfg.max_extrapolation == "auto" and cfg.monotone_runs is True, family
        assert cfg.plan_error == "auto" and cfg.plan_on_step_sizes(), family
        assert cfg.hindsight == 0.5, family  # half the run's miss (the engine halves it where the probe sets γ)
        assert not cfg.replace(target_speedup=2.5).plan_on_step_sizes(), family  # budget mode: the count of steps
        # 20 steps: the probe decides every call, as before; 50: planned runs, the quadratic's run power
        # both forced phases scale with the steps: 1 + 1 calls at 20 steps, 2 + 2 at 30, 3 + 2 at 50
        assert [cfg.warmup_calls(n) for n in (20, 30, 50)] == [1, 2, 3], family
        assert [cfg.last_calls(n) for n in (20, 30, 50)] == [1, 2, 2], family
        assert not cfg.plans_runs(20) and cfg.run_power_at(20) == 1.0, family
        assert cfg.plans_runs(50) and cfg.run_power_at(50) == 2.0, family
        assert cfg.max_extrapolation_at(20) is None and cfg.max_extrapolation_at(50) == 1.0, family
        # planned runs are bounded from REACH_MIN_STEPS steps on only (30 steps: unbounded)
        assert cfg.max_extrapolation_at(30) is None and cfg.max_extrapolation_at(REACH_MIN_STEPS - 1) is None, family
        assert cfg.max_extrapolation_at(REACH_MIN_STEPS) == 1.0, family
        assert not cfg.plans_runs(None) and cfg.run_power_at(None) == 1.0, family
        paper = dicache.PAPER_PRESETS[family]
        assert paper.max_consecutive_reuse is None and paper.cfg_decision == "separate" and paper.warmup == 0.2
    assert dicache.PAPER_PRESETS["flux"].threshold == 0.4 and dicache.PAPER_PRESETS["wan"].threshold == 0.08


# ---------------------------------------------------------------------------
# run_power: a tighter threshold for each further reuse in a row


def test_run_power_tightens_each_further_reuse():
    errors = scales([0.1] * 9)
    plain = DiCacheConfig(threshold=0.25, warmup=1)
    assert drive(plain, {"c": errors}).branches["c"].pattern == "F..F..F..F"
    # j = 1: 0.1 < 0.25 reuses; j = 2: 0.2 < 0.25 / 2 fails: refresh
    b = drive(plain.replace(run_power=1.0), {"c": errors}).branches["c"]
    assert b.pattern == "F.F.F.F.F."
    assert [st.reason for st in b.steps if st.computed][1:] == ["refresh"] * 4
    # a smaller error: j = 2 passes (0.1 < 0.125), j = 3 fails (0.15 > 0.25 / 3)
    b = drive(plain.replace(run_power=1.0), {"c": scales([0.05] * 9)}).branches["c"]
    assert b.pattern == "F..F..F..F"
    # power 2: j = 2 needs acc < 0.0625: 0.1 fails
    b = drive(plain.replace(run_power=2.0), {"c": scales([0.05] * 9)}).branches["c"]
    assert b.pattern == "F.F.F.F.F."


def test_run_power_is_not_used_in_budget_mode():
    errors = scales([0.1] * 29)
    a = drive(DiCacheConfig(target_speedup=2.0, warmup=0.1), {"c": errors}, num_steps=30).branches["c"]
    b = drive(DiCacheConfig(target_speedup=2.0, warmup=0.1, run_power=2.0), {"c": errors}, num_steps=30).branches["c"]
    assert a.pattern == b.pattern


# ---------------------------------------------------------------------------
# predictive_skip: a reuse without its probe when the last increment predicts the error stays under δ


def test_predictive_skip_saves_the_probe_of_a_second_reuse():
    cfg = DiCacheConfig(threshold=0.25, warmup=1, max_consecutive_reuse=2)
    errors = scales([0.05] * 9)
    probed = drive(cfg, {"c": errors}).branches["c"]
    assert probed.pattern == "F..F..F..F"
    b = drive(cfg.replace(predictive_skip=True), {"c": errors}).branches["c"]
    # the first run has one stored entry (no line to continue γ along): both calls probe
    assert b.pattern == "F..F._F._F"
    assert [st.reason for st in b.steps if not st.computed and not st.probed] == ["predicted"] * 2
    assert b.block_evaluations == probed.block_evaluations - 2  # two probes of one block saved
    assert b.block_evaluations == 4 * M + 4


def test_predictive_skip_respects_the_threshold():
    # error 0.1, δ = 0.15: after a reuse at 0.1 the prediction is 0.2 > δ: probe, which refreshes
    cfg = DiCacheConfig(threshold=0.15, warmup=1, predictive_skip=True)
    assert drive(cfg, {"c": scales([0.1] * 9)}).branches["c"].pattern == "F.F.F.F.F."
    # with run_power the prediction meets the second reuse's tighter threshold (δ/2)
    cfg = DiCacheConfig(threshold=0.25, warmup=1, predictive_skip=True, run_power=1.0)
    assert drive(cfg, {"c": scales([0.05] * 9)}).branches["c"].pattern == "F..F._F._F"  # 0.1 < 0.125
    assert drive(cfg, {"c": scales([0.07] * 9)}).branches["c"].pattern == "F.F.F.F.F."  # 0.14 > 0.125


def test_predictive_skip_is_corrected_by_the_next_probe():
    # no cap: after an unprobed call the next probe measures two steps of change (p against the
    # probe two calls back), so the accumulated error catches up and the refresh comes on time
    cfg = DiCacheConfig(threshold=0.25, warmup=2, predictive_skip=True)
    b = drive(cfg, {"c": scales([0.05] * 9)}).branches["c"]
    assert b.pattern == "FF._._F._."
    errs = [st.error for st in b.steps]
    assert errs[2] == pytest.approx(0.05, rel=1e-5)
    assert errs[4] == pytest.approx(0.05 + (1.05 ** 2 - 1), rel=1e-5)  # steps 3 and 4 measured together
    assert b.steps[6].reason == "refresh" and errs[6] == pytest.approx(errs[4] + (1.05 ** 2 - 1), rel=1e-5)


def test_predictive_skip_gamma_continues_along_the_probed_line():
    cfg = DiCacheConfig(threshold=1.0, warmup=2, predictive_skip=True, max_consecutive_reuse=2,
                        gamma_clip=(0.0, 10.0))
    b = drive(cfg, {"c": scales([0.05, 0.05, 0.2, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05])}).branches["c"]
    assert b.pattern == "FF._F._F._"
    for i in (2, 5, 8):  # a probed reuse d = 1 step after the last computed call, then the predicted one
        g = b.steps[i].gamma
        assert b.steps[i + 1].reason == "predicted"
        assert b.steps[i + 1].gamma == pytest.approx(1 + (g - 1) * 2, rel=1e-5)


def test_predictive_skip_leads_a_shared_cfg_step():
    traces = {"cond": scales([0.05] * 9), "uncond": scales([0.05] * 9)}
    cfg = DiCacheConfig(threshold=0.25, warmup=2, max_consecutive_reuse=2, cfg_decision="shared",
                        predictive_skip=True)
    s = drive(cfg, traces)
    assert s.branches["cond"].pattern == "FF._F._F._"
    assert s.branches["uncond"].pattern == "FF__F__F__"  # follows without a probe of its own
    assert s.branches["cond"].block_evaluations + s.branches["uncond"].block_evaluations == 8 * M + 3


def test_budget_mode_followers_never_probe_past_the_preset_cap():
    # the budget's run bounds replace max_consecutive_reuse: a follower must not stop following after
    # `cap` reuses and probe on its own (each such probe costs a block the budget did not count)
    n = 20
    traces = {"cond": scales([0.02] * (n - 1)), "uncond": scales([0.02] * (n - 1))}
    cfg = DiCacheConfig(target_speedup=3.0, warmup=0.1, cfg_decision="shared", max_consecutive_reuse=2)
    s = drive(cfg, traces, num_steps=n)
    assert "." not in s.branches["uncond"].pattern, s.branches["uncond"].pattern
    assert max(len(r) for r in s.branches["cond"].pattern.split("F")) > 2


def test_predictive_skip_on_a_pipeline_matches_the_summary_and_saves_blocks():
    outs = {}
    for predictive in (False, True):
        pipe = tiny.flux_pipeline()
        dicache.enable(pipe, backend="torch", threshold=100.0, warmup=2, max_consecutive_reuse=2, force_last_step=True,
                       predictive_skip=predictive)
        outs[predictive] = tiny.flux_pipeline_call(pipe, steps=11)
        s = dicache.summary(pipe)
        b = next(iter(s.branches.values()))
        if predictive:
            assert b.pattern == "FF._F._F._F" and "predicted" in [st.reason for st in b.steps]
            assert b.block_evaluations == saved_before - 3  # three probes of one block not run
        else:
            assert b.pattern == "FF..F..F..F"
            saved_before = b.block_evaluations
        dicache.disable(pipe)
    assert all(torch.isfinite(o).all() for o in outs.values())


def test_alignment_order_auto_on_many_tokens_uses_a_token_subsample():
    from dicache import engine as eng

    g = torch.Generator().manual_seed(6)
    shape = (1, 4 * eng.ORDER_TOKENS + 3, 4)  # a stride of 5 over the tokens
    A, B, C = (torch.randn(*shape, generator=g) for _ in range(3))
    D, E = torch.rand(*shape, generator=g) + 0.5, 0.05 * torch.randn(*shape, generator=g)
    x = torch.randn(*shape, generator=g)
    R = [A + B * k + C * k * k for k in range(4)]
    P = [D * k + E * k * k for k in range(4)]
    cfg = DiCacheConfig(threshold=1e9, warmup=3, gamma_clip=(0.0, 10.0), alignment_order="auto")
    engine = _engine_with_stored(cfg, R[:3], P[:3], x)
    engine.begin_call("c", 3, 10)
    h = engine.after_probe(x, x + P[3])
    assert bool((engine.branches["c"].quad_weight > 0.5).all())
    assert (h - (x + R[3])).abs().mean() < 0.5 * (x + R[1] + 2 * (R[2] - R[1]) - (x + R[3])).abs().mean()


# ---------------------------------------------------------------------------
# plan_runs: a run of reuses planned at the computed call that starts it, its calls skipped without a probe


def test_plan_runs_skips_without_probes_while_the_predicted_error_stays_under_delta():
    cfg = DiCacheConfig(threshold=0.27, warmup=2, plan_runs=True, gamma_clip=(0.0, 10.0))
    b = drive(cfg, {"c": scales([0.05] * 12)}).branches["c"]
    # call 1's probe measures 0.05 a step: j·0.05 < 0.27 for j ≤ 5; call 7's measures the six steps since
    # call 1 together, (1.05^6 − 1)/6 = 0.0567 a step: j ≤ 4
    assert b.pattern == "FF_____F____F"
    assert [st.reason for st in b.steps if not st.computed] == ["planned"] * 9
    assert [st.reason for st in b.steps if st.computed][2:] == ["refresh"] * 2
    assert b.block_evaluations == 4 * M  # no skipped call runs a block
    # the summary shows the error each computed call's probe measured since the one before (none at the first call;
    # a planned skip measures none)
    assert [None if st.error is None else round(st.error, 4) for st in b.steps if st.computed] == \
        [None, 0.05, round(1.05 ** 6 - 1, 4), round(1.05 ** 5 - 1, 4)]
    assert all(st.error is None for st in b.steps if not st.computed)
    # γ is the step distance from the two newest entries (steps 0 and 1, then 1 and 7), clipped to gamma_clip
    assert [round(b.steps[i].gamma, 5) for i in (2, 3, 6)] == [2.0, 3.0, 6.0]
    assert b.steps[8].gamma == pytest.approx(7 / 6, rel=1e-5)
    clipped = drive(cfg.replace(gamma_clip=(1.0, 1.5)), {"c": scales([0.05] * 12)}).branches["c"]
    assert clipped.pattern == b.pattern and clipped.steps[3].gamma == pytest.approx(1.5)


def test_plan_runs_with_run_power_and_cap():
    errors = scales([0.05] * 12)
    # the j-th planned reuse must predict under δ/j: j²·0.05 < 0.27 for j ≤ 2
    b = drive(DiCacheConfig(threshold=0.27, warmup=2, plan_runs=True, run_power=1.0), {"c": errors}).branches["c"]
    assert b.pattern.startswith("FF__F")
    b = drive(DiCacheConfig(threshold=100.0, warmup=2, plan_runs=True, max_consecutive_reuse=3),
              {"c": errors}).branches["c"]
    assert b.pattern == "FF___F___F___"


def test_plan_runs_auto_plans_where_gamma_comes_from_the_steps():
    errors = scales([0.05] * 39)
    n = len(errors)
    cfg = DiCacheConfig(threshold=0.27, warmup=2, plan_runs="auto", gamma_source="auto")
    planned = drive(cfg, {"c": errors}, num_steps=n).branches["c"]  # 40 steps: γ from the steps
    assert "_" in planned.pattern and "." not in planned.pattern
    probed = drive(cfg, {"c": errors[:20]}, num_steps=20).branches["c"]  # 20 steps: the probe's γ
    assert "." in probed.pattern and "_" not in probed.pattern
    assert drive(cfg.replace(gamma_source="steps"), {"c": errors[:20]}, num_steps=20).branches["c"].pattern \
        == planned.pattern[:20]


def test_plan_runs_leads_a_shared_cfg_step():
    traces = {"cond": scales([0.05] * 12), "uncond": scales([0.05] * 12)}
    cfg = DiCacheConfig(threshold=0.27, warmup=2, plan_runs=True, cfg_decision="shared")
    s = drive(cfg, traces)
    assert s.branches["cond"].pattern == s.branches["uncond"].pattern == "FF_____F____F"
    assert [st.reason for st in s.branches["uncond"].steps if not st.computed] == ["follow"] * 9


@pytest.mark.parametrize("target", [2.0, 3.0])
def test_plan_runs_in_budget_mode_spends_the_budget_without_probes(target):
    n = 30
    cfg = DiCacheConfig(target_speedup=target, warmup=2, plan_runs=True)
    b = drive(cfg, {"c": scales([0.05] * (n - 1))}, num_steps=n).branches["c"]
    assert set(b.pattern) == {"F", "_"}
    assert b.pattern.count("F") == round(n / target)  # a skip costs nothing: n/s computed calls
    assert b.block_evaluations == b.pattern.count("F") * M
    # a flat or an alternating error: runs stay within one call of the even spacing
    for errors in ([0.05] * (n - 1), [0.05, 0.5] * (n // 2)):
        b = drive(cfg, {"c": scales(errors[: n - 1])}, num_steps=n).branches["c"]
        assert b.pattern.count("F") == round(n / target), b.pattern
        runs = [len(r) for r in b.pattern[2:].split("F") if r]
        assert max(runs) - min(runs) <= 1, b.pattern
    # an error growing 15% a step: once measured, the online rule plans as the fixed δ would, runs long early and
    # short late, the budget spent to the call and no run left for the end
    b = drive(cfg, {"c": scales([0.01 * 1.15 ** k for k in range(n - 1)])}, num_steps=n).branches["c"]
    assert b.pattern.count("F") == round(n / target), b.pattern
    runs = [len(r) for r in b.pattern[2:].split("F")]
    even = round(n / round(n / target) - 1)  # reuses per run of the even spacing
    assert max(runs[2:]) >= even + 2, b.pattern  # after the first two runs (the ramp), longer than even …
    assert max(runs[len(runs) // 2:]) < max(runs[:len(runs) // 2]), b.pattern  # … in the first half
    assert "__" not in b.pattern[-5:], b.pattern


def test_planned_error_in_steps_or_in_step_sizes():
    assert planned_error(0.05, 0, 1, 4) == pytest.approx(0.15)  # three steps past the computed call
    sizes = [1.0, 1.0, 1.0, 2.0, 3.0, 3.0]
    # measured over step 1 (mean size 1.0 since step 0); ahead steps 2..4 sum to 6.0
    assert planned_error(0.05, 0, 1, 4, sizes) == pytest.approx(0.05 * 6.0)
    # measured over steps 2..3 (mean size 1.5); ahead steps 4..5 sum to 6.0
    assert planned_error(0.05, 1, 3, 5, sizes) == pytest.approx(0.05 * 6.0 / 1.5)
    # without the sizes, a first computed call or a step past them: per step
    for args in ((0.05, None, 1, 4, sizes), (0.05, 0, 1, 6, sizes), (0.05, 0, 1, 4, [0.0] * 6)):
        assert planned_error(*args) == pytest.approx(0.05 * (args[3] - args[2]))


def test_planned_error_grows_as_the_span_power():
    assert planned_error(0.05, 0, 1, 5, power=0.5) == pytest.approx(0.05 * 2.0)  # four steps: 4^0.5
    sizes = [1.0, 1.0, 1.0, 2.0, 3.0, 3.0]
    assert planned_error(0.05, 0, 1, 4, sizes, power=0.5) == pytest.approx(0.05 * 6.0 ** 0.5)
    assert planned_error(0.05, 0, 1, 4, power=1.0) == planned_error(0.05, 0, 1, 4)


def test_span_power_sample_and_its_median():
    # the residual changed 3^0.4 times as much over the 3 steps since t1 as the stored entries over their 1
    assert span_power_sample(3 ** 0.4, 1.0, 5, 2, 3) == pytest.approx(0.4)
    assert span_power_sample(2.0, 1.0, 6, 2, 4) == pytest.approx(1.0)  # twice the change over twice the steps
    for bad in ((0.0, 1.0), (1.0, 0.0), (float("inf"), 1.0), (float("nan"), 1.0)):
        assert span_power_sample(*bad, 5, 2, 3) is None
    state = BranchState("c")
    measured = DiCacheConfig(span_power="measured")
    assert span_power(measured, state) == 1.0  # nothing measured yet
    state.span_powers = [0.3, 0.5, 0.45, 0.9]
    assert span_power(measured, state) == 1.0  # too few samples to count
    state.span_powers.append(0.2)
    assert span_power(measured, state) == pytest.approx(0.45)  # the median, a random walk's
    state.span_powers = [0.1, 0.05, 0.2, 0.0, 0.3]
    assert span_power(measured, state) == SPAN_POWER_MIN
    state.span_powers = [0.5, 0.6, 0.7, 0.3, 1.4]
    assert span_power(measured, state) == 1.0  # a median of SPAN_POWER_DRIFT or more: a drift
    assert span_power(DiCacheConfig(span_power=0.6), state) == 0.6


def increments_cosine(a, b, c):
    return cosine_of(*increments_sums(a, b, c).tolist())


def test_increments_cosine_against_torch_on_odd_shapes():
    g = torch.Generator().manual_seed(3)
    for shape, dtype in (((3, 37, 5), torch.float32), ((1, 129), torch.bfloat16), ((2, 7, 11, 3), torch.float16)):
        a, b, c = (torch.randn(*shape, generator=g).to(dtype) for _ in range(3))
        u, v = (b.float() - a.float()).flatten(), (c.float() - b.float()).flatten()
        want = torch.nn.functional.cosine_similarity(u, v, dim=0)
        assert increments_cosine(a, b, c) == pytest.approx(float(want), abs=1e-5), (shape, dtype)
    a = torch.randn(2, 9, generator=g)
    assert increments_cosine(a, a, a + 1) == 1.0  # a zero increment reads no walk


def test_the_engine_reads_a_sampler_that_adds_noise_from_the_blocks_input():
    # an ODE sampler moves the latents along a smooth path: the increments of the blocks' input point the same way;
    # fresh noise at every step makes them nearly independent (a random walk's increments: cosine about 0)
    g = torch.Generator().manual_seed(4)
    x0, d = torch.randn(2, 33, 8, generator=g), torch.randn(2, 33, 8, generator=g)
    smooth = [x0 + k * d + 0.02 * k * k * torch.randn(2, 33, 8, generator=g) for k in range(4)]
    noisy = [x0]
    for _ in range(3):
        noisy.append(noisy[-1] + 0.3 * torch.randn(2, 33, 8, generator=g))
    assert increments_cosine(*smooth[:3]) > 0.9 and abs(increments_cosine(*noisy[:3])) < WALK_COSINE
    for xs, walk in ((smooth, False), (noisy, True)):
        s = BranchState("c")
        s.read_walk(xs[0], 0)
        s.read_walk(xs[1], 1)
        assert s.walk is None and len(s._walk_inputs) == 2
        s.read_walk(xs[2], 2)
        # the copies are dropped once the sums are taken; they stay on the device until a computed call reads them
        assert s.walk is None and not s._walk_inputs and s.walk_sums is not None
        s.settle_walk(*s.walk_sums.tolist())
        assert s.walk is walk and s.walk_sums is None
        assert s.walk_cosine == pytest.approx(increments_cosine(*xs[:3]))
        # a restart (a step not after the last seen) or another shape starts over
        s = BranchState("c")
        s.read_walk(xs[0], 0)
        s.read_walk(xs[1], 1)
        s.read_walk(xs[2], 1)
        assert s.walk is None and len(s._walk_inputs) == 1
        s.read_walk(xs[3][:1], 2)
        assert s.walk is None and len(s._walk_inputs) == 1
    # the engine reads it where runs are planned with alignment_order="auto" only (what takes the line on a walk;
    # nothing kept elsewhere), at the first three calls
    for plan, order, read in ((True, "auto", True), (False, "auto", False), (True, 1, False)):
        cfg = DiCacheConfig(threshold=0.2, warmup=1, plan_runs=plan, alignment_order=order)
        engine = DiCacheEngine(cfg, M, "torch")
        for k, x in enumerate(noisy):
            engine.begin_call("c", k, len(noisy))
            state = engine.branches["c"]
            h = engine.before_probe(x)
            if h is None and engine.after_probe(x, x * 2) is None:
                engine.after_full(x * 3)
        assert state.walk is (True if read else None) and not state._walk_inputs
        # dicache.summary says what was read, in words
        branch = summarize(engine, "m").branches["c"]
        assert branch.sampler_cosine == (pytest.approx(state.walk_cosine) if read else None)
        assert ("sampler  input increments' cosine" in str(summarize(engine, "m"))) is read
        if read:
            assert branch.sampler_cosine < WALK_COSINE and "adds noise at every step" in branch.sampler
    smooth_branch = BranchSummary("c", 0, 0, 0, 0, 0, (), sampler_cosine=0.999)
    assert smooth_branch.sampler.endswith("a smooth path")
    # a non-finite input reads no walk (nan < WALK_COSINE is False): the summary says so rather than print a number
    state = BranchState("c")
    state.settle_walk(float("nan"), 1.0, 1.0)
    assert state.walk is False
    nan_branch = BranchSummary("c", 0, 0, 0, 0, 0, (), sampler_cosine=state.walk_cosine)
    assert "not finite, read as a smooth path" in nan_branch.sampler


def test_summary_block_reduction_edges():
    """``block_reduction``: uncached over executed block evaluations; 1 before any call, infinite where no block ran,
    over all branches in total."""
    from dicache.summary import BranchSummary, Summary

    assert BranchSummary("c", 0, 0, 0, 0, 0, ()).block_reduction == 1.0
    assert BranchSummary("c", 4, 0, 4, 0, 24, ()).block_reduction == math.inf
    a, b = BranchSummary("a", 10, 5, 5, 30, 60, ()), BranchSummary("b", 10, 2, 8, 10, 60, ())
    assert a.block_reduction == 2.0 and b.block_reduction == 6.0
    s = Summary("m", "torch", DiCacheConfig(), 6, {"a": a, "b": b})
    assert s.block_reduction == 3.0 and s.saved_fraction == pytest.approx(2 / 3)  # 120 / 40, not the mean of 2 and 6
    assert "  total: 66.7% of block evaluations saved (3.00× fewer)" in str(s)


def random_walk(n, spread, seed=0):
    g = torch.Generator().manual_seed(seed)
    walk = [torch.rand(2, 64, 16, generator=g) + 2.0]
    for _ in range(1, n):
        walk.append(walk[-1] + spread * torch.randn(2, 64, 16, generator=g))
    return walk


def walk_twice(cfg, n, spread=0.1, outputs=None, noisy_input=False):
    """Two trajectories on one engine whose probe output takes a random walk (each step adds fresh noise, as a
    sampler that adds noise at every step does): its change over ``j`` steps grows as ``√j``. The blocks' input is
    zero (``noisy_input``: a random walk of its own). Returns the engine and the summary of the second; ``outputs``,
    a dict, receives the second's skipped calls' outputs by step and the walk (the residuals are ``3·walk``)."""
    walk = random_walk(n, spread)
    xs = random_walk(n, spread, seed=1) if noisy_input else [torch.zeros(2, 64, 16)] * n
    engine = DiCacheEngine(cfg, M, "torch")
    for second in (False, True):
        engine.reset()
        for k in range(n):
            engine.begin_call("c", k, n)
            x = xs[k]
            h = engine.before_probe(x)
            if h is None:
                h = engine.after_probe(x, walk[k])
            if h is None:
                engine.after_full(walk[k] * 3 + x)
            elif outputs is not None and second:
                outputs[k] = h - x
    if outputs is not None:
        outputs["walk"] = walk
    return engine, summarize(engine, "toy")


def test_measured_span_power_spreads_a_planned_budget_on_a_random_walk():
    # read as j·e, a run's error after a computed call measured over one step is read √j times too high: the replay
    # solved on the first call's runs of one skip locks into them and leaves a run of nine for the end; read as
    # e·j^α with α measured (≈ 0.5), its runs are even
    n, target = 30, 2.5
    cfg = DiCacheConfig(target_speedup=target, warmup=2, plan_runs=True, force_last_step=True)
    engine, s = walk_twice(cfg, n)
    assert s.branches["c"].pattern == "FF" + "_F" * 9 + "_" * 9 + "F"
    engine, s = walk_twice(cfg.replace(span_power="measured"), n)
    b = s.branches["c"]
    assert b.pattern == "FF" + "__F" * 9 + "F", b.pattern
    assert b.pattern.count("F") == round(n / target)
    assert 0.4 < engine._budget.powers[("c", n)] < 0.6  # the random walk's 0.5
    assert 0.4 < span_power(engine.config, engine.branches["c"]) < 0.6
    # measured, only a replay takes α (read over a whole trajectory); a fixed δ plans at 1 unless given a number
    fixed = DiCacheConfig(threshold=0.06, warmup=2, plan_runs=True, force_last_step=True)
    linear = walk_twice(fixed, n)[1].branches["c"].pattern
    assert walk_twice(fixed.replace(span_power="measured"), n)[1].branches["c"].pattern == linear
    assert walk_twice(fixed.replace(span_power=0.5), n)[1].branches["c"].pattern == "FF" + "___F" * 7, linear


def test_a_planned_skip_on_a_random_walk_takes_the_line():
    # the quadratic through three entries of a random walk reads their noise as a curvature: a replay planned at a
    # span_power under 1 extrapolates along the line through the two newest (γ the step distance), where a drift
    # (α = 1) takes the quadratic whole (the computed calls' outputs are 3·walk)
    n = 20
    cfg = DiCacheConfig(target_speedup=2.5, warmup=2, plan_runs=True, force_last_step=True, span_power="measured",
                        gamma_source="steps", alignment_order="auto")
    for alpha, line in (("measured", True), (0.5, True), (1, False)):
        out = {}
        b = walk_twice(cfg.replace(span_power=alpha), n, outputs=out)[1].branches["c"]
        walk = out.pop("walk")
        assert out and set(out) == {k for k, c in enumerate(b.pattern) if c == "_"}, b.pattern
        computed = [k for k, c in enumerate(b.pattern) if c == "F"]
        for k, h in out.items():
            before = [t for t in computed if t < k]
            t1, t2 = before[-2:]
            along = 3 * (walk[t1] + (k - t1) / (t2 - t1) * (walk[t2] - walk[t1]))
            # (with two entries stored, after the warm-up, the line either way)
            assert torch.allclose(h, along, atol=1e-4) == (line or len(before) < 3), (alpha, k, b.pattern)
    # the first call, or a fixed δ, knows no measured α: the engine reads the walk off the blocks' input (the
    # cosine of its increments at the first three calls, BranchState.read_walk) and takes the line where it is one
    fixed = cfg.replace(target_speedup=None, threshold=0.5, span_power=1)
    for c, noisy in ((fixed, True), (fixed, False), (cfg.replace(span_power=1), True)):
        out = {}
        engine, s = walk_twice(c, n, outputs=out, noisy_input=noisy)
        walk, b = out.pop("walk"), s.branches["c"]
        assert engine.branches["c"].walk is noisy and b.pattern.count("_") >= 5, b.pattern
        computed = [k for k, ch in enumerate(b.pattern) if ch == "F"]
        for k, h in out.items():
            t1, t2 = [t for t in computed if t < k][-2:]
            along = 3 * (walk[t1] + (k - t1) / (t2 - t1) * (walk[t2] - walk[t1]))
            assert torch.allclose(h, along, atol=1e-4) == (noisy or len(computed) < 3 or k < computed[2]), (k,
                                                                                                          b.pattern)


def test_final_run_bounds_the_planned_run_that_ends_at_the_final_steps_on_a_random_walk():
    # read as e·j^α with α under 1 (a probe that takes a random walk) a run's error grows slowly with its length, and
    # even runs leave the last one, whose error no later step corrects, as long as any: the budget plans it at
    # FINAL_RUN skips and spends the skip it takes from it on an earlier run
    assert FINAL_RUN == 1
    n, target = 20, 2.5
    cfg = DiCacheConfig(target_speedup=target, warmup=2, plan_runs=True, force_last_step=True, span_power="measured")
    engine, s = walk_twice(cfg, n)
    b = s.branches["c"]
    assert b.pattern == "FF___F__F__F__F__F_F", b.pattern  # without the bound: FF__F__F__F__F__F__F
    assert b.pattern.count("F") == round(n / target)
    assert engine._budget.power(engine.branches["c"], n) < 1
    assert walk_twice(cfg.replace(span_power=0.5), n)[1].branches["c"].pattern == b.pattern
    # a run that would reach the call before the final steps longer than FINAL_RUN + 1 is cut a call earlier, as
    # many calls computed: F____F_F, not F_____FF (a run of FINAL_RUN + 1 is left to the bound: F__FF above)
    long_runs = walk_twice(cfg.replace(span_power=0.5, target_speedup=3.5), n)[1].branches["c"].pattern
    assert long_runs == "FF_____F____F____F_F", long_runs
    # at α = 1 (a drift, the deterministic samplers) the run that ends at the final step is not bounded
    assert walk_twice(cfg.replace(span_power=1), n)[1].branches["c"].pattern == "FF_F__F__F__F__F___F"
    # the simulation the budget solves δ on plans with it: on flat increments the δ of runs of two computes the
    # call before the final step; without the bound (the fixed-δ rule) it does not
    bud, flat = Budget(cfg, M), [0.1] * n
    assert bud.simulate_calls(flat, n, 0.25) == (8, 0)  # FF__F__F__F__F__F__F
    assert bud.simulate_calls(flat, n, 0.25, final_run=FINAL_RUN) == (9, 0)  # FF__F__F__F__F__F_FF
    assert bud.simulate_calls(flat, n, 0.25, final_run=2) == (8, 0)
    # the bound computes the call before the final step after a skip; a run of more than FINAL_RUN skips that would
    # end there is cut a call earlier
    assert overruns_final(18, n, 1, 1, FINAL_RUN) and not overruns_final(18, n, 1, 0, FINAL_RUN)
    assert not overruns_final(17, n, 1, 3, FINAL_RUN)
    assert cut_before_final(17, n, 1, 2, lambda: True) and not cut_before_final(17, n, 1, 1, lambda: True)
    assert not cut_before_final(17, n, 1, 2, lambda: False) and not cut_before_final(16, n, 1, 4, lambda: True)
    # a fixed δ is not bounded
    fixed = DiCacheConfig(threshold=0.25, warmup=2, plan_runs=True, force_last_step=True)
    assert drive(fixed, {"c": scales([0.1] * (n - 1))}, num_steps=n).branches["c"].pattern.endswith("F__F")


def test_budget_plan_cuts_a_run_that_would_end_at_a_computed_call_before_the_final_steps(monkeypatch):
    # at α = 1 the plan's own error may compute the call right before the forced final steps after a long run
    # (F___FF): the call before it is computed instead, as many calls, the shorter run left for the end (F__F_F)
    n = 28
    cfg = DiCacheConfig(target_speedup=3, warmup=2, plan_runs=True, force_last_step=True, span_power=1)
    b = walk_twice(cfg, n)[1].branches["c"]
    assert b.pattern == "FF_F__F___F___F___F___F__F_F", b.pattern
    monkeypatch.setattr(budget_mod, "cut_before_final", lambda *args: False)
    uncut = walk_twice(cfg, n)[1].branches["c"].pattern
    assert uncut == "FF_F__F___F___F___F___F___FF", uncut
    assert b.pattern.count("F") == uncut.count("F") == 10


def test_plan_error_step_sizes_shortens_the_runs_where_the_steps_grow():
    n = 13
    errors = scales([0.05] * (n - 1))
    cfg = DiCacheConfig(threshold=0.27, warmup=2, plan_runs=True)
    per_step = drive(cfg, {"c": errors}, num_steps=n).branches["c"].pattern
    assert per_step == "FF_____F____F"
    sized = cfg.replace(plan_error="step_sizes")
    # even steps: the same plan; no step sizes told: the same plan
    assert drive(sized, {"c": errors}, num_steps=n, step_sizes=[0.1] * n).branches["c"].pattern == per_step
    assert drive(sized, {"c": errors}, num_steps=n).branches["c"].pattern == per_step
    # steps growing 20 % a step: the error measured on the shorter steps behind predicts more a step ahead, and
    # the runs shorten as the steps grow
    sizes = [1.2 ** k for k in range(n)]
    grown = drive(sized, {"c": errors}, num_steps=n, step_sizes=sizes).branches["c"].pattern
    assert grown == "FF___F__F__F_", grown
    # the budget's simulation of the fixed-δ plan predicts as the engine plans, on the increments it measured (a
    # computed call t after the one at t0 measures (1.05^(t − t0) − 1)/(t − t0) a step)
    def measured(pattern):
        done = [k for k, c in enumerate(pattern) if c == "F"]
        incs = [0.0] * n
        for t0, t in zip(done, done[1:]):
            incs[t0 + 1:t + 1] = [(1.05 ** (t - t0) - 1) / (t - t0)] * (t - t0)
        incs[done[-1] + 1:] = [incs[done[-1]]] * (n - 1 - done[-1])
        return incs

    budget = Budget(sized, M)
    budget.step_sizes = sizes
    assert budget.simulate(measured(grown), n, 0.27) == grown.count("F") == 5
    budget.step_sizes = None  # per step on the same increments: fewer calls
    assert budget.simulate(measured(grown), n, 0.27) == 3
    assert budget.simulate(measured(per_step), n, 0.27) == per_step.count("F")
    # "auto": on the step sizes with a fixed δ, on the count of steps in budget mode
    auto = cfg.replace(plan_error="auto")
    assert drive(auto, {"c": errors}, num_steps=n, step_sizes=sizes).branches["c"].pattern == grown
    assert auto.plan_on_step_sizes() and sized.plan_on_step_sizes() and not cfg.plan_on_step_sizes()
    def in_budget(plan_error):  # budget mode computes the last step too
        b = Budget(cfg.replace(plan_error=plan_error, target_speedup=2.0), M)
        b.step_sizes = sizes
        return b.simulate(measured(grown), n, 0.27)

    assert in_budget("auto") == in_budget("steps") == 4  # per step: the 3 calls above and the last step
    assert in_budget("step_sizes") == 6  # set by hand it holds in budget mode too: the 5 above and the last step


def test_max_extrapolation_grows_runs_by_one_call_per_refresh():
    errors = scales([0.01] * 11)
    b = drive(DiCacheConfig(threshold=100.0, warmup=3, max_extrapolation=1.0), {"c": errors}).branches["c"]
    # after the warm-up (entries 1 step apart) one reuse, then two (entries 2 apart), then three
    assert b.pattern == "FFF.F..F...F"
    assert [st.reason for st in b.steps if st.computed][3:] == ["reach"] * 3
    b = drive(DiCacheConfig(threshold=100.0, warmup=3, max_extrapolation=2.0), {"c": errors}).branches["c"]
    assert b.pattern == "FFF..F......"  # two past entries 1 apart, then up to six past entries 3 apart
    b = drive(DiCacheConfig(threshold=100.0, warmup=3, max_extrapolation=1.0, plan_runs=True), {"c": errors})
    assert b.branches["c"].pattern == "FFF_F__F___F"
    assert b.branches["c"].block_evaluations == 6 * M


@pytest.mark.parametrize("num_steps", [30, REACH_MIN_STEPS - 1, REACH_MIN_STEPS, 50, None])
def test_auto_reach_bounds_planned_runs_from_reach_min_steps_on(num_steps):
    # max_extrapolation="auto": the same planned runs, bounded to one spacing past the newest entry on trajectories
    # of REACH_MIN_STEPS steps or more (or an unknown count: plan_runs=True without a step count), unbounded below
    cfg = DiCacheConfig(threshold=100.0, warmup=3, plan_runs=True, max_extrapolation="auto")
    b = drive(cfg, {"c": scales([0.01] * 11)}, num_steps=num_steps).branches["c"]
    bounded = num_steps is None or num_steps >= REACH_MIN_STEPS
    assert b.pattern == ("FFF_F__F___F" if bounded else "FFF_________")
    assert cfg.max_extrapolation_at(num_steps) == (1.0 if bounded else None)
    assert ("reach" in [st.reason for st in b.steps]) == bounded


def _runs(pattern):
    """The runs of reuses between computed calls, runs of none left out."""
    return [len(r) for r in pattern.strip("_").split("F") if r]


def _shortens_then_lengthens(runs):
    return any(runs[j] > runs[i] for i in range(1, len(runs)) if runs[i] < runs[i - 1] for j in range(i + 1, len(runs)))


# per-step errors that make the plan alternate: 0.05 plans a run of five, the larger errors inside it measure
# 0.09 a step (a run of two), the small ones inside that 0.02 (a run of twelve)
ALTERNATING = [0.05] + [0.09] * 6 + [0.02] * 3 + [0.05] * 14


def test_next_shortening_bounds_runs_once_they_shorten():
    last, bound = None, None
    seen = []
    for run in [0, 0, 1, 2, 3, 3, 0, 2, 3, 1, 0, 2]:
        last, bound = next_shortening(last, bound, run)
        seen.append(bound)
    # growing and level runs set no bound; the first shorter run (2 after 3) does; a run of none changes
    # nothing; later runs lower it to the shortest (1), never raise it
    assert seen == [None, None, None, None, None, None, None, 2, 2, 1, 1, 1]
    assert next_shortening(None, None, 0) == (None, None)


def test_monotone_runs_keeps_planned_runs_from_lengthening_again():
    cfg = DiCacheConfig(threshold=0.255, warmup=2, plan_runs=True)
    free = drive(cfg, {"c": scales(ALTERNATING)}).branches["c"]
    assert free.pattern == "FF_____F__F____________F_"  # five, two, then twelve
    assert _shortens_then_lengthens(_runs(free.pattern))
    b = drive(cfg.replace(monotone_runs=True), {"c": scales(ALTERNATING)}).branches["c"]
    assert b.pattern == "FF_____F__F__F__F__F__F__"  # after the run of two, no run outlasts it
    assert [st.reason for st in b.steps if st.computed][4:] == ["shorten"] * 4
    assert not _shortens_then_lengthens(_runs(b.pattern))
    # the option acts where runs are planned only: where the probe decides every call it changes nothing
    probed = DiCacheConfig(threshold=0.255, warmup=2)
    assert drive(probed.replace(monotone_runs=True), {"c": scales(ALTERNATING)}).branches["c"].pattern == \
        drive(probed, {"c": scales(ALTERNATING)}).branches["c"].pattern
    assert not probed.replace(monotone_runs=True).monotone_runs_at(50)
    auto = DiCacheConfig(plan_runs="auto", gamma_source="auto", monotone_runs=True)
    assert auto.monotone_runs_at(50) and not auto.monotone_runs_at(20)


def test_monotone_runs_in_the_budget_simulation():
    # the budget's simulation of the fixed-δ plan bounds the runs as the engine does: on the increments the
    # trace measures (0.255 keeps the decisions off the edges where a sum and the probe's product differ)
    n = len(ALTERNATING) + 1
    incs = [0.0] + ALTERNATING
    counts = []
    for mono in (False, True):
        cfg = DiCacheConfig(threshold=0.255, warmup=2, plan_runs=True, monotone_runs=mono)
        pattern = drive(cfg, {"c": scales(ALTERNATING)}, num_steps=n).branches["c"].pattern
        counts.append(Budget(cfg, M).simulate(incs, n, 0.255))
        assert counts[-1] == pattern.count("F"), pattern
    assert counts == [5, 8]


@pytest.mark.parametrize("replay,target", [(False, 3.0), (True, 2.5), (True, 3.0)])
def test_monotone_runs_in_budget_mode_spends_the_budget(replay, target):
    # the budget's plan simulates the bound: the count is the budget's, and the runs never lengthen after
    # they have shortened
    n = 40
    errors = (ALTERNATING * 2)[: n - 1]
    cfg = DiCacheConfig(target_speedup=target, warmup=2, plan_runs=True, monotone_runs=True)
    if replay:
        engine, s = drive_twice(cfg, {"c": scales(errors)}, n)
        assert ("c", n) in engine._budget._solved
        b = s.branches["c"]
    else:
        b = drive(cfg, {"c": scales(errors)}, num_steps=n).branches["c"]
    assert abs(b.pattern.count("F") - n / target) < 1, b.pattern  # the budget to its fraction of a call
    # the bound yields to the budget's hard bound only: once the budget is spent the calls left reuse
    assert not _shortens_then_lengthens(_runs(b.pattern)[:-1]), b.pattern
    undone = cfg.replace(monotone_runs=False)
    free = drive_twice(undone, {"c": scales(errors)}, n)[1] if replay else drive(undone, {"c": scales(errors)},
                                                                                 num_steps=n)
    assert _shortens_then_lengthens(_runs(free.branches["c"].pattern)[:-1]), free.branches["c"].pattern


@pytest.mark.parametrize(
    "options,word",
    [
        (dict(plan_runs=1), "plan_runs"),
        (dict(plan_runs="yes"), "plan_runs"),
        (dict(max_extrapolation=0), "max_extrapolation"),
        (dict(max_extrapolation=-1.0), "max_extrapolation"),
        (dict(max_extrapolation=float("inf")), "max_extrapolation"),
        (dict(max_extrapolation="1"), "max_extrapolation"),
        (dict(monotone_runs="auto"), "monotone_runs"),
        (dict(monotone_runs=1), "monotone_runs"),
        (dict(plan_error="sizes"), "plan_error"),
        (dict(plan_error=None), "plan_error"),
    ],
)
def test_bad_plan_values(options, word):
    with pytest.raises(ValueError, match=word):
        DiCacheConfig(**options)


def test_plan_runs_on_a_pipeline_runs_no_block_on_skipped_calls():
    pipe = tiny.flux_pipeline()
    dicache.enable(pipe, backend="torch", threshold=100.0, warmup=2, max_extrapolation=1.0, plan_runs=True,
                   force_last_step=True)
    out = tiny.flux_pipeline_call(pipe, steps=11)
    s = dicache.summary(pipe)
    dicache.disable(pipe)
    b = next(iter(s.branches.values()))
    assert b.pattern == "FF_F__F___F"
    assert b.block_evaluations == 5 * b.block_evaluations_uncached // 11
    assert torch.isfinite(out).all()


def test_plan_runs_budget_replays_the_profile_of_the_computed_calls():
    # a second trajectory of the step count replays the per-step errors its computed calls measured: δ solved
    # so that the fixed-δ plan spends the budget, runs longer where the error is small
    n, target = 40, 2.5
    errors = [0.02] * 15 + [0.2] * 10 + [0.02] * (n - 26)
    g = torch.Generator().manual_seed(0)
    base, x = torch.rand(1, 6, 8, generator=g) + 0.5, torch.randn(1, 6, 8, generator=g)
    engine = DiCacheEngine(DiCacheConfig(target_speedup=target, warmup=2, plan_runs=True), M, "torch")
    sc = scales(errors)
    patterns, rules = [], []
    for _ in range(2):
        for k in range(n):
            engine.begin_call("c", k, n)
            if engine.before_probe(x) is None and engine.after_probe(x, base * sc[k]) is None:
                engine.after_full(base * sc[k] * 3 + x)
        b = summarize(engine, "toy").branches["c"]
        patterns.append(b.pattern)
        rules.append(engine.budget_rule("c"))
        engine.reset()
    assert rules[0] == "planned, online" and rules[1].startswith("planned, replay, δ="), rules
    for p in patterns:
        assert set(p) == {"F", "_"} and p.count("F") == n / target, p
    # online: even runs until the errors are measured, then no run beyond one more than even (a jump in the
    # error is not taken for a growth that keeps the budget for the end); replay: the computed calls gather where
    # the error is ten times larger (steps 16–25)
    assert max(len(r) for r in patterns[0][2:16].split("F")) <= 2, patterns[0]
    assert max(len(r) for r in patterns[0][2:-1].split("F")) <= 3, patterns[0]
    assert patterns[1][16:27].count("F") >= 5 and patterns[1][2:16].count("F") <= 3, patterns[1]


def test_online_growth_of_the_measured_errors():
    growth = Budget.growth
    n = 50
    rising = {k: 0.02 * 1.03 ** k for k in range(3, 20)}
    assert growth(rising, 2, 19, n) == pytest.approx(1.03, rel=1e-9)
    later = {**rising, **{k: 5.0 for k in range(11, 20)}}  # what comes after the run start is not read
    assert growth(later, 2, 10, n) == pytest.approx(1.03, rel=1e-9)
    assert growth({k: 0.02 for k in range(3, 20)}, 2, 19, n) == 1.0
    assert growth({k: 0.05 * 0.9 ** k for k in range(3, 20)}, 2, 19, n) == 1.0  # falling: held flat
    # falling after the warm-up, then rising: read from the smallest increment on (the fall hides the growth)
    trough = {k: 0.02 * (1.1 ** (10 - k) if k < 10 else 1.03 ** (k - 10)) for k in range(3, 20)}
    assert growth(trough, 2, 19, n) == pytest.approx(1.03, rel=1e-9)
    # a trough among the newest: at least ONLINE_MIN_INCREMENTS of them are read (here still falling: held flat)
    assert growth(trough, 2, 11, n) == 1.0
    late = {**{k: 0.01 for k in range(3, 15)}, **{k: 0.01 * 1.05 ** (k - 14) for k in range(15, 20)}}
    # level, then rising: the first of the smallest (step 3) on, all of them; the level part dilutes the growth
    assert 1.0 < growth(late, 2, 19, n) < 1.05
    # too few increments after the warm-up (and none that is not finite or not positive counted)
    assert growth({1: 0.1, 2: 0.1, 3: 0.1, 4: 0.2, 5: float("nan"), 6: 0.0}, 2, 19, n) is None
    # a jump of ten times: at most ONLINE_MAX_GROWTH over the whole trajectory
    jump = {k: (0.02 if k < 10 else 0.2) for k in range(3, 14)}
    assert growth(jump, 2, 13, n) == pytest.approx(ONLINE_MAX_GROWTH ** (1 / n))
    assert growth(jump, 2, 13, 20) == pytest.approx(ONLINE_MAX_GROWTH ** (1 / 20))


def test_online_profile_extrapolates_from_the_last_error_at_the_measured_growth():
    cfg = DiCacheConfig(target_speedup=2.0, warmup=2, plan_runs=True)
    budget = DiCacheEngine(cfg, M, "torch")._budget
    state = BranchState("c")
    state.increments = {k: 0.02 * 1.03 ** k for k in range(1, 12)}
    state.err_last = state.increments[11]
    prof = budget.online_profile(state, 11, 30)
    assert sorted(prof) == list(range(1, 30))
    assert all(prof[k] == state.increments[k] for k in range(1, 12))
    assert prof[29] == pytest.approx(0.02 * 1.03 ** 29)
    state.increments = {k: 0.02 for k in range(1, 5)}  # 2 after the warm-up: none yet, the runs stay even
    assert budget.online_profile(state, 4, 30) is None


@pytest.mark.parametrize("extrapolation", [None, 1.0])
def test_budget_rule_names_a_planned_cfg_follower(extrapolation):
    # where runs are planned the uncond branch follows the cond branch's skips, and its computed calls may be
    # forced by max_extrapolation ("reach"): it spends no budget of its own, so the summary says it follows
    n = 30
    traces = {"cond": scales([0.02] * (n - 1)), "uncond": scales([0.02] * (n - 1))}
    cfg = DiCacheConfig(target_speedup=2.5, warmup=2, plan_runs=True, cfg_decision="shared",
                        max_extrapolation=extrapolation)
    s = drive(cfg, traces, num_steps=n)
    reasons = {st.reason for st in s.branches["uncond"].steps}
    assert "follow" in reasons and not reasons & {"planned", "reuse", "reuse_one", "predicted", "refresh"}
    if extrapolation is not None:
        assert "reach" in reasons
    assert s.branches["cond"].budget == "planned, online" and s.branches["uncond"].budget == "planned, follows"
    # a branch that decides for itself is never called a follower
    s = drive(cfg.replace(cfg_decision="separate"), traces, num_steps=n)
    assert s.branches["uncond"].budget == "planned, online"


def drive_sized(cfg, errors, sizes, num_steps):
    """``drive`` on one branch with the trajectory's step sizes told to the engine (as a pipeline's scheduler does)."""
    g = torch.Generator().manual_seed(0)
    base, x = torch.rand(2, 6, 8, generator=g) + 0.5, torch.randn(2, 6, 8, generator=g)
    engine = DiCacheEngine(cfg, M, "torch")
    engine.set_step_sizes(sizes)
    for k, sc in enumerate(scales(errors)):
        engine.begin_call("c", k, num_steps)
        if engine.before_probe(x) is not None:
            continue
        if engine.after_probe(x, base * sc) is None:
            engine.after_full(base * sc * 3 + x)
    return summarize(engine, "toy").branches["c"]


def test_online_profile_predicts_the_errors_from_the_step_sizes():
    # the probe error of a call grows with the step its output takes: the steps after the last probe are predicted
    # as c·|σ_k − σ_(k+1)|, c = the errors measured over their steps' sizes (a ratio of sums)
    cfg = DiCacheConfig(target_speedup=2.0, warmup=1)
    budget = DiCacheEngine(cfg, M, "torch")._budget
    sizes = [0.01 * 1.2 ** k for k in range(30)]
    state = BranchState("c")
    state.increments = {3: 0.03, 4: 0.05}  # two measured: enough with step sizes (the growth needs four)
    prof = budget.online_profile(state, 4, 30, sizes)
    c = 0.08 / (sizes[3] + sizes[4])
    assert prof[3] == 0.03 and prof[4] == 0.05 and prof[29] == pytest.approx(c * sizes[29])
    assert budget.online_profile(state, 4, 30) is None  # without them, the growth: too few increments yet
    # the sizes the pipeline told are used when they fit the trajectory; where every call is probed only
    state.probe_step, state.err_n = 4, 2
    for told, usable in ((sizes, True), (sizes[:-1], False), ([float("nan")] * 30, False), ([0.0] * 30, False),
                         (None, False)):
        budget.step_sizes = told
        assert (budget._sizes_rule(state, 30) is not None) == usable
    planned = DiCacheEngine(cfg.replace(plan_runs=True), M, "torch")._budget
    planned.step_sizes = sizes
    assert planned.sizes_for(30) is not None and planned._sizes_rule(state, 30) is None


def test_online_profile_to_a_power_of_the_step_size_where_the_probe_decides(monkeypatch):
    # c·size^p: the errors grow more slowly than steps that span much; the probe's calls (20 steps) predict at
    # ONLINE_SIZE_EXPONENT, the planned runs at 1
    assert 0.0 < budget_mod.ONLINE_SIZE_EXPONENT < 1.0
    cfg = DiCacheConfig(target_speedup=2.5, warmup=1, force_last_step=1)
    budget = DiCacheEngine(cfg, M, "torch")._budget
    sizes = [0.01 * 1.2 ** k for k in range(30)]
    state = BranchState("c")
    state.increments = {3: 0.03, 4: 0.05}
    prof = budget.online_profile(state, 4, 30, sizes, 0.5)
    c = 0.08 / (sizes[3] ** 0.5 + sizes[4] ** 0.5)
    assert prof[4] == 0.05 and prof[29] == pytest.approx(c * sizes[29] ** 0.5)
    assert prof[29] < budget.online_profile(state, 4, 30, sizes)[29]  # less of the budget kept for the end
    asked, stock = [], Budget.online_profile

    def spy(self, state, start, n, sizes=None, exponent=1.0):
        asked.append(exponent)
        return stock(self, state, start, n, sizes, exponent)

    monkeypatch.setattr(Budget, "online_profile", spy)
    errors = [2.0 * v ** 0.85 for v in sizes[1:20]]
    b = drive_sized(cfg, errors, sizes[:20], 20)
    assert b.budget == "online, step sizes" and set(asked) == {budget_mod.ONLINE_SIZE_EXPONENT}
    asked.clear()
    b = drive_sized(cfg.replace(plan_runs=True), [2.0 * v for v in sizes[1:]], sizes, 30)
    assert b.budget == "planned, online, step sizes" and set(asked) == {1.0}


def test_online_profile_reads_the_ratio_to_the_step_size_after_the_warm_up():
    # the first steps' errors run several times the middle's ratio to the size: c comes from the calls after the
    # warm-up once one is measured, from the warm-up's before that
    cfg = DiCacheConfig(target_speedup=2.0, warmup=3, plan_runs=True)
    budget = DiCacheEngine(cfg, M, "torch")._budget
    sizes = [0.01] * 30
    state = BranchState("c")
    state.increments = {1: 0.05, 2: 0.05}  # the warm-up only: c = 5
    assert budget.online_profile(state, 2, 30, sizes)[20] == pytest.approx(0.05)
    state.increments = {1: 0.05, 2: 0.05, 3: 0.02, 4: 0.02}  # after it: c = 2, the warm-up's ratio left out
    prof = budget.online_profile(state, 4, 30, sizes)
    assert prof[1] == 0.05 and prof[4] == 0.02 and prof[20] == pytest.approx(0.02)


@pytest.mark.parametrize("target", [2.0, 2.5, 3.0])
def test_budget_planned_online_rule_on_step_sizes(target):
    # where runs are planned, the online rule told the step sizes plans each run on the profile they predict from
    # the first measured error on: long runs where the steps are small, the budget kept for the large ones at the
    # end, on target; without them the runs stay even until the growth is measured
    # (2.5×: FF_____________F____F_FFFFFFFF told, FF__F__F____F___F__F_F_F_F_F_F not)
    n = 30
    sizes = [0.01 * 1.15 ** k for k in range(n)]
    errors = [2.0 * v for v in sizes[1:]]
    cfg = DiCacheConfig(target_speedup=target, warmup=1, force_last_step=1, plan_runs=True)
    told = drive_sized(cfg, errors, sizes, n)
    even = drive_sized(cfg, errors, None, n)
    assert told.budget == "planned, online, step sizes" and even.budget == "planned, online"
    for b in (told, even):
        assert b.block_evaluations_uncached / b.block_evaluations == pytest.approx(target, rel=0.1)
    told_runs = [len(r) for r in told.pattern[1:].split("F") if r]
    even_runs = [len(r) for r in even.pattern[1:].split("F") if r]
    assert told_runs[0] >= 2 * even_runs[0] and told_runs[-1] <= even_runs[-1], (told.pattern, even.pattern)
    assert told_runs == sorted(told_runs, reverse=True), told.pattern


@pytest.mark.parametrize("target", [2.0, 2.5, 3.0])
def test_budget_online_rule_on_step_sizes_shortens_runs_where_the_steps_grow(target):
    # errors in proportion to step sizes that grow towards the end (a shifted flow schedule, here 70× over the
    # trajectory): told the sizes, the online rule spends the budget as a fixed δ would, a long run early where the
    # steps are small and short ones late, on target; without them the run bounds keep its runs near even
    # (2.5×: F.........F..F.F.FFF told, F...F...F..F..F..F.F not)
    n = 20
    sizes = [0.01 * 1.25 ** k for k in range(n)]
    errors = [2.0 * v for v in sizes[1:]]  # the error measured at call k: 2·size_k
    cfg = DiCacheConfig(target_speedup=target, warmup=1, force_last_step=1)
    told = drive_sized(cfg, errors, sizes, n)
    even = drive_sized(cfg, errors, None, n)
    for b in (told, even):
        assert b.block_evaluations_uncached / b.block_evaluations == pytest.approx(target, rel=0.1)
    told_runs = [len(r) for r in told.pattern[1:].split("F") if r]
    even_runs = [len(r) for r in even.pattern[1:].split("F") if r]
    assert told_runs[0] >= 2 * even_runs[0] and told_runs[-1] <= even_runs[-1], (told.pattern, even.pattern)
    assert told_runs == sorted(told_runs, reverse=True), told.pattern  # never longer than the run before


def test_step_sizes_come_from_the_scheduler_sigmas_when_they_fit():
    from types import SimpleNamespace

    from dicache.api import _step_sizes

    sched = SimpleNamespace(sigmas=torch.tensor([1.0, 0.7, 0.3, 0.0]))
    assert _step_sizes(sched, 3) == pytest.approx([0.3, 0.4, 0.3])
    assert _step_sizes(sched, 4) is None  # not n + 1 values (a second-order scheduler's, say)
    assert _step_sizes(sched, None) is None
    assert _step_sizes(SimpleNamespace(), 3) is None  # a scheduler without sigmas
    assert _step_sizes(SimpleNamespace(sigmas=torch.ones(2, 4)), 3) is None


@pytest.mark.parametrize("steps", [7, 20])
def test_step_sizes_only_from_flow_sigmas(steps):
    """Flow sigmas tell the engine their steps, on a DDPM-family scheduler set to them too (Wan's UniPC); the other
    DDPM-family schedulers tell none: VE sigmas (Euler, DPM-Solver++) are another scale, DDIM has no sigmas; nor do
    EDM's sigmas (no alphas, but not in [0, 1])."""
    import diffusers

    from dicache.api import _step_sizes

    for sched in (diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
                  diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                    flow_shift=3.0)):
        sched.set_timesteps(steps)
        sig = sched.sigmas.float().tolist()
        assert _step_sizes(sched, steps) == pytest.approx([abs(a - b) for a, b in zip(sig, sig[1:])])
    kw = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    for sched in (diffusers.DPMSolverMultistepScheduler(**kw), diffusers.EulerDiscreteScheduler(**kw),
                  diffusers.UniPCMultistepScheduler(**kw), diffusers.DDIMScheduler(**kw),
                  diffusers.CogVideoXDDIMScheduler(**kw, prediction_type="v_prediction"),
                  diffusers.EDMEulerScheduler()):  # EDM: no alphas, but sigmas from 80 down
        sched.set_timesteps(steps)
        assert _step_sizes(sched, steps) is None, type(sched).__name__


def test_budget_online_rule_on_step_sizes_solves_once_per_call(monkeypatch):
    # a predictive skip's check and the probe's decision both ask for δ at the same call: one solve serves both
    n = 20
    sizes = [0.01 * 1.15 ** k for k in range(n)]
    errors = [2.0 * v for v in sizes[1:]]
    cfg = DiCacheConfig(target_speedup=2.5, warmup=1, force_last_step=1, predictive_skip=True)
    solved = []
    original = Budget.solve

    def counting(self, profile, n, budget, credit=0.0, begin=None, position=None):
        solved.append(begin[0] if begin is not None else None)
        return original(self, profile, n, budget, credit, begin, position)

    monkeypatch.setattr(Budget, "solve", counting)
    b = drive_sized(cfg, errors, sizes, n)
    assert solved and len(solved) == len(set(solved)), solved  # never twice at one step
    assert any(not st.probed for st in b.steps if not st.computed)  # predictive skips did ask
    assert b.block_evaluations_uncached / b.block_evaluations == pytest.approx(2.5, rel=0.1)


def test_planned_budget_skips_a_call_that_computing_would_put_two_ahead(monkeypatch):
    # a sampler that adds noise at every step: the probe jumps up and back, so its change over one step reads large
    # and over two steps small; a replay solved on the first call's runs of one skip then reads every run's error
    # above δ after the warm-up's two computed calls, computes call after call and spends the budget with six calls
    # left to skip. A call right after a computed one is skipped when computing it would put the trajectory
    # AHEAD_LIMIT calls ahead of spending the budget evenly.
    import dicache.budget as budget_module

    n, target = 20, 1.5
    sc = [1.0 + (0.3 if k % 2 else 0.0) + 0.01 * k for k in range(n)]
    cfg = DiCacheConfig(target_speedup=target, warmup=2, plan_runs=True, force_last_step=True)
    monkeypatch.setattr(budget_module, "AHEAD_LIMIT", math.inf)
    engine, s = drive_twice(cfg, {"c": sc}, n)
    assert engine.budget_rule("c").startswith("planned, replay")
    assert s.branches["c"].pattern == "F" * 13 + "_" * 6 + "F"
    monkeypatch.setattr(budget_module, "AHEAD_LIMIT", 2.0)
    engine, s = drive_twice(cfg, {"c": sc}, n)
    b = s.branches["c"]
    # budget 20/1.5 = 13.3 calls: computing the sixth call (step 5) would make 6 − 13.3·6/20 = 2 calls ahead, so it
    # skips; the plan goes on from the error measured over the two steps since
    assert b.pattern == "FFFFF_F_F_F_F_F_F_FF", b.pattern
    assert b.pattern.count("F") == round(n / target)
    budget = engine._budget
    assert budget.ahead(6, 6, n, planned=True) == pytest.approx(6 - n / target * 6 / n)
    assert budget.ahead(5, 6, n, planned=True) < budget_module.AHEAD_LIMIT <= budget.ahead(6, 6, n, planned=True)
