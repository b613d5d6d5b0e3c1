#!/usr/bin/env python
"""How well each extrapolation of the stored residuals predicts the next ones, on the uncached trajectory.

A skipped call rebuilds its deep residual ``R(t) = h(t) − x(t)`` (the blocks after the probe) from the residuals
stored at computed calls: the newest alone (constant), the line through the two newest, or the quadratic through
the three newest (``alignment_order``). This script records ``R`` at every step of the uncached pipeline call (every
branch, every sample) and measures, for stored entries at given steps, the relative L1 error of each
extrapolation ``Σ|R̂(t) − R(t)| / Σ|R(t)|`` (per sample, then averaged) at the next steps. No cache runs: the
error is that of the reconstruction alone, on the exact trajectory.

Two tables: entries evenly spaced ``d`` steps apart, extrapolated ``j`` steps past the newest; and entries at
``s, s + 1, s + 1 + gap`` (a pair of neighbouring computed calls, as a warm-up leaves, and one more ``gap`` steps on),
where the quadratic through the close pair and the line through the two newest part ways (``quad_balance``). Each
cell is split by where the extrapolated step falls: the first, middle and last third of the steps.

    .venv/bin/python benchmarks/extrapolation_error.py flux_digits 28
    .venv/bin/python benchmarks/extrapolation_error.py wan_digits 30 --seeds 0,1
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
from typing import Dict, List, Sequence, Tuple

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(1, os.path.dirname(_HERE))

import torch  # noqa: E402

import dicache  # noqa: E402
from dicache import zoo  # noqa: E402
from dicache.engine import DiCacheEngine  # noqa: E402

from block_counter import BlockCounter  # noqa: E402

METHODS = ("constant", "line", "quadratic")


def record(model: str, steps: int, seeds: Sequence[int], labels: Sequence[int]) -> List[Dict[int, torch.Tensor]]:
    """The deep residual at every step of the uncached call: one ``{step: R}`` per (seed, branch). DiCache runs with
    δ = 0 and every call a warm-up call (all computed, nothing reused); its engine hands over ``h`` and ``x``."""
    import quality as Q  # the same pipeline call as the quality benchmark

    out: Dict[Tuple[int, str], Dict[int, torch.Tensor]] = {}
    seed_now = [0]
    original = DiCacheEngine.after_full

    def after_full(self, h):
        out.setdefault((seed_now[0], self._cur.name), {})[self._cur_step] = h.float() - self._x.float()
        return original(self, h)

    base = zoo.load(model)
    DiCacheEngine.after_full = after_full
    try:
        for seed in seeds:
            seed_now[0] = seed
            tr = copy.deepcopy(base)
            pipe = zoo.pipeline(model, tr)
            dicache.enable(pipe, threshold=0.0, warmup=steps)
            Q.sample(pipe, model, labels, seed, steps, None, BlockCounter(tr), count_flops=False)
            dicache.disable(pipe)
    finally:
        DiCacheEngine.after_full = original
    return list(out.values())


def extrapolate(values: Sequence[torch.Tensor], nodes: Sequence[int], t: int) -> torch.Tensor:
    """The polynomial through ``(nodes[i], values[i])`` (Lagrange form) at ``t``."""
    out = torch.zeros_like(values[0])
    for i, ni in enumerate(nodes):
        c = 1.0
        for j, nj in enumerate(nodes):
            if j != i:
                c *= (t - nj) / (ni - nj)
        out += c * values[i]
    return out


def rel_error(est: torch.Tensor, true: torch.Tensor) -> float:
    dims = tuple(range(1, true.dim()))
    return float(((est - true).abs().sum(dims) / true.abs().sum(dims)).mean())


def cell(trajs: List[Dict[int, torch.Tensor]], steps: int, layouts) -> Dict[str, List[List[float]]]:
    """{method: [errors in each third of the steps]} over ``layouts``: (nodes of the quadratic, step t)."""
    res = {m: [[], [], []] for m in METHODS}
    for nodes, t in layouts:
        if nodes[0] < 0 or t >= steps:
            continue
        third = min(2, 3 * t // steps)
        for traj in trajs:
            true = traj[t]
            for m, use in zip(METHODS, (nodes[2:], nodes[1:], nodes)):
                res[m][third].append(rel_error(extrapolate([traj[n] for n in use], use, t), true))
    return res


def fmt(parts: List[List[float]]) -> str:
    return " / ".join(f"{statistics.mean(p):.3f}" if p else "–" for p in parts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=zoo.NAMES)
    ap.add_argument("steps", type=int)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    ap.add_argument("--labels", default="0,1,2,3,4,5,6,7,8,9")
    args = ap.parse_args(argv)
    if args.steps < 8:
        raise SystemExit(f"steps must be at least 8, got {args.steps}")
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    labels = [int(s) for s in args.labels.split(",")]
    trajs = record(args.model, args.steps, seeds, labels)
    n = args.steps
    print(f"{args.model}, {n} steps, seeds {seeds}, {len(labels)} labels, {len(trajs)} trajectories (seed × branch): "
          "relative L1 error of the deep residual rebuilt from stored entries, mean over samples; "
          "first / middle / last third of the steps")
    print("\nentries evenly spaced d steps apart, j steps past the newest:\n")
    print("| d | j | " + " | ".join(METHODS) + " |")
    print("| ---: | ---: | " + " | ".join("---" for _ in METHODS) + " |")
    for d in (1, 2, 3):
        for j in (1, 2, 3):
            res = cell(trajs, n, [((s, s + d, s + 2 * d), s + 2 * d + j) for s in range(n)])
            print(f"| {d} | {j} | " + " | ".join(fmt(res[m]) for m in METHODS) + " |")
    print("\nentries at s, s + 1, s + 1 + gap (a close pair and one more), j steps past the newest:\n")
    print("| gap | j | " + " | ".join(METHODS) + " |")
    print("| ---: | ---: | " + " | ".join("---" for _ in METHODS) + " |")
    for gap in (2, 3, 4):
        for j in (1, 2, 3):
            res = cell(trajs, n, [((s, s + 1, s + 1 + gap), s + 1 + gap + j) for s in range(n)])
            print(f"| {gap} | {j} | " + " | ".join(fmt(res[m]) for m in METHODS) + " |")


if __name__ == "__main__":
    main()
