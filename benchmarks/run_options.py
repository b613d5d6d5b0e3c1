#!/usr/bin/env python
"""DiCache's own decisions on a shipped zoo model, for a few option sets: skip pattern, flops saved, PSNR.

Where ``fixed_patterns.py`` takes the decisions away, this script keeps them: each JSON option set is passed to
``dicache.enable`` on top of the model family's preset, and the run prints the leading branch's skip pattern
(first seed: ``F`` computed, ``.`` skipped after its probe, ``_`` skipped without one), the flops saved
(torch's FlopCounterMode, as ``quality.py`` counts them) and PSNR (over all samples, and the mean of the samples'
PSNR) / SSIM against the uncached output over
2 seeds × 10 labels (``--seeds``, ``--labels``).

    .venv/bin/python benchmarks/run_options.py wan_digits 50 '{"threshold": 0.3}' '{"threshold": 0.3, "run_power": 1}'
    .venv/bin/python benchmarks/run_options.py flux_digits 20 '{"threshold": 0.6, "run_power": 2}'
    .venv/bin/python benchmarks/run_options.py cogvideox_digits 20 '{"target_speedup": 1.5}' --seeds 1000,0 \
        --scheduler CogVideoXDPMScheduler --summaries     # another sampler; each call's summary (a replayed budget)
    .venv/bin/python benchmarks/run_options.py wan_digits 50 '{"target_speedup": 2}' --seeds 1000 \
        --save-profiles /tmp/wan50.json                   # the budget's error profiles after the last seed, as JSON
    .venv/bin/python benchmarks/run_options.py wan_digits 50 '{"target_speedup": 2}' --seeds 0,1,2,3 \
        --budget-profiles /tmp/wan50.json                 # another process: its first call replays them
    .venv/bin/python benchmarks/run_options.py wan_digits 50 '{"target_speedup": 2}' --seeds 0,1,2,3 \
        --first-calls                                     # every seed a first call (the reports' online family)
    .venv/bin/python benchmarks/run_options.py hunyuan_digits 20 '{"target_speedup": 2.5}' --seeds 0,1,2,3 \
        --first-calls --online-size-power 1               # its errors to come predicted as c·size^p, p fitted
    .venv/bin/python benchmarks/run_options.py hunyuan_digits 20 '{"target_speedup": 2.5}' --seeds 0,1,2,3 \
        --first-calls --online-size-exponent 0.85         # …with p = 0.85 throughout
    .venv/bin/python benchmarks/run_options.py sd3_digits 20 '{}' '{"force_last_step": 2}' --seeds 0,1,2,3 \
        --thresholds 0.1,0.2,0.3,0.5,0.8                  # each set at each δ, then its PSNR at 2-3x fewer flops

With ``--thresholds`` each option set runs at every δ of the list, and a last table gives each set's PSNR
interpolated linearly in flop fraction at the savings of ``--at`` (pooled / mean of the samples, and in brackets
the best δ that saves at least that much), as ``quality.py`` reads its families: option sets compared on their
Pareto curves, not at one δ.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import sys
import warnings
from typing import Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(1, os.path.dirname(_HERE))

import torch  # noqa: E402

import dicache  # noqa: E402
from dicache import zoo  # noqa: E402
from dicache.budget import check_profiles  # noqa: E402
from dicache.metrics import psnr, psnr_per_sample, ssim  # noqa: E402

from block_counter import BlockCounter  # noqa: E402


#: ``--online-size-power``: the most the fitted power may be (a larger one would read the last steps' errors as far
#: above their sizes on a few measured points)
SIZE_POWER_MAX = 1.5


def fitted_size_power(measured, sizes, prior: float) -> float:
    """``--online-size-power``: the power ``p`` of ``increment ∝ size^p`` fitted to ``measured`` (step → increment)
    by least squares in log-log, pulled towards 1 by ``prior`` (the weight of a point p = 1 against the spread of
    the sizes' logs: a few steps of nearly one size leave p near 1), within [0, :data:`SIZE_POWER_MAX`]."""
    pts = [(math.log(sizes[k]), math.log(v)) for k, v in measured.items() if v > 0 and sizes[k] > 0]
    if not pts:
        return 1.0
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    sxy = sum((x - mx) * (y - my) for x, y in pts)
    return min(SIZE_POWER_MAX, max(0.0, (sxy + prior) / (sxx + prior)))


@contextlib.contextmanager
def online_size_power(prior: Optional[float], exponent: Optional[float] = None):
    """Within (``prior`` or ``exponent`` not None): the budget's first call predicts the errors to come as
    ``c · size^p`` (:meth:`dicache.budget.Budget.online_profile`; the library's p is
    :data:`~dicache.budget.ONLINE_SIZE_EXPONENT` where the probe decides, 1 where runs are planned), ``p`` the
    ``exponent`` given or else fitted to the errors measured after the warm-up at each prediction
    (:func:`fitted_size_power`), and ``c`` so that the prediction sums to them. The fit was tried and not kept
    (benchmarks/RESULTS.md, forty-seventh round), a fixed 0.85 kept where the probe decides (forty-eighth); here to
    repeat them."""
    from dicache.budget import Budget

    stock = Budget.online_profile
    if prior is None and exponent is None:
        yield
        return

    def online_profile(self, state, start, n, sizes=None, library_exponent=1.0):
        profile = stock(self, state, start, n, sizes, library_exponent)
        if profile is None or sizes is None:
            return profile
        warm = self.config.warmup_calls(n)
        measured = {k: v for k, v in profile.items() if k <= start and math.isfinite(v) and v > 0}
        measured = {k: v for k, v in measured.items() if k >= warm} or measured
        p = exponent if exponent is not None else fitted_size_power(measured, sizes, prior)
        c = sum(measured.values()) / sum(sizes[k] ** p for k in measured)
        profile.update({k: c * sizes[k] ** p for k in range(start + 1, n)})
        return profile

    Budget.online_profile = online_profile
    try:
        yield
    finally:
        Budget.online_profile = stock


class NotDeterministicError(RuntimeError):
    """The uncached pipeline gives another output on a second run of the same seed."""


def bench(model: str, steps: int, seeds, labels, weights=None):
    """The uncached reference, sampled once, and ``(fresh, measure)``: ``fresh()`` a new pipeline on a copy of the
    model with its block counter; ``measure(pipe, counter, after_each=None)`` samples every seed with it, in order
    (``after_each(seed)`` after each), and returns the runs, flops saved, pooled PSNR, mean of the samples' PSNR,
    SSIM and each sample's PSNR (seed by seed) against the reference.
    ``weights``: a directory written by ``scripts/train_zoo.py --out`` (or ``benchmarks/ddpm_wan.py train``) instead
    of the shipped weights."""
    import quality as Q  # the same sampling and flop counting as the quality benchmark

    base = zoo.load(model, path=weights)

    def fresh():
        tr = copy.deepcopy(base)
        return zoo.pipeline(model, tr), BlockCounter(tr)

    def sample_all(pipe, counter, after_each=None):
        runs = []
        for s in seeds:
            runs.append(Q.sample(pipe, model, labels, s, steps, weights, counter))
            if after_each is not None:
                after_each(s)
        return runs

    ref = {r.seed: r for r in sample_all(*fresh())}
    pipe, counter = fresh()
    again = Q.sample(pipe, model, labels, seeds[0], steps, weights, counter, count_flops=False)
    if not torch.equal(again.images, ref[seeds[0]].images):
        raise NotDeterministicError(
            f"{model}: two uncached runs of seed {seeds[0]} differ, so no cache can be compared with them (a scheduler "
            "that draws noise in step() from a generator the run does not seed)")

    def measure(pipe, counter, after_each=None):
        runs = sample_all(pipe, counter, after_each)
        imgs, refs = torch.cat([r.images for r in runs]), torch.cat([ref[r.seed].images for r in runs])
        per_sample = psnr_per_sample(imgs, refs)
        return dict(runs=runs, fewer_flops=sum(ref[r.seed].flops for r in runs) / sum(r.flops for r in runs),
                    psnr=psnr(imgs, refs), psnr_mean=sum(per_sample) / len(per_sample), ssim=ssim(imgs, refs),
                    sample_psnr=per_sample)

    return fresh, measure


def run(model: str, steps: int, option_sets, seeds, labels, weights=None, summaries=None, budget_profiles=None,
        first_calls=False):
    """Each option set's run: its options, fewer flops, pooled PSNR, mean of the samples' PSNR, SSIM, the leading
    branch's pattern (first seed) and the budget's error profiles after the last seed (``dicache.summary``'s
    ``budget_profiles``). ``weights``: as :func:`bench`'s. ``summaries(seed, summary)``: called with
    ``dicache.summary`` after each seed's call (a budget's second call replays the first's errors).
    ``budget_profiles``: passed to each ``dicache.enable`` (profiles saved from another run). ``first_calls``: every
    seed's call the first of a fresh ``dicache.enable`` (a budget keeps nothing from one seed to the next)."""
    fresh, measure = bench(model, steps, seeds, labels, weights)
    for options in option_sets:
        pipe, counter = fresh()
        dicache.enable(pipe, budget_profiles=budget_profiles, **options)
        last_seeds = []  # with first_calls: the profiles of the seed just sampled (the next enable starts afresh)

        def after_each(seed):
            if summaries is not None:
                summaries(seed, dicache.summary(pipe))
            if first_calls:
                last_seeds[:] = dicache.summary(pipe).budget_profiles
                dicache.disable(pipe)
                dicache.enable(pipe, budget_profiles=budget_profiles, **options)

        m = measure(pipe, counter, after_each)
        profiles = last_seeds if first_calls else list(dicache.summary(pipe).budget_profiles)
        dicache.disable(pipe)
        runs = m.pop("runs")
        yield dict(options=options, pattern=runs[0].pattern.get("cond") or next(iter(runs[0].pattern.values()), ""),
                   budget_profiles=profiles, **m)


def parse_option_sets(ap: argparse.ArgumentParser, texts):
    """The JSON option sets of the command line, each checked by ``DiCacheConfig`` (``ap.error`` on a bad one)."""
    try:
        option_sets = [json.loads(o) for o in texts]
    except json.JSONDecodeError as e:
        ap.error(f"options must be JSON objects: {e}")
    if not all(isinstance(o, dict) for o in option_sets):
        ap.error("options must be JSON objects, e.g. '{\"threshold\": 0.3}'")
    for o in option_sets:
        try:
            dicache.DiCacheConfig().replace(**{k: tuple(v) if isinstance(v, list) else v for k, v in o.items()})
        except (TypeError, ValueError) as e:
            ap.error(str(e))
    return option_sets


def print_rows(rows) -> list:
    """Print each row as it comes (``rows`` may be :func:`run`'s generator); returns them."""
    print(f"{'options':<44} fewer flops  PSNR dB  mean dB    SSIM  pattern (first seed)")
    done = []
    for r in rows:
        done.append(r)
        print(f"{json.dumps(r['options']):<44} {r['fewer_flops']:10.3f}×  {r['psnr']:7.2f}  {r['psnr_mean']:7.2f}  "
              f"{r['ssim']:.4f}  {r['pattern']}", flush=True)
    return done


AT_SAVINGS = (2.0, 2.25, 2.5, 2.75, 3.0)


def with_thresholds(option_sets, thresholds):
    """Each option set at each δ of ``thresholds`` (``threshold`` set), in order; the sets as given without."""
    if not thresholds:
        return list(option_sets)
    return [dict(o, threshold=d) for o in option_sets for d in thresholds]


def curves_table(rows, option_sets, savings=AT_SAVINGS) -> list:
    """Markdown lines: each option set's rows (its δ values, :func:`with_thresholds`) read at each of ``savings``×
    fewer flops: pooled PSNR / mean of the samples' PSNR interpolated in flop fraction, and in brackets the best
    pooled PSNR of a δ saving at least that much (``quality.py``'s ``psnr_at`` and ``front_at``); – outside."""
    import quality as Q

    def cell(v):
        return "–" if v is None else f"{v:.1f}"

    out = ["| options | " + " | ".join(f"{x:g}×" for x in savings) + " |",
           "| --- |" + " ---: |" * len(savings)]
    for o in option_sets:
        mine = [dict(status="ok", flop_fraction=1.0 / r["fewer_flops"], psnr=r["psnr"], psnr_mean=r["psnr_mean"])
                for r in rows if {k: v for k, v in r["options"].items() if k != "threshold"} == o]
        cells = []
        for x in savings:
            front = Q.front_at(mine, x)
            cells.append(f"{cell(Q.psnr_at(mine, x))} / {cell(Q.psnr_at(mine, x, 'psnr_mean'))} "
                         f"[{cell(front[0] if front else None)}]")
        out.append(f"| `{json.dumps(o)}` | " + " | ".join(cells) + " |")
    return out


def main(argv=None) -> int:
    import quality as Q

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=zoo.NAMES)
    ap.add_argument("steps", type=int)
    ap.add_argument("options", nargs="+", help="JSON option sets for dicache.enable (on top of the preset)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--labels", default="0-9")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", metavar="DIR",
                    help="the model's own directory written by scripts/train_zoo.py --out or benchmarks/smooth_time.py "
                         "train, instead of the shipped weights")
    Q.add_scheduler_arguments(ap)
    ap.add_argument("--summaries", action="store_true",
                    help="print dicache.summary after each seed's call: the pattern, each call's error and γ")
    ap.add_argument("--save-profiles", metavar="FILE",
                    help="write the budget's error profiles after the last seed (one option set) to FILE as JSON")
    ap.add_argument("--budget-profiles", metavar="FILE",
                    help="a JSON file of --save-profiles: passed to dicache.enable as budget_profiles")
    ap.add_argument("--first-calls", action="store_true",
                    help="enable again before each seed: every seed's call is a first call (with --budget-profiles if "
                         "given); --save-profiles then writes the last seed's")
    ap.add_argument("--online-size-power", metavar="PRIOR", type=float,
                    help="the budget's first call predicts the errors to come as c·size^p, p fitted to those measured "
                         "(pulled towards 1 with this weight, ≥ 0; tried, not kept)")
    ap.add_argument("--online-size-exponent", metavar="P", type=float,
                    help=f"the same with p = P throughout, in (0, {SIZE_POWER_MAX:g}] (the library: 0.85 where the "
                         "probe decides, 1 where runs are planned)")
    ap.add_argument("--thresholds", metavar="LIST",
                    help="run each option set at each of these δ values (comma-separated) and end with its PSNR "
                         "read at the savings of --at")
    ap.add_argument("--at", metavar="LIST",
                    help="with --thresholds: the savings (× fewer flops, each > 1) to read each set at "
                         f"(default {','.join(f'{x:g}' for x in AT_SAVINGS)})")
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("steps must be >= 2")
    if args.weights and not os.path.isfile(os.path.join(args.weights, "config.json")):
        ap.error(f"--weights: no config.json in {args.weights}")
    if args.online_size_power is not None and not (math.isfinite(args.online_size_power)
                                                   and args.online_size_power >= 0):
        ap.error(f"--online-size-power must be a finite number >= 0, got {args.online_size_power}")
    p = args.online_size_exponent
    if p is not None and (args.online_size_power is not None or not 0 < p <= SIZE_POWER_MAX):
        ap.error(f"--online-size-exponent must be in (0, {SIZE_POWER_MAX:g}] and without --online-size-power, "
                 f"got {p}")
    option_sets = parse_option_sets(ap, args.options)
    thresholds, at = [], list(AT_SAVINGS)
    if args.at and not args.thresholds:
        ap.error("--at reads the option sets' curves over the δ values of --thresholds: give --thresholds")
    if args.thresholds:
        try:
            thresholds = [float(v) for v in args.thresholds.split(",")]
            at = [float(v) for v in args.at.split(",")] if args.at else at
        except ValueError:
            ap.error(f"--thresholds and --at take comma-separated numbers, got {args.thresholds!r} and {args.at!r}")
        if not all(d >= 0 for d in thresholds) or not all(x > 1 for x in at):
            ap.error(f"--thresholds takes δ values ≥ 0 and --at savings > 1, got {args.thresholds!r} and {args.at!r}")
        if any("threshold" in o or "target_speedup" in o for o in option_sets):
            ap.error("--thresholds sets each option set's threshold: leave threshold and target_speedup out of them")
    if args.save_profiles and (len(option_sets) != 1 or args.thresholds):
        ap.error("--save-profiles writes the profiles of one option set; give one (without --thresholds)")
    profiles = None
    if args.budget_profiles:
        try:
            with open(args.budget_profiles) as f:
                profiles = json.load(f)
            check_profiles(profiles, None)
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as e:
            ap.error(f"--budget-profiles: {e}")
    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    try:
        Q.apply_scheduler(args, [args.model])
    except ValueError as e:
        ap.error(str(e))
    seeds, labels = Q._int_list(args.seeds), Q._int_list(args.labels)

    def summaries(seed, summary):
        print(f"seed {seed}: {summary}", flush=True)

    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    try:
        print(f"{args.model}{f' ({args.weights})' if args.weights else ''}, {args.steps} steps{Q.sampled_with(args)}, "
              f"seeds {seeds}, {len(labels)} labels, on the preset")
        with online_size_power(args.online_size_power, args.online_size_exponent):
            rows = print_rows(run(args.model, args.steps, with_thresholds(option_sets, thresholds), seeds, labels,
                                  weights=args.weights, summaries=summaries if args.summaries else None,
                                  budget_profiles=profiles, first_calls=args.first_calls))
        if thresholds:
            print("\nPSNR at matched savings, pooled / mean of the samples [best δ saving at least that much]:")
            print("\n".join(curves_table(rows, option_sets, at)))
        if args.save_profiles:
            with open(args.save_profiles, "w") as f:
                json.dump(rows[0]["budget_profiles"], f)
            print(f"wrote {len(rows[0]['budget_profiles'])} budget profile(s) to {args.save_profiles}")
    except NotDeterministicError as e:
        print(f"run_options.py: error: {e}", file=sys.stderr)
        return 2
    finally:  # the process as it was (a test or another script may run next)
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
    return 0


if __name__ == "__main__":
    sys.exit(main())
