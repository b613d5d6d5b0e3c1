"""The DiCache method: decide, reuse, refresh.

The engine knows no model class and no kernel. The hooks hand it, per call of a
branch, the image tokens entering block 0 (``x``) and leaving the probe
(``p``); it answers with the reconstructed deep output ``h`` (reuse) or
``None`` (compute the deep blocks, then call :meth:`DiCacheEngine.after_full`
with their output). Where the config rebuilds the model's output instead (``reconstruct_at``), the hook on the
model's output module then stores a computed call's output (:meth:`DiCacheEngine.computed_output`) or takes a
skipped call's from the stored ones (:meth:`DiCacheEngine.skipped_output`). All per-call arithmetic goes through a
backend of :mod:`dicache.ops` (where runs are planned, once per trajectory, three sums of plain PyTorch ops tell
whether its sampler adds noise: :meth:`~dicache.state.BranchState.read_walk`); per decided call the host reads one
flag. What it keeps per
branch is :mod:`dicache.state`; where the compute budget (``target_speedup``)
spends its computed calls, :mod:`dicache.budget`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .budget import Budget
from .config import HINDSIGHT_PROBE_FACTOR, DiCacheConfig
from .ops import Backend, reference, select_backend
from .state import (CAP, FOLLOW, LAST_STEP, PLANNED, PREDICTED, REACH, REFRESH, REUSE, REUSE_ONE, SHORTEN,
                    WARMUP, BranchState, CallRecord, at_shorten_bound, balanced, hindsight_weight, next_shortening,
                    planned_error, reach_tested, span_power_sample, within_reach)

#: alignment_order="auto" fits the quadratic's weight on at most about this many tokens.
ORDER_TOKENS = 512

_POLICY = {"global": reference.POLICY_GLOBAL, "max": reference.POLICY_MAX}
_ERROR = {"probe": reference.ERROR_PROBE, "probe_minus_input": reference.ERROR_PROBE_MINUS_INPUT}


class DiCacheEngine:
    """The per-model cache: one :class:`BranchState` per branch name.

    Args:
        config: the validated settings.
        num_blocks: M, the number of blocks of the model.
        backend: a backend name of :data:`dicache.ops.BACKENDS`; resolved per
            device on first use.
    """

    #: ``target_speedup``: whether calls after the first of a step count replay the error profile of the earlier
    #: ones (:class:`~dicache.budget.Budget`); a subclass sets False to decide every call by the online rule
    replay_budget = True

    def __init__(self, config: DiCacheConfig, num_blocks: int, backend: str = "auto"):
        #: the config of the current trajectory: ``base_config``, the one the engine was built with, or, on a
        #: trajectory that ``target_min_steps`` leaves out of the budget (:meth:`DiCacheConfig.budgets`), the same
        #: without ``target_speedup``; γ's source resolved on a DDPM-family scheduler's trajectory
        #: (:meth:`DiCacheConfig.on_trajectory`)
        self.config = self.base_config = config
        self._no_budget = config if config.target_speedup is None else config.replace(
            target_speedup=None, target_min_steps=None)
        self.num_blocks = num_blocks
        self.backend_name = backend
        self._backends: Dict[str, Backend] = {}
        self.branches: Dict[str, BranchState] = {}
        self._cur: Optional[BranchState] = None
        self._cur_step = 0
        self._forced: Optional[str] = None
        self._x: Optional[torch.Tensor] = None
        self._num_steps: Optional[int] = None
        self._leads: Dict[int, bool] = {}  # step -> the leading branch reused it (cfg_decision="shared")
        # (step, the leader's γ, its quadratic weight) when the step's leading branch reused
        self._lead: Optional[Tuple[int, torch.Tensor, Optional[torch.Tensor]]] = None
        # reconstruct_at="output": (state, slot) a computed call's output goes to; (state, the three newest slots
        # or None, γ or c2, c0) of a skipped call's reconstruction, for its output
        self._out_store: Optional[Tuple[BranchState, int]] = None
        self._out_plan: Optional[tuple] = None
        self._h: Optional[torch.Tensor] = None  # a skip's blocks' output where it is not state.out (_plan_output)
        #: whether the pipeline's scheduler samples a flow-matching trajectory (None: no pipeline told it);
        #: ``gamma_source="auto"`` and ``reconstruct_at="auto"`` read it
        self.flow_matching: Optional[bool] = None
        self._budget = Budget(config, num_blocks, replay=self.replay_budget)
        self._policy = _POLICY[config.batch_policy]
        self._error = _ERROR[config.error]

    # -- state -----------------------------------------------------------
    def reset(self, branch: Optional[str] = None) -> None:
        """Forget one branch, or all of them (a new trajectory). The compute budget keeps the error profile
        of each finished trajectory for the next one (:meth:`~dicache.budget.Budget.remember`). The shared CFG
        decisions per step go either way: one branch restarts at the first step of a new trajectory, where the
        others follow it."""
        names = list(self.branches) if branch is None else [branch]
        for name in names:
            state = self.branches.pop(name, None)
            if state is not None:
                self._budget.remember(state)
        self._leads.clear()
        self._lead = None
        self._cur = None

    def set_step_sizes(self, sizes: Optional[Sequence[float]]) -> None:
        """The trajectory's step sizes ``|σ_k − σ_(k+1)|`` per call (the pipeline's scheduler tells them at each
        pipeline call; None: unknown). The compute budget's online rule expects each call's probe error in
        proportion to them (:meth:`~dicache.budget.Budget.online_profile`)."""
        self._budget.step_sizes = None if sizes is None else [float(v) for v in sizes]

    def release(self) -> None:
        """Free every cached tensor but keep the records (for ``summary``); the next call starts afresh."""
        for state in self.branches.values():
            state.release()
        self._lead = None
        self._cur = None
        self._x = None

    def budget_rule(self, branch: str) -> Optional[str]:
        """``target_speedup`` only: how the branch's current trajectory spends the budget (``"replay, δ=…"``,
        ``"online"``, ``"follows"``; ``"planned, …"`` where runs are planned); None without a budget or
        without the branch."""
        state = self.branches.get(branch)
        if self.config.target_speedup is None or state is None:
            return None
        rule = self._budget.rule(state)
        return f"planned, {rule}" if self.config.plans_runs(state.num_steps) else rule

    def budget_profiles(self) -> List[Dict[str, Any]]:
        """``target_speedup``: the error profiles the replay rule has kept, per branch and step count, as JSON-ready
        records, the current trajectories included once they ran to their last step
        (:meth:`~dicache.budget.Budget.export_profiles`); empty before one has."""
        return self._budget.export_profiles(list(self.branches.values()))

    def load_budget_profiles(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Replay ``records`` (from :meth:`budget_profiles`, in this process or another) from the first trajectory
        of their step counts on (:meth:`~dicache.budget.Budget.load_profiles`)."""
        self._budget.load_profiles(records)

    def backend_for(self, device: torch.device) -> Backend:
        key = device.type
        if key not in self._backends:
            self._backends[key] = select_backend(self.backend_name, device)
        return self._backends[key]

    # -- one call ---------------------------------------------------------
    def begin_call(self, branch: str, step_index: Optional[int] = None, num_steps: Optional[int] = None) -> None:
        """Start a call of ``branch``; ``step_index`` defaults to the branch's call count."""
        state = self.branches.get(branch)
        if state is None:
            state = self.branches[branch] = BranchState(branch)
        self._cur = state
        cfg = self.base_config if self.base_config.budgets(num_steps) else self._no_budget
        sizes = self._budget.sizes_for(num_steps) if num_steps is not None else None
        self.config = self._budget.config = cfg.on_trajectory(num_steps, self.flow_matching, sizes)
        step = state.calls if step_index is None else step_index
        self._cur_step = step
        self._num_steps = num_steps
        state.num_steps = num_steps
        self._pending_error = None  # the probe error this call measured, for its record
        self._out_store = self._out_plan = self._h = None
        cfg = self.config
        if step < cfg.warmup_calls(num_steps):
            self._forced = WARMUP
        elif num_steps is not None and step >= num_steps - cfg.last_calls(num_steps):
            # the final steps (budget mode: at least the last): their errors are never corrected afterwards
            self._forced = LAST_STEP
        else:
            self._forced = None
        reach = cfg.max_extrapolation_at(num_steps)
        if self._forced is None and reach is not None and state.n_stored >= 2:
            t2, t1 = state.slot_step[state.newest(1)], state.slot_step[state.newest(2)]
            if step - t2 > reach * (t2 - t1):
                self._forced = REACH
        if self._forced is None and cfg.target_speedup is None and at_shorten_bound(cfg, state, num_steps):
            self._forced = SHORTEN  # (in budget mode the budget's hard bound comes first: Budget.plan_skip)

    def _threshold(self, state: BranchState) -> float:
        """δ for the current call: fixed, scheduled over the steps, or set by the compute budget."""
        cfg, n, k = self.config, self._num_steps, self._cur_step
        if cfg.target_speedup is not None:
            return self._budget.threshold(state, k, n, len(self.branches))
        delta = cfg.threshold_at(n)  # probe_threshold where the probe decides each call
        if cfg.threshold_end is not None and n is not None and n > 1:
            frac = min(max(k / (n - 1), 0.0), 1.0)
            delta += (cfg.threshold_end - delta) * frac
        delta *= self._budget.size_scale(k, n)  # step_size_power
        power = cfg.run_power_at(n)
        if power:
            # the j-th reuse in a row (j = run + 1) must stay under δ / j^run_power
            delta /= (state.run + 1) ** power
        return delta

    @torch.no_grad()
    def before_probe(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Before block 0: the output ``h`` when this call can be skipped without its probe, else None.

        With ``predictive_skip``, the leading branch of a step skips right after a probed reuse when
        the last increment predicts the accumulated error stays under δ (:meth:`_predicted`). With
        ``cfg_decision="shared"``, a branch following a step whose leading branch reused the cache
        reuses too, so its probe would only measure γ: it takes the leader's γ (and, with
        ``alignment_order="auto"``, its quadratic weight) instead and runs no block at all. Otherwise (and
        whenever its own cache cannot serve) returns None.
        """
        state = self._cur
        planning = self._planning()
        if state is not None and planning and state.walk is None and self.config.alignment_order == "auto":
            state.read_walk(x, self._cur_step)  # (for _planned: the line on a random walk)
        if state is None or self._forced is not None:
            return None
        if planning and self._leads.get(self._cur_step) is None:
            return self._planned(state, x)
        if self.config.predictive_skip and not planning and self._leads.get(self._cur_step) is None:
            h = self._predicted(state, x)
            if h is not None:
                return h
        if self.config.cfg_decision != "shared":
            return None
        lead = self._lead_now()
        if lead is None or not state.matches(x):
            return None
        _, lead_gamma, lead_weight = lead
        if state.n_stored == 0 or not state.has_prev:
            return None
        # the leader's reuse respected the cap (budget mode: the run bounds, which replace it)
        cap = self.config.max_consecutive_reuse if self.config.target_speedup is None else None
        if cap is not None and state.run >= cap:
            return None
        two = state.n_stored >= 2
        if two and lead_gamma.shape != state.gamma.shape:
            return None  # a different batch: measure our own γ
        self._x = x
        if two and not self._step_gamma(state):  # (γ from the steps: the branch's own step distance)
            state.gamma.copy_(lead_gamma)
        state.quad_weight = lead_weight
        self._reconstruct(state, x)
        return self._skipped(state, CallRecord(self._cur_step, False, FOLLOW, None,
                                               state.gamma.clone() if two else None, probed=False))

    def _predicted(self, state: BranchState, x: torch.Tensor) -> Optional[torch.Tensor]:
        """``predictive_skip``: the output of a call skipped without its probe, or None to probe.

        Only right after a probed reuse of this branch (two entries stored, the cap not reached),
        and only when the accumulated error plus the last per-step increment stays under δ. γ moves
        on along the line the last probe measured: the probe said the trajectory had advanced
        ``γ − 1`` intervals ``d`` steps after the last computed call, so one step later it is at
        ``1 + (γ − 1)·(d + 1)/d``, clipped to ``gamma_clip``.
        """
        cfg = self.config
        if not state.records or not state.matches(x) or state.n_stored < 2:
            return None
        last = state.records[-1]
        if last.computed or last.reason != REUSE or not last.probed or last.index != self._cur_step - 1:
            return None
        cap = cfg.max_consecutive_reuse
        if cfg.target_speedup is not None:  # the budget's run bounds replace the cap
            cap = self._budget.run_bounds(state, self._cur_step, self._num_steps, len(self.branches))[1]
        if cap is not None and state.run >= cap:
            return None
        if not state.acc_host + state.err_last < self._threshold(state):
            return None
        d = last.index - state.slot_step[state.newest(1)]
        if d < 1:
            return None
        self._x = x
        if not self._step_gamma(state):
            state.gamma.sub_(1.0).mul_((d + 1) / d).add_(1.0).clamp_(float(cfg.gamma_clip[0]), float(cfg.gamma_clip[1]))
        state.unprobed_skips += 1
        return self._unprobed_skip(state, x, PREDICTED)

    def _unprobed_skip(self, state: BranchState, x: torch.Tensor, reason: str) -> torch.Tensor:
        """Finish a call skipped without its probe (γ already set): reconstruct, lead a shared CFG step."""
        self._reconstruct(state, x)
        if self.config.cfg_decision == "shared":
            self._leads.setdefault(self._cur_step, True)
            self._lead = (self._cur_step, state.gamma, state.quad_weight)
        return self._skipped(state, CallRecord(self._cur_step, False, reason, None, state.gamma.clone(),
                                               probed=False))

    def _planning(self) -> bool:
        """Whether this call's run is planned (``plan_runs``; ``"auto"``: where γ comes from the steps)."""
        return self.config.plans_runs(self._num_steps)

    def _planned(self, state: BranchState, x: torch.Tensor) -> Optional[torch.Tensor]:
        """``plan_runs``: the output of a call skipped without its probe, or None with the call forced to
        compute (the end of the run: the ``j``-th call since the last probe is skipped while ``j·e`` stays
        under δ, ``e`` the per-step error that probe measured)."""
        cfg = self.config
        if not state.matches(x) or state.n_stored == 0:
            return None  # nothing usable stored: after_probe computes it as a warm-up call
        steps = self._cur_step - state.probe_step if state.probe_step is not None else 0
        if state.n_stored < 2 or state.err_n == 0 or steps < 1:
            skip = False
        elif cfg.target_speedup is not None:
            skip = self._budget.plan_skip(state, self._cur_step, self._num_steps)
        else:
            cap = cfg.max_consecutive_reuse
            skip = (cap is None or state.run < cap) and self._run_error(state) < self._threshold(state)
        if not skip:
            self._forced = SHORTEN if at_shorten_bound(cfg, state, self._num_steps) else REFRESH
            return None
        self._x = x
        if not self._step_gamma(state):
            t2, t1 = state.slot_step[state.newest(1)], state.slot_step[state.newest(2)]
            lo, hi = (float(g) for g in cfg.gamma_clip)
            state.gamma.fill_(min(max((self._cur_step - t1) / (t2 - t1), lo), hi))
        elif cfg.alignment_order == "auto":
            # the step is known exactly: the quadratic whole; on a random walk (the blocks' input reads one, or the
            # run is planned at a ``span_power`` under 1) the line: a curvature read off three noisy entries is mostly
            # their noise
            walk = state.walk or self._budget.power(state, self._num_steps) < 1
            state.quad_weight = None if walk else self._whole_quadratic(state)
        return self._unprobed_skip(state, x, PLANNED)

    def _run_error(self, state: BranchState) -> float:
        """The accumulated error the planned run predicts at the current call (``plan_error``)."""
        sizes = self._budget.sizes_for(self._num_steps) if (
            self.config.plan_on_step_sizes() and self._num_steps is not None) else None
        t1 = state.slot_step.get(state.newest(2)) if state.n_stored >= 2 else None
        return planned_error(state.err_last, t1, state.probe_step, self._cur_step, sizes,
                             self._budget.power(state, self._num_steps))

    def _lead_now(self) -> Optional[Tuple[int, torch.Tensor, Optional[torch.Tensor]]]:
        """The leading branch's (step, γ, quadratic weight) when it reused the current step, else None."""
        return self._lead if self._lead is not None and self._lead[0] == self._cur_step else None

    def _enter(self, x: torch.Tensor) -> BranchState:
        """The current call's branch state, with buffers for ``x`` (a subclass's decision starts here)."""
        state = self._cur
        if state is None:
            raise RuntimeError("after_probe() called outside a call (begin_call first)")
        self._x = x
        if not state.matches(x):
            # First call, or the shape/dtype/device changed: nothing stored is usable.
            state.allocate(x, with_x_prev=self._error == reference.ERROR_PROBE_MINUS_INPUT,
                           slots=2 if self.config.alignment_order == 1 else 3)
        return state

    def _skipped(self, state: BranchState, record: CallRecord) -> torch.Tensor:
        """Finish a skipped call whose blocks' output is in ``state.out`` (or is the call's input, where
        :meth:`_reconstruct` rebuilds the model's output instead)."""
        state.records.append(record)
        state.calls += 1
        state.run += 1
        self._cur = None
        h, self._h = self._h, None
        return state.out if h is None else h

    @torch.no_grad()
    def after_probe(self, x: torch.Tensor, p: torch.Tensor) -> Optional[torch.Tensor]:
        """Decide after the probe. Returns ``h`` to reuse, or None: compute the deep blocks."""
        state = self._enter(x)
        cfg = self.config
        forced = self._forced or (WARMUP if state.n_stored == 0 or not state.has_prev else None)
        budget = cfg.target_speedup is not None
        cap = cfg.max_consecutive_reuse
        least = 0
        if budget and forced is None:
            # the budget's run bounds replace max_consecutive_reuse (a preset's cap would cut the savings)
            least, cap = self._budget.run_bounds(state, self._cur_step, self._num_steps, len(self.branches))
        if forced is None and cap is not None and state.run >= cap:
            forced = CAP
        # One decision for all branches of a step: the first branch to reach the step leads.
        leader = self._leads.get(self._cur_step) if cfg.cfg_decision == "shared" else None
        if forced is None and leader is False:
            forced = FOLLOW
        if forced is not None:
            self._forced = forced
            if (budget or self._planning()) and state.has_prev and state.n_stored >= 1:
                # the budget rule learns the error rate on computed calls too; plan_runs plans the next run
                self._measure(state, p, x)
                self._pending_error = state.acc.clone()  # for the record (summary): read only when summarized
            else:
                state.p_prev.copy_(p)
                if state.x_prev is not None:
                    state.x_prev.copy_(x)
            state.has_prev = True
            self._leads.setdefault(self._cur_step, False)
            return None

        threshold = math.inf if leader is True or state.run < least else self._threshold(state)
        error, reuse = self._decide(state, p, x, threshold)
        if leader is None:
            self._leads.setdefault(self._cur_step, reuse)
        if not reuse:
            self._forced = None
            self._pending_error = error
            return None
        two = state.n_stored >= 2
        self._step_gamma(state)
        weights = None
        if cfg.alignment_order == "auto":
            lead = self._lead_now() if leader is True else None
            if lead is not None:
                state.quad_weight = lead[2]
            else:
                weights = self._fit_quad_weight(state, p, x)
        if leader is None:
            self._lead = (self._cur_step, state.gamma, state.quad_weight)
        self._reconstruct(state, x, weights)
        reason = FOLLOW if leader is True else (REUSE if two else REUSE_ONE)
        return self._skipped(state, CallRecord(self._cur_step, False, reason, error,
                                               state.gamma.clone() if two else None))

    def _reconstruct(self, state: BranchState, x: torch.Tensor,
                     weights: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> None:
        """``state.out`` = the deep output rebuilt from the stored residuals and ``state.gamma``.

        First order (the method): ``x + R[-2] + γ·(R[-1] − R[-2])``. Second order, with three
        entries stored at steps t0 < t1 < t2: the quadratic through them, evaluated at the step
        the probe says the call is at, ``τ = t1 + γ·(t2 − t1)`` (γ = 1 at t2): ``x + Σ c_i(τ)·R_i``
        with the Lagrange weights ``c_i`` (they sum to 1). ``"auto"``: the line plus ``w·(quadratic −
        line)``, ``w`` the branch's fitted weight (:meth:`_fit_quad_weight`). The weights come from the
        fused op ``quad_blend`` and stay on the device; one fused pass does
        ``x + R1 + c2·(R2 − R1) + c0·(R0 − R1)``.
        ``weights``: ``(c0, c2)`` already computed for this call (by :meth:`_fit_quad_weight`).
        """
        ops = self.backend_for(x.device)
        if state.n_stored < 2:
            ops.reconstruct(x, state.R[state.newest()], None, state.gamma, state.out)
            self._note_skip(state, 1)
            return  # one entry: no line through the outputs either (reconstruct_at rebuilds the blocks' output)
        s2, s1 = state.newest(1), state.newest(2)
        order = self.config.alignment_order
        if order == 1 or state.n_stored < 3 or (order == "auto" and weights is None and state.quad_weight is None):
            output = self._plan_output(state, x, (s2, s1, None), state.gamma, None)
            if not output:
                ops.reconstruct(x, state.R[s2], state.R[s1], state.gamma, state.out)
            self._note_skip(state, 0 if output else 2)
            return
        if weights is None:  # order 2: the quadratic whole; "auto": the weight fitted (or led) for this call
            w = state.quad_weight if order == "auto" else torch.ones_like(state.gamma)
            weights = self._quad_weights(state, w)
        c0, c2 = weights
        s0 = state.newest(3)
        output = self._plan_output(state, x, (s2, s1, s0), c2, c0)
        if not output:
            ops.reconstruct(x, state.R[s2], state.R[s1], c2, state.out, state.R[s0], c0)
        self._note_skip(state, 0 if output else 3)

    # -- hindsight ----------------------------------------------------------
    def _step_size(self, step: int) -> float:
        """The scheduler's step size at ``step`` (1 where the pipeline told none)."""
        sizes = self._budget.sizes_for(self._num_steps) if self._num_steps is not None else None
        return sizes[step] if sizes is not None and 0 <= step < len(sizes) else 1.0

    def _note_skip(self, state: BranchState, order: int) -> None:
        """``hindsight``: record a skip of the run and how many entries its rebuilt blocks' output used (0: the model's
        output was rebuilt instead). Where the probe set γ, the skip counts at its own step on the line through the
        two newest entries (the line the probe's γ and fitted bend moved along)."""
        if self.config.hindsight != 0:
            if order > 2 and not self._gamma_from_steps():
                order = 2
            state.note_skip(self._cur_step, self._step_size(self._cur_step), order)

    def _hindsight_beta(self, state: BranchState) -> float:
        """``hindsight``, at the computed call that ends a run: β of ``h + β·(h − x − P(n))`` (0: no correction)."""
        order, skips, n = state.run_order, state.run_skips, self._cur_step
        if not skips or order < 1 or state.n_stored < order:
            return 0.0
        share = float(self.config.hindsight) * (1.0 if self._gamma_from_steps() else HINDSIGHT_PROBE_FACTOR)
        entries = [state.slot_step[state.newest(i)] for i in range(order, 0, -1)]
        size = self._step_size(n)
        if not share or not size > 0 or not all(entries[-1] < k < n for k, _ in skips):
            return 0.0
        return share * sum(w * hindsight_weight(k, entries, n) for k, w in skips) / size

    def _rebuild_at_step(self, state: BranchState, x: torch.Tensor, order: int) -> None:
        """``state.out`` = the skips' rule of the current run at this call's step: ``x + P(n)`` on the ``order``
        newest entries (before the refresh replaces the oldest)."""
        ops = self.backend_for(x.device)
        s2 = state.newest(1)
        if order == 1:
            ops.reconstruct(x, state.R[s2], None, state.gamma, state.out)
            return
        s1 = state.newest(2)
        t1, t2 = state.slot_step[s1], state.slot_step[s2]
        gamma = (self._cur_step - t1) / (t2 - t1)
        if order == 2:
            ops.reconstruct(x, state.R[s2], state.R[s1], torch.full_like(state.gamma, gamma), state.out)
            return
        s0 = state.newest(3)
        c0, c2 = reference.lagrange_weights(gamma, float(state.slot_step[s0]), float(t1), float(t2))
        ops.reconstruct(x, state.R[s2], state.R[s1], torch.full_like(state.gamma, c2), state.out, state.R[s0],
                        torch.full_like(state.gamma, c0))

    # -- the model's output (reconstruct_at="output") ----------------------
    def _plan_output(self, state: BranchState, x: torch.Tensor, slots: Tuple[int, int, Optional[int]],
                     c2: torch.Tensor, c0: Optional[torch.Tensor]) -> bool:
        """Whether this skipped call rebuilds the model's output (``reconstruct_at``, every output it needs stored,
        their leading dimension the batch its per-sample weights are for); then its weights are kept for
        :meth:`skipped_output`, and the blocks hand on ``x`` unrebuilt: the output module's result replaces
        whatever the last layers make of it, so the pass over the image tokens that rebuilds them is not run."""
        if not (self.config.reconstructs_output(self._num_steps, self.flow_matching)
                and {s2 for s2 in slots if s2 is not None} <= state.o_slots
                and state.O[slots[0]].shape[0] == c2.numel()):
            return False
        self._out_plan = (state, slots, c2, c0)
        self._h = x
        return True

    def output_pending(self) -> bool:
        """Whether this call's output is still to be rebuilt: the blocks handed on their input, and the model must
        run its output module (where :meth:`skipped_output` returns the rebuilt output)."""
        return self._out_plan is not None

    @torch.no_grad()
    def skipped_output(self) -> Optional[torch.Tensor]:
        """``reconstruct_at="output"``, a skipped call, at the model's output module: its output rebuilt from the
        stored outputs with the weights the skip took (the same line or quadratic, at the same γ), a new tensor;
        None where the blocks' output was rebuilt instead (:meth:`_plan_output`): the module then runs on it."""
        plan, self._out_plan = self._out_plan, None
        if plan is None:
            return None
        state, (s2, s1, s0), c2, c0 = plan
        out = torch.empty_like(state.O[s2])
        self.backend_for(out.device).reconstruct(state.o_zero, state.O[s2], state.O[s1], c2, out,
                                                 None if s0 is None else state.O[s0], c0)
        state.outputs_rebuilt += 1
        return out

    @torch.no_grad()
    def computed_output(self, o: torch.Tensor) -> None:
        """``reconstruct_at="output"``, a computed call, at the model's output module: store its output beside the
        entry the call stored (:meth:`after_full`)."""
        pending, self._out_store = self._out_store, None
        if pending is not None:
            pending[0].store_output(pending[1], o)

    def _gamma_from_steps(self) -> bool:
        """Whether γ is the step distance in this call (``gamma_source`` ``"steps"``, or ``"auto"`` on a
        trajectory of at least ``STEPS_GAMMA_MIN_STEPS`` steps)."""
        return self.config.gamma_from_steps(self._num_steps)

    def _step_gamma(self, state: BranchState) -> bool:
        """γ from the steps (:meth:`_gamma_from_steps`): set it to the call's distance in steps,
        ``(t − t1)/(t2 − t1)`` (a fill on the device, no host read). False (γ left as the probe
        measured it) otherwise."""
        if state.n_stored < 2 or not self._gamma_from_steps():
            return False
        t2, t1 = state.slot_step[state.newest(1)], state.slot_step[state.newest(2)]
        if t2 <= t1:
            return False
        state.gamma.fill_((self._cur_step - t1) / (t2 - t1))
        return True

    def _quad_weights(self, state: BranchState, w: torch.Tensor,
                      probe: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The weights ``(c0, c2)`` of ``line + w·(quadratic − line)`` through the three newest entries at
        ``τ = t1 + γ·(t2 − t1)`` (the fused op ``quad_blend``, one launch). With ``probe`` = ``(p, x)``,
        ``w`` is first fitted on the probe and written (:meth:`_fit_quad_weight`)."""
        s0, s1, s2 = state.newest(3), state.newest(2), state.newest(1)
        t0, t1, t2 = (float(state.slot_step[i]) for i in (s0, s1, s2))
        c0, c2 = torch.empty_like(state.gamma), torch.empty_like(state.gamma)
        ops = self.backend_for(state.gamma.device)
        if probe is None:
            ops.quad_blend(state.gamma, w, c0, c2, t0, t1, t2)
            return c0, c2
        p, x = probe
        # on at most ~ORDER_TOKENS tokens: two sums per sample need no more, and the fit then costs a
        # small fraction of one pass over the tensors at any size
        stride = max(1, -(-x.shape[1] // ORDER_TOKENS)) if x.dim() >= 2 else 1
        ops.quad_blend(state.gamma, w, c0, c2, t0, t1, t2, p, x, state.P[s0], state.P[s1], state.P[s2],
                       stride, self._policy)
        return c0, c2

    def _whole_quadratic(self, state: BranchState) -> Optional[torch.Tensor]:
        """The quadratic's weight where the step is known exactly: 1 (whole), or None (the line through the two
        newest) where the three entries' spacings are unbalanced (``quad_balance``) or, with ``quad_reach`` (for
        ``"spaced"``, through entries whose two oldest are not neighbouring steps: :func:`~dicache.state.reach_tested`),
        where the call lies beyond the quadratic's reach (:func:`~dicache.state.within_reach`): there
        ``quad_reach_blend`` (None for 0: the line)."""
        if state.n_stored >= 3:
            cfg = self.config
            t0, t1, t2 = (state.slot_step[state.newest(i)] for i in (3, 2, 1))
            if not balanced(t0, t1, t2, cfg.quad_balance_at(self.flow_matching)):
                return None
            if reach_tested(cfg.quad_reach, t0, t1) and not within_reach(t0, t1, t2, self._cur_step):
                return torch.full_like(state.gamma, cfg.quad_reach_blend) if cfg.quad_reach_blend > 0 else None
        return torch.ones_like(state.gamma)

    def _fit_quad_weight(self, state: BranchState, p: torch.Tensor, x: torch.Tensor
                         ) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """``alignment_order="auto"``: how far to bend the line towards the quadratic, fitted on the probe.

        The probe residual this call measured, ``p − x``, is compared with the two extrapolations of
        the stored probe residuals, the line ``P1 + γ·(P2 − P1)`` and the quadratic through
        ``P0, P1, P2`` at the same step: ``w`` (per sample, pooled over the batch for
        ``batch_policy="global"``) is the least-squares weight of the quadratic's correction, clipped
        to [0, 1] (0 when the two coincide). The deep residual takes the same weight. On at most
        ``ORDER_TOKENS`` tokens (an even stride over dim 1); one fused launch (``quad_blend``), no
        host read. With γ from the steps (``gamma_source``), w = 1 (None, the line, through unbalanced
        entries: ``quad_balance``). Returns the blended weights ``(c0, c2)`` for :meth:`_reconstruct`, or
        None with fewer than three entries or for the line."""
        if state.n_stored < 3:
            state.quad_weight = None
            return None
        if self._gamma_from_steps():
            # the step is known exactly: the quadratic whole (the fit hedges against a misread γ)
            state.quad_weight = self._whole_quadratic(state)
            return None if state.quad_weight is None else self._quad_weights(state, state.quad_weight)
        state.quad_weight = torch.empty_like(state.gamma)
        return self._quad_weights(state, state.quad_weight, (p, x))

    def _probe(self, state: BranchState, p: torch.Tensor, x: torch.Tensor, threshold: float) -> None:
        cfg = self.config
        p_old = state.P[state.newest(2)] if state.n_stored >= 2 else None
        self.backend_for(x.device).probe_decide(
            p, x, state.p_prev, p_old, state.x_prev, state.acc, state.den, state.sums, state.flag,
            state.gamma, threshold, float(cfg.gamma_clip[0]), float(cfg.gamma_clip[1]), self._policy, self._error,
        )

    def _decide(self, state: BranchState, p: torch.Tensor, x: torch.Tensor, threshold: float):
        """Run the fused probe op; returns (acc on the device, reuse?) with one host read."""
        self._probe(state, p, x, threshold)
        error = state.acc.clone()
        if self.config.target_speedup is None and not self.config.predictive_skip:
            return error, bool(state.flag.item())  # the one device-to-host read of the call
        # budget mode / predictive_skip: the flag and the accumulated error travel together, in one read
        host = torch.cat([state.flag.to(torch.float32), state.acc]).tolist()
        self._budget.observe(state, max(host[1:]), self._cur_step)
        return error, bool(host[0])

    def _measure(self, state: BranchState, p: torch.Tensor, x: torch.Tensor) -> None:
        """Budget mode, computed call: measure the probe error (never reuse) to learn its rate."""
        self._probe(state, p, x, -math.inf)
        cfg = self.config
        # span_power="measured" (read for the budget's replay): the residual's change since the entry before the
        # newest against the stored entries' change; and the sums the sampler's walk is read from, where taken
        # (BranchState.read_walk): all read back with the error, one transfer
        measured = (cfg.span_power == "measured" and cfg.target_speedup is not None and state.n_stored >= 2
                    and self._planning())
        values = [state.acc.max()]
        if measured:
            values += [state.sums[:, reference.SUM_ALIGN].sum(), state.den.sum()]
        walk = state.walk_sums
        host = torch.cat([torch.stack(values)] + ([walk] if walk is not None else [])).tolist()
        if walk is not None:
            state.settle_walk(*host[-3:])
        if measured:
            t2, t1 = state.slot_step[state.newest(1)], state.slot_step[state.newest(2)]
            alpha = span_power_sample(host[1], host[2], self._cur_step, t1, t2)
            if alpha is not None:
                state.span_powers.append(alpha)
        self._budget.observe(state, host[0], self._cur_step)

    @torch.no_grad()
    def after_full(self, h: torch.Tensor) -> None:
        """Store the deep output of a computed call."""
        state = self._cur
        if state is None or self._x is None:
            raise RuntimeError("after_full() called outside a computed call")
        ops = self.backend_for(h.device)
        # hindsight: the run's rule at this step (before the refresh replaces the oldest entry)
        beta = self._hindsight_beta(state)
        if beta:
            self._rebuild_at_step(state, self._x, state.run_order)
        slot = state.next_slot()
        other = state.P[state.newest()] if state.n_stored >= 1 else None
        # p_prev holds a copy of this call's probe output (written by probe_decide or the forced path).
        ops.refresh(h, state.p_prev, self._x, state.R[slot], state.P[slot], other, state.den, state.acc)
        if beta:  # the entry stored is the call's own; its output takes back β times the run's miss
            h.lerp_(state.out.to(h.dtype), -beta)
            state.hindsight_runs += 1
        state.run_skips, state.run_order = [], 0
        state.store(slot, self._cur_step)
        if self.config.reconstructs_output(self._num_steps, self.flow_matching):
            self._out_store = (state, slot)
        state.last_run, state.shorten_to = next_shortening(state.last_run, state.shorten_to, state.run)
        state.run = 0
        state.full_calls += 1
        state.acc_host = 0.0  # refresh zeroed acc on the device
        state.probe_step = self._cur_step  # p_prev now holds this call's probe
        state.records.append(CallRecord(self._cur_step, True, self._forced or REFRESH, self._pending_error))
        state.calls += 1
        self._cur = None
        self._x = None

    def abort_call(self) -> None:
        """Drop a call that did not finish (an exception inside the model); the call's output hook has run."""
        self._cur = None
        self._x = None
        self._out_store = self._out_plan = self._h = None
