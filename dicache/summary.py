"""``dicache.summary``: what the cache did, per branch, as data with a readable ``str``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from .config import STEPS_GAMMA_MIN_STEPS, DiCacheConfig
from .engine import DiCacheEngine
from .state import reads_walk


def _reduction(uncached: int, executed: int) -> float:
    """The factor block evaluations fell by, ``uncached / executed`` (what ``target_speedup`` aims at): 1 with no
    calls, infinite where none ran."""
    if uncached == 0:
        return 1.0
    return math.inf if executed == 0 else uncached / executed


def _saved(fraction: float, reduction: float) -> str:
    """``52.0% of block evaluations saved (2.08× fewer)``."""
    return f"{100 * fraction:.1f}% of block evaluations saved ({reduction:.2f}× fewer)"


@dataclass(frozen=True)
class CallSummary:
    """One call of a branch: computed or skipped, why, the accumulated error and γ.

    ``error`` is the probe error accumulated since the last full call, after
    this call (the max over samples); None for a call that measured none: one
    forced without a probe decision (warm-up, last step) outside budget mode
    and planned runs, or skipped without a probe. A computed call that ends a
    planned run (``plan_runs``) shows the error its probe measured over the run. ``gamma`` is the alignment step used by a
    skipped call with two stored residuals (the max over samples), else None.
    ``probed`` is False for a call skipped before its probe (a CFG branch
    following a reusing leader, ``cfg_decision="shared"``, or a ``predictive_skip``
    reuse, reason ``"predicted"``): it ran no block.
    """

    index: int
    computed: bool
    reason: str
    error: Optional[float]
    gamma: Optional[float]
    probed: bool = True


@dataclass(frozen=True)
class BranchSummary:
    name: str
    calls: int
    full_calls: int
    skipped_calls: int
    block_evaluations: int
    block_evaluations_uncached: int
    steps: Tuple[CallSummary, ...]
    #: ``target_speedup`` only: how the budget was spent, ``"replay, δ=…"`` (the δ solved from the mean
    #: error profile of the previous trajectories), ``"online"`` (a first call; ``"online, step sizes"`` where it
    #: predicted the errors from the scheduler's step sizes) or ``"follows"`` (a CFG follower)
    budget: Optional[str] = None
    #: skipped calls whose model output was rebuilt from the stored outputs (``reconstruct_at``); the others
    #: rebuilt the deep blocks' output
    outputs_rebuilt: int = 0
    #: where runs are planned with ``alignment_order="auto"``: the cosine of two consecutive increments of the blocks'
    #: input over the trajectory's first three calls (near 1: an ODE sampler's smooth path; under
    #: :data:`~dicache.config.WALK_COSINE`: a sampler that adds noise at every step, whose planned skips take the line
    #: through the two newest stored entries); None where it was not read
    sampler_cosine: Optional[float] = None
    #: ``hindsight``: the runs of skips whose closing computed call added back a share of their miss
    hindsight_runs: int = 0

    @property
    def sampler(self) -> Optional[str]:
        """What :attr:`sampler_cosine` says of the sampler, in words (None where it was not read)."""
        c = self.sampler_cosine
        if c is None:
            return None
        if reads_walk(c):
            return f"input increments' cosine {c:.3g}: adds noise at every step (planned skips take the line)"
        if not math.isfinite(c):  # (a non-finite input: the engine reads no walk there)
            return f"input increments' cosine {c}: not finite, read as a smooth path"
        return f"input increments' cosine {c:.3g}: a smooth path"

    @property
    def saved_fraction(self) -> float:
        """Fraction of block evaluations saved against the uncached model."""
        if self.block_evaluations_uncached == 0:
            return 0.0
        return 1.0 - self.block_evaluations / self.block_evaluations_uncached

    @property
    def block_reduction(self) -> float:
        """The factor block evaluations fell by against the uncached model (uncached / executed: 2.0 where half
        ran), what ``target_speedup`` aims at."""
        return _reduction(self.block_evaluations_uncached, self.block_evaluations)

    @property
    def pattern(self) -> str:
        """One character per call: ``F`` computed, ``.`` skipped (after its probe), ``_`` skipped without a probe."""
        return "".join("F" if c.computed else ("." if c.probed else "_") for c in self.steps)


@dataclass(frozen=True)
class Summary:
    """What DiCache did since the last reset (normally: the last generation)."""

    model: str
    backend: str
    #: the config the last trajectory ran on (without ``target_speedup`` where ``target_min_steps`` left it out)
    config: DiCacheConfig
    num_blocks: int
    branches: Dict[str, BranchSummary]
    #: the config DiCache was enabled with, where the last trajectory ran on another (``config``)
    enabled_config: Optional[DiCacheConfig] = None
    #: ``target_speedup``: the error profiles the replay rule keeps (they survive ``reset``), one JSON-ready record
    #: per branch and step count; ``dicache.enable(pipe, target_speedup=…, budget_profiles=…)`` in another process
    #: replays them from its first call (empty before a trajectory of the budget ends)
    budget_profiles: Tuple[Dict[str, Any], ...] = ()
    #: the step count of the last trajectory (None: not known, or no call yet)
    num_steps: Optional[int] = None

    @property
    def calls(self) -> int:
        return sum(b.calls for b in self.branches.values())

    @property
    def full_calls(self) -> int:
        return sum(b.full_calls for b in self.branches.values())

    @property
    def skipped_calls(self) -> int:
        return sum(b.skipped_calls for b in self.branches.values())

    @property
    def saved_fraction(self) -> float:
        total = sum(b.block_evaluations_uncached for b in self.branches.values())
        done = sum(b.block_evaluations for b in self.branches.values())
        return 0.0 if total == 0 else 1.0 - done / total

    @property
    def block_reduction(self) -> float:
        """The factor block evaluations fell by over all branches (uncached / executed), what ``target_speedup``
        aims at."""
        return _reduction(sum(b.block_evaluations_uncached for b in self.branches.values()),
                          sum(b.block_evaluations for b in self.branches.values()))

    @property
    def rule(self) -> str:
        """How the calls were decided: ``"δ=0.4"`` (with a ``probe_threshold``, the δ the last trajectory decided on:
        ``"δ=0.26 (probe_threshold)"`` where the probe decided, ``"δ=0.16"`` where runs were planned; before any call
        ``"δ=0.16 (0.26 where the probe decides)"``) or, in budget mode, ``"target_speedup=2"`` (``"δ=0.2, no budget
        under 20 steps"`` where ``target_min_steps`` left the budget out)."""
        c, e = self.config, self.enabled_config
        if c.target_speedup is not None:
            return f"target_speedup={c.target_speedup:g}"
        delta = f"δ={c.threshold:g}"
        if c.probe_threshold is not None and self.branches:  # the δ the last trajectory decided on
            used = c.threshold_at(self.num_steps)
            delta = f"δ={used:g}" + (" (probe_threshold)" if used != c.threshold else "")
        elif c.probe_threshold is not None:
            delta += f" ({c.probe_threshold:g} where the probe decides)"
        if e is not None and e.target_speedup is not None:
            return f"{delta}, no budget under {e.target_min_steps} steps or without a step count"
        return delta

    def __str__(self) -> str:
        c = self.config
        rule = self.rule
        if c.step_size_power:
            rule += f", δ × (median step size / the call's)^{c.step_size_power:g} where the probe decides"
        clip = f"γ∈[{c.gamma_clip[0]:g}, {c.gamma_clip[1]:g}]"
        gamma = {"probe": clip, "steps": "γ from the steps",
                 "auto": f"γ from the steps on ≥ {STEPS_GAMMA_MIN_STEPS} steps, else {clip}"}[c.gamma_source]
        how = "skips unprobed, runs only shortening" if c.monotone_runs else "skips unprobed"
        planned = c.plan_runs
        if planned == "auto" and c.gamma_source != "auto":  # it follows γ's source (on_trajectory may have set it)
            planned = c.gamma_source == "steps"
        plan = {True: f", runs planned ({how})", False: "",
                "auto": f", runs planned ({how}) on ≥ {STEPS_GAMMA_MIN_STEPS} steps"}[planned]
        lines = [
            f"DiCache on {self.model} (backend={self.backend}, {self.num_blocks} blocks, probe {c.probe_depth}, "
            f"{rule}, {gamma}{plan})",
        ]
        if not self.branches:
            lines.append("  no calls yet")
        for b in self.branches.values():
            lines.append(
                f"  {b.name}: {b.calls} calls, {b.full_calls} computed, {b.skipped_calls} skipped, "
                + _saved(b.saved_fraction, b.block_reduction)
                + (f"; budget: {b.budget}" if b.budget else "")
                + (f"; {b.outputs_rebuilt} skipped outputs rebuilt at the model's output" if b.outputs_rebuilt else "")
                + (f"; hindsight corrected {b.hindsight_runs} runs" if b.hindsight_runs else "")
            )
            if b.sampler is not None:
                lines.append(f"    sampler  {b.sampler}")
            lines.append(f"    pattern  {b.pattern}")
            errs = " ".join("-" if s.error is None else f"{s.error:.3g}" for s in b.steps)
            gammas = " ".join("-" if s.gamma is None else f"{s.gamma:.3g}" for s in b.steps)
            lines.append(f"    error    {errs}")
            lines.append(f"    gamma    {gammas}")
        if len(self.branches) > 1:
            lines.append(f"  total: {_saved(self.saved_fraction, self.block_reduction)}")
        if self.budget_profiles:
            kept = ", ".join(f"{r['branch']} at {r['steps']} steps ({r['trajectories']} "
                             f"trajector{'y' if r['trajectories'] == 1 else 'ies'})" for r in self.budget_profiles)
            lines.append(f"  budget profiles: {kept}; another process replays them from budget_profiles=")
        return "\n".join(lines)


def _max(t) -> Optional[float]:
    return None if t is None else float(t.float().max())


def summarize(engine: DiCacheEngine, model: str, prefix: str = "") -> Summary:
    """Read the engine's records (this is where their device values reach the host)."""
    M, m = engine.num_blocks, engine.config.probe_depth
    branches = {}
    for name, state in engine.branches.items():
        steps = tuple(
            CallSummary(r.index, r.computed, r.reason, _max(r.error), _max(r.gamma), r.probed) for r in state.records
        )
        full = sum(s.computed for s in steps)
        skipped = len(steps) - full
        probed = sum(1 for s in steps if not s.computed and s.probed)
        branches[prefix + name] = BranchSummary(
            name=prefix + name,
            calls=len(steps),
            full_calls=full,
            skipped_calls=skipped,
            block_evaluations=full * M + probed * m,
            block_evaluations_uncached=len(steps) * M,
            steps=steps,
            budget=engine.budget_rule(name),
            outputs_rebuilt=state.outputs_rebuilt,
            sampler_cosine=state.walk_cosine,
            hindsight_runs=state.hindsight_runs,
        )
    backend = ",".join(sorted({b.name for b in engine._backends.values()})) or engine.backend_name
    base = getattr(engine, "base_config", engine.config)  # (an engine of an older engine_factory has none)
    enabled = None if base is engine.config else base
    profiles = getattr(engine, "budget_profiles", list)()
    return Summary(model=model, backend=backend, config=engine.config, num_blocks=M, branches=branches,
                   enabled_config=enabled,
                   budget_profiles=tuple(dict(r, branch=prefix + r["branch"]) for r in profiles),
                   num_steps=getattr(engine, "_num_steps", None))


def merge(parts: Tuple[Summary, ...]) -> Summary:
    """One summary of several transformers of a pipeline (branch names are prefixed)."""
    if len(parts) == 1:
        return parts[0]
    branches: Dict[str, BranchSummary] = {}
    for p in parts:
        branches.update(p.branches)
    first = parts[0]
    return Summary(
        model=" + ".join(p.model for p in parts),
        backend=",".join(sorted({p.backend for p in parts})),
        config=first.config,
        num_blocks=first.num_blocks,
        branches=branches,
        enabled_config=first.enabled_config,
        budget_profiles=tuple(r for p in parts for r in p.budget_profiles),
        num_steps=first.num_steps,
    )
