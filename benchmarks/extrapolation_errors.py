#!/usr/bin/env python
"""How far the line and the quadratic through the stored residuals miss, along the uncached trajectory.

The model runs uncached (one seed, every call computed), and the leading branch's deep residual ``R(t) = h − x`` is
kept at every step. For each skip pattern given (``F`` computed, anything else skipped), every step after three
computed ones is extrapolated from the three newest computed steps before it, as a skipped call's reconstruction is
(γ the step distance): the line through the two newest, the quadratic through all three, and blends
``line + w·(quadratic − line)``. It prints, per pattern:

* the mean relative error ``‖pred − R‖ / ‖R‖`` of the line and of the quadratic over the skipped steps;
* the norm of the signed errors summed over the skipped steps, each weighted by its step size ``|σ_k − σ_(k+1)|``
  (where the pipeline's scheduler tells them, else 1): to first order, what the sampler adds up into the output;
* the same sum over the computed steps after the first three, where a cache has the residual it would have missed;
* ``hindsight``: the same sum over the skipped steps for the quadratic through the two newest computed steps before
  each run of skips and the computed step that ends it (an interpolation, known only once the run is over): what a
  reconstruction could at best take back, after the fact, of what the sampler added up.

A pattern shorter than the step count is repeated (as ``fixed_patterns.py`` does). ``--positions sigmas`` places
each step at its cumulative step size instead of its index (the extrapolation in σ, not in steps). Before the
patterns it prints how the residual moves from one step to the next (:func:`jitter`): the median size of its second
difference against its norm, and the median cosine between successive second differences, −2/3 for a residual that
moves as white noise from step to step, near +1 for a smooth curve.

No feedback: every extrapolation is of the uncached trajectory's own residuals, so the rows compare the
reconstructions, not the calls a cache would make after its own skips (``fixed_patterns.py`` runs those).

    .venv/bin/python benchmarks/extrapolation_errors.py flux_digits 50 FFF_F__F___F FF_F_F   # repeated to 50 steps
    .venv/bin/python benchmarks/extrapolation_errors.py wan_digits 50 FFF_F__F --ddpm-wan DIR  # the DDIM variant,
                                                          # trained by benchmarks/ddpm_wan.py train --dir DIR
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(1, os.path.dirname(_HERE))

import torch  # noqa: E402

from dicache.engine import DiCacheEngine  # noqa: E402
from dicache.ops.reference import lagrange_weights  # noqa: E402
from fixed_patterns import check_pattern  # noqa: E402

#: the blends of the quadratic against the line the sums are printed for (0: the line, 1: the quadratic)
BLENDS = (0.0, 0.5, 1.0)


class RecordingEngine(DiCacheEngine):
    """Computes every call (δ = 0) and keeps each branch's deep residual per step, and the step sizes told."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.residuals: Dict[str, Dict[int, torch.Tensor]] = {}
        self.sizes: Optional[List[float]] = None

    def set_step_sizes(self, sizes):
        super().set_step_sizes(sizes)
        self.sizes = None if sizes is None else [float(v) for v in sizes]

    def after_full(self, h):
        self.residuals.setdefault(self._cur.name, {})[self._cur_step] = (h.float() - self._x.float()).cpu()
        super().after_full(h)


def extrapolation_errors(residuals: Dict[int, torch.Tensor], pattern: str, sizes: Optional[Sequence[float]] = None,
                         blends: Sequence[float] = BLENDS, positions: Optional[Sequence[float]] = None) -> dict:
    """The misses of the extrapolations of ``residuals`` (step → tensor, every step of ``pattern``) at the steps of
    ``pattern``: ``line_rel`` / ``quad_rel``, the mean relative error over the skipped steps (None where none has
    three computed steps before it); ``skipped`` / ``computed``, the norm of the step-weighted signed errors summed
    over the skipped steps / over the computed steps after the first three, one per blend ``w`` (``line + w·(quadratic
    − line)``); ``hindsight``, the same sum over the same skipped steps for the quadratic through the two newest
    computed steps before the run and the computed step that ends it (0 where no run ends). ``sizes``: per step
    (None: 1 each); ``positions``: where each step lies on the line the polynomials run along (None: its index)."""
    check_pattern(pattern, len(pattern))
    missing = [k for k in range(len(pattern)) if k not in residuals]
    if missing:
        raise ValueError(f"no residual at steps {missing[:5]}{'…' if len(missing) > 5 else ''}")
    for name, values in (("sizes", sizes), ("positions", positions)):
        if values is not None and len(values) < len(pattern):
            raise ValueError(f"{name}: one per step, {len(pattern)}, got {len(values)}")
    if positions is not None and any(b <= a for a, b in zip(positions, positions[1:len(pattern)])):
        raise ValueError("positions must increase from step to step")
    at = (lambda k: float(k)) if positions is None else (lambda k: float(positions[k]))  # noqa: E731
    weight = (lambda k: 1.0) if sizes is None else (lambda k: float(sizes[k]))  # noqa: E731

    def quadratic(t0: int, t1: int, t2: int, t: int) -> torch.Tensor:
        c0, c2 = lagrange_weights((at(t) - at(t1)) / (at(t2) - at(t1)), at(t0), at(t1), at(t2))
        return c0 * residuals[t0] + (1 - c0 - c2) * residuals[t1] + c2 * residuals[t2]

    computed: List[int] = []
    run: List[int] = []  # the skipped steps since the newest computed one (after three computed)
    rel: Dict[str, List[float]] = {"line": [], "quad": []}
    sums = {kind: [torch.zeros(()) for _ in blends] for kind in ("skipped", "computed")}
    hindsight = torch.zeros(())
    for t, c in enumerate(pattern):
        if len(computed) >= 3:
            t0, t1, t2 = computed[-3:]
            r1, r2, r = residuals[t1], residuals[t2], residuals[t]
            line = r1 + (at(t) - at(t1)) / (at(t2) - at(t1)) * (r2 - r1)
            quad = quadratic(t0, t1, t2, t)
            kind = "computed" if c == "F" else "skipped"
            for i, w in enumerate(blends):
                sums[kind][i] = sums[kind][i] + weight(t) * (line + w * (quad - line) - r)
            if c != "F":
                norm = float(r.norm())
                rel["line"].append(float((line - r).norm()) / norm)
                rel["quad"].append(float((quad - r).norm()) / norm)
                run.append(t)
            else:
                for k in run:
                    hindsight = hindsight + weight(k) * (quadratic(t1, t2, t, k) - residuals[k])
        if c == "F":
            computed.append(t)
            run = []
    mean = lambda v: sum(v) / len(v) if v else None  # noqa: E731
    norms = {kind: [float(s.norm()) for s in sums[kind]] for kind in sums}
    return dict(line_rel=mean(rel["line"]), quad_rel=mean(rel["quad"]), hindsight=float(hindsight.norm()), **norms)


def jitter(residuals: Dict[int, torch.Tensor]) -> dict:
    """How the residual moves from step to step: ``second`` and ``first``, the medians over the steps of the norms of
    its second and first differences against its own norm; ``cosine``, the median cosine between successive second
    differences (over the whole tensor): −2/3 for white noise, near +1 for a smooth curve; ``warmup``, the norm of the
    second difference over steps 0–2 against the larger of its two first differences (what a cache whose first three
    calls are computed can read: about 1 or more for white noise, near 0 for a smooth curve). Needs five steps."""
    steps = sorted(residuals)
    if len(steps) < 5 or steps != list(range(len(steps))):
        raise ValueError("jitter needs the residual at every step from 0, five steps at least")
    r = [residuals[k].double().flatten() for k in steps]
    d1 = [b - a for a, b in zip(r, r[1:])]
    d2 = [b - a for a, b in zip(d1, d1[1:])]
    median = lambda v: float(torch.tensor(v).median())  # noqa: E731
    cos = [float(a @ b / (a.norm() * b.norm())) for a, b in zip(d2, d2[1:]) if a.norm() > 0 and b.norm() > 0]
    big = max(float(d1[0].norm()), float(d1[1].norm()))
    return dict(second=median([float(d.norm() / r[k + 1].norm()) for k, d in enumerate(d2)]),
                first=median([float(d.norm() / r[k].norm()) for k, d in enumerate(d1)]),
                cosine=median(cos) if cos else None, warmup=float(d2[0].norm()) / big if big > 0 else None)


def record(model: str, steps: int, seed: int, labels: Sequence[int], weights: Optional[str] = None):
    """The leading branch's deep residual at every step of one uncached run, and its step sizes (None: untold)."""
    import dicache
    import run_options as ro

    fresh, measure = ro.bench(model, steps, [seed], labels, weights)
    pipe, counter = fresh()
    engines: List[RecordingEngine] = []

    def factory(config, num_blocks, backend):
        engines.append(RecordingEngine(config, num_blocks, backend))
        return engines[-1]

    dicache.enable(pipe, threshold=0.0, engine_factory=factory)
    measure(pipe, counter)
    dicache.disable(pipe)
    eng = engines[0]
    branch = next(iter(eng.residuals))  # the first branch to run: the one that leads each step
    return eng.residuals[branch], eng.sizes


def main(argv=None) -> int:
    from dicache import zoo

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=zoo.NAMES)
    ap.add_argument("steps", type=int)
    ap.add_argument("patterns", nargs="+", help="skip patterns, one character per step (F computed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labels", default="0-9")
    ap.add_argument("--weights", help="a directory of scripts/train_zoo.py --out instead of the shipped weights")
    ap.add_argument("--ddpm-wan", metavar="DIR",
                    help="wan_digits only: the DDIM variant trained by benchmarks/ddpm_wan.py train --dir DIR")
    ap.add_argument("--unweighted", action="store_true", help="weight every step 1, not by its step size")
    ap.add_argument("--positions", choices=("steps", "sigmas"), default="steps",
                    help="where the polynomials place each step: its index, or its cumulative step size")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.steps < 4:
        ap.error("steps must be >= 4")
    try:
        patterns = [check_pattern(p, args.steps) for p in args.patterns]
    except ValueError as e:
        ap.error(str(e))
    if args.ddpm_wan and (args.model != "wan_digits" or args.weights):
        ap.error("--ddpm-wan runs wan_digits on its own weights (no --weights)")
    import quality as Q

    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    ctx = contextlib.nullcontext()
    if args.ddpm_wan:
        import ddpm_wan

        ctx = ddpm_wan.ddpm_variant()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with ctx, torch.no_grad():
            residuals, sizes = record(args.model, args.steps, args.seed, Q._int_list(args.labels),
                                      args.ddpm_wan or args.weights)
    finally:
        torch.set_num_threads(threads)  # (a caller's settings, as a test's, stay as they were)
    told = None if sizes is None or not any(sizes) else sizes
    positions = None
    if args.positions == "sigmas":
        if told is None or not all(v > 0 for v in told[:args.steps]):
            print(f"--positions sigmas: the scheduler of {args.model} tells no positive step sizes", file=sys.stderr)
            return 2
        positions = [sum(told[:k]) for k in range(args.steps)]
    sizes = None if args.unweighted else told
    blends = " / ".join(f"{w:g}" for w in BLENDS)
    print(f"{args.model}{' (DDIM variant)' if args.ddpm_wan else ''}, {args.steps} steps, seed {args.seed}; "
          f"steps weighted by {'their size' if sizes else '1'}; placed at their {args.positions}; sums for w = {blends}")
    if args.steps >= 5:
        j = jitter(residuals)
        cos = "none (no second difference)" if j["cosine"] is None else f"{j['cosine']:+.3f}"
        warm = "none" if j["warmup"] is None else f"{j['warmup']:.3f}"
        print(f"step to step: first difference {j['first']:.4f}, second {j['second']:.4f} of the residual's norm "
              f"(medians); successive second differences at cosine {cos} (white noise −0.667); over steps 0–2 the "
              f"second difference is {warm} of the larger first")
    for p in patterns:
        e = extrapolation_errors(residuals, p, sizes, positions=positions)
        if e["line_rel"] is None:
            print(f"{p}  no skip after three computed steps")
            continue
        print(f"{p}  per skip: line {e['line_rel']:.4f} quad {e['quad_rel']:.4f}   summed at the skips: "
              + " / ".join(f"{v:.4g}" for v in e["skipped"]) + f", in hindsight {e['hindsight']:.4g}"
              + "   at the computed calls: " + " / ".join(f"{v:.4g}" for v in e["computed"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
