"""The DiCache method: per-branch state, decide, reuse, refresh.

The engine knows no model class and no kernel. The hooks hand it, per call of a
branch, the image tokens entering block 0 (``x``) and leaving the probe
(``p``); it answers with the reconstructed deep output ``h`` (reuse) or
``None`` (compute the deep blocks, then call :meth:`DiCacheEngine.after_full`
with their output). All arithmetic goes through a backend of
:mod:`dicache.ops`; per decided call the host reads one flag.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .config import DiCacheConfig
from .ops import Backend, reference, select_backend

# Why a call was computed or skipped (the ``reason`` of a CallRecord).
WARMUP = "warmup"  # in the first warm-up calls of the trajectory (or nothing stored yet)
LAST_STEP = "last_step"  # one of the final steps, forced by the config (force_last_step)
REFRESH = "refresh"  # the accumulated error reached δ
REUSE = "reuse"  # skipped, reconstructed with trajectory alignment
REUSE_ONE = "reuse_one"  # skipped with one stored residual: h = x + R[-1]
CAP = "cap"  # computed: max_consecutive_reuse skips in a row
FOLLOW = "follow"  # cfg_decision="shared": did what the step's leading branch decided
PREDICTED = "predicted"  # predictive_skip: skipped without a probe, the last increment predicting the error
PLANNED = "planned"  # plan_runs: skipped without a probe, in a run planned at the computed call before it
REACH = "reach"  # computed: a reuse would sit farther past the newest entry than max_extrapolation allows
SHORTEN = "shorten"  # computed: monotone_runs, the run may not outlast the shortest since the runs began to shorten

#: alignment_order="auto" fits the quadratic's weight on at most about this many tokens.
ORDER_TOKENS = 512

_POLICY = {"global": reference.POLICY_GLOBAL, "max": reference.POLICY_MAX}
_ERROR = {"probe": reference.ERROR_PROBE, "probe_minus_input": reference.ERROR_PROBE_MINUS_INPUT}


@dataclass
class CallRecord:
    """One call of a branch. ``error`` and ``gamma`` stay on the device until read."""

    index: int
    computed: bool
    reason: str
    error: Optional[torch.Tensor] = None  # acc after this call's probe ([B] fp32), None for forced calls
    gamma: Optional[torch.Tensor] = None  # γ used ([B] fp32), only for REUSE
    probed: bool = True  # False: skipped before its probe (a follower of a reusing leader)


class BranchState:
    """The cache of one denoising branch ("cond", "uncond", …).

    Buffers are allocated on the first call and reused: a ring of window slots
    for ``R`` and ``P`` (two, or three for ``alignment_order=2``), the previous
    probe output (and input, for the ``probe_minus_input`` error), the
    reconstruction output, and the small fp32 state tensors of the ops.
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.num_steps: Optional[int] = None  # the trajectory's step count, when known
        self.calls = 0
        self.full_calls = 0
        self.unprobed_skips = 0  # predicted skips: no probe ran (budget mode credits the blocks saved)
        self.run = 0  # consecutive reuses since the last computed call
        self.last_run: Optional[int] = None  # the length of the last run of reuses that ended (runs of none aside)
        self.shorten_to: Optional[int] = None  # monotone_runs: the most reuses in a row from here on, once runs shorten
        self.acc_host = 0.0  # budget mode: the accumulated error last read back
        self.err_sum = 0.0  # budget mode: sum and count of per-call probe errors seen
        self.err_n = 0
        self.err_last = 0.0  # the last measured per-step increment of the accumulated error
        self.increments: Dict[int, float] = {}  # budget mode: step -> the per-step error increment measured
        self.probe_step: Optional[int] = None  # the step of the last probe that measured the error
        # budget mode, online rule: (run start where runs are planned, else the call's step, δ solved there)
        self.online_delta: Optional[Tuple[int, float]] = None
        # alignment_order="auto": the weight w ([B] fp32, on the device) of the quadratic against the line that
        # the last probe fitted (None: the line)
        self.quad_weight: Optional[torch.Tensor] = None
        self.records: List[CallRecord] = []
        self.shape: Optional[Tuple[torch.Size, torch.dtype, torch.device]] = None
        self.ring: List[int] = []  # slot indices of the stored entries, oldest first (R[-1] is R[ring[-1]])
        self.slot_step: Dict[int, int] = {}  # slot -> the step index its entry was stored at
        self.has_prev = False

    @property
    def n_stored(self) -> int:
        return len(self.ring)

    def newest(self, back: int = 1) -> int:
        """The slot of ``R[-back]`` / ``P[-back]``."""
        return self.ring[-back]

    def allocate(self, x: torch.Tensor, with_x_prev: bool, slots: int = 2) -> None:
        B = x.shape[0]
        dev = x.device
        self.shape = (x.shape, x.dtype, dev)
        self.R = [torch.empty_like(x) for _ in range(slots)]
        self.P = [torch.empty_like(x) for _ in range(slots)]
        self.p_prev = torch.empty_like(x)
        self.x_prev = torch.empty_like(x) if with_x_prev else None
        self.out = torch.empty_like(x)
        f32 = dict(dtype=torch.float32, device=dev)
        self.acc = torch.zeros(B, **f32)
        self.den = torch.zeros(B, **f32)
        self.sums = torch.zeros(B, reference.NUM_SUMS, **f32)
        self.gamma = torch.ones(B, **f32)
        self.flag = torch.zeros(1, dtype=torch.int32, device=dev)
        self.ring = []
        self.slot_step = {}
        self.has_prev = False
        self.quad_weight = None

    def next_slot(self) -> int:
        """The slot a refresh writes: a free one, else the oldest entry's."""
        free = [i for i in range(len(self.R)) if i not in self.ring]
        return free[0] if free else self.ring[0]

    def store(self, slot: int, step: int) -> None:
        self.ring = [i for i in self.ring if i != slot] + [slot]
        self.slot_step[slot] = step

    def release(self) -> None:
        for name in ("R", "P", "p_prev", "x_prev", "out", "acc", "den", "sums", "gamma", "flag"):
            self.__dict__.pop(name, None)
        self.shape = None
        self.ring = []
        self.slot_step = {}
        self.has_prev = False

    def matches(self, x: torch.Tensor) -> bool:
        return self.shape == (x.shape, x.dtype, x.device)


class DiCacheEngine:
    """The per-model cache: one :class:`BranchState` per branch name.

    Args:
        config: the validated settings.
        num_blocks: M, the number of blocks of the model.
        backend: a backend name of :data:`dicache.ops.BACKENDS`; resolved per
            device on first use.
    """

    #: ``target_speedup``: whether calls after the first of a step count replay the error profile of the earlier
    #: ones (:class:`_Budget`); a subclass sets False to decide every call by the online rule
    replay_budget = True

    def __init__(self, config: DiCacheConfig, num_blocks: int, backend: str = "auto"):
        self.config = config
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
        self._budget = _Budget(config, num_blocks, replay=self.replay_budget)
        self._policy = _POLICY[config.batch_policy]
        self._error = _ERROR[config.error]

    # -- state -----------------------------------------------------------
    def reset(self, branch: Optional[str] = None) -> None:
        """Forget one branch, or all of them (a new trajectory). The compute budget keeps the error profile
        of each finished trajectory for the next one (:meth:`_Budget.remember`)."""
        names = list(self.branches) if branch is None else [branch]
        for name in names:
            state = self.branches.pop(name, None)
            if state is not None:
                self._budget.remember(state)
        if branch is None:
            self._leads.clear()
            self._lead = None
        self._cur = None

    def set_step_sizes(self, sizes: Optional[Sequence[float]]) -> None:
        """The trajectory's step sizes ``|σ_k − σ_(k+1)|`` per call (the pipeline's scheduler tells them at each
        pipeline call; None: unknown). The compute budget's online rule expects each call's probe error in
        proportion to them (:meth:`_Budget.online_profile`)."""
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
        step = state.calls if step_index is None else step_index
        self._cur_step = step
        self._num_steps = num_steps
        state.num_steps = num_steps
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
            self._forced = SHORTEN  # (in budget mode the budget's hard bound comes first: _Budget.plan_skip)

    def _threshold(self, state: BranchState) -> float:
        """δ for the current call: fixed, scheduled over the steps, or set by the compute budget."""
        cfg, n, k = self.config, self._num_steps, self._cur_step
        if cfg.target_speedup is not None:
            return self._budget.threshold(state, k, n, len(self.branches))
        delta = float(cfg.threshold)
        if cfg.threshold_end is not None and n is not None and n > 1:
            frac = min(max(k / (n - 1), 0.0), 1.0)
            delta = float(cfg.threshold + (cfg.threshold_end - cfg.threshold) * frac)
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
        if state is None or self._forced is not None:
            return None
        planning = self._planning()
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
        if two:
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
            skip = (cap is None or state.run < cap) and state.err_last * steps < self._threshold(state)
        if not skip:
            self._forced = SHORTEN if at_shorten_bound(cfg, state, self._num_steps) else REFRESH
            return None
        self._x = x
        if not self._step_gamma(state):
            t2, t1 = state.slot_step[state.newest(1)], state.slot_step[state.newest(2)]
            lo, hi = (float(g) for g in cfg.gamma_clip)
            state.gamma.fill_(min(max((self._cur_step - t1) / (t2 - t1), lo), hi))
        elif cfg.alignment_order == "auto":
            state.quad_weight = torch.ones_like(state.gamma)  # the step is known exactly: the quadratic whole
        return self._unprobed_skip(state, x, PLANNED)

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
        """Finish a skipped call whose output is in ``state.out``."""
        state.records.append(record)
        state.calls += 1
        state.run += 1
        self._cur = None
        return state.out

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
        line)``, ``w`` the branch's fitted weight (:meth:`_fit_quad_weight`). The weights stay on the
        device; one fused pass does ``x + R1 + c2·(R2 − R1) + c0·(R0 − R1)``.
        ``weights``: ``(c0, c2)`` already computed for this call (by :meth:`_fit_quad_weight`).
        """
        ops = self.backend_for(x.device)
        if state.n_stored < 2:
            ops.reconstruct(x, state.R[state.newest()], None, state.gamma, state.out)
            return
        r2, r1 = state.R[state.newest(1)], state.R[state.newest(2)]
        order = self.config.alignment_order
        if order == 1 or state.n_stored < 3 or (order == "auto" and weights is None and state.quad_weight is None):
            ops.reconstruct(x, r2, r1, state.gamma, state.out)
            return
        if weights is None:
            weights = self._lagrange(state)
            if order == "auto":
                weights = self._blend(state, *weights, state.quad_weight)
        c0, c2 = weights
        ops.reconstruct(x, r2, r1, c2, state.out, state.R[state.newest(3)], c0)

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

    @staticmethod
    def _lagrange(state: BranchState) -> Tuple[torch.Tensor, torch.Tensor]:
        """The weights ``c0`` (of the oldest entry) and ``c2`` (of the newest) of the quadratic through the
        three newest entries at ``τ = t1 + γ·(t2 − t1)``; ``c1 = 1 − c0 − c2``."""
        s0, s1, s2 = state.newest(3), state.newest(2), state.newest(1)
        t0, t1, t2 = (float(state.slot_step[i]) for i in (s0, s1, s2))
        tau = t1 + state.gamma * (t2 - t1)
        c0 = (tau - t1) * (tau - t2) / ((t0 - t1) * (t0 - t2))
        c2 = (tau - t0) * (tau - t1) / ((t2 - t0) * (t2 - t1))
        return c0, c2

    @staticmethod
    def _blend(state: BranchState, c0: torch.Tensor, c2: torch.Tensor, w: torch.Tensor
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The weights ``(c0, c2)`` of ``line + w·(quadratic − line)``: the line is ``c0 = 0, c2 = γ``."""
        return w * c0, state.gamma + w * (c2 - state.gamma)

    def _fit_quad_weight(self, state: BranchState, p: torch.Tensor, x: torch.Tensor
                         ) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """``alignment_order="auto"``: how far to bend the line towards the quadratic, fitted on the probe.

        The probe residual this call measured, ``p − x``, is compared with the two extrapolations of
        the stored probe residuals, the line ``P1 + γ·(P2 − P1)`` and the quadratic through
        ``P0, P1, P2`` at the same step: ``w`` (per sample, pooled over the batch for
        ``batch_policy="global"``) is the least-squares weight of the quadratic's correction, clipped
        to [0, 1] (0 when the two coincide). The deep residual takes the same weight. On at most
        ``ORDER_TOKENS`` tokens (an even stride over dim 1); everything stays on the device (no
        host read). With γ from the steps (``gamma_source``), w = 1. Returns the blended weights
        ``(c0, c2)`` for :meth:`_reconstruct`, or None with fewer than three entries."""
        if state.n_stored < 3:
            state.quad_weight = None
            return None
        if self._gamma_from_steps():
            # the step is known exactly: the quadratic whole (the fit hedges against a misread γ)
            c0, c2 = self._lagrange(state)
            state.quad_weight = torch.ones_like(c0)
            return self._blend(state, c0, c2, state.quad_weight)
        f = torch.float32
        # on at most ~ORDER_TOKENS tokens: two sums per sample need no more, and the fit then costs a
        # small fraction of one pass over the tensors at any size
        step = max(1, -(-x.shape[1] // ORDER_TOKENS)) if x.dim() >= 2 else 1

        def sub(t: torch.Tensor) -> torch.Tensor:
            return (t[:, ::step] if step > 1 else t).to(f)

        P0, P1, P2 = (sub(state.P[state.newest(k)]) for k in (3, 2, 1))
        d21 = P2 - P1
        shape = (-1,) + (1,) * (x.dim() - 1)
        c0, c2 = self._lagrange(state)
        g = state.gamma.view(shape)
        miss = sub(p) - sub(x) - P1 - g * d21  # what the line misses of the measured probe residual
        bend = (c2.view(shape) - g) * d21 + c0.view(shape) * (P0 - P1)  # quadratic − line
        num, den = (miss * bend).flatten(1).sum(1), (bend * bend).flatten(1).sum(1)
        if self._policy == reference.POLICY_GLOBAL:
            num, den = num.sum().expand_as(num), den.sum().expand_as(den)
        w = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
        state.quad_weight = torch.nan_to_num(w, nan=0.0).clamp_(0.0, 1.0)
        return self._blend(state, c0, c2, state.quad_weight)

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
        self._budget.observe(state, float(state.acc.max()), self._cur_step)

    @torch.no_grad()
    def after_full(self, h: torch.Tensor) -> None:
        """Store the deep output of a computed call."""
        state = self._cur
        if state is None or self._x is None:
            raise RuntimeError("after_full() called outside a computed call")
        ops = self.backend_for(h.device)
        slot = state.next_slot()
        other = state.P[state.newest()] if state.n_stored >= 1 else None
        # p_prev holds a copy of this call's probe output (written by probe_decide or the forced path).
        ops.refresh(h, state.p_prev, self._x, state.R[slot], state.P[slot], other, state.den, state.acc)
        state.store(slot, self._cur_step)
        state.last_run, state.shorten_to = next_shortening(state.last_run, state.shorten_to, state.run)
        state.run = 0
        state.full_calls += 1
        state.acc_host = 0.0  # refresh zeroed acc on the device
        state.probe_step = self._cur_step  # p_prev now holds this call's probe
        if self._forced is not None:
            state.records.append(CallRecord(self._cur_step, True, self._forced))
        else:
            state.records.append(CallRecord(self._cur_step, True, REFRESH, self._pending_error))
        state.calls += 1
        self._cur = None
        self._x = None

    def abort_call(self) -> None:
        """Drop a call that did not finish (an exception inside the model)."""
        self._cur = None
        self._x = None


def next_shortening(last_run: Optional[int], bound: Optional[int], run: int) -> Tuple[Optional[int], Optional[int]]:
    """``monotone_runs``: (the last run, the bound on runs) after a run of ``run`` reuses ended. A run shorter
    than the one before it starts the bound (its length); each run after lowers it to the shortest. Runs of
    none (two computed calls in a row: the warm-up, the final steps, a large error) change nothing."""
    if run < 1:
        return last_run, bound
    if bound is not None or (last_run is not None and run < last_run):
        bound = run if bound is None else min(bound, run)
    return run, bound


def at_shorten_bound(config: DiCacheConfig, state: BranchState, n: Optional[int]) -> bool:
    """``monotone_runs``: whether the branch's run of reuses has reached the bound :func:`next_shortening` set."""
    return state.shorten_to is not None and state.run >= state.shorten_to and config.monotone_runs_at(n)


def _need_steps(n: Optional[int]) -> None:
    """The compute budget is counted in calls of the trajectory: without its step count there is none."""
    if n is None:
        raise RuntimeError(
            "target_speedup needs the number of steps: enable DiCache on the pipeline, pass "
            "num_inference_steps to cache_context, or set num_inference_steps in the config"
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


class _Budget:
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
      the rule predicts the calls to come as ``c · size_k`` (``c`` the errors measured over their steps' sizes)
      and decides each call as the replay does, δ solved on that profile from the current call on
      (:meth:`online_profile`). ``c`` is read off the calls after the warm-up once one is measured: the first
      steps' errors run 2–4 times the middle's ratio to the size. Where runs are planned the same prediction
      feeds the plan at each run start (below).
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
    per step the measured ones show: the error of a denoising trajectory grows towards its end, and runs shorten
    there as a replay's would.

    Either way the budget is a hard bound: when it is spent every call left reuses (the final steps
    excepted), and when the calls left are no more than the budget left (rounded to the nearest call)
    every one is computed.
    """

    def __init__(self, config: DiCacheConfig, num_blocks: int, replay: bool = True):
        self.config = config
        self.M = num_blocks
        self.replay = replay  # False: no profile is kept, every call is decided by the online rule
        # (branch, N) -> step -> the mean increment over the finished trajectories, and how many there were
        self.profiles: Dict[Tuple[str, int], Dict[int, float]] = {}
        self._seen: Dict[Tuple[str, int], int] = {}
        self._solved: Dict[Tuple[str, int], float] = {}  # (branch, N) -> δ of the replay, per trajectory
        self.step_sizes: Optional[List[float]] = None  # |σ_k − σ_(k+1)| of the trajectory, when the pipeline tells

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
        n = state.num_steps
        key = (state.name, n)
        self._solved.pop(key, None)
        if (not self.replay or self.config.target_speedup is None or n is None or state.calls < n
                or len(state.increments) < n // 2):
            return
        mean, k = self.profiles.get(key, {}), self._seen.get(key, 0)
        self.profiles[key] = {step: (mean[step] * k + v) / (k + 1) if step in mean else v
                              for step, v in state.increments.items()}
        self._seen[key] = k + 1

    def replays(self, state: BranchState, n: Optional[int]) -> bool:
        """Whether this trajectory of ``state`` is decided by the replay rule (a profile of its step count)."""
        return (state.name, n) in self.profiles

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
        return "online, step sizes" if state.num_steps and self._sizes(state.num_steps) else "online"

    def _replay_delta(self, state: BranchState, n: int, branches: int) -> Optional[float]:
        """δ of the replay rule for this trajectory of ``state``, or None without a profile."""
        key = (state.name, n)
        if not self.replays(state, n):
            return None
        if key not in self._solved:
            planned = self.config.plans_runs(n)
            credit = 0.0 if planned else self._probe_credit(branches)
            self._solved[key] = self.solve(self.profiles[key], n, self.budget(n, branches, planned), credit)
        return self._solved[key]

    def simulate(self, incs: List[float], n: int, delta: float) -> int:
        """Computed calls of the fixed-δ rule (warm-up, run_power, final steps computed) on increments ``incs``."""
        return self.simulate_calls(incs, n, delta)[0]

    def simulate_calls(self, incs: List[float], n: int, delta: float,
                       begin: Optional[tuple] = None) -> Tuple[int, int]:
        """(computed calls, skips without a probe) of the fixed-δ rule on increments ``incs``; where runs are
        planned, ``begin = (t2, t1, e, last_run, shorten_to)`` simulates the calls after the computed call at step
        ``t2`` only (``t1`` the computed call before it, ``e`` the per-step error ``t2`` measured, the last two
        as the branch's: ``monotone_runs``); where every call is probed,
        ``begin = (k, acc, run, probed_skip, stored)`` simulates the calls from step ``k`` on, with the
        accumulated error ``acc`` and the ``run`` of reuses carried in (``probed_skip``: the call before ``k``
        was a probed skip; ``stored``: the entries stored before ``k``).

        With ``predictive_skip`` a skip right after a probed skip (two entries stored) runs no probe when the
        accumulated error plus the last increment stays under δ; the next probe measures the error since."""
        warm, p = self.config.warmup_calls(n), self.config.run_power_at(n)
        last = self.config.last_calls(n)
        if self.config.plans_runs(n):
            return self._simulate_plan(incs, n, delta, warm, last, p, begin), 0
        predict = bool(self.config.predictive_skip)
        full, acc, run, unprobed, probed_skip = 0, 0.0, 0, 0, False
        first, stored = 0, 0
        if begin is not None:  # (step, accumulated error, run, last call a probed skip, entries stored)
            first, acc, run, probed_skip, stored = begin
        for k in range(first, n):
            if k < warm or k >= n - last:
                full, acc, run, probed_skip = full + 1, 0.0, 0, False
                continue
            limit = delta / (run + 1) ** p
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
                       begin: Optional[tuple] = None) -> int:
        """Computed calls of the fixed-δ plan (``plan_runs``): each computed call measures the mean increment
        since the last one, the ``j``-th call after it skips while ``j·e < δ/j^p``, within
        ``max_extrapolation`` and ``monotone_runs``. ``begin``: see :meth:`simulate_calls`."""
        reach = self.config.max_extrapolation_at(n)
        monotone = self.config.monotone_runs_at(n)
        full, run, e = 0, 0, None
        t1 = t2 = None  # the two newest computed steps
        last_run = shorten_to = None  # monotone_runs (next_shortening)
        first = 0
        if begin is not None:
            t2, t1, e, last_run, shorten_to = begin
            first = t2 + 1
        for k in range(first, n):
            forced = k < warm or k >= n - last or t1 is None or e is None
            if not forced and reach is not None and k - t2 > reach * (t2 - t1):
                forced = True
            if not forced and monotone and shorten_to is not None and run >= shorten_to:
                forced = True
            if not forced and e * (k - t2) < delta / (run + 1) ** p:
                run += 1
                continue
            if t2 is not None:
                e = sum(incs[t2 + 1:k + 1]) / (k - t2)
            last_run, shorten_to = next_shortening(last_run, shorten_to, run)
            full, run, t1, t2 = full + 1, 0, t2, k
        return full

    def solve(self, profile: Dict[int, float], n: int, budget: float, credit: float = 0.0,
              begin: Optional[tuple] = None,
              position: Optional[float] = None) -> float:
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
        sims = [self.simulate_calls(incs, n, d, begin) for d in grid]
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
            return delta / (state.run + 1) ** self.config.run_power_at(n)
        if state.err_n == 0:
            # no error measured yet (a warm-up of one call): the budget must skip somewhere, and a refresh
            # now would be spent on no information; skip unless this call's own probe error is not finite
            return math.inf
        delta = self._online_delta_probed(state, step, n, branches)
        if delta is not None:
            return delta / (state.run + 1) ** self.config.run_power_at(n)
        rate = max(state.err_sum / state.err_n, state.err_last)
        return rate * steps_left / left

    def _sizes(self, n: int) -> Optional[List[float]]:
        """The step sizes of a trajectory of ``n`` calls, if the pipeline told them (and they are usable)."""
        sizes = self.step_sizes
        if sizes is None or len(sizes) != n or not all(math.isfinite(v) and v >= 0 for v in sizes) or not any(sizes):
            return None
        return sizes

    def _sizes_rule(self, state: BranchState, n: int) -> Optional[List[float]]:
        """The step sizes, where the online rule decides call by call by them: every call probed, the sizes
        told, an error measured; else None (where runs are planned it decides by them at each run start:
        :meth:`_online_delta`)."""
        if self.config.plans_runs(n) or state.probe_step is None or state.err_n == 0:
            return None
        return self._sizes(n)

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
        profile = self.online_profile(state, state.probe_step, n, sizes)
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
        calls left are no more than the budget left (to the nearest call) every one is computed."""
        _need_steps(n)
        start = state.probe_step if state.probe_step is not None else step - 1
        left, steps_left = self._left(state, start + 1, n, 1, planned=True)
        if left <= 0:
            return True
        if self._compute_all(left, self._left(state, step, n, 1, planned=True)[1]) or \
                at_shorten_bound(self.config, state, n):
            return False
        delta = self._replay_delta(state, n, 1)
        if delta is None:
            delta = self._online_delta(state, start, n)
        if delta is not None:
            limit = delta / (state.run + 1) ** self.config.run_power_at(n)
            return state.err_last * (step - start) < limit
        return state.run < math.ceil(steps_left / left - 1.0 - 1e-9)  # runs of ⌈S/F − 1⌉ reuses

    @staticmethod
    def growth(increments: Dict[int, float], after: int, upto: int, n: int) -> Optional[float]:
        """The growth per step of the per-step error increments measured at steps ``after < k <= upto``: the
        ratio of the geometric means of their later and earlier halves, to the power one over the steps between
        the halves' mean steps, within [1, :data:`ONLINE_MAX_GROWTH` ``** (1/n)``]; None with fewer than
        :data:`ONLINE_MIN_INCREMENTS` increments."""
        pts = sorted((k, v) for k, v in increments.items() if after < k <= upto and math.isfinite(v) and v > 0)
        if len(pts) < ONLINE_MIN_INCREMENTS:
            return None
        half = len(pts) // 2
        early, late = pts[:half], pts[half:]

        def centre(part):
            return (sum(k for k, _ in part) / len(part), sum(math.log(v) for _, v in part) / len(part))

        (k0, l0), (k1, l1) = centre(early), centre(late)
        r = math.exp((l1 - l0) / (k1 - k0)) if k1 > k0 else 1.0
        return min(max(r, 1.0), ONLINE_MAX_GROWTH ** (1.0 / max(1, n)))

    def online_profile(self, state: BranchState, start: int, n: int,
                       sizes: Optional[List[float]] = None) -> Optional[Dict[int, float]]:
        """The per-step error profile the online rule solves δ on at the run that starts at computed step
        ``start``: the increments measured up to it; the steps after it ``c · sizes[k]`` given the step sizes
        (``c`` = the measured increments over their steps' sizes, those after the warm-up once there are any),
        else the last increment times the measured
        growth (:meth:`growth`) per step; None before an increment (with the sizes) or enough of them (without)
        is measured."""
        profile = {k: v for k, v in state.increments.items() if k <= start}
        if sizes is not None:
            # the probe error of a call grows with the step its output takes: c·|σ_k − σ_(k+1)|, c the ratio of
            # the errors measured to their steps' sizes
            seen = [(k, v) for k, v in profile.items() if math.isfinite(v) and v >= 0 and k < n]
            # the warm-up's errors run 2–4 times the middle's ratio to the size (the first steps of a trajectory:
            # benchmarks/step_sizes.py): c from the calls after it once one is measured
            warm = self.config.warmup_calls(n)
            seen = [(v, sizes[k]) for k, v in seen if k >= warm] or [(v, sizes[k]) for k, v in seen]
            num, den = sum(v for v, _ in seen), sum(d for _, d in seen)
            if not seen or den <= 0 or num <= 0:
                return None
            profile.update({k: num / den * sizes[k] for k in range(start + 1, n)})
            return profile
        r = self.growth(state.increments, self.config.warmup_calls(n), start, n)
        if r is None or not (math.isfinite(state.err_last) and state.err_last > 0):
            return None
        profile.update({k: state.err_last * r ** (k - start) for k in range(start + 1, n)})
        return profile

    def _online_delta(self, state: BranchState, start: int, n: int) -> Optional[float]:
        """δ of the online rule for the run that starts at ``start`` (solved once per run), or None."""
        if state.online_delta is None or state.online_delta[0] != start:
            profile = self.online_profile(state, start, n, self._sizes(n))
            if profile is None:
                return None
            # the calls after ``start`` only: those before it are decided, the budget left is what they spend
            t1 = state.slot_step.get(state.newest(2)) if state.n_stored >= 2 else None
            left = self.budget(n, 1, planned=True) - state.full_calls
            begin = (start, t1, state.err_last, state.last_run, state.shorten_to)
            delta = self.solve(profile, n, left, begin=begin, position=ONLINE_DELTA_POSITION)
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
            err /= steps
            state.err_sum += err
            state.err_n += 1
            state.err_last = err
            for k in range(step - steps + 1, step + 1):  # the steps since the last probe share the increment
                state.increments[k] = err
        state.acc_host = acc
        state.probe_step = step
