"""The compute-budget mode (``target_speedup``): which calls to compute so that a trajectory saves its target.

:class:`Budget` turns a target speedup into a budget of computed calls per branch and decides, call by call or
run by run, where to spend it: by replaying the error profile of earlier trajectories of the same step count, or,
on a first trajectory, online from the errors measured so far and the scheduler's step sizes. It reads the
branch's state (:mod:`dicache.state`) and answers the engine (:mod:`dicache.engine`) with a threshold or a skip;
it runs no kernel.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .config import SPAN_POWER_MIN, DiCacheConfig
from .state import (FOLLOW, PLANNED, PREDICTED, REFRESH, REUSE, REUSE_ONE, BranchState, at_shorten_bound,
                    next_shortening, planned_error, span_power)


def check_profiles(records: Any, blocks: Optional[int], config: Optional[DiCacheConfig] = None
                   ) -> List[Dict[str, Any]]:
    """``budget_profiles`` as :meth:`Budget.export_profiles` writes them (after a JSON round trip too), normalised:
    ``[{"branch", "steps", "blocks", "probe_depth", "error", "trajectories", "power", "increments": [[step,
    increment], …]}, …]``. Raises TypeError or ValueError naming what is wrong; ``blocks``, ``config``: the model's
    block count and the settings whose probe error they must have been measured with (None: any)."""
    what = "budget_profiles (the records of dicache.summary(pipe).budget_profiles)"
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence):
        raise TypeError(f"{what} must be a list of dicts, got {type(records).__name__}")
    out, seen = [], set()
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise TypeError(f"{what}: record {i} must be a dict, got {type(r).__name__}")
        missing = {"branch", "steps", "blocks", "probe_depth", "error", "trajectories", "power", "increments"} - set(r)
        if missing:
            raise ValueError(f"{what}: record {i} lacks {sorted(missing)}")
        branch, n, m, k, power = r["branch"], r["steps"], r["blocks"], r["trajectories"], r["power"]
        if not isinstance(branch, str) or not branch:
            raise ValueError(f"{what}: record {i}: branch must be a non-empty str, got {branch!r}")
        for name, v, lo in (("steps", n, 2), ("blocks", m, 2), ("probe_depth", r["probe_depth"], 1),
                            ("trajectories", k, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{what}: record {i}: {name} must be an int >= {lo}, got {v!r}")
        if blocks is not None and m != blocks:
            raise ValueError(f"{what}: record {i} was measured on a model of {m} blocks; this one has {blocks}")
        if config is not None and (r["probe_depth"], r["error"]) != (config.probe_depth, config.error):
            raise ValueError(f"{what}: record {i} was measured with probe_depth={r['probe_depth']!r}, "
                             f"error={r['error']!r}; this cache runs probe_depth={config.probe_depth}, "
                             f"error={config.error!r}, whose probe errors are another measure")
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not SPAN_POWER_MIN <= power <= 1:
            raise ValueError(f"{what}: record {i}: power must be a number in [{SPAN_POWER_MIN}, 1], got {power!r}")
        incs = {}
        for pair in r["increments"] if isinstance(r["increments"], Sequence) else [None]:
            ok = isinstance(pair, Sequence) and len(pair) == 2 and isinstance(pair[0], int) and \
                not isinstance(pair[0], bool) and 0 <= pair[0] < n and isinstance(pair[1], (int, float)) and \
                math.isfinite(pair[1]) and pair[1] >= 0
            if not ok or pair[0] in incs:
                raise ValueError(f"{what}: record {i}: increments must be distinct [step, increment] pairs, "
                                 f"0 <= step < {n}, increment finite and >= 0; got {pair!r}")
            incs[pair[0]] = float(pair[1])
        if len(incs) < n // 2:  # as a trajectory's profile is kept (Budget.remember)
            raise ValueError(f"{what}: record {i} has {len(incs)} increments; a profile of {n} steps has at "
                             f"least {n // 2}")
        if (branch, n) in seen:
            raise ValueError(f"{what}: two records of branch {branch!r} at {n} steps")
        seen.add((branch, n))
        out.append({"branch": branch, "steps": n, "blocks": m, "probe_depth": r["probe_depth"], "error": r["error"],
                    "trajectories": k, "power": float(power), "increments": sorted(incs.items())})
    return out


def _need_steps(n: Optional[int]) -> None:
    """The compute budget is counted in calls of the trajectory: without its step count there is none."""
    if n is None:
        raise RuntimeError(
            "target_speedup needs the number of steps: enable DiCache on the pipeline, pass "
            "num_inference_steps to cache_context, set num_inference_steps in the config, or decide on a fixed δ "
            "(threshold=…) instead"
        )


#: Where in the range of δ that computes the budget's count of calls the replay rule picks its δ (0: the
#: smallest, 1: the largest, in log scale). δ values with the same count place their computed calls
#: differently; the smaller refresh as soon as the error allows, and on the shipped models the smaller δ
#: of a same-count pair of fixed-δ runs scored as well or better in 3 of 4 pairs on four seeds (Flux 20,
#: Flux 50, Wan 20 at 2.9–3×: +0.9 to +1.7 dB; the fourth, Wan 50 at 2.26×, −1.7 dB on the pooled PSNR and
#: level on the mean of the samples' PSNR; benchmarks/RESULTS.md, ninth round). A quarter of the way up
#: rather than the edge keeps a margin against a trajectory whose errors run a little above the profile's
#: (the edge would tip it into one call more).
REPLAY_DELTA_POSITION = 0.25

#: The online rule where runs are planned (``plan_runs``) and the step sizes are not told: how many per-step error
#: increments measured after the warm-up it needs before it solves δ from them (before that its runs are even),
#: and the most it lets them grow over a whole trajectory when it extrapolates them (``ONLINE_MAX_GROWTH ** (1/N)``
#: per step for N steps: on the shipped models at 50 steps the measured growth stays under 1.04 per step after the
#: first runs, 7× over 50 steps; a jump in the error is not read as a growth that would keep the budget for the
#: end). On the shipped models at 50 steps, four seeds, this rule is within 0.5 dB of the fixed δ at 6 / 4 of the 8
#: budget targets (PSNR over all samples / mean of the samples' PSNR) where even runs throughout were at 3 / 1
#: (benchmarks/RESULTS.md, tenth round).
ONLINE_MIN_INCREMENTS = 4
ONLINE_MAX_GROWTH = 10.0
#: Where in its δ range the online rule picks δ (as :data:`REPLAY_DELTA_POSITION`): the smallest, refreshing as
#: soon as the error allows. It solves again at each run with the errors measured since, so it needs no margin
#: against errors above the profile. On the shipped models at 50 steps, seeds 0–1, it matched a quarter of the
#: way up at five of eight targets and beat it at three (the mean of the samples' PSNR: Flux 2.5× 58.6 against
#: 54.2 dB, Flux 3× 55.8 against 54.5, Wan 3× 47.7 against 47.2), where the quarter's δ put a run of three
#: just before the final steps.
ONLINE_DELTA_POSITION = 0.0
#: Where the probe decides each call, the online rule on the step sizes predicts the errors to come as ``c·size^p``
#: with this p (:meth:`Budget.online_profile`). A call's error grows more slowly than its step where the steps span
#: much (on the shipped models at 20 steps the least-squares p is 1.04 on Flux and 1.10 on Wan, whose steps span 2.4×
#: and 8.1×, 0.80 on HunyuanVideo and 0.12 on SD3, 36× and 16×: ``benchmarks/step_sizes.py``), and at p = 1 the first
#: call kept too much of the budget for the last, largest steps: at 2.5× and 3× on HunyuanVideo it opened on six or
#: seven skips and missed the fixed δ by 2.6 and 1.8 dB pooled. With 0.85 the first call is within 0.5 dB of the fixed
#: δ at 15 of the 15 targets of the four flow-matching models at 20 steps (was 12) and at 18 of 23 on six siblings
#: trained again (was 15). Where runs are planned it stays 1: there 0.85 lost 3.0 and 3.9 dB at 2.5× and 3× on
#: HunyuanVideo at 50 steps (benchmarks/RESULTS.md, forty-eighth round).
ONLINE_SIZE_EXPONENT = 0.85


#: Where runs are planned, a call right after a computed one is skipped when computing it would put the trajectory
#: this many computed calls ahead of spending the budget evenly (:meth:`Budget.plan_skip`). A plan reads each run's
#: error from the per-step error its computed call measured; where a sampler adds noise at every step (CogVideoX-5b's
#: ``CogVideoXDPMScheduler``) that error measured over one step reads 1.4–1.5 times what it reads over two (1.2–1.3
#: on DDIM), so once two calls are computed in a row every later one is too, and the budget runs out with the final
#: steps left to skip (``FFFFFFFFFFFFF______F`` at 20 steps and 1.5×). One call ahead is the ordinary lead of a
#: computed call over even spending; two are more than any run's phase explains. Of the reports' budget runs it
#: changes the replay at 1.5× only, on the DDPM-family trajectories: +1.3 to +12.5 dB pooled on that sampler, −1.6
#: to +1.5 on the DDIM-trained models at 50 steps (benchmarks/RESULTS.md, thirty-second round).
AHEAD_LIMIT = 2.0

#: Where runs are planned at a ``span_power`` under 1 (a probe that takes a random walk: a sampler that adds noise at
#: every step), the run of skips that ends at the forced final steps skips at most this many calls
#: (:meth:`Budget.plan_skip`; the simulations δ is solved on plan with it too, so δ spends the budget around it). A
#: run's error read as ``e·j^α`` with α under 1 grows slowly with its length, so even runs leave the last one, whose
#: error no later step corrects, as long as any: on CogVideoX-5b's ``CogVideoXDPMScheduler`` at 20 steps and 2.5× the
#: replay ran ``FF__F__F__F__F__F__F`` at 11.7 dB pooled where ``FF___F__F__F__F__F_F`` scores 15.6; with the bound
#: it scores 15.0 / 14.8 on the two seed sets, at 3× 14.1 / 14.2 (was 11.6 / 12.2). On the deterministic samplers
#: (α = 1) the bound gained and lost (−3.6 to +6.5 dB pooled; the lead at Wan 50 3× fell under 1 dB), so it is not
#: used there (benchmarks/RESULTS.md, thirty-fourth round).
FINAL_RUN = 1


def overruns_final(k: int, n: int, last: int, run: int, final_run: int) -> bool:
    """Whether skipping the call at step ``k``, ``run`` calls into a run, would make the run that ends at the ``last``
    forced final steps of ``n`` skip more than ``final_run`` calls."""
    return k == n - last - 1 and run >= final_run


def cut_before_final(k: int, n: int, last: int, run: int, next_computed: Callable[[], bool]) -> bool:
    """Whether the call at step ``k``, ``run`` calls into a run of more than :data:`FINAL_RUN` skips, is computed
    rather than skipped because skipping it would lengthen the run only for the call before the ``last`` forced final
    steps of ``n`` to be computed (``next_computed``: whether it would be, the run one call longer): ``F___FF`` where
    ``F__F_F`` computes as many calls and leaves the shorter run for the end (``F__FF`` stays: its runs are no longer
    than ``F_F_F``'s)."""
    return k == n - last - 2 and run > FINAL_RUN and next_computed()


class Budget:
    """``target_speedup`` mode: spend a budget of computed calls where the probe error grows fastest.

    With M blocks and a probe of m, a trajectory of N calls runs ``F·M + (N−F)·m``
    block evaluations for F computed calls; the target ``M·N/s`` gives the budget
    ``F = N·(M/s − m)/(M − m)`` (with ``cfg_decision="shared"`` a follower's skipped call costs
    nothing, so ``m`` is shared by the branches; a skip that runs no probe, ``predictive_skip``, adds
    ``m/(M − m)`` to F). The final steps of ``force_last_step`` (at least the last) are always computed.

    Every call is probed (a predicted skip's error is measured by the next probe), so a trajectory measures
    its whole per-step error profile. Two rules:

    * **Replay** (a branch that finished a trajectory of the same step count before): δ is solved
      from the mean error profile of those trajectories, as the δ with which the fixed-δ rule
      (``run_power`` included) would have computed as many calls as the budget allows (a quarter of the
      way up, in log scale, the δ range that does: :data:`REPLAY_DELTA_POSITION`; the probes its predictive
      skips would save are credited to the budget, as in the run), and the call is decided by the fixed-δ
      rule with it.
      Refreshes then land where a hand-tuned δ would put them: where the accumulated error grows
      fastest. The mean settles as calls accumulate, and δ with it.
    * **Online, on the step sizes** (no profile yet, the pipeline's scheduler told the step sizes
      ``|σ_k − σ_(k+1)|``: :meth:`DiCacheEngine.set_step_sizes`): a call's probe error grows with the step its
      output takes (on the shipped models at 20 steps the measured increments stay within 1.07–2.4 times the step
      size while the step sizes span 2.4–36×: ``benchmarks/step_sizes.py``), so from the first measured error on
      the rule predicts the calls to come as ``c · size_k^p`` (``c`` the errors measured over their steps' sizes
      to that power, p = :data:`ONLINE_SIZE_EXPONENT`: the errors grow more slowly than steps that span much) and
      decides each call as the replay does, δ solved on that profile from the current call on
      (:meth:`online_profile`). ``c`` is read off the calls after the warm-up once one is measured: the first
      steps' errors run 2–4 times the middle's ratio to the size. Where runs are planned the same prediction,
      at p = 1, feeds the plan at each run start (below).
    * **Online** (no profile yet, no step sizes): before each decided call ``δ = e · S / F_left``:
      ``e`` the per-call probe error expected from here on (the larger of the mean so far and the
      last one: the error of a denoising trajectory grows towards the end, and a budget spent at the
      mean rate runs out before it), ``S`` the calls left to decide and ``F_left`` the computed calls
      left in the budget, so that refreshes (one each time the accumulated error reaches δ) spend the
      budget evenly in *error* rather than in steps. Runs of reuses are kept between the floor and the
      ceiling of the even spacing the budget left allows (:meth:`run_bounds`). Before any error is measured
      (a warm-up of one call) a decided call skips, unless its own probe error is not finite.

    Where runs are planned (``plan_runs``) only the computed calls probe, a skip runs no block and the budget
    is ``F = N/s``; the same two rules decide at each planned call (:meth:`plan_skip`): replay through the
    fixed-δ plan (:meth:`_simulate_plan`); online, at the start of each run, through the fixed-δ plan with δ
    solved as the replay's on the profile measured so far and predicted (:meth:`online_profile`): from the step
    sizes when they are told (as above), else by even spacing until the computed calls have measured
    :data:`ONLINE_MIN_INCREMENTS` per-step errors after the warm-up and then from the last increment at the growth
    per step the measured ones show since the smallest of them (:meth:`growth`): the error of a denoising trajectory
    grows towards its end, and runs shorten there as a replay's would.

    Either way the budget is a hard bound: when it is spent every call left reuses (the final steps
    excepted), and when the calls left are no more than the budget left (rounded to the nearest call)
    every one is computed. Where runs are planned, a call right after a computed one is skipped when computing it
    would put the trajectory :data:`AHEAD_LIMIT` calls ahead of spending the budget evenly (:meth:`ahead`), and the
    run that ends at the forced final steps skips at most :data:`FINAL_RUN` calls (:meth:`at_final_run`; both rules'
    simulations plan with it).
    """

    def __init__(self, config: DiCacheConfig, num_blocks: int, replay: bool = True):
        self.config = config
        self.M = num_blocks
        self.replay = replay  # False: no profile is kept, every call is decided by the online rule
        # (branch, N) -> step -> the mean increment over the finished trajectories, and how many there were
        self.profiles: Dict[Tuple[str, int], Dict[int, float]] = {}
        self._seen: Dict[Tuple[str, int], int] = {}
        self._solved: Dict[Tuple[str, int], float] = {}  # (branch, N) -> δ of the replay, per trajectory
        self.powers: Dict[Tuple[str, int], float] = {}  # (branch, N) -> the mean span_power of the profile's runs
        self.step_sizes: Optional[List[float]] = None  # |σ_k − σ_(k+1)| of the trajectory, when the pipeline tells
        self._scales: Optional[Tuple[List[float], List[float]]] = None  # (step_sizes, size_scales) last computed

    def _skip_blocks(self, branches: int) -> float:
        """Blocks a probed skip costs a branch: the probe, shared by the branches with ``cfg_decision="shared"``
        (one probe per skipped step: a follower of a reusing leader runs none)."""
        m = self.config.probe_depth
        return m / max(1, branches) if self.config.cfg_decision == "shared" else m

    def _probe_credit(self, branches: int) -> float:
        """Computed calls one skip without a probe (``predictive_skip``) buys: the budget ``F`` solves
        ``F·M + (N − F − P)·m = M·N/s`` with P such skips, so each adds ``m/(M − m)``."""
        m = self._skip_blocks(branches)
        return m / (self.M - m)

    def budget(self, n: int, branches: int = 1, planned: bool = False) -> float:
        """Computed calls per branch for ``n`` calls; a follower that runs no probe costs nothing skipped, nor
        does a planned skip (``planned``)."""
        s = self.config.target_speedup
        if planned:
            return n / s
        m = self._skip_blocks(branches)
        return max(0.0, n * (self.M / s - m) / (self.M - m))

    def ahead(self, calls: int, steps: int, n: int, branches: int = 1, planned: bool = False) -> float:
        """How many computed calls ``calls`` over the first ``steps`` calls of ``n`` are ahead of spending the budget
        evenly over the trajectory."""
        return calls - self.budget(n, branches, planned) * steps / n

    def _left(self, state: BranchState, step: int, n: int, branches: int, planned: bool = False
              ) -> Tuple[float, int]:
        """(computed calls left in the budget, decided calls left), the forced final steps set aside."""
        last_reserved = self.config.last_calls(n)  # at least the last step is computed in budget mode
        left = self.budget(n, branches, planned) - state.full_calls - last_reserved
        if not planned and state.unprobed_skips:
            left += state.unprobed_skips * self._probe_credit(branches)
        return left, max(1, n - step - last_reserved)

    @staticmethod
    def _compute_all(left: float, steps_left: int) -> bool:
        """Whether every call left is computed: the budget left covers them, rounded to the nearest call
        (the budget is a fraction of a call; spent to its floor, a call just before the forced final steps
        would be skipped for a fraction of a call, and a skip costs most there)."""
        return left > steps_left - 0.5

    # -- replay ----------------------------------------------------------------
    def remember(self, state: BranchState) -> None:
        """A trajectory of ``state`` ends: fold its error profile into the branch's mean if it ran to its
        last step."""
        self._solved.pop((state.name, state.num_steps), None)
        folded = self._folded(state)
        if folded is not None:
            key, self.profiles[key], self.powers[key], self._seen[key] = folded

    def _folded(self, state: BranchState) -> Optional[Tuple[Tuple[str, int], Dict[int, float], float, int]]:
        """(key, profile, span power, trajectories) of the branch's mean with the trajectory of ``state`` folded in;
        None where it is not kept (no budget or no replay, a trajectory that did not run to its last step)."""
        n = state.num_steps
        key = (state.name, n)
        if (not self.replay or self.config.target_speedup is None or n is None or state.calls < n
                or len(state.increments) < n // 2):
            return None
        mean, k = self.profiles.get(key, {}), self._seen.get(key, 0)
        incs = dict(state.increments)
        alpha = span_power(self.config, state) if self.config.plans_runs(n) else 1.0
        if alpha != 1.0:  # the increments at the power the trajectory ends with (it read the first ones at 1)
            incs.update({step: err / steps ** alpha for step, (err, steps) in state.spans.items()})
        profile = {step: (mean[step] * k + v) / (k + 1) if step in mean else v for step, v in incs.items()}
        return key, profile, (self.powers.get(key, 1.0) * k + alpha) / (k + 1), k + 1

    def export_profiles(self, current: Sequence[BranchState] = ()) -> List[Dict[str, Any]]:
        """The replay's error profiles as JSON-ready records, one per branch and step count, with the trajectories
        of ``current`` that ran to their last step folded in as the next call will fold them (:meth:`remember`):
        the mean per-step increments (``[[step, increment], …]``), the span power of their runs, how many
        trajectories they average, the model's block count and the probe error's settings (:func:`check_profiles`
        reads them back)."""
        kept = {key: (prof, self.powers.get(key, 1.0), self._seen.get(key, 1)) for key, prof in self.profiles.items()}
        for state in current:
            folded = self._folded(state)
            if folded is not None:
                kept[folded[0]] = folded[1:]
        c = self.config
        return [{"branch": name, "steps": n, "blocks": self.M, "probe_depth": c.probe_depth, "error": c.error,
                 "trajectories": seen, "power": power, "increments": [[k, v] for k, v in sorted(prof.items())]}
                for (name, n), (prof, power, seen) in sorted(kept.items())]

    def load_profiles(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Take error profiles exported by :meth:`export_profiles` (checked by :func:`check_profiles`): the first
        trajectory of each of their branches and step counts replays them, as a later trajectory of the process
        that measured them would."""
        records = check_profiles(records, self.M, self.config)
        if records and self.config.target_speedup is None:
            raise ValueError("budget_profiles are replayed by the compute budget: pass target_speedup=… too")
        if records and not self.replay:
            raise ValueError("budget_profiles: this engine decides every call online (replay_budget = False), "
                             "so it would not replay them")
        for r in records:
            key = (r["branch"], r["steps"])
            self.profiles[key] = dict(r["increments"])
            self.powers[key] = r["power"]
            self._seen[key] = r["trajectories"]
            self._solved.pop(key, None)

    def replays(self, state: BranchState, n: Optional[int]) -> bool:
        """Whether this trajectory of ``state`` is decided by the replay rule (a profile of its step count)."""
        return (state.name, n) in self.profiles

    def power(self, state: BranchState, n: Optional[int]) -> float:
        """α of ``span_power`` for the planned runs of ``state``'s trajectory: a number as configured; measured, a
        replay's is its profile's (the mean of its trajectories', each read over the whole trajectory when it
        ended: :func:`span_power`), any other trajectory's 1; 1 where runs are not planned."""
        if not self.config.plans_runs(n):
            return 1.0
        if self.config.span_power != "measured":
            return float(self.config.span_power)
        return self.powers.get((state.name, n), 1.0) if self.config.target_speedup is not None else 1.0

    def rule(self, state: BranchState) -> str:
        """How this trajectory of ``state`` spends the budget: ``"replay, δ=…"``, ``"online"`` (``"online, step
        sizes"`` where it predicts the errors from them) or ``"follows"``."""
        delta = self._solved.get((state.name, state.num_steps))
        if delta is not None:
            return f"replay, δ={delta:.3g}"
        # a follower skips only by following; its computed calls may be forced (warm-up, final steps, reach, cap)
        follower = any(r.reason == FOLLOW for r in state.records) and not any(
            r.reason in (REUSE, REUSE_ONE, PLANNED, PREDICTED, REFRESH) for r in state.records)
        if follower:
            return "follows"
        return "online, step sizes" if state.num_steps and self.sizes_for(state.num_steps) else "online"

    def _replay_delta(self, state: BranchState, n: int, branches: int) -> Optional[float]:
        """δ of the replay rule for this trajectory of ``state``, or None without a profile."""
        key = (state.name, n)
        if not self.replays(state, n):
            return None
        if key not in self._solved:
            planned = self.config.plans_runs(n)
            credit = 0.0 if planned else self._probe_credit(branches)
            self._solved[key] = self.solve(self.profiles[key], n, self.budget(n, branches, planned), credit,
                                           power=self.power(state, n))
        return self._solved[key]

    def simulate(self, incs: List[float], n: int, delta: float) -> int:
        """Computed calls of the fixed-δ rule (warm-up, run_power, final steps computed, δ scaled by the step sizes
        where the probe decides: ``step_size_power``) on increments ``incs``."""
        return self.simulate_calls(incs, n, delta)[0]

    def simulate_calls(self, incs: List[float], n: int, delta: float, begin: Optional[tuple] = None,
                       power: float = 1.0, final_run: Optional[int] = None, cut_tail: bool = False
                       ) -> Tuple[int, int]:
        """(computed calls, skips without a probe) of the fixed-δ rule on increments ``incs``; where runs are
        planned, ``begin = (t2, t1, e, last_run, shorten_to)`` simulates the calls after the computed call at step
        ``t2`` only (``t1`` the computed call before it, ``e`` the per-step error ``t2`` measured, the last two
        as the branch's: ``monotone_runs``); where every call is probed,
        ``begin = (k, acc, run, probed_skip, stored)`` simulates the calls from step ``k`` on, with the
        accumulated error ``acc`` and the ``run`` of reuses carried in (``probed_skip``: the call before ``k``
        was a probed skip; ``stored``: the entries stored before ``k``).

        With ``predictive_skip`` a skip right after a probed skip (two entries stored) runs no probe when the
        accumulated error plus the last increment stays under δ; the next probe measures the error since.
        ``final_run``: where runs are planned, the most skips in the run that ends at the forced final steps (the
        budget's :data:`FINAL_RUN`; None: no bound, the fixed-δ rule); ``cut_tail``: the budget's plan cuts a run
        that would end at a computed call before the final steps a call earlier (:func:`cut_before_final`)."""
        warm, p = self.config.warmup_calls(n), self.config.run_power_at(n)
        last = self.config.last_calls(n)
        if self.config.plans_runs(n):
            return self._simulate_plan(incs, n, delta, warm, last, p, begin, power, final_run, cut_tail), 0
        predict = bool(self.config.predictive_skip)
        scales = self.size_scales(n) or [1.0] * n  # step_size_power
        full, acc, run, unprobed, probed_skip = 0, 0.0, 0, 0, False
        first, stored = 0, 0
        if begin is not None:  # (step, accumulated error, run, last call a probed skip, entries stored)
            first, acc, run, probed_skip, stored = begin
        for k in range(first, n):
            if k < warm or k >= n - last:
                full, acc, run, probed_skip = full + 1, 0.0, 0, False
                continue
            limit = delta * scales[k] / (run + 1) ** p
            if predict and probed_skip and stored + full >= 2 and acc + incs[k - 1] < limit:
                acc += incs[k]  # skipped without a probe: the next probe measures this step's error too
                run, unprobed, probed_skip = run + 1, unprobed + 1, False
                continue
            acc += incs[k]
            if acc < limit:
                run, probed_skip = run + 1, True
            else:
                full, acc, run, probed_skip = full + 1, 0.0, 0, False
        return full, unprobed

    def _simulate_plan(self, incs: List[float], n: int, delta: float, warm: int, last: int, p: float,
                       begin: Optional[tuple] = None, power: float = 1.0, final_run: Optional[int] = None,
                       cut_tail: bool = False) -> int:
        """Computed calls of the fixed-δ plan (``plan_runs``): each computed call measures the mean increment
        since the last one, the ``j``-th call after it skips while ``j·e < δ/j^p`` (``plan_error``), within
        ``max_extrapolation`` and ``monotone_runs``. ``begin``: see :meth:`simulate_calls`."""
        reach = self.config.max_extrapolation_at(n)
        monotone = self.config.monotone_runs_at(n)
        sizes = self.sizes_for(n) if self.config.plan_on_step_sizes() else None
        full, run, e = 0, 0, None
        t1 = t2 = None  # the two newest computed steps
        last_run = shorten_to = None  # monotone_runs (next_shortening)
        first = 0
        if begin is not None:
            t2, t1, e, last_run, shorten_to = begin
            first = t2 + 1

        def bounded(k: int, run: int) -> bool:  # the final-run bound computes the call at k, ``run`` into the run
            return final_run is not None and overruns_final(k, n, last, run, final_run)

        def skips(k: int, run: int) -> bool:  # the plan's error lets the call at k skip, ``run`` into the run
            return planned_error(e, t1, t2, k, sizes, power) < delta / (run + 1) ** p

        for k in range(first, n):
            forced = k < warm or k >= n - last or t1 is None or e is None
            if not forced and reach is not None and k - t2 > reach * (t2 - t1):
                forced = True
            if not forced and monotone and shorten_to is not None and run >= shorten_to:
                forced = True
            if not forced and not bounded(k, run) and skips(k, run) and not (cut_tail and cut_before_final(
                    k, n, last, run, lambda: bounded(k + 1, run + 1) or not skips(k + 1, run + 1))):
                run += 1
                continue
            if t2 is not None:
                e = sum(incs[t2 + 1:k + 1]) / (k - t2)
            last_run, shorten_to = next_shortening(last_run, shorten_to, run)
            full, run, t1, t2 = full + 1, 0, t2, k
        return full

    def solve(self, profile: Dict[int, float], n: int, budget: float, credit: float = 0.0,
              begin: Optional[tuple] = None,
              position: Optional[float] = None, power: float = 1.0) -> float:
        """The δ whose fixed-δ rule on ``profile`` computes the number of calls nearest the budget (ties: the
        fewer): ``position`` (default :data:`REPLAY_DELTA_POSITION`) of the way up, in log scale, the δ range
        that gives that count, on a log grid around the increments' scale. ``credit``: computed calls the
        budget gains per skip without a probe (``predictive_skip``, :meth:`_probe_credit`), so a δ whose runs
        skip probes may compute more. ``begin``: the calls after a computed call only (:meth:`simulate_calls`;
        ``budget`` then counts those calls)."""
        known = [v for v in profile.values() if math.isfinite(v) and v >= 0]
        fill = sum(known) / len(known) if known else 0.0
        incs = [profile.get(k, fill) for k in range(n)]
        incs = [v if math.isfinite(v) and v >= 0 else fill for v in incs]
        scale = max(max(incs), 1e-12)
        grid = [scale * 10 ** (i / 40.0) for i in range(-160, 121)]  # 1e-4 … 1e3 times the largest increment
        final_run = FINAL_RUN if power < 1 else None  # (a random walk's probe: :meth:`at_final_run`)
        sims = [self.simulate_calls(incs, n, d, begin, power, final_run, cut_tail=True) for d in grid]
        miss: Dict[int, float] = {}  # count -> how near it comes to the budget its δ values earn
        for full, unprobed in sims:
            miss[full] = min(miss.get(full, math.inf), abs(full - budget - credit * unprobed))
        best = min(miss, key=lambda c: (miss[c], c))
        hits = [d for d, (c, _) in zip(grid, sims) if c == best]
        pos = REPLAY_DELTA_POSITION if position is None else position
        return hits[0] ** (1.0 - pos) * hits[-1] ** pos

    # -- the rule --------------------------------------------------------------
    def threshold(self, state: BranchState, step: int, n: Optional[int], branches: int = 1) -> float:
        _need_steps(n)
        left, steps_left = self._left(state, step, n, branches)
        if left <= 0:
            return math.inf
        if self._compute_all(left, steps_left):
            return 0.0
        delta = self._replay_delta(state, n, branches)
        if delta is not None:
            return delta * self.size_scale(step, n) / (state.run + 1) ** self.config.run_power_at(n)
        if state.err_n == 0:
            # no error measured yet (a warm-up of one call): the budget must skip somewhere, and a refresh
            # now would be spent on no information; skip unless this call's own probe error is not finite
            return math.inf
        delta = self._online_delta_probed(state, step, n, branches)
        if delta is not None:
            return delta * self.size_scale(step, n) / (state.run + 1) ** self.config.run_power_at(n)
        rate = max(state.err_sum / state.err_n, state.err_last)
        return rate * steps_left / left

    def sizes_for(self, n: int) -> Optional[List[float]]:
        """The step sizes of a trajectory of ``n`` calls, if the pipeline told them (and they are usable)."""
        sizes = self.step_sizes
        if sizes is None or len(sizes) != n or not all(math.isfinite(v) and v >= 0 for v in sizes) or not any(sizes):
            return None
        return sizes

    def size_scales(self, n: Optional[int]) -> Optional[List[float]]:
        """``step_size_power``: δ's factor at each call of a trajectory of ``n`` calls, ``(s̄/s_k)^p`` (``s̄`` the
        median step size; 1 on a step of size 0), where the probe decides each call (runs not planned) and the
        pipeline told the step sizes; else None."""
        p = self.config.step_size_power
        if not p or n is None or self.config.plans_runs(n):
            return None
        sizes = self.sizes_for(n)
        if sizes is None:
            return None
        if self._scales is None or self._scales[0] is not sizes:
            median = statistics.median(sizes)
            self._scales = (sizes, [(median / v) ** p if v > 0 else 1.0 for v in sizes])
        return self._scales[1]

    def size_scale(self, step: Optional[int], n: Optional[int]) -> float:
        """δ's factor at the call at ``step`` (:meth:`size_scales`; 1 where there is none)."""
        scales = self.size_scales(n)
        return scales[step] if scales is not None and step is not None and 0 <= step < len(scales) else 1.0

    def _sizes_rule(self, state: BranchState, n: int) -> Optional[List[float]]:
        """The step sizes, where the online rule decides call by call by them: every call probed, the sizes
        told, an error measured; else None (where runs are planned it decides by them at each run start:
        :meth:`_online_delta`)."""
        if self.config.plans_runs(n) or state.probe_step is None or state.err_n == 0:
            return None
        return self.sizes_for(n)

    def _online_delta_probed(self, state: BranchState, step: int, n: int, branches: int) -> Optional[float]:
        """δ of the online rule where every call is probed, for the call at ``step``, when the step sizes are
        known: the fixed-δ rule's δ that spends the budget left on the calls from ``step`` on, on the profile
        measured so far and predicted from the step sizes (:meth:`online_profile`), solved again at each call
        with the errors measured since (as the replay, on a predicted profile). None without the step sizes."""
        sizes = self._sizes_rule(state, n)
        if sizes is None:
            return None
        # once per call: a predictive skip's check and the probe's decision ask at the same step and state
        if state.online_delta is not None and state.online_delta[0] == step:
            return state.online_delta[1]
        profile = self.online_profile(state, state.probe_step, n, sizes, ONLINE_SIZE_EXPONENT)
        if profile is None:
            return None
        left, _ = self._left(state, step, n, branches)
        last = state.records[-1] if state.records else None
        probed_skip = last is not None and not last.computed and last.probed
        begin = (step, state.acc_host, state.run, probed_skip, state.n_stored)
        # a quarter of the way up its δ range, as the replay: solved at every call, the smallest δ would put each
        # call at the edge of the prediction, and a call whose error runs a little above it would be computed
        delta = self.solve(profile, n, left + self.config.last_calls(n), self._probe_credit(branches), begin=begin,
                           position=REPLAY_DELTA_POSITION)
        state.online_delta = (step, delta)
        return delta

    def plan_skip(self, state: BranchState, step: int, n: Optional[int]) -> bool:
        """``plan_runs``: whether the call skips, as the ``(run + 1)``-th of the run that started at the last
        computed call. A planned skip runs no block, so the budget is ``N/s`` computed calls. Replay (a
        profile of this step count): the fixed-δ plan with the δ solved from the profile (:meth:`solve`).
        Online: the same plan on the profile measured so far and predicted (:meth:`online_profile`: from the
        step sizes when told, else extrapolated at the measured growth); until it can be predicted, the budget
        left spread evenly over the calls left when the run started, ``S/F − 1``
        reuses, rounded up: the runs shorten by one when the budget left catches up, so their length
        changes once instead of alternating run by run. When the budget is spent every call skips; when the
        calls left are no more than the budget left (to the nearest call) every one is computed, and so is the call
        that would make the run ending at the final steps longer than :data:`FINAL_RUN`; right after a computed call,
        a call that would put the trajectory :data:`AHEAD_LIMIT` calls ahead of spending the budget evenly skips; a
        run of more than :data:`FINAL_RUN` skips that would end at a computed call right before the final steps ends a
        call earlier (:func:`cut_before_final`)."""
        _need_steps(n)
        start = state.probe_step if state.probe_step is not None else step - 1
        left, steps_left = self._left(state, start + 1, n, 1, planned=True)
        if left <= 0:
            return True
        if self._compute_all(left, self._left(state, step, n, 1, planned=True)[1]) or \
                at_shorten_bound(self.config, state, n) or self.at_final_run(state, step, n):
            return False
        if start == step - 1 and self.ahead(state.full_calls + 1, step + 1, n, planned=True) >= AHEAD_LIMIT:
            return True  # computing call after call, far ahead of the budget: the plan's errors read high
        delta = self._replay_delta(state, n, 1)
        if delta is None:
            delta = self._online_delta(state, start, n)
        if delta is None:
            return state.run < math.ceil(steps_left / left - 1.0 - 1e-9)  # runs of ⌈S/F − 1⌉ reuses
        p, alpha, last = self.config.run_power_at(n), self.power(state, n), self.config.last_calls(n)

        def skips(k: int, run: int) -> bool:  # the plan's error for the call at k, ``run`` calls into the run
            return state.err_last * (k - start) ** alpha < delta / (run + 1) ** p

        return skips(step, state.run) and not cut_before_final(step, n, last, state.run, lambda: self.at_final_run(
            state, step + 1, n, state.run + 1) or not skips(step + 1, state.run + 1))

    def at_final_run(self, state: BranchState, step: int, n: int, run: Optional[int] = None) -> bool:
        """Whether the call at ``step`` (``run`` calls into a run; default the branch's) would make the run that ends
        at the forced final steps longer than :data:`FINAL_RUN`, where runs are planned at a ``span_power`` under 1
        (a probe that takes a random walk)."""
        run = state.run if run is None else run
        return overruns_final(step, n, self.config.last_calls(n), run, FINAL_RUN) and self.power(state, n) < 1

    @staticmethod
    def growth(increments: Dict[int, float], after: int, upto: int, n: int) -> Optional[float]:
        """The growth per step of the per-step error increments measured at steps ``after < k <= upto``, read from
        the smallest of them on (at least the newest :data:`ONLINE_MIN_INCREMENTS`): the ratio of the geometric
        means of their later and earlier halves, to the power one over the steps between the halves' mean steps,
        within [1, :data:`ONLINE_MAX_GROWTH` ``** (1/n)``]; None with fewer than :data:`ONLINE_MIN_INCREMENTS`
        increments. A trajectory's error falls after its first steps (2–4 times the middle's on the shipped models)
        and grows towards its end: read over all of them, the falling part hides the growth to come (on
        ``cogvideox_digits`` at 50 steps, whose scheduler tells no step sizes, the increments fall from 0.03 to 0.014
        by step 22 and grow to 0.056 by step 47; read since the trough, the first call at 1.5× computes the last
        steps as the replay does: benchmarks/RESULTS.md, thirty-seventh round)."""
        pts = sorted((k, v) for k, v in increments.items() if after < k <= upto and math.isfinite(v) and v > 0)
        if len(pts) < ONLINE_MIN_INCREMENTS:
            return None
        trough = min(range(len(pts)), key=lambda i: pts[i][1])  # the first of the smallest
        pts = pts[min(trough, len(pts) - ONLINE_MIN_INCREMENTS):]
        half = len(pts) // 2
        early, late = pts[:half], pts[half:]

        def centre(part):
            return (sum(k for k, _ in part) / len(part), sum(math.log(v) for _, v in part) / len(part))

        (k0, l0), (k1, l1) = centre(early), centre(late)
        r = math.exp((l1 - l0) / (k1 - k0)) if k1 > k0 else 1.0
        return min(max(r, 1.0), ONLINE_MAX_GROWTH ** (1.0 / max(1, n)))

    def online_profile(self, state: BranchState, start: int, n: int, sizes: Optional[List[float]] = None,
                       exponent: float = 1.0) -> Optional[Dict[int, float]]:
        """The per-step error profile the online rule solves δ on at the run that starts at computed step
        ``start``: the increments measured up to it; the steps after it ``c · sizes[k]^exponent`` given the step
        sizes (``c`` = the measured increments over their steps' sizes to that power, those after the warm-up once
        there are any; :data:`ONLINE_SIZE_EXPONENT` where the probe decides), else the last increment times the
        measured growth (:meth:`growth`) per step; None before an increment (with the sizes) or enough of them
        (without) is measured."""
        profile = {k: v for k, v in state.increments.items() if k <= start}
        if sizes is not None:
            # the probe error of a call grows with the step its output takes: c·|σ_k − σ_(k+1)|^exponent, c the
            # ratio of the errors measured to their steps' sizes to that power
            seen = [(k, v) for k, v in profile.items() if math.isfinite(v) and v >= 0 and k < n]
            # the warm-up's errors run 2–4 times the middle's ratio to the size (the first steps of a trajectory:
            # benchmarks/step_sizes.py): c from the calls after it once one is measured
            warm = self.config.warmup_calls(n)
            scaled = [v ** exponent for v in sizes]
            seen = [(v, scaled[k]) for k, v in seen if k >= warm] or [(v, scaled[k]) for k, v in seen]
            num, den = sum(v for v, _ in seen), sum(d for _, d in seen)
            if not seen or den <= 0 or num <= 0:
                return None
            profile.update({k: num / den * scaled[k] for k in range(start + 1, n)})
            return profile
        r = self.growth(state.increments, self.config.warmup_calls(n), start, n)
        if r is None or not (math.isfinite(state.err_last) and state.err_last > 0):
            return None
        profile.update({k: state.err_last * r ** (k - start) for k in range(start + 1, n)})
        return profile

    def _online_delta(self, state: BranchState, start: int, n: int) -> Optional[float]:
        """δ of the online rule for the run that starts at ``start`` (solved once per run), or None."""
        if state.online_delta is None or state.online_delta[0] != start:
            profile = self.online_profile(state, start, n, self.sizes_for(n))
            if profile is None:
                return None
            # the calls after ``start`` only: those before it are decided, the budget left is what they spend
            t1 = state.slot_step.get(state.newest(2)) if state.n_stored >= 2 else None
            left = self.budget(n, 1, planned=True) - state.full_calls
            begin = (start, t1, state.err_last, state.last_run, state.shorten_to)
            delta = self.solve(profile, n, left, begin=begin, position=ONLINE_DELTA_POSITION,
                               power=self.power(state, n))
            state.online_delta = (start, delta)
        return state.online_delta[1]

    def run_bounds(self, state: BranchState, step: int, n: Optional[int], branches: int = 1) -> Tuple[int, int]:
        """(fewest, most) reuses in a row that keep the budget left spread evenly over the calls left.

        With ``F_left`` computed calls for ``S`` calls left, an even schedule computes one call in
        ``S / F_left``, i.e. runs of ``S / F_left − 1`` reuses. The online rule picks, run by run,
        between the floor and the ceiling of that: where the probe error grows fast the runs are
        short, where it is flat they are long, and the budget can neither be spent in a burst
        nor leave a run of reuses for the end (what the error rule alone does when the error is
        small early and large late). The replay rule needs no bounds (its δ already spends the budget).
        """
        if n is None:
            return 0, 1 << 30
        left, steps_left = self._left(state, step, n, branches)
        if left <= 0:
            return 1 << 30, 1 << 30
        if self.replays(state, n) or self._sizes_rule(state, n) is not None:
            return 0, 1 << 30  # δ already spends the budget (replay, or the online rule on the step sizes)
        gap = steps_left / left - 1.0
        return max(0, math.floor(gap)), max(1, math.ceil(gap))

    def observe(self, state: BranchState, acc: float, step: int) -> None:
        """Record the per-step error: the growth of the accumulated error since the last read, over
        the steps since the last probe (more than one after calls skipped without a probe)."""
        err = acc - state.acc_host
        steps = 1
        if state.probe_step is not None and step > state.probe_step:
            steps = step - state.probe_step
        if math.isfinite(err) and err >= 0:
            total, err = err, err / steps ** self.power(state, state.num_steps)
            state.err_sum += err
            state.err_n += 1
            state.err_last = err
            for k in range(step - steps + 1, step + 1):  # the steps since the last probe share the increment
                state.increments[k] = err
                if steps > 1:  # (over one step the increment is the error at any span_power)
                    state.spans[k] = (total, steps)
        state.acc_host = acc
        state.probe_step = step
