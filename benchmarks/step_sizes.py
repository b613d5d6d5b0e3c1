#!/usr/bin/env python
"""How a call's probe error follows the scheduler's step size, on the shipped models.

    .venv/bin/python benchmarks/step_sizes.py [--steps 20] [--models flux_digits,wan_digits,…]

One pipeline call per model (seed 0, labels 0–9) with the compute budget on (``target_speedup=2``), which records
each step's probe error increment (every call probes below 25 steps; from 25 on, where the preset plans its runs,
only the computed calls probe and the steps of a run share the mean increment measured at its end); printed
beside the scheduler's step size
``|σ_k − σ_(k+1)|`` (what the pipeline tells the engine; for a scheduler of the DDPM family such as CogVideoX's DDIM,
which tells it none, the same steps with σ on the flow scale, :func:`noise_levels`) and their ratio. The online budget rule predicts the
increments to come as ``c · |σ_k − σ_(k+1)|^p`` (``dicache.budget.Budget.online_profile``; p = 0.85 where the probe
decides, 1 where runs are planned): the ratio column and the fitted power say how far that holds.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from typing import Optional

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import dicache  # noqa: E402
from dicache import hooks, zoo  # noqa: E402


def noise_levels(scheduler, n: int):
    """σ before each of the ``n`` steps and after the last, on the rectified-flow scale of ``(1 − σ)·x0 + σ·ε``: the
    flow sigmas as they are; for a scheduler of the DDPM family, whose state ``√ᾱ·x0 + √(1 − ᾱ)·ε`` divided by
    ``√ᾱ + √(1 − ᾱ)`` is that flow state, ``√(1 − ᾱ)/(√ᾱ + √(1 − ᾱ))`` at its timesteps and at the end
    (``final_alpha_cumprod``, else ᾱ = 1)."""
    from dicache.api import _flow_sigmas

    if _flow_sigmas(scheduler):
        return scheduler.sigmas.detach().float().cpu().tolist()
    ac = scheduler.alphas_cumprod.detach().double().cpu()
    index = scheduler.timesteps.detach().cpu().double().round().long().clamp(0, ac.numel() - 1)
    final = getattr(scheduler, "final_alpha_cumprod", None)
    alphas = ac[index].tolist()[:n] + [float(final) if final is not None else 1.0]
    return [math.sqrt(1.0 - a) / (math.sqrt(a) + math.sqrt(1.0 - a)) for a in (min(max(a, 0.0), 1.0) for a in alphas)]


def profile(name: str, steps: int):
    """[(step, σ_k, step size, increment or None)] of one budget-mode call of ``name`` (the cond branch, or the one
    branch of a pipeline that batches its guidance)."""
    pipe = zoo.pipeline(name, zoo.load(name))
    dicache.enable(pipe, target_speedup=2.0)
    try:
        pipe(**zoo.pipeline_call_kwargs(name, list(range(10)), seed=0, num_inference_steps=steps))
        engine = hooks.session_of(pipe.transformer).engine
        branch = engine.branches.get("cond") or next(iter(engine.branches.values()))
        incs = dict(branch.increments)
        sizes = engine._budget.step_sizes
    finally:
        dicache.disable(pipe)
    sig = noise_levels(pipe.scheduler, steps)
    if sizes is None:  # a DDPM-family scheduler tells the engine no step sizes: the same steps on the flow scale
        sizes = [abs(sig[k] - sig[k + 1]) for k in range(steps)]
    return [(k, sig[k], sizes[k], incs.get(k)) for k in range(steps)]


#: Candidate scalings of a step's probe error: the step size (what the online rule uses) and the step relative to
#: the noise level left, ``|σ_k − σ_(k+1)| / σ_k`` and its square-root variant.
SCALINGS = {
    "step size": lambda sigma, size: size,
    "step size / σ": lambda sigma, size: size / sigma,
    "step size / √σ": lambda sigma, size: size / math.sqrt(sigma),
}


def scaling_spread(rows, first: int = 2):
    """{scaling: standard deviation of log(increment / scaling)} over the steps from ``first`` on with an increment
    (the smaller, the closer a constant ``c`` times that scaling predicts the errors)."""
    pts = [(s, d, v) for k, s, d, v in rows if k >= first and v is not None and v > 0 and d > 0 and s > 0]
    if len(pts) < 2:
        return {}
    return {name: statistics.pstdev([math.log(v / f(s, d)) for s, d, v in pts]) for name, f in SCALINGS.items()}


def size_exponent(rows, first: int = 3) -> Optional[float]:
    """The least-squares slope of log(increment) on log(step size) over the steps from ``first`` on: the power p of a
    prediction ``c · size^p`` (1: the online rule's), None with fewer than two distinct step sizes."""
    pts = [(math.log(d), math.log(v)) for k, s, d, v in rows if k >= first and v is not None and v > 0 and d > 0]
    if len(pts) < 2:
        return None
    mx, my = statistics.fmean(x for x, _ in pts), statistics.fmean(y for _, y in pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return None if sxx <= 0 else sum((x - mx) * (y - my) for x, y in pts) / sxx


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--models", default=",".join(zoo.NAMES))
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in zoo.NAMES]
    if bad or args.steps < 2:
        ap.error(f"--models must be among {list(zoo.NAMES)} (got {bad}); --steps must be >= 2")
    torch.set_num_threads(1)
    for name in models:
        rows = profile(name, args.steps)
        print(f"\n{name}, {args.steps} steps\n\n| step | σ | step size | probe error increment | ratio |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        ratios = []
        for k, s, d, v in rows:
            r = v / d if v is not None and d > 0 else None
            if r is not None:
                ratios.append(r)
            print(f"| {k} | {s:.3f} | {d:.4f} | {'–' if v is None else f'{v:.4f}'} | {'–' if r is None else f'{r:.2f}'} |")
        sizes = [d for _, _, d, _ in rows]
        incs = [v for *_, v in rows if v is not None]
        print(f"\nstep sizes span {max(sizes) / min(sizes):.1f}×, increments {max(incs) / min(incs):.1f}×, "
              f"their ratio {min(ratios):.2f}–{max(ratios):.2f}")
        p = size_exponent(rows)
        if p is not None:
            print(f"increments ∝ step size^p from step 3 on, least squares: p = {p:.2f}")
        spread = scaling_spread(rows)
        if spread:
            print("spread of log(increment / x) from step 2 on (smaller: a constant times x predicts better): "
                  + ", ".join(f"x = {name}: {v:.3f}" for name, v in spread.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
