"""DiCacheConfig and the presets per model family."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, Union

ERRORS = ("probe", "probe_minus_input")
BATCH_POLICIES = ("global", "max")
PLAN_ERRORS = ("steps", "step_sizes", "auto")
#: The smallest exponent ``span_power`` takes (a measured one is clipped to it): a random walk's is 0.5.
SPAN_POWER_MIN = 0.25
#: ``span_power="measured"``: how many samples a trajectory's computed calls must have read for their median to
#: count, and the median under which the probe's change reads as a random walk's (α = 0.5) rather than a drift's
#: (α = 1). Over whole trajectories at 50 steps the median reads 0.68–1.06 on the shipped models' deterministic
#: samplers (SD3 0.68–0.81, the lowest) and 0.32–0.43 on CogVideoX-5b's ``CogVideoXDPMScheduler``; over the first
#: five computed calls it reads 0.3–0.5 on HunyuanVideo and SD3 too, so only a finished trajectory's median counts
#: (``benchmarks/probe_spans.py``).
SPAN_POWER_SAMPLES = 5
SPAN_POWER_DRIFT = 0.55
#: Where runs are planned, the engine reads at a trajectory's first three calls whether its sampler adds noise at every
#: step: the cosine of the two increments of the blocks' input under this (``dicache.state.BranchState.read_walk``).
#: An ODE sampler moves the latents along a smooth path (0.99–1.00 on the shipped models' own samplers); fresh noise
#: at every step makes the increments nearly independent, slightly opposed (−0.36 to −0.37 on CogVideoX-5b's
#: ``CogVideoXDPMScheduler`` and on ``DDPMScheduler``, −0.495 to −0.50 on ``FlowMatchEulerDiscreteScheduler`` with
#: ``stochastic_sampling``; ``benchmarks/probe_spans.py``, benchmarks/RESULTS.md, thirty-sixth round).
WALK_COSINE = 0.5
CFG_DECISIONS = ("separate", "shared")
GAMMA_SOURCES = ("probe", "steps", "auto")
RECONSTRUCT_AT = ("blocks", "output", "auto")
# gamma_source="auto": the step distance from this many denoising steps on, the probe's γ below
STEPS_GAMMA_MIN_STEPS = 25
# max_extrapolation="auto": planned runs bounded to one spacing past the newest entry from this many steps on, unbounded
# below (measured at 30, 40 and 50 steps on three models: the bound wins at 50, loses at 30 and at 8 of 13 points at 40)
REACH_MIN_STEPS = 45
# quad_balance="auto": the balance asked of the quadratic's three entries on a flow-matching trajectory (or one whose
# scheduler is not known); none on a DDPM-family scheduler's, where the quadratic through any three entries scored
# higher at 20 and 30 steps on three DDIM-trained models (benchmarks/RESULTS.md, thirty-first round)
QUAD_BALANCE_AUTO = 0.5
# quad_reach's value that leaves three entries whose two oldest are neighbouring steps to the quadratic
QUAD_REACH_SPACED = "spaced"
# hindsight where the probe set γ: the share of the run's miss (read on the line through the two newest entries at the
# skips' own steps) taken back is this fraction of ``hindsight``; the probe's γ already moved each skip part of the way
# (at 20 steps, of the presets' 0.5: half gained +0.2 to +2.1 dB pooled on Flux, Wan and HunyuanVideo and lost up to
# 0.3 on SD3; the whole gained up to +3.9 but lost up to 1.0 on SD3; benchmarks/RESULTS.md, forty-third round)
HINDSIGHT_PROBE_FACTOR = 0.5
# force_last_step: a final step under this fraction of the step before it is not one of the final steps, the step
# before it is forced too (:func:`negligible_final_steps`). FlowMatchEulerDiscreteScheduler with a fixed shift (SD3,
# SD3.5) ends its schedule at σ = 0.0089 (the training schedule's smallest σ, shifted twice), so its last step, 0.0089 →
# 0, is a sixteenth of the one before it at 20 steps (0.15 → 0.0089) and a sixth at 50; the step that denoises is the
# one before it. Elsewhere a step is within 1.6× of the one before it (benchmarks/step_sizes.py; benchmarks/RESULTS.md,
# forty-eighth round).
FINAL_STEP_RATIO = 0.25


@dataclass(frozen=True)
class DiCacheConfig:
    """Settings of DiCache for one model.

    Attributes:
        threshold: δ. Deep blocks are skipped while the probe error accumulated
            since the last full call stays below it. ``0`` never reuses.
        probe_depth: m, the number of leading blocks run at every call (the
            probe). At least 1 and fewer than the model's blocks.
        warmup: calls always computed at the start of each trajectory: a ratio
            in [0, 1) of the number of steps (``ceil(r·N)`` calls), or an int
            number of calls.
        gamma_clip: (lo, hi) bounds of the trajectory-alignment step γ the probe
            reads off (a γ from the steps, ``gamma_source``, is not clipped).
        force_last_step: compute the last denoising step fully (``True``), the last
            ``n`` steps (an int ``n ≥ 0``; ``False`` = 0), or a ratio in (0, 1) of the
            number of steps (``ceil(r·N)`` calls, as ``warmup``): their errors are never
            corrected by a later step, and a single skip costs most there. Where the
            pipeline tells the step sizes, a last step under a quarter of the one before
            it (SD3's schedule ends on σ 0.0089 → 0) is not counted: one call more is forced
            (``FINAL_STEP_RATIO``).
        error: ``"probe"`` accumulates the relative L1 change of the probe
            output; ``"probe_minus_input"`` accumulates
            ``|rel_l1(probe) − rel_l1(input)|`` (the reference code's Flux variant).
        batch_policy: ``"global"`` pools the statistics over the batch (the
            reference code); ``"max"`` decides per sample and reuses only when
            every sample is under δ, each sample with its own γ.
        max_consecutive_reuse: compute after this many skipped calls in a row
            (None: no cap). SeaCache's default cap is 2.
        cfg_decision: ``"separate"``: every branch (``"cond"``, ``"uncond"``)
            decides from its own probe; ``"shared"``: the first branch to reach a
            step decides for all, the others follow, each reconstructing from its
            own cache. A follower of a reusing leader runs no probe: it takes the
            leader's γ, so a skipped CFG step pays one probe, not two.
        alignment_order: 1: the method's trajectory alignment along the line
            through the two newest stored residuals; 2: the quadratic through
            the three newest (one more stored pair of image-token tensors), at
            the step position the probe's γ reads off; ``"auto"``: the line bent
            towards the quadratic by a weight w in [0, 1] that each probed reuse
            fits (least squares) to the probe residual it measured, so a
            trajectory that bends gets the quadratic and a straight one the line
            (followers and predicted skips take the step's weight); with γ from the
            steps (``gamma_source``) the quadratic whole, except on a random walk: where the
            blocks' input reads one at the trajectory's first three calls (``WALK_COSINE``: a sampler
            that adds noise at every step), or the budget plans the run at a ``span_power`` under 1,
            the line (benchmarks/RESULTS.md, thirty-fifth and thirty-sixth rounds).
        gamma_source: where a reused call sits on the stored trajectory. ``"probe"`` (the
            method): γ is read off how far the probe residual moved along its own line, clipped
            to ``gamma_clip``. ``"steps"``: γ is the call's distance in steps from the stored
            entries, ``(t − t1)/(t2 − t1)`` (t1, t2 the steps of the two newest), unclipped, so
            the line (or the quadratic) is evaluated at the call's own step, as step-indexed
            extrapolation (TaylorSeer) does; the probe still decides when to refresh. With the
            step known exactly, ``alignment_order="auto"`` takes the quadratic (w = 1): its
            fitted weight hedges against a γ the probe misread. ``"auto"``: ``"steps"`` for
            trajectories of at least ``STEPS_GAMMA_MIN_STEPS`` (25) steps, and for a trajectory of
            any known length that a pipeline's DDPM-family scheduler samples (ε- or v-prediction:
            CogVideoX's DDIM); ``"probe"`` for shorter flow-matching ones and when the step count
            is unknown (measured on the zoo models: the step distance wins at 50 steps, the probe
            at 20 on the flow-matching ones, the steps at 10 and 20 on the DDPM-family one; the
            other rules that follow γ's source follow it: :meth:`on_trajectory`).
        quad_balance: where ``alignment_order="auto"`` takes the quadratic whole (γ from the steps,
            ``gamma_source``), it takes it only through three entries whose two spacings are balanced, the
            shorter at least this fraction of the longer; through unbalanced entries (the warm-up's two
            neighbouring calls and one far after them: steps 0, 1 and 4) the line through the two newest.
            The deep residual of a denoising trajectory jitters from step to step around its trend, and
            the quadratic through a close pair amplifies that jitter wherever it extrapolates past them
            (its Lagrange weights at step 7 through steps 0, 1, 4: 4.5, −7, 3.5). None: the quadratic
            through any three entries. ``"auto"``: None on a trajectory that a pipeline's DDPM-family scheduler
            samples (the jitter that the bound guards against was measured on flow-matching trajectories; on three
            DDIM-trained models the quadratic through any three entries scored higher at 20 steps on four of five
            readings and at 30 steps at five of six points, ``benchmarks/RESULTS.md``, thirty-first round),
            ``QUAD_BALANCE_AUTO`` (0.5) on any other (flow matching, or no scheduler known).
            Needs ``alignment_order="auto"``; no effect where the probe sets γ.
        quad_reach: where ``alignment_order="auto"`` takes the quadratic whole (γ from the steps), also take
            the line through the two newest entries for a call further past the newest entry than the shorter of
            the entries' two spacings (entries at steps 10, 12, 13: the quadratic at step 14, the line at step 15,
            where the quadratic's Lagrange weights are 1, −5, 5). A call computed out of step leaves such close
            entries, and the quadratic through them amplifies the residual's step-to-step jitter. In the presets'
            own runs it acts where the newest spacing is the longer one: the first run after the warm-up and runs
            that lengthen. ``"spaced"``: the same test, but not through entries whose two oldest are neighbouring
            steps (the warm-up's 1, 2, 4 keep the quadratic for the first run after it; the gain and loss there were
            model-dependent). The presets take ``"spaced"`` with ``quad_reach_blend=0.5``. Alone, on their δ lists
            at 2–3× (66 points on five models, 20–50 steps, held-out seeds and models trained again) True gained
            0.5–2.9 dB at 22 points and lost 0.5–1.0 at 4, and Wan's own δ at 50 steps loses 0.6 and 0.8 dB on the
            shipped Wan's two seed sets (fifty-second round); ``"spaced"`` left 43 of the 66 level and Wan's δ
            unmoved, gained 0.6–1.5 dB at 6 (Wan at 2.5–3×, 5 of them), and lost 1.8 and 0.9 on Flux at 50 steps
            (seeds 4–5, 2.75–3×) and 0.7 in Wan's 3× budget replay (``benchmarks/RESULTS.md``, fifty-third round).
        quad_reach_blend: with ``quad_reach``, what a call beyond the reach takes instead of the line: the line plus
            this fraction of the quadratic's correction, ``line + w·(quadratic − line)`` (0: the line, 1: the quadratic,
            as without ``quad_reach``). A number in [0, 1]; no effect with ``quad_reach=False`` (nothing lies beyond
            the reach there, so ``quad_reach=False`` on a preset turns both off). The presets' 0.5 with
            ``"spaced"``: one call extrapolated early in a trajectory is worth ±1–2 dB either way on the line and on
            the quadratic; half of each fell nowhere more than 0.1 dB under the preset without it at the same 66
            points but where the δ lists differ (``benchmarks/RESULTS.md``, fifty-fourth round).
        reconstruct_at: what a reused call rebuilds from the stored entries. ``"blocks"`` (the method): the
            deep blocks' output, ``x + R`` (``x`` the call's own input to them), which the model's last layers
            (the output norm and projection) then turn into its output. ``"output"``: the model's output itself,
            the same line or quadratic at the same weights through the outputs of its output module
            (``proj_out``; the adapter names it) at the stored calls, as step-indexed extrapolation of the final
            features (TaylorSeer-Lite) does; a skip with one stored entry, and a model whose adapter names no
            output module, rebuild the blocks' output. ``"auto"``: the output where γ comes from the steps
            (``gamma_source``) on a trajectory that a pipeline's scheduler of the DDPM family samples (ε- or
            v-prediction: CogVideoX's DDIM), the blocks elsewhere (flow matching, a probe's γ, no pipeline).
            Measured (``benchmarks/RESULTS.md``, twenty-seventh round): at 50 steps on the DDPM-family zoo model
            the output lifted the preset by 0 to 3.1 dB pooled at 2–3× fewer flops; on the four flow-matching
            ones it was within ±0.7 dB but on Wan, which lost 2.4 dB at 2× and 0.9 at 2.25×; at 20 steps, with
            the probe's γ, the blocks scored higher on four of the five models on the same calls.
        run_power: the j-th reuse in a row must keep the accumulated error
            under ``δ / j^run_power`` (0: under δ, the method). The error of
            extrapolating ``j`` steps past the stored residuals grows faster
            than the probe's accumulated change: with 1, a single reuse
            between computed calls is allowed up to δ, a second one in a row
            only while the error is under δ/2. ``"auto"``: the order of the reconstruction in use, 2 where
            the quadratic is taken whole (``alignment_order=2``, or ``"auto"`` with γ from the steps),
            1 elsewhere: the error of extrapolating ``j`` steps grows as ``j^(order+1)``, the
            accumulated probe error as ``j``.
        predictive_skip: after a reuse, skip the next call without running its
            probe when the accumulated error plus the last measured per-step
            increment stays under δ; γ continues along the line the last probe
            measured (``γ' = 1 + (γ − 1)·(d + 1)/d``, ``d`` the steps since the
            last computed call). The next probe measures the error since the
            last probe, so an optimistic prediction is corrected one call later.
            At most one unprobed call follows each probed one. In budget mode
            (``target_speedup``) each such skip credits the budget with the
            probe it saved.
        plan_runs: decide each run of reuses at the computed call that starts it, and skip its calls
            without a probe. The probe of a computed call (block 0 runs anyway) measures the per-step
            error ``e`` since the last probe; the ``j``-th call after it is skipped while the predicted
            accumulated error ``j·e`` stays under δ (``δ / j^run_power`` with ``run_power``, within
            ``max_consecutive_reuse``, ``max_extrapolation`` and ``monotone_runs``), and the first one that
            would not be is computed. No skipped call runs a block: a skipped step costs what it costs uniform caching,
            and the probe still sets how long each run is. γ is the step distance (clipped to
            ``gamma_clip`` when ``gamma_source`` is ``"probe"``: no probe measures it). Replaces
            ``predictive_skip``. In budget mode (``target_speedup``) the runs spend the budget instead of
            a δ: a planned skip runs no block, so ``N/s`` calls are computed. ``"auto"``: plan where γ
            comes from the steps (``gamma_source``), where a skipped call's probe would only serve the
            decision; probe every skipped call where the probe measures γ.
        plan_error: how a planned run (``plan_runs``) predicts its accumulated error from the per-step error
            ``e`` the last probe measured: ``"steps"``, ``j·e`` after ``j`` steps; ``"step_sizes"``, in
            proportion to the scheduler's step sizes, ``e · Σ size(t2, t2 + j] / mean size(t1, t2]`` (``t1``,
            ``t2`` the two newest computed calls): the steps of a denoising schedule grow towards its end, and
            with them the error a run accumulates. Falls back to ``"steps"`` where the pipeline does not tell
            the step sizes (a bare transformer). ``"auto"`` (the presets): ``"step_sizes"`` with a fixed δ,
            ``"steps"`` in budget mode (``target_speedup``), whose replay solves δ on one call's error profile:
            read on the step sizes, its plan packs the calls towards the end and a counted call that meets
            smaller errors there spends the budget left on the final steps in a row (Wan 50 at 2.5×, seeds 0–3:
            ``…F__F_FFFF``, 3.4 dB below its plan on the count of steps).
        max_extrapolation: a reuse sits at most this many times the spacing of the two newest stored
            entries past the newest one, ``(t − t2) ≤ r·(t2 − t1)``; a call beyond is computed (None: no
            bound). With 1, runs of reuses grow by at most one call per refresh (after a warm-up of
            consecutive computed calls: one reuse, then two, …): a long run right after closely spaced
            entries extrapolates a line or quadratic fitted on a short stretch far past it, which costs
            far more than the probe's error says (Wan at 50 steps, at the same cost: ``FFFF..F..F…``
            9 dB below ``FFF.F..F..F…``). ``"auto"``: 1 where runs are planned (``plan_runs``) on
            trajectories of at least ``REACH_MIN_STEPS`` (45) steps, no bound elsewhere: at 30 and 40 steps
            the unbounded planned runs scored higher on the three shipped models at most savings from 2× to
            3×, at 50 steps the bounded ones (benchmarks/RESULTS.md, twenty-first round).
        monotone_runs: where runs are planned (``plan_runs``), once a run of reuses is shorter than the one
            before it, no later run outlasts the shortest since: the runs only shorten towards the end of the
            trajectory (runs of none, two computed calls in a row, do not count). The probe error of a
            denoising trajectory grows towards its end, so the runs a fixed δ plans shorten there, but each is
            planned on the error measured over the run before it, and a longer run measures a smaller error per
            step: without the bound they alternate (``…F__F___F__F…``). At the same count of computed
            calls the alternating patterns the plan ran scored below the same runs in shortening order at 6
            of 7 places on the shipped and held-out models (Hunyuan 50 at 2.1× and 2.5×: +2.6 and +2.7 dB,
            Wan 50 at 2.1× and 2.5×: +3.3 and +1.8; benchmarks/RESULTS.md). No effect where the probe
            decides every call. It undoes a rising ``threshold_end``, whose point is longer runs at the end.
            In budget mode the budget's hard bound comes first (a spent budget skips the calls left).
        span_power: where runs are planned (``plan_runs``), how a run's error grows with its length: the probe
            error measured over ``j`` steps is read as ``e·j^α`` (``e`` the error of one step), and a planned run
            of ``j`` calls predicts ``e·j^α``. 1: the error adds up step by step (``j·e``). A number in
            [``SPAN_POWER_MIN``, 1]: that α. ``"measured"``: in budget mode (``target_speedup``), the replay reads α
            off the trajectories it replays, 1 elsewhere. Each computed call compares its probe residual with the two
            newest stored entries' (``t1 < t2``): its change over ``k − t1`` steps against theirs over ``t2 − t1``
            (the sums trajectory alignment's γ reads) is ``((k − t1)/(t2 − t1))^α``; a trajectory's α is the median
            of those samples where it reads a random walk (under ``SPAN_POWER_DRIFT``, over at least
            ``SPAN_POWER_SAMPLES``), else 1. Where a sampler adds noise at every step the probe's change grows as a
            random walk's (α ≈ 0.4 on CogVideoX-5b's ``CogVideoXDPMScheduler``; 0.7–1 on the shipped models'
            deterministic samplers: ``benchmarks/probe_spans.py``), and a replay planned at ``j·e`` after a call
            measured over one step reads a long run too costly: at 20 steps and 2× it computed one call in two,
            then left the final steps to skip in a row (``benchmarks/RESULTS.md``, thirty-third round). In budget
            mode runs planned at an α under 1 end with a run of at most one skip before the forced final steps
            (``dicache.budget.FINAL_RUN``, thirty-fourth round), and with ``alignment_order="auto"`` their skips take
            the line through the two newest entries, not the quadratic: the best estimate of a random walk's next
            value is its newest, and a curvature read off three noisy entries is mostly their noise (thirty-fifth
            round).
        hindsight: where the deep blocks' output is rebuilt (``reconstruct_at``), the computed call that ends a run
            of skips adds back this share of what the run missed, as the computed call now tells it (0: nothing, the
            method). Each skip rebuilt the residual on the polynomial through the stored entries at its step; the
            polynomial one degree higher through the new entry too, known only after the run, differs from it at step
            ``k`` by ``φ(k)·(R_n − P(n))`` (``φ`` the new Newton basis term: 0 at the stored entries, 1 at the
            computed step ``n``; ``P(n)`` the skips' rule at ``n``). Summed over the run's skips with the scheduler's
            step sizes ``w`` (1 without them) and spread over the computed call's step, the output becomes
            ``h + β·(h − x − P(n))``, ``β = share·Σ_k w_k·φ(k)/w_n``: one rebuild and one ``lerp`` on the computed
            call, nothing on the skips, the stored entry the call's own. Where the probe sets γ (``gamma_source``),
            the skips count at their own steps on the line through the two newest entries, and the share taken back
            is ``HINDSIGHT_PROBE_FACTOR`` (a half) of this one: the probe's γ already moved each skip part of the
            way. A number in [0, 1]. The model's own output at the drifted latents pulls part of the drift back, by a
            share that depends on the model: the whole run's miss overshot on some models, half of it gained at every
            point measured on the shipped models and on siblings of four of them trained smooth in the timestep, at 30
            and 50 steps (``benchmarks/RESULTS.md``, forty-first and forty-second rounds).
        threshold_end: δ at the last step; δ moves linearly from ``threshold``
            at the first step (None: constant). Needs the step count.
        probe_threshold: δ where the probe decides each call (runs not planned, ``plan_runs``: below 25 steps on a
            flow-matching schedule with the presets), in place of ``threshold`` (None: ``threshold`` there too). The
            two rules read δ on different errors (a measured accumulated change, each reuse in a row under δ/j; a
            planned run's predicted change, under δ/j²), so one δ does not land both on DiCache's front: on Wan,
            0.16 saves 2.07× at 50 steps on the front, but 1.71× at 20 steps, 1.8 dB under it, where 0.26 saves 2.04×
            at the same PSNR (benchmarks/RESULTS.md, forty-sixth round). ``enable(…, threshold=…)`` (or
            ``threshold_end``) without it sets it to None: a δ asked for applies everywhere.
        step_size_power: where the probe decides each call (runs not planned, ``plan_runs``), δ at a call is
            scaled by ``(s̄/s_k)^p``, ``s_k`` the scheduler's step size at the call and ``s̄`` the median over the
            trajectory (no change where the pipeline tells no step sizes; 0: δ the same at every step, the method).
            A skip's error enters the latents times its step's size: a call on a large step must have moved less
            to be skipped, one on a small step may have moved more. In budget mode the fixed-δ rule the budget
            solves its δ on, and decides by, scales it the same way. A number in [0, 2].
        target_speedup: compute-budget mode (> 1): no δ to tune. The number of
            computed calls is set so that block evaluations fall by this factor.
            A first call of a step count spends them online: where the pipeline's
            scheduler tells its step sizes, it predicts the errors to come as
            ``c·|σ_k − σ_(k+1)|`` and decides by the fixed-δ rule with δ solved on
            that prediction for the budget left (call by call, or run by run
            where runs are planned, ``plan_runs``); without them, where the
            accumulated probe error grows fastest, in runs of reuses within one
            of the even spacing the budget left allows (planned: even runs until
            a few errors are measured, then δ solved on the errors extrapolated
            at their growth). Later calls of that step count replay the mean
            error profile of the earlier ones (another process too, given them:
            ``dicache.enable(…, budget_profiles=…)``). The last step is always computed.
            Overrides
            ``threshold`` and ``max_consecutive_reuse``. Needs the step count, and
            reads the accumulated error back with the flag (one transfer).
        target_min_steps: ``target_speedup`` only on trajectories of at least this
            many steps; a shorter one, or one whose step count nothing tells,
            decides on ``threshold`` as if no budget were set (None: the budget
            always, and an unknown step count raises). At few steps a fixed budget
            skips calls the trajectory cannot spare, where the δ rule backs off.
            A ``target_speedup`` passed to ``enable`` without it applies at every
            step count (the generic default's 20 is for its own budget).
        num_inference_steps: the step count of the trajectory when nothing else
            tells it (a bare transformer without ``cache_context``). Pipelines
            and ``cache_context(num_inference_steps=…)`` override it. Without
            it, a ratio warm-up cannot be resolved and the last step cannot be
            recognised: the first call is then the only one forced.
    """

    threshold: float = 0.1
    probe_depth: int = 1
    warmup: Union[float, int] = 0.2
    gamma_clip: Tuple[float, float] = (1.0, 1.5)
    force_last_step: Union[bool, int, float] = False
    error: str = "probe"
    batch_policy: str = "global"
    max_consecutive_reuse: Optional[int] = None
    cfg_decision: str = "separate"
    alignment_order: Union[int, str] = 1
    gamma_source: str = "probe"
    quad_balance: Union[float, str, None] = None
    quad_reach: Union[bool, str] = False
    quad_reach_blend: float = 0.0
    reconstruct_at: str = "blocks"
    run_power: Union[float, str] = 0.0
    predictive_skip: bool = False
    plan_runs: Union[bool, str] = False
    plan_error: str = "steps"
    max_extrapolation: Union[None, float, str] = None
    monotone_runs: bool = False
    span_power: Union[float, str] = 1.0
    hindsight: float = 0.0
    threshold_end: Optional[float] = None
    probe_threshold: Optional[float] = None
    step_size_power: float = 0.0
    target_speedup: Optional[float] = None
    target_min_steps: Optional[int] = None
    num_inference_steps: Optional[int] = None

    def __post_init__(self) -> None:
        # Normalise gamma_clip to a tuple of floats so the frozen object hashes and compares.
        if isinstance(self.gamma_clip, list):
            object.__setattr__(self, "gamma_clip", tuple(self.gamma_clip))
        validate(self)

    def replace(self, **changes: Any) -> "DiCacheConfig":
        """A copy with some fields changed (validated)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(
                f"unknown DiCache option(s) {sorted(unknown)}; allowed: {sorted(f.name for f in dataclasses.fields(self))}"
            )
        return dataclasses.replace(self, **changes)

    def last_calls(self, num_steps: Optional[int]) -> int:
        """How many final calls of a branch are always computed on a trajectory of ``num_steps``
        (``force_last_step``; the budget mode computes at least the last one)."""
        fl = self.force_last_step
        if isinstance(fl, float):
            n = _ratio_calls(fl, num_steps) if num_steps is not None else 1
        else:
            n = int(fl)  # True = 1, False = 0
        return max(1, n) if self.target_speedup is not None else n

    def budgets(self, num_steps: Optional[int]) -> bool:
        """Whether a trajectory of ``num_steps`` (None: unknown) runs the compute budget: ``target_speedup``, from
        ``target_min_steps`` steps on where that is set."""
        tm = self.target_min_steps
        return self.target_speedup is not None and (tm is None or (num_steps is not None and num_steps >= tm))

    def gamma_from_steps(self, num_steps: Optional[int], flow_matching: Optional[bool] = None) -> bool:
        """Whether γ is the step distance on a trajectory of ``num_steps`` (``gamma_source``); ``flow_matching``:
        whether the trajectory's scheduler is a flow-matching one (None: not known)."""
        if self.gamma_source == "auto":
            return num_steps is not None and (num_steps >= STEPS_GAMMA_MIN_STEPS or flow_matching is False)
        return self.gamma_source == "steps"

    def on_trajectory(self, num_steps: Optional[int], flow_matching: Optional[bool],
                      step_sizes: Optional[Sequence[float]] = None) -> "DiCacheConfig":
        """This config on a trajectory of ``num_steps`` whose scheduler is (``flow_matching``) a flow-matching one and
        takes steps of ``step_sizes`` (``|σ_k − σ_(k+1)|``, None: not told): itself, or
        * where ``gamma_source="auto"`` takes γ from the steps only because the scheduler is of the DDPM family (under
          ``STEPS_GAMMA_MIN_STEPS`` steps), the same with ``gamma_source="steps"``, so that every rule that follows
          γ's source (``plan_runs``, ``run_power``, ``alignment_order``, ``reconstruct_at``) follows it;
        * where final steps are forced and the last steps are negligible (:func:`negligible_final_steps`), the same
          forcing as many more."""
        cfg = self
        if self.gamma_source == "auto" and self.gamma_from_steps(num_steps) != self.gamma_from_steps(
                num_steps, flow_matching):
            cfg = _steps_gamma(self)
        if num_steps is not None and step_sizes is not None and len(step_sizes) == num_steps:
            extra, last = negligible_final_steps(step_sizes), cfg.last_calls(num_steps)
            if extra and last:
                cfg = _final_steps(cfg, min(num_steps, last + extra))
        return cfg

    def reconstructs_output(self, num_steps: Optional[int], flow_matching: Optional[bool] = None) -> bool:
        """Whether a reused call on a trajectory of ``num_steps`` rebuilds the model's output (``reconstruct_at``);
        ``flow_matching``: whether the trajectory's scheduler is a flow-matching one (None: not known)."""
        if self.reconstruct_at == "auto":
            return flow_matching is False and self.gamma_from_steps(num_steps, flow_matching)
        return self.reconstruct_at == "output"

    def plan_on_step_sizes(self) -> bool:
        """Whether a planned run reads its error on the step sizes ahead (``plan_error``; ``"auto"``: with a fixed
        δ, not in budget mode)."""
        return self.plan_error == "step_sizes" or (self.plan_error == "auto" and self.target_speedup is None)

    def plans_runs(self, num_steps: Optional[int]) -> bool:
        """Whether runs of reuses are planned on a trajectory of ``num_steps`` (``plan_runs``)."""
        return self.plan_runs is True or (self.plan_runs == "auto" and self.gamma_from_steps(num_steps))

    def run_power_at(self, num_steps: Optional[int]) -> float:
        """``run_power`` on a trajectory of ``num_steps`` (``"auto"``: the order of the reconstruction)."""
        if self.run_power != "auto":
            return float(self.run_power)
        whole = self.alignment_order == 2 or (self.alignment_order == "auto" and self.gamma_from_steps(num_steps))
        return 2.0 if whole else 1.0

    def max_extrapolation_at(self, num_steps: Optional[int]) -> Optional[float]:
        """``max_extrapolation`` on a trajectory of ``num_steps`` (``"auto"``: 1 where runs are planned on at least
        ``REACH_MIN_STEPS`` steps, or of an unknown count)."""
        if self.max_extrapolation != "auto":
            return self.max_extrapolation
        planned = self.plans_runs(num_steps) and (num_steps is None or num_steps >= REACH_MIN_STEPS)
        return 1.0 if planned else None

    def quad_balance_at(self, flow_matching: Optional[bool]) -> Optional[float]:
        """``quad_balance`` on a trajectory whose scheduler is (``flow_matching``) a flow-matching one (None: not
        known); ``"auto"``: None on a DDPM-family scheduler's, ``QUAD_BALANCE_AUTO`` on any other."""
        if self.quad_balance != "auto":
            return self.quad_balance
        return None if flow_matching is False else QUAD_BALANCE_AUTO

    def monotone_runs_at(self, num_steps: Optional[int]) -> bool:
        """Whether runs of reuses only shorten on a trajectory of ``num_steps`` (``monotone_runs``, where runs
        are planned)."""
        return self.monotone_runs and self.plans_runs(num_steps)

    def threshold_at(self, num_steps: Optional[int]) -> float:
        """δ at the start of a trajectory of ``num_steps`` (``threshold_end`` moves it from there): ``probe_threshold``
        where it is set and the probe decides each call, ``threshold`` elsewhere. Call it on the trajectory's config
        (:meth:`on_trajectory`), whose ``plan_runs`` follows γ's source."""
        if self.probe_threshold is not None and not self.plans_runs(num_steps):
            return float(self.probe_threshold)
        return float(self.threshold)

    def warmup_calls(self, num_steps: Optional[int]) -> int:
        """How many leading calls of a branch are always computed (at least 1)."""
        if isinstance(self.warmup, int) and not isinstance(self.warmup, bool):
            return max(1, self.warmup)
        if num_steps is None:
            return 1
        return max(1, _ratio_calls(self.warmup, num_steps))


@functools.lru_cache(maxsize=16)
def _steps_gamma(config: DiCacheConfig) -> DiCacheConfig:
    """``config`` with ``gamma_source="steps"`` (one copy per config: :meth:`DiCacheConfig.on_trajectory` runs at
    every call)."""
    return config.replace(gamma_source="steps")


@functools.lru_cache(maxsize=16)
def _final_steps(config: DiCacheConfig, calls: int) -> DiCacheConfig:
    """``config`` forcing its last ``calls`` calls (one copy per config and count, as :func:`_steps_gamma`)."""
    return config.replace(force_last_step=calls)


def negligible_final_steps(step_sizes: Sequence[float]) -> int:
    """How many of a trajectory's last steps each take under :data:`FINAL_STEP_RATIO` of the step before them, counted
    back from the last: ``force_last_step`` forces as many more calls, so that the step that denoises last is forced
    too (the last step of SD3's schedule, 0.0089 → 0, is a sixteenth of the one before it at 20 steps)."""
    k = len(step_sizes) - 1
    while k >= 1 and step_sizes[k] < FINAL_STEP_RATIO * step_sizes[k - 1]:
        k -= 1
    return len(step_sizes) - 1 - k


def _ratio_calls(ratio: float, num_steps: int) -> int:
    """``ceil(ratio·num_steps)``, with the product's rounding error ignored (0.05·20 is 1 call, not 2)."""
    return math.ceil(ratio * num_steps - 1e-9)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(cfg: DiCacheConfig, num_blocks: Optional[int] = None) -> None:
    """Raise ValueError/TypeError naming the bad argument and the allowed values."""
    if not _is_real(cfg.threshold) or not math.isfinite(cfg.threshold) or cfg.threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {cfg.threshold!r}")
    if not isinstance(cfg.probe_depth, int) or isinstance(cfg.probe_depth, bool) or cfg.probe_depth < 1:
        raise ValueError(f"probe_depth must be an int >= 1, got {cfg.probe_depth!r}")
    if num_blocks is not None and cfg.probe_depth >= num_blocks:
        raise ValueError(
            f"probe_depth must be between 1 and {num_blocks - 1} for this model ({num_blocks} blocks), "
            f"got {cfg.probe_depth}"
        )
    if isinstance(cfg.warmup, bool) or not _is_real(cfg.warmup):
        raise ValueError(f"warmup must be a ratio in [0, 1) or an int number of calls >= 0, got {cfg.warmup!r}")
    if isinstance(cfg.warmup, int):
        if cfg.warmup < 0:
            raise ValueError(f"warmup as an int number of calls must be >= 0, got {cfg.warmup}")
    elif not (0.0 <= cfg.warmup < 1.0):
        raise ValueError(f"warmup as a ratio must be in [0, 1), got {cfg.warmup!r}")
    gc = cfg.gamma_clip
    if (
        not isinstance(gc, tuple)
        or len(gc) != 2
        or not all(_is_real(g) and math.isfinite(g) for g in gc)
    ):
        raise ValueError(f"gamma_clip must be a pair (lo, hi) of finite numbers, got {gc!r}")
    if gc[0] > gc[1]:
        raise ValueError(f"gamma_clip must have lo <= hi, got {gc!r}")
    fl = cfg.force_last_step
    if not (isinstance(fl, bool) or (isinstance(fl, int) and fl >= 0)
            or (isinstance(fl, float) and 0.0 < fl < 1.0)):
        raise ValueError(
            f"force_last_step must be True, False, a step count ≥ 0 or a ratio in (0, 1) of the steps, got {fl!r}")
    if cfg.error not in ERRORS:
        raise ValueError(f"error must be one of {ERRORS}, got {cfg.error!r}")
    if cfg.batch_policy not in BATCH_POLICIES:
        raise ValueError(f"batch_policy must be one of {BATCH_POLICIES}, got {cfg.batch_policy!r}")
    cap = cfg.max_consecutive_reuse
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ValueError(f"max_consecutive_reuse must be None or an int >= 1, got {cap!r}")
    if cfg.cfg_decision not in CFG_DECISIONS:
        raise ValueError(f"cfg_decision must be one of {CFG_DECISIONS}, got {cfg.cfg_decision!r}")
    ao = cfg.alignment_order
    if not (ao == "auto" or (isinstance(ao, int) and not isinstance(ao, bool) and ao in (1, 2))):
        raise ValueError(f"alignment_order must be 1, 2 or 'auto', got {ao!r}")
    if cfg.gamma_source not in GAMMA_SOURCES:
        raise ValueError(f"gamma_source must be one of {GAMMA_SOURCES}, got {cfg.gamma_source!r}")
    qb = cfg.quad_balance
    if qb is not None and qb != "auto" and (not _is_real(qb) or not 0 < qb <= 1):
        raise ValueError(f"quad_balance must be None, a number in (0, 1] or 'auto', got {qb!r}")
    if cfg.reconstruct_at not in RECONSTRUCT_AT:
        raise ValueError(f"reconstruct_at must be one of {RECONSTRUCT_AT}, got {cfg.reconstruct_at!r}")
    rp = cfg.run_power
    if rp != "auto" and (not _is_real(rp) or not math.isfinite(rp) or rp < 0):
        raise ValueError(f"run_power must be a finite number >= 0 or 'auto', got {rp!r}")
    if not isinstance(cfg.predictive_skip, bool):
        raise ValueError(f"predictive_skip must be True or False, got {cfg.predictive_skip!r}")
    if not (isinstance(cfg.plan_runs, bool) or cfg.plan_runs == "auto"):
        raise ValueError(f"plan_runs must be True, False or 'auto', got {cfg.plan_runs!r}")
    if cfg.plan_error not in PLAN_ERRORS:
        raise ValueError(f"plan_error must be one of {PLAN_ERRORS}, got {cfg.plan_error!r}")
    mx = cfg.max_extrapolation
    if mx is not None and mx != "auto" and (not _is_real(mx) or not math.isfinite(mx) or mx <= 0):
        raise ValueError(f"max_extrapolation must be None, 'auto' or a finite number > 0, got {mx!r}")
    if not (isinstance(cfg.quad_reach, bool) or cfg.quad_reach == QUAD_REACH_SPACED):
        raise ValueError(f"quad_reach must be True, False or {QUAD_REACH_SPACED!r}, got {cfg.quad_reach!r}")
    blend = cfg.quad_reach_blend
    if not _is_real(blend) or not 0 <= blend <= 1:
        raise ValueError(f"quad_reach_blend must be a number in [0, 1], got {blend!r}")
    if not isinstance(cfg.monotone_runs, bool):
        raise ValueError(f"monotone_runs must be True or False, got {cfg.monotone_runs!r}")
    sp = cfg.span_power
    if sp != "measured" and (not _is_real(sp) or not SPAN_POWER_MIN <= sp <= 1):
        raise ValueError(f"span_power must be a number in [{SPAN_POWER_MIN}, 1] or 'measured', got {sp!r}")
    hs = cfg.hindsight
    if not _is_real(hs) or not 0 <= hs <= 1:
        raise ValueError(f"hindsight must be a share in [0, 1], got {hs!r}")
    te = cfg.threshold_end
    if te is not None and (not _is_real(te) or not math.isfinite(te) or te < 0):
        raise ValueError(f"threshold_end must be None or a finite number >= 0, got {te!r}")
    pt = cfg.probe_threshold
    if pt is not None and (not _is_real(pt) or not math.isfinite(pt) or pt < 0):
        raise ValueError(f"probe_threshold must be None or a finite number >= 0, got {pt!r}")
    sz = cfg.step_size_power
    if not _is_real(sz) or not 0 <= sz <= 2:
        raise ValueError(f"step_size_power must be a number in [0, 2], got {sz!r}")
    ts = cfg.target_speedup
    if ts is not None and (not _is_real(ts) or not math.isfinite(ts) or ts <= 1):
        raise ValueError(f"target_speedup must be None or a finite number > 1, got {ts!r}")
    tm = cfg.target_min_steps
    if tm is not None and (not isinstance(tm, int) or isinstance(tm, bool) or tm < 1):
        raise ValueError(f"target_min_steps must be None or an int >= 1, got {tm!r}")
    n = cfg.num_inference_steps
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"num_inference_steps must be None or an int >= 1, got {n!r}")


# The authors' settings (see the method doc), per model family. The Wan
# threshold is the reference code's value (0.08); the paper says 0.2.
PAPER_PRESETS: Dict[str, DiCacheConfig] = {
    "flux": DiCacheConfig(threshold=0.4, probe_depth=1, warmup=0.2, gamma_clip=(1.0, 1.5), force_last_step=True),
    "hunyuan_video": DiCacheConfig(threshold=0.1, probe_depth=1, warmup=0.2, gamma_clip=(1.0, 1.5)),
    "wan": DiCacheConfig(threshold=0.08, probe_depth=1, warmup=0.2, gamma_clip=(1.0, 2.0)),
}

# Ours, chosen from the study in benchmarks/RESULTS.md ("Beyond the paper"): the same rule on every
# family, on top of the authors' γ clip:
# * a warm-up of 5% of the steps, not 20% (1 call at 20 steps, 2 at 30, 3 at 50: the freed budget buys more
#   refreshes later, where the trajectory bends; 3 is the fewest the quadratic needs where runs are planned);
# * the j-th reuse in a row only while the accumulated error is under δ/j^p (``run_power="auto"``: p the order of
#   the reconstruction, 1 for the line bent by the probe's fit, 2 where the quadratic is taken whole) instead
#   of a fixed cap: single reuses between computed calls cost far less than runs, and runs stay short where
#   the probe moves;
# * the last 4% of the steps always computed (``force_last_step=0.04``: the last one at 20 steps, the last two
#   at 30 and 50): their errors are never corrected by a later step, and a single skip costs most there (fixed
#   skip patterns on Flux 20, Wan 20 and Wan 50: skipping either of the last two steps alone costs 3–16 dB more
#   than the costliest earlier single skip measured). Both forced phases scale with the steps: at 20 steps two
#   forced calls more at each end are a fifth of the calls, half of a 2.5× budget (``benchmarks/run_options.py``
#   on Wan 20 with one forced call at each end: 27.1 dB at 2.77× fewer flops, where two at each end gave 26.1 dB
#   at 2.46×);
# * one decision per CFG step, the uncond branch following the cond branch without a probe of its own;
# * ``alignment_order="auto"``: the line bent towards the quadratic through three stored residuals as far as
#   the probe says the trajectory bends (one more pair of stored image-token tensors per branch);
# * ``gamma_source="auto"``: from 25 steps on, γ is the step distance and the quadratic is taken whole (at
#   50 steps +2.8 dB on Flux and +1.4 dB on Wan at 2× against the probe's γ; at 20 steps the probe's γ wins
#   by 5.3 and 1.7 dB; with the runs planned on the steps, as this rule now plans them, at 20 steps: Flux −0.1 and
#   Wan +1.2 dB at 2×, 1 to 3 dB under the probe's γ from 2.2× on). On a DDPM-family scheduler's trajectory at
#   every step count: on ``cogvideox_digits`` at 20 steps the probe does not see what an early run of two skips costs (two samples
#   fall to 17 dB); the planned runs on the steps with the output rebuilt gain, interpolated at 2 / 2.25 / 2.5 /
#   2.75× on seeds 0–3, +5.7 / +2.7 / +4.0 / +1.6 dB pooled with the rule's δ and +4.6 / +2.7 / +0.9 / +2.7 with
#   the budget's first call (seeds 4–5: +1.0 to +4.8 and +1.3 to +3.5), and at 10 steps +1.8 and +2.1 dB at 1.7×
#   and 2×; on the unshipped DDPM Wan (benchmarks/ddpm_wan.py) +2.4 / +0.5 / +0.1 dB at 2 / 2.25 / 2.5× at 20 steps
#   (benchmarks/RESULTS.md, twenty-eighth round);
# * ``quad_balance="auto"`` (0.5 on flow-matching trajectories): the line, not the quadratic, through the warm-up's close pair and a far entry
#   (``FF__F___F…``: steps 0, 1, 4; 20 flow-matching steps take γ from the probe, and at 50 the three warm-up calls
#   and the reach bound never leave such entries). On the uncached trajectories of the three shipped models the quadratic through
#   such entries misses the deep residual of the next steps 1.4–4× more than the line in the first third of the
#   steps (benchmarks/extrapolation_error.py). Against the quadratic there, at 2–3× fewer flops on seeds 0–3 and
#   4–5 (pooled / mean of the samples): Flux at 28 steps +2.5 to +5.3 / +2.1 to +4.4 dB from 2.25× on, the held-out
#   model at 30 steps +0.9 to +2.6 / −0.1 to +1.3; Flux and Wan at 30 steps mixed (Flux 2.25×: −2.5 and −3.2 /
#   −1.4 and −1.3; Wan 2×: −3.8 and −1.9 / −3.1 and −2.8; Wan from 2.25×: +2.3 to +5.7 pooled on seeds 0–3);
#   over the 40 points at 28–30 steps +1.2 dB on average pooled, +0.7 on the mean of the samples
#   (benchmarks/RESULTS.md, twenty-third round). ``quad_balance="auto"`` asks it on flow-matching trajectories
#   only: on a DDPM-family scheduler's trajectory (γ from the steps at every step count there) the quadratic through
#   any three entries raised the preset's points within 0.5 dB of DiCache's best at 20 steps on four of five
#   readings (three DDIM-trained models; the shipped ``cogvideox_digits`` on seeds 0–3 lost two pooled: its
#   every-third-step pattern ``FF__F__F__…`` loses 0.3–0.75 dB on the mean of the samples on three of the four
#   CogVideoX readings, gains 2.2 on the DDIM Wan) and the online budget by 0.8–2.4 dB pooled at 2.25–2.75× on all
#   five, and at 30 steps scored higher at five of six points (up to +4.1 dB); at 50 steps no preset run puts a
#   skip after unbalanced entries (benchmarks/RESULTS.md, thirty-first round);
# * ``reconstruct_at="auto"``: a skip rebuilds the model's output (its ``proj_out``), not the deep blocks', where γ comes
#   from the steps on a DDPM-family scheduler's trajectory (CogVideoX's DDIM): on ``cogvideox_digits`` at 50 steps
#   the preset gained 0 to 3.1 dB pooled at 2–3× on seeds 0–3 (0.2 to 1.9 on seeds 4–5), where TaylorSeer-Lite, which
#   extrapolates that output, had led; on the flow-matching models it was level but on Wan (−2.4 dB at 2×), so they
#   keep the blocks. Chosen on that model; Wan's transformer trained on DDIM (benchmarks/ddpm_wan.py) leans the same
#   way: +0.4 to +1.4 dB at three of four fixed patterns, −0.9 at the fourth (benchmarks/RESULTS.md, twenty-seventh
#   round);
# * ``plan_runs="auto"``, ``max_extrapolation="auto"``: where γ comes from the steps, the skipped calls run no
#   probe (the computed calls' probes plan each run), and from 45 steps on runs grow by at most one call per
#   refresh (at 30 and 40 steps the bound cost more than it saved; twenty-first round);
# * ``monotone_runs=True``: where runs are planned, once they shorten they never lengthen again (each run is
#   planned on the error measured over the run before it, and a longer run measures less per step, so the plan
#   alternated: ``…F__F___F__F…``; sorted into shortening order, the same runs scored higher at 6 of 7 places);
# * ``span_power="measured"``: the budget's replay plans its runs at ``e·j^α``, α read off the trajectories it
#   replays where their probe's change grows as a random walk's (a sampler that adds noise at every step); on
#   CogVideoX-5b's ``CogVideoXDPMScheduler`` the 2× replay at 20 steps rose from 11.2 / 10.7 to 14.6 / 14.6 dB pooled
#   (seeds 0–3 / 4–5), and on CogVideoX's ancestral ``DDPMScheduler`` by 0.3–2.1 dB at 2–2.5×; on every
#   deterministic sampler measured α reads as a drift (1) and nothing changes (thirty-third round);
# * ``plan_error="auto"``: with a fixed δ, a planned run predicts its error from the scheduler's step sizes ahead,
#   not from the count of steps (the steps of a flow-matching schedule grow towards its end: 2.5× over 50 steps on
#   Flux, 9× on Wan, 43× on the held-out model). Against the count, interpolated at 2–3× fewer flops on seeds 0–3:
#   at 50 steps +0.9 dB at Flux 2×, +0.7 to +2.1 on the held-out model at 2–2.5×, nowhere below −0.3; at 30 steps
#   up to +0.9 (pooled) and +2.1 (mean of the samples) on the held-out model, level on Flux and Wan. On seeds 4–5
#   the gains at 2–2.5× repeat; its losses at 3× (Wan −1.3, held-out −1.1) are one δ of the count's list landing
#   on a call pattern of the same cost that none of its own δ values hits (the two rules make the same patterns,
#   at shifted δ). In budget mode the count of steps: the replay's plan on the step sizes lost 2.2–3.6 dB on Wan
#   50 at 2.25–3× (benchmarks/RESULTS.md, seventeenth round);
# * ``predictive_skip=True``: where the probe decides every call (below 25 steps) a skip right after a probed
#   skip runs no probe while the last increment says the error stays under δ (at 20 steps, against the same
#   preset without it on the same δ values: +0.4 / +1.3 / +0.8 dB on Flux at 2× / 2.25× / 2.5×, +0.6 on Wan at
#   2×); where runs are planned it has no effect;
# * δ set so that ``dicache.enable(pipe)`` saves about 2× on the shipped models and sits near the front of every
#   DiCache setting measured. Flux: the authors' 0.4 (0.3 until the twenty-second round: 1.75–1.9× at 28 and 30
#   steps, FLUX.1's own step counts, under the front at 30, where 0.4 saves 2.15× and 2.30×, at 30 steps 2.2 dB
#   higher pooled; at 50 steps 2.49× at the PSNR 0.3 gives at 2.38×, at 40 steps 2.49× 1.0 dB under 0.3's 2.35×;
#   at 20 steps 2.36× for 2.35×, 1.0 dB lower on seeds 0–3; benchmarks/RESULTS.md, twenty-second round). Wan: 0.16
#   where runs are planned (2.07× at 50 steps, 1.76× at 30, on the front at both), 0.26 where the probe decides
#   (``probe_threshold``): at 20 steps 0.16 saved 1.71× at 35.1 dB pooled, 1.8 under the front, and 0.26 saves 2.04×
#   at 34.8, on the front on the shipped Wan (seeds 0–3 and 0–5) and on the Wan trained from seed 1
#   (benchmarks/RESULTS.md, forty-sixth round).
# * ``hindsight=0.5``: the computed call that ends a run adds back half of what the run missed (where the probe sets
#   γ, a quarter: ``HINDSIGHT_PROBE_FACTOR``). At 50 steps, seeds 0–3, against the same δ without it: +0.35 to +2.1 dB
#   pooled at all 12 points measured on the shipped Flux, Wan, HunyuanVideo and SD3 models at 2–2.9× fewer flops, and
#   +1.7 to +6.5 at all 12 on siblings of them trained smooth in the timestep (``benchmarks/smooth_time.py``), where
#   the whole miss lost up to 3.9 dB on SD3 and three quarters of it 1.1; at 30 steps +0.4 to +2.2 at all 8 shipped
#   points and +3.5 to +6.1 at the 4 smooth ones (benchmarks/RESULTS.md, forty-second round). At 20 steps (the
#   probe's γ), a quarter: Flux +1.9 to +2.1, Wan +0.2 to +0.4, HunyuanVideo +0.55 to +0.9, SD3 −0.0 to −0.3 at three
#   δ each from 1.7× to 2.9×; a half: up to +3.9 on Flux, −0.5 to −1.0 on SD3 (forty-third round).
# * ``step_size_power=0.5``: where the probe decides each call (below 25 steps on flow-matching schedules), δ at a
#   call times √(median step size / its step size). At 20 steps, against 0 on the same δ lists (seeds 0–3, pooled,
#   interpolated at 2–3×): Flux −0.4 to +2.3 dB, SD3 +0.1 to +5.4, HunyuanVideo −0.1 to +1.3, Wan −0.4 to +0.4
#   (+0.0 to +3.3 on the mean of the samples); a power of 1 lost 3.3 and 1.9 dB against it on Wan at 2.5× and 2.75×
#   (benchmarks/RESULTS.md, forty-fourth round).
# * ``quad_reach="spaced"``, ``quad_reach_blend=0.5``: where the quadratic is taken whole, a call further past the
#   newest of three entries than their shorter spacing (entries 4, 7, 11: from step 15; not through the warm-up's
#   neighbouring pair) takes the line plus half the quadratic's correction. On the δ lists at 2–3× (66 points:
#   Flux, Wan, HunyuanVideo, SD3 at 50 steps, Flux, Wan, HunyuanVideo at 30, CogVideoX at 20 and 50, held-out seeds
#   and models trained again) against without: 45 level, 11 within 0.1–0.4 dB, 9 up 0.5–0.9 (Wan 50 at 2.5–3×, Flux
#   50 seeds 4–5 at 2.75–3×), one −0.5 that the δ lists' difference makes (the same δ scores the same); at 30 steps
#   and CogVideoX 20 nothing moves. The budgets (2, 2.5, 3× on Wan, Flux, SD3 and CogVideoX at 50 steps) compute the
#   same calls and rise by up to 1.0 dB (Wan 2.5× first call; 3×: +0.6 replay, +0.7 first call) (benchmarks/RESULTS.md,
#   fifty-fourth round).
_RULE = dict(warmup=0.05, run_power="auto", force_last_step=0.04, cfg_decision="shared", alignment_order="auto",
             gamma_source="auto", quad_balance="auto", quad_reach="spaced", quad_reach_blend=0.5,
             reconstruct_at="auto", plan_runs="auto", plan_error="auto", max_extrapolation="auto",
             monotone_runs=True, predictive_skip=True, span_power="measured", hindsight=0.5, step_size_power=0.5)
PRESETS: Dict[str, DiCacheConfig] = {
    "flux": PAPER_PRESETS["flux"].replace(threshold=0.4, **_RULE),
    "hunyuan_video": PAPER_PRESETS["hunyuan_video"].replace(threshold=0.2, **_RULE),
    "wan": PAPER_PRESETS["wan"].replace(threshold=0.16, probe_threshold=0.26, **_RULE),
}
#: ``DiCacheConfig()``: the method as published (m = 1, a 20 % warm-up, each CFG branch deciding alone, δ = 0.1).
DEFAULT = DiCacheConfig()

# A model family without a preset (SD3, Qwen-Image, CogVideoX, …, or an adapter of your own): the presets' rule.
# Its δ does not carry over from one model to another (about 2× fewer flops take δ = 0.4 on Flux, 0.16 on Wan, 0.45
# on the held-out HunyuanVideo model), so from 20 steps on, the fewest the study measured, the compute budget at 2×
# takes its place. Read as the default on the reports of the shipped and held-out models at 20–50 steps, its first
# call saved 1.98–2.09× fewer flops and sat within 0.5 dB of DiCache's front at its savings at 7 of 10 models and
# step counts (4 of 10 on the mean of the samples' PSNR), where one δ for all, 0.2, saved 1.73–2.26× and sat there at
# 4 of 9 (4 of 9), and the presets' own δ, chosen on those models, at 7 of 10 (6 of 10) (benchmarks/RESULTS.md,
# twenty-fifth round). Below 20 steps, or where nothing tells the step count, the rule at δ = 0.2 (the HunyuanVideo
# preset's value): at 4 and 8 steps a 2× budget fell to 14–37 dB on the four zoo models (SD3 14 and 16), where the
# rule at δ = 0.2 backed off to 1.0–1.8× at 26–44 dB (SD3 28 and 29); at 16 steps the two were level on SD3 and the
# held-out model (benchmarks/run_options.py, seeds 0–1). With a δ option, the rule at that δ.
GENERIC = PAPER_PRESETS["flux"].replace(threshold=0.2, **_RULE)
GENERIC_BUDGET = GENERIC.replace(target_speedup=2.0, target_min_steps=20)
#: Options that set a fixed δ: given with no config, a family without a preset takes :data:`GENERIC`, no budget.
THRESHOLD_OPTIONS = frozenset({"threshold", "threshold_end", "max_consecutive_reuse"})
#: Options that set δ itself: given without ``probe_threshold``, they clear the preset's.
DELTA_OPTIONS = frozenset({"threshold", "threshold_end"})


def preset(family: Optional[str], paper: bool = False, budget: bool = True) -> DiCacheConfig:
    """The preset of a model family (``paper=True``: the authors' settings; :data:`DEFAULT` for other families).

    A family without a preset gets :data:`GENERIC_BUDGET` (``budget=False``: :data:`GENERIC`).
    """
    if paper:
        return PAPER_PRESETS.get(family or "", DEFAULT)
    if family in PRESETS:
        return PRESETS[family]
    return GENERIC_BUDGET if budget else GENERIC


def resolve(family: Optional[str], config: Optional[DiCacheConfig], options: Dict[str, Any]) -> DiCacheConfig:
    """Options override ``config``, which overrides the family preset (a family without one budgets its calls
    unless ``options`` set a δ, and a δ among them clears the preset's ``probe_threshold``; a ``target_speedup``
    among them applies at every step count unless they also set ``target_min_steps``)."""
    if config is not None and not isinstance(config, DiCacheConfig):
        raise TypeError(f"config must be a dicache.DiCacheConfig, got {type(config).__name__}")
    budget = not THRESHOLD_OPTIONS.intersection(options)
    base = config if config is not None else preset(family, budget=budget)
    if base.probe_threshold is not None and DELTA_OPTIONS.intersection(options) and "probe_threshold" not in options:
        base = base.replace(probe_threshold=None)  # a δ asked for applies where the probe decides too
    if config is None and "target_speedup" in options and "target_min_steps" not in options:
        base = base.replace(target_min_steps=None)  # a budget asked for applies at every step count
    return base.replace(**options) if options else base
