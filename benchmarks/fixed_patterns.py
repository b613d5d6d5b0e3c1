#!/usr/bin/env python
"""Fidelity of fixed skip patterns on a shipped zoo model: which calls are worth skipping.

DiCache's decisions place the computed calls; this script takes the decisions away and runs the same
reconstruction (probe, trajectory alignment, shared CFG) on a pattern you give, one character per step
of the leading branch: ``F`` compute, ``.`` skip after the probe (γ measured), ``_`` skip without a probe
(γ continued along the last probed line, as ``predictive_skip`` does; only right after a ``.``). The
follower branch (uncond) follows each step as ``cfg_decision="shared"`` does.

    .venv/bin/python benchmarks/fixed_patterns.py wan_digits 20 FF._F._F.F.F.F.F.F.F FF._F._F._F.F.F.F.FF
    .venv/bin/python benchmarks/fixed_patterns.py wan_digits 50 --single-skips        # one skip at a time
    .venv/bin/python benchmarks/fixed_patterns.py wan_digits 50 --one-more FFF_F__F__F_FF --every 3
                                                   # the pattern, and it with one more step computed, at each
                                                   # third skipped step and at the last (where a call is best spent)
    .venv/bin/python benchmarks/fixed_patterns.py wan_digits 20 FF..F..F --options '{"gamma_clip": [0, 10]}'
    .venv/bin/python benchmarks/fixed_patterns.py wan_digits 50 FFF_F__F --weights DIR   # DIR/wan_digits: weights
                                                                      # from scripts/train_zoo.py --out
    .venv/bin/python benchmarks/fixed_patterns.py cogvideox_digits 20 FF__F__F --scheduler CogVideoXDPMScheduler
                                                   # another sampler (and --scheduler-config, as quality.py's)

For each pattern it prints the flops saved (torch's FlopCounterMode, as ``quality.py`` counts them), PSNR and
SSIM against the uncached output over 2 seeds × 10 labels (``--seeds``, ``--labels``), and with ``--per-sample`` each
sample's PSNR (the PSNR over all samples comes from their mean squared error, so the worst sample sets it). ``--options`` (JSON)
are passed to ``dicache.enable`` on top of the model family's preset. A pattern shorter than the step count
is repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import List, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(1, os.path.dirname(_HERE))

import torch  # noqa: E402

import dicache  # noqa: E402
from dicache import zoo  # noqa: E402
from dicache.engine import DiCacheEngine  # noqa: E402


class PatternEngine(DiCacheEngine):
    """DiCache's engine with the decisions of the leading branch read from a pattern."""

    pattern = ""

    def begin_call(self, branch, step_index=None, num_steps=None):
        super().begin_call(branch, step_index, num_steps)
        if self._forced is None and self.pattern[self._cur_step] == "F":
            self._forced = "pattern"

    def before_probe(self, x):
        if self._forced is None and self.pattern[self._cur_step] == "_" and self._cur is not None:
            h = self._predicted(self._cur, x)
            if h is not None:
                return h
        return super().before_probe(x)

    def _threshold(self, state):
        return float("inf")  # every call the pattern does not force is skipped


def pattern_engine(pattern: str):
    def factory(config, num_blocks, backend):
        # the pattern alone decides: no cap, warm-up, forced last step, predictive skips, bound on the runs
        # (reach, shortening) or budget of the engine's own
        eng = PatternEngine(config.replace(max_consecutive_reuse=None, warmup=1, force_last_step=False,
                                           predictive_skip=False, run_power=0.0, max_extrapolation=None,
                                           monotone_runs=False, target_speedup=None), num_blocks, backend)
        eng.pattern = pattern
        return eng

    return factory


def check_pattern(p: str, steps: int) -> str:
    if not p or set(p) - set("F._"):
        raise ValueError(f"a pattern is made of F, '.' and '_', got {p!r}")
    full = (p * (steps // len(p) + 1))[:steps]
    if full[0] != "F":
        raise ValueError(f"a pattern must start with F (nothing is cached before the first call), got {p!r}")
    return full


def one_more(pattern: str, every: int = 1) -> List[str]:
    """``pattern`` and, for every ``every``-th of its skipped steps (the first, then each ``every``-th after it) and
    for its last skipped step, ``pattern`` with that step computed: where one call more than the pattern computes is
    best spent."""
    if every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    skipped = [i for i, c in enumerate(pattern) if c != "F"]
    if not skipped:
        raise ValueError(f"the pattern skips no step, so it has no call to add: {pattern!r}")
    picked = sorted(set(skipped[::every]) | {skipped[-1]})
    return [pattern] + [pattern[:i] + "F" + pattern[i + 1:] for i in picked]


def run(model: str, steps: int, patterns: List[str], seeds: List[int], labels: List[int],
        options: Optional[dict] = None, weights: Optional[str] = None) -> List[dict]:
    """Each pattern's flops saved, PSNR, SSIM and per-sample PSNR against the uncached output (``run_options.bench``:
    the same sampling and flop counting as the quality benchmark, a pipeline whose uncached runs differ refused).
    ``weights``: the model's directory (``quality.trained_weights``) instead of the shipped weights."""
    import run_options as ro

    fresh, measure = ro.bench(model, steps, seeds, labels, weights)
    out = []
    for pat in patterns:
        pipe, counter = fresh()
        dicache.enable(pipe, engine_factory=pattern_engine(pat), **(options or {}))
        m = measure(pipe, counter)
        dicache.disable(pipe)
        runs = m["runs"]
        got = runs[0].pattern.get("cond") or next(iter(runs[0].pattern.values()), "")
        names = [f"s{r.seed}/{lab}" for r in runs for lab in labels]  # one batch per seed, one sample per label
        out.append(dict(pattern=pat, ran=got, fewer_flops=m["fewer_flops"], psnr=m["psnr"], ssim=m["ssim"],
                        per_sample=dict(zip(names, m["sample_psnr"]))))
    return out


def per_sample_line(per_sample: dict) -> str:
    """``--per-sample``'s line: each sample's PSNR, named ``s<seed>/<label>``."""
    return "    per sample (dB): " + "  ".join(f"{k} {v:.1f}" for k, v in per_sample.items())


def main(argv=None) -> int:
    import quality as Q
    import run_options as ro

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=zoo.NAMES)
    ap.add_argument("steps", type=int)
    ap.add_argument("patterns", nargs="*", help="skip patterns (F . _), one character per step")
    ap.add_argument("--single-skips", action="store_true", help="all computed but one skipped step, for each step")
    ap.add_argument("--one-more", metavar="PATTERN",
                    help="PATTERN, and PATTERN with one more step computed at each of its skipped steps (--every)")
    ap.add_argument("--every", type=int, default=1,
                    help="with --one-more: at every N-th skipped step only (and the last)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--labels", default="0-9")
    ap.add_argument("--options", default=None, help="JSON options for dicache.enable (on top of the preset)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", default=None, help="directory with <model>/ trained by scripts/train_zoo.py --out "
                    "(as quality.py's; default: the shipped weights)")
    ap.add_argument("--per-sample", action="store_true",
                    help="also print each sample's PSNR (seed/label): the PSNR over all samples is set by the worst")
    Q.add_scheduler_arguments(ap)
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("steps must be >= 2")
    pats = list(args.patterns)
    if args.single_skips:
        pats += ["".join("." if i == k else "F" for i in range(args.steps)) for k in range(2, args.steps)]
    if args.every != 1 and not args.one_more:
        ap.error("--every goes with --one-more")
    try:
        if args.one_more:
            pats += one_more(check_pattern(args.one_more, args.steps), args.every)
        if not pats:
            ap.error("give patterns, --single-skips or --one-more")
        pats = [check_pattern(p, args.steps) for p in pats]
    except ValueError as e:
        ap.error(str(e))
    seeds = Q._int_list(args.seeds)
    labels = Q._int_list(args.labels)
    options = json.loads(args.options) if args.options else None
    weights = Q.weights_argument(ap, args.weights, args.model)
    try:
        Q.apply_scheduler(args, [args.model])
    except ValueError as e:
        ap.error(str(e))
    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    try:
        print(f"{args.model}, {args.steps} steps{Q.sampled_with(args)}, seeds {seeds}, {len(labels)} labels; "
              f"options {options or '{}'}")
        print(f"{'pattern':<{max(8, args.steps)}}  fewer flops  PSNR dB    SSIM")
        for r in run(args.model, args.steps, pats, seeds, labels, options, weights):
            print(f"{r['pattern']:<{max(8, args.steps)}}  {r['fewer_flops']:10.3f}×  {r['psnr']:7.2f}  "
                  f"{r['ssim']:.4f}" + ("" if r["ran"] == r["pattern"] else f"  (ran {r['ran']})"), flush=True)
            if args.per_sample:
                print(per_sample_line(r["per_sample"]), flush=True)
    except ro.NotDeterministicError as e:
        print(f"fixed_patterns.py: error: {e}", file=sys.stderr)
        return 2
    finally:  # the process as it was (a test or another script may run next)
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
    return 0


if __name__ == "__main__":
    sys.exit(main())
