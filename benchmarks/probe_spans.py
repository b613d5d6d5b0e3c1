#!/usr/bin/env python
"""How the probe's change grows with the steps it spans, on the shipped models: a drift or a random walk.

    .venv/bin/python benchmarks/probe_spans.py cogvideox_digits --steps 20 --scheduler CogVideoXDPMScheduler
    .venv/bin/python benchmarks/probe_spans.py flux_digits wan_digits --steps 50

One uncached pipeline call per model (seed 0, labels 0–9; every call computed, DiCache only probing) records the
probe output ``p_k`` of each step (the output of the first ``probe_depth`` blocks, as the engine sees it) of the
leading branch, and prints the relative L1 change ``E(k, j) = |p_k − p_(k−j)| / |p_(k−j)|`` over ``j = 1…4`` steps,
as the ratio ``E(k, j) / E(k, 1)`` and the exponent ``α = log(E(k, j) / E(k, 1)) / log j`` (a drift: α = 1, the change
adds up step by step; a random walk: α = 0.5), with the median α over the steps after the first fifth and before
the last two. A call on the preset at each budget of ``--targets`` (default 2) prints the samples of α the engine
reads where runs are planned (``span_power="measured"``: each computed call's residual change against the stored
entries', ``dicache.state.span_power_sample``), their median and the α the budget's replay takes from them
(``dicache.state.span_power``: 1 where the median reads a drift).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import warnings

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(1, os.path.dirname(_HERE))

import torch  # noqa: E402

import dicache  # noqa: E402
from dicache import hooks, zoo  # noqa: E402
from dicache.config import WALK_COSINE  # noqa: E402
from dicache.state import span_power  # noqa: E402

SPANS = (2, 3, 4)


def probe_outputs(name: str, steps: int):
    """{step: probe output} of the leading branch over one uncached call (δ = 0: every call computed)."""
    pipe = zoo.pipeline(name, zoo.load(name))
    dicache.enable(pipe, threshold=0.0)
    engine = hooks.session_of(pipe.transformer).engine
    seen, lead = {}, []
    decide = engine.after_probe

    def record(x, p):
        if not lead:
            lead.append(engine._cur.name)
        if engine._cur.name == lead[0]:
            seen[engine._cur_step] = p.float().clone()
        return decide(x, p)

    engine.after_probe = record
    try:
        pipe(**zoo.pipeline_call_kwargs(name, list(range(10)), seed=0, num_inference_steps=steps))
    finally:
        dicache.disable(pipe)
    return seen


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().sum() / b.abs().sum())


def span_table(seen, steps: int):
    """[(step, E(k, 1), {j: E(k, j)/E(k, 1)})] and the median α over the middle steps."""
    rows, alphas = [], []
    for k in sorted(seen):
        if k - 1 not in seen:
            continue
        e1 = relative_change(seen[k], seen[k - 1])
        ratios = {j: relative_change(seen[k], seen[k - j]) / e1 for j in SPANS if k - j in seen and e1 > 0}
        rows.append((k, e1, ratios))
        if steps // 5 <= k < steps - 2:
            alphas += [math.log(r) / math.log(j) for j, r in ratios.items() if r > 0]
    return rows, (statistics.median(alphas) if alphas else None)


def engine_samples(name: str, steps: int, target: float = 2.0):
    """(α samples the engine read, the α its rule takes, the cosine of the blocks' input increments it read at the
    first three calls or None) over one call on the preset at the budget ``target``."""
    pipe = zoo.pipeline(name, zoo.load(name))
    dicache.enable(pipe, target_speedup=target)
    try:
        pipe(**zoo.pipeline_call_kwargs(name, list(range(10)), seed=0, num_inference_steps=steps))
        engine = hooks.session_of(pipe.transformer).engine
        state = next(iter(engine.branches.values()))
        return list(state.span_powers), span_power(engine.config, state), state.walk_cosine
    finally:
        dicache.disable(pipe)


def main(argv=None) -> int:
    import quality as Q

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", choices=zoo.NAMES)
    ap.add_argument("--steps", type=int, default=20)
    Q.add_scheduler_arguments(ap)
    ap.add_argument("--targets", default="2", help="budgets (target_speedup) of the engine's calls, e.g. 1.5,2,3")
    args = ap.parse_args(argv)
    if args.steps < 6:
        ap.error("--steps must be >= 6")
    try:
        targets = [float(t) for t in args.targets.split(",")]
    except ValueError:
        targets = []
    if not targets or not all(t > 1 for t in targets):
        ap.error(f"--targets must be numbers > 1 separated by commas, got {args.targets!r}")
    warnings.filterwarnings("ignore")
    try:
        Q.apply_scheduler(args, args.models)
    except ValueError as e:
        ap.error(str(e))
    with torch.no_grad():
        for name in args.models:
            report(name, args, targets, Q.sampled_with(args))
    return 0


def report(name: str, args, targets, sampled_with: str) -> None:
    """The tables of one model (see the module's docstring)."""
    rows, median = span_table(probe_outputs(name, args.steps), args.steps)
    print(f"\n{name}, {args.steps} steps{sampled_with}\n")
    print("| step | E(k, 1) | " + " | ".join(f"E(k, {j}) / E(k, 1)" for j in SPANS) + " |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in SPANS) + " |")
    for k, e1, ratios in rows:
        cells = [f"{ratios[j]:.2f}" if j in ratios else "–" for j in SPANS]
        print(f"| {k} | {e1:.4f} | " + " | ".join(cells) + " |")
    print(f"\nmedian α over steps {args.steps // 5}–{args.steps - 3}: " + ("–" if median is None else f"{median:.2f}"))
    for target in targets:
        samples, alpha, cosine = engine_samples(name, args.steps, target)
        middle = f"median {statistics.median(samples):.2f}, " if samples else ""
        print(f"engine's samples at target_speedup={target:g}: "
              + (" ".join(f"{a:.2f}" for a in samples) or "none (no runs planned at this step count)")
              + f"; {middle}the replay's α: {alpha:.2f}")
        walk = "not read" if cosine is None else (
            f"{cosine:.3f}, " + ("a random walk (the line)" if cosine < WALK_COSINE else "a smooth path"))
        print(f"  the cosine of the blocks' input increments at the first three calls: {walk}")


if __name__ == "__main__":
    raise SystemExit(main())
