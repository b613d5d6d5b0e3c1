"""``hindsight``: the computed call that ends a run of skips adds back a share of what the run missed.

The engine is driven straight (no model) with a residual that is a known polynomial of the step, so the skips'
reconstruction, the computed call's correction and the entry it stores can be written down by hand.
"""

import pytest
import torch

import dicache
from dicache.config import HINDSIGHT_PROBE_FACTOR, DiCacheConfig
from dicache.engine import DiCacheEngine
from dicache.ops.reference import lagrange_weights
from dicache.state import BranchState, hindsight_weight
from dicache.summary import summarize

import tiny

M = 10
N = 12
# warm-up of three, then runs of two planned skips: F F F _ _ F _ _ F _ _ F
PATTERN = "FFF__F__F__F"
BASE = dict(threshold=100.0, warmup=3, gamma_source="steps", plan_runs=True, max_consecutive_reuse=2)


def _coefficients(seed=0, shape=(2, 6, 8)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(5)]


def polynomial(degree, seed=0):
    """A residual ``R(k)`` of the step, a polynomial of ``degree`` with random tensor coefficients."""
    coef = _coefficients(seed)

    def R(k):
        return sum(coef[i] * (k / 10) ** i for i in range(degree + 1))

    return R


def run(cfg, R, n=N, sizes=None, outputs=False):
    """Drive one branch over ``n`` steps whose deep blocks output ``x + R(k)``; the probe's error is constant;
    ``outputs``: the model's output module runs too (``reconstruct_at``). Returns (the output handed on per step,
    the engine)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 6, 8, generator=g)
    base = torch.rand(2, 6, 8, generator=g) + 0.5
    engine = DiCacheEngine(cfg, M, "torch")
    engine.set_step_sizes(sizes)
    outs, stored = [], {}
    for k in range(n):
        engine.begin_call("c", k, n)
        h = engine.before_probe(x)
        if h is None:
            h = engine.after_probe(x, base * 1.01 ** k)
        if h is None:
            h = x + R(k)
            engine.after_full(h)
            st = engine.branches["c"]
            stored[k] = st.R[st.newest()].clone()
            if outputs:
                engine.computed_output(h.mean(dim=1))
        elif outputs and engine.output_pending():
            engine.skipped_output()
        outs.append(h.clone() - x)
    engine.stored = stored
    return outs, engine


def test_hindsight_weight_by_hand():
    # φ raises the polynomial through the entries by one degree to pass through n: 0 at each entry, 1 at n
    assert hindsight_weight(3, [2], 5) == pytest.approx(1 / 3)
    assert hindsight_weight(3, [1, 2], 5) == pytest.approx(2 * 1 / (4 * 3))
    assert hindsight_weight(4, [0, 1, 2], 5) == pytest.approx(4 * 3 * 2 / (5 * 4 * 3))
    assert hindsight_weight(2, [0, 1, 2], 5) == 0 and hindsight_weight(5, [0, 1, 2], 5) == 1


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_the_quadratics_run_takes_back_its_miss_on_a_cubic_residual(share):
    R = polynomial(3)
    off, _ = run(DiCacheConfig(**BASE, alignment_order=2), R)
    outs, engine = run(DiCacheConfig(**BASE, alignment_order=2, hindsight=share), R)
    assert summarize(engine, "toy").branches["c"].pattern == PATTERN
    # the skips at 3 and 4 took the quadratic through steps 0, 1, 2 (γ = 2 at step 5 along t1 → t2)
    c0, c2 = lagrange_weights(4.0, 0.0, 1.0, 2.0)
    p5 = c0 * R(0) + (1 - c0 - c2) * R(1) + c2 * R(2)
    beta = share * (hindsight_weight(3, [0, 1, 2], 5) + hindsight_weight(4, [0, 1, 2], 5))
    assert beta == pytest.approx(share * (0.1 + 0.4))
    torch.testing.assert_close(outs[5], R(5) + beta * (R(5) - p5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(off[5], R(5), rtol=1e-5, atol=1e-5)
    # the skips themselves and the entry the computed call stored are unchanged: the call's own residual
    for k in (3, 4):
        torch.testing.assert_close(outs[k], off[k])
    torch.testing.assert_close(engine.stored[5], R(5), rtol=1e-5, atol=1e-5)
    assert engine.branches["c"].hindsight_runs == 3
    assert "hindsight corrected 3 runs" in str(summarize(engine, "toy"))


def test_a_run_is_corrected_only_where_every_skip_took_one_rule():
    st = BranchState("c")
    st.note_skip(3, 1.0, 3)
    st.note_skip(4, 0.5, 3)
    assert st.run_order == 3 and st.run_skips == [(3, 1.0), (4, 0.5)]
    st.note_skip(5, 1.0, 2)  # another rule within the run
    assert st.run_order == 0
    st = BranchState("c")
    st.note_skip(3, 1.0, 0)  # the model's output rebuilt
    st.note_skip(4, 1.0, 0)
    assert st.run_order == 0


def test_a_residual_the_rule_fits_needs_no_correction():
    R = polynomial(2)
    outs, _ = run(DiCacheConfig(**BASE, alignment_order=2, hindsight=1.0), R)
    for k, o in enumerate(outs):
        torch.testing.assert_close(o, R(k), rtol=1e-4, atol=1e-4)


def test_the_lines_run_with_step_sizes():
    R = polynomial(3)
    sizes = [0.5 + 0.1 * k for k in range(N)]
    outs, _ = run(DiCacheConfig(**BASE, alignment_order=1, hindsight=0.5), R, sizes=sizes)
    # skips at 3 and 4 took the line through steps 1 and 2
    p5 = R(1) + 4.0 * (R(2) - R(1))
    beta = 0.5 * (sizes[3] * hindsight_weight(3, [1, 2], 5) + sizes[4] * hindsight_weight(4, [1, 2], 5)) / sizes[5]
    torch.testing.assert_close(outs[5], R(5) + beta * (R(5) - p5), rtol=1e-5, atol=1e-5)


def test_no_correction_without_a_share():
    R = polynomial(3)
    outs, engine = run(DiCacheConfig(**BASE, alignment_order=2, hindsight=0.0), R)
    assert engine.branches["c"].hindsight_runs == 0
    for k in (5, 8, 11):
        torch.testing.assert_close(outs[k], R(k), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("changes", [dict(gamma_source="probe"), dict(alignment_order="auto", gamma_source="auto")])
def test_where_the_probe_sets_gamma_the_run_counts_on_the_line_at_its_steps(changes):
    # gamma_source="auto" at 12 steps: the probe's γ (under STEPS_GAMMA_MIN_STEPS on flow matching); the skips
    # rebuilt on the quadratic (or the bent line) at the probe's γ, clipped; the correction reads them as the line
    # through the two newest entries at their own steps, and takes back HINDSIGHT_PROBE_FACTOR of the share
    R = polynomial(3)
    cfg = DiCacheConfig(**BASE, alignment_order=2, hindsight=0.5).replace(**changes)
    outs, engine = run(cfg, R)
    assert summarize(engine, "toy").branches["c"].pattern == PATTERN
    assert engine.branches["c"].hindsight_runs == 3
    line5 = R(1) + 4.0 * (R(2) - R(1))
    beta = 0.5 * HINDSIGHT_PROBE_FACTOR * (hindsight_weight(3, [1, 2], 5) + hindsight_weight(4, [1, 2], 5))
    torch.testing.assert_close(outs[5], R(5) + beta * (R(5) - line5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(engine.stored[5], R(5), rtol=1e-5, atol=1e-5)


def test_no_correction_where_the_skips_rebuilt_the_models_output():
    R = polynomial(3)
    cfg = DiCacheConfig(**BASE, alignment_order=2, hindsight=1.0, reconstruct_at="output")
    outs, engine = run(cfg, R, outputs=True)
    assert engine.branches["c"].outputs_rebuilt == 6 and engine.branches["c"].hindsight_runs == 0
    for k in (5, 8, 11):
        torch.testing.assert_close(outs[k], R(k), rtol=1e-5, atol=1e-5)
    # the blocks' output rebuilt (no output module ran): corrected
    _, engine = run(cfg, R)
    assert engine.branches["c"].hindsight_runs == 3


@pytest.mark.parametrize("value", [-0.1, 1.5, True, "auto", None, float("nan")])
def test_bad_hindsight_values(value):
    with pytest.raises(ValueError, match="hindsight"):
        DiCacheConfig(hindsight=value)


def test_hindsight_on_a_pipeline_with_shared_cfg_decisions():
    # both CFG branches correct their own runs; the output stays finite and differs from the uncorrected one
    results = {}
    for hs in (0.0, 1.0):
        pipe = tiny.wan_pipeline()
        dicache.enable(pipe, backend="torch", threshold=100.0, warmup=3, gamma_source="steps", plan_runs=True,
                       max_consecutive_reuse=2, alignment_order="auto", cfg_decision="shared", hindsight=hs)
        out = tiny.wan_pipeline_call(pipe, steps=12)
        s = dicache.summary(pipe)
        dicache.disable(pipe)
        results[hs] = out
        runs = sum(b.hindsight_runs for b in s.branches.values())
        assert runs == (0 if hs == 0 else 3 * len(s.branches)), str(s)
        assert torch.isfinite(out).all()
    assert not torch.equal(results[0.0], results[1.0])
