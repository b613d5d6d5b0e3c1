"""What the engine keeps per denoising branch, and why each call was computed or skipped.

:class:`BranchState` holds one branch's cache (the stored residuals and probe outputs, the ops' small state) and
its bookkeeping (calls, runs of reuses, the budget mode's measured errors); :class:`CallRecord` one decided call;
the reason constants name why. Shared by the engine (:mod:`dicache.engine`) and the compute budget
(:mod:`dicache.budget`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .config import (QUAD_REACH_SPACED, SPAN_POWER_DRIFT, SPAN_POWER_MIN, SPAN_POWER_SAMPLES, WALK_COSINE,
                     DiCacheConfig)
from .ops import reference


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


@dataclass
class CallRecord:
    """One call of a branch. ``error`` and ``gamma`` stay on the device until read."""

    index: int
    computed: bool
    reason: str
    error: Optional[torch.Tensor] = None  # acc after this call's probe ([B] fp32), None where none was measured
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
        self.outputs_rebuilt = 0  # skipped calls whose model output was rebuilt from the stored ones (reconstruct_at)
        self.run = 0  # consecutive reuses since the last computed call
        self.last_run: Optional[int] = None  # the length of the last run of reuses that ended (runs of none aside)
        self.shorten_to: Optional[int] = None  # monotone_runs: the most reuses in a row from here on, once runs shorten
        self.acc_host = 0.0  # budget mode: the accumulated error last read back
        self.err_sum = 0.0  # budget mode: sum and count of per-call probe errors seen
        self.err_n = 0
        self.err_last = 0.0  # the last measured per-step increment of the accumulated error
        self.increments: Dict[int, float] = {}  # budget mode: step -> the per-step error increment measured
        # step -> (the error its measurement read, over how many steps, more than one), to read the increments
        # again at the trajectory's span_power when it ends (where runs are planned)
        self.spans: Dict[int, Tuple[float, int]] = {}
        self.probe_step: Optional[int] = None  # the step of the last probe that measured the error
        self.span_powers: List[float] = []  # span_power="measured": the α each computed call read (span_power_sample)
        # whether the trajectory's sampler adds noise at every step, and the cosine it was read from (read_walk,
        # settle_walk; None: not read)
        self.walk: Optional[bool] = None
        self.walk_cosine: Optional[float] = None
        self._walk_inputs: List[Tuple[int, torch.Tensor]] = []  # (step, the blocks' input) until the sums are taken
        self.walk_sums: Optional[torch.Tensor] = None  # increments_sums on the device, until a computed call reads them
        # budget mode, online rule: (run start where runs are planned, else the call's step, δ solved there)
        self.online_delta: Optional[Tuple[int, float]] = None
        # alignment_order="auto": the weight w ([B] fp32, on the device) of the quadratic against the line that
        # the last probe fitted (None: the line)
        self.quad_weight: Optional[torch.Tensor] = None
        # hindsight: the skips of the current run, (step, step size), and how many stored entries their rule used
        # (1: the newest, 2: the line, 3: the quadratic; 0: mixed or unknown, no correction); the runs corrected so far
        self.run_skips: List[Tuple[int, float]] = []
        self.run_order = 0
        self.hindsight_runs = 0
        self.records: List[CallRecord] = []
        self.shape: Optional[Tuple[torch.Size, torch.dtype, torch.device]] = None
        self.ring: List[int] = []  # slot indices of the stored entries, oldest first (R[-1] is R[ring[-1]])
        self.slot_step: Dict[int, int] = {}  # slot -> the step index its entry was stored at
        self.has_prev = False
        # reconstruct_at="output": the model's outputs at the stored calls, by slot (as R), allocated on the first
        # one stored; o_slots: the slots whose output belongs to their current entry
        self.O: Optional[List[torch.Tensor]] = None
        self.o_slots: set = set()
        self.o_zero: Optional[torch.Tensor] = None

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
        self.O, self.o_slots, self.o_zero = None, set(), None

    def next_slot(self) -> int:
        """The slot a refresh writes: a free one, else the oldest entry's."""
        free = [i for i in range(len(self.R)) if i not in self.ring]
        return free[0] if free else self.ring[0]

    def store(self, slot: int, step: int) -> None:
        self.ring = [i for i in self.ring if i != slot] + [slot]
        self.slot_step[slot] = step
        self.o_slots.discard(slot)  # its output, if any, is the old entry's

    def store_output(self, slot: int, o: torch.Tensor) -> None:
        """``reconstruct_at="output"``: the model's output at the call whose entry is in ``slot``."""
        if self.O is None or self.O[0].shape != o.shape or self.O[0].dtype != o.dtype or self.O[0].device != o.device:
            self.O = [torch.empty_like(o) for _ in self.R]
            self.o_zero = torch.zeros_like(o)
            self.o_slots = set()
        self.O[slot].copy_(o)
        self.o_slots.add(slot)

    def release(self) -> None:
        for name in ("R", "P", "p_prev", "x_prev", "out", "acc", "den", "sums", "gamma", "flag"):
            self.__dict__.pop(name, None)
        self.O, self.o_slots, self.o_zero = None, set(), None
        self.shape = None
        self.ring = []
        self.slot_step = {}
        self.has_prev = False

    def matches(self, x: torch.Tensor) -> bool:
        return self.shape == (x.shape, x.dtype, x.device)

    def read_walk(self, x: torch.Tensor, step: int) -> None:
        """Take the sums ``walk`` is read from off the blocks' input ``x`` at the trajectory's first three calls (two
        copies of ``x`` are kept until the third takes them, on the device: ``walk_sums``); the next computed call
        reads them back with its error (:meth:`settle_walk`), no transfer of their own."""
        seen = self._walk_inputs
        if seen and (seen[-1][0] >= step or seen[-1][1].shape != x.shape or seen[-1][1].device != x.device):
            seen.clear()  # a new trajectory, or another input
        if len(seen) < 2:
            seen.append((step, x.detach().clone()))
            return
        self.walk_sums = increments_sums(seen[0][1], seen[1][1], x)
        seen.clear()

    def note_skip(self, step: int, size: float, order: int) -> None:
        """hindsight: a skip of the current run at ``step`` (its step size ``size``) rebuilt the residual on the
        ``order`` newest stored entries (0: not from the steps). A run whose skips differ is not corrected."""
        if self.run_skips and order != self.run_order:
            order = 0
        self.run_skips.append((step, size))
        self.run_order = order

    def settle_walk(self, dot: float, uu: float, vv: float) -> None:
        """``walk`` from the read-back ``walk_sums``: whether the trajectory's sampler adds noise at every step, the
        cosine of the input's two increments under :data:`~dicache.config.WALK_COSINE`."""
        self.walk_cosine = cosine_of(dot, uu, vv)
        self.walk = reads_walk(self.walk_cosine)
        self.walk_sums = None


def reads_walk(cosine: float) -> bool:
    """Whether the cosine of the blocks' input's two increments says the sampler adds noise at every step (under
    :data:`~dicache.config.WALK_COSINE`; a non-finite one does not)."""
    return cosine < WALK_COSINE


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


def balanced(t0: int, t1: int, t2: int, ratio: Optional[float]) -> bool:
    """``quad_balance``: whether three entries stored at steps ``t0 < t1 < t2`` are spaced evenly enough for the
    quadratic through them, the shorter spacing at least ``ratio`` times the longer (None: always)."""
    return ratio is None or min(t1 - t0, t2 - t1) >= ratio * max(t1 - t0, t2 - t1)


def reach_tested(mode: Union[bool, str], t0: int, t1: int) -> bool:
    """``quad_reach``: whether the reach test (:func:`within_reach`) applies to three entries whose two oldest are
    stored at steps ``t0 < t1``: never (False), always (True), or with ``"spaced"`` unless those two are neighbouring
    steps (the warm-up's entries 1, 2, 4 keep the quadratic for the first run after it)."""
    return mode is True or (mode == QUAD_REACH_SPACED and t1 - t0 > 1)


def within_reach(t0: int, t1: int, t2: int, step: int) -> bool:
    """``quad_reach``: whether a call at ``step`` lies no further past the newest of three entries stored at steps
    ``t0 < t1 < t2`` than the shorter of their two spacings (beyond it the quadratic through them extrapolates their
    jitter: its Lagrange weights at step 15 through steps 10, 12, 13 are 1, −5, 5)."""
    return step - t2 <= min(t1 - t0, t2 - t1)


def planned_error(e: float, t1: Optional[int], t2: int, k: int, sizes: Optional[Sequence[float]] = None,
                  power: float = 1.0) -> float:
    """The error a run planned at the computed call ``t2`` (``plan_runs``) predicts for the call at step ``k > t2``
    from the one-step error ``e`` measured since the computed call ``t1``: ``(k − t2)^α·e`` (α: ``power``,
    ``span_power``), or with the step sizes (``plan_error="step_sizes"``) ``e · (Σ sizes(t2, k] / mean sizes(t1,
    t2])^α``."""
    span = float(k - t2)
    if sizes is not None and t1 is not None and 0 <= t1 < t2 < k <= len(sizes) - 1:
        measured = sum(sizes[t1 + 1:t2 + 1]) / (t2 - t1)
        if measured > 0:
            span = sum(sizes[t2 + 1:k + 1]) / measured
    return e * span ** power


def increments_sums(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``[⟨u, v⟩, |u|², |v|²]`` of the increments ``u = b − a`` and ``v = c − b`` over all their elements (fp32, a
    batch row at a time), on the device."""
    sums = torch.zeros(3, dtype=torch.float32, device=a.device)
    for i in range(a.shape[0]):
        u, v = b[i].float() - a[i].float(), c[i].float() - b[i].float()
        sums += torch.stack([(u * v).sum(), (u * u).sum(), (v * v).sum()])
    return sums


def cosine_of(dot: float, uu: float, vv: float) -> float:
    """The cosine from :func:`increments_sums`; 1 where either increment is zero."""
    return dot / math.sqrt(uu * vv) if uu > 0 and vv > 0 else 1.0


def hindsight_weight(k: int, entries: Sequence[int], n: int) -> float:
    """``φ(k)``: the Newton basis term that raises the polynomial through the stored entries at steps ``entries`` by
    one degree to pass through the computed step ``n`` too, at the skipped step ``k``: ``Π (k − t)/(n − t)``."""
    phi = 1.0
    for t in entries:
        phi *= (k - t) / (n - t)
    return phi


def span_power_sample(align: float, den: float, k: int, t1: int, t2: int) -> Optional[float]:
    """``span_power="measured"``: the α one computed call at step ``k`` reads from its probe residual's change over
    ``k − t1`` steps (``align``) against the stored entries' change over ``t2 − t1`` (``den``), as
    ``((k − t1)/(t2 − t1))^α``; None where it cannot (a zero or non-finite sum)."""
    if not (t1 < t2 < k and align > 0 and den > 0 and math.isfinite(align) and math.isfinite(den)):
        return None
    return math.log(align / den) / math.log((k - t1) / (t2 - t1))


def span_power(config: DiCacheConfig, state: BranchState) -> float:
    """α of ``span_power`` that ``state``'s trajectory read: the configured number, or measured: the median of the
    samples its computed calls read (:func:`span_power_sample`) where there are ``SPAN_POWER_SAMPLES`` and it reads a
    random walk (under ``SPAN_POWER_DRIFT``), at least ``SPAN_POWER_MIN``; else 1."""
    if config.span_power != "measured":
        return float(config.span_power)
    if len(state.span_powers) < SPAN_POWER_SAMPLES:
        return 1.0
    alpha = statistics.median(state.span_powers)
    return 1.0 if alpha >= SPAN_POWER_DRIFT else max(alpha, SPAN_POWER_MIN)
