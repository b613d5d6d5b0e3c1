#!/usr/bin/env python
"""Wan's zoo transformer trained on a DDPM-family schedule: does the scheduler family or the architecture decide where
a skipped call is best rebuilt (``reconstruct_at``)?

On the flow-matching ``wan_digits`` rebuilding the model's output lost up to 2.4 dB against the deep blocks' at 50
steps; on ``cogvideox_digits`` (DDIM, v-prediction) it gained up to 3.1 dB. This script trains ``wan_digits``'s
transformer and recipe again, unchanged but for the objective and the scheduler: v-prediction on CogVideoX-2b's DDIM
noise schedule (scaled-linear betas, zero terminal SNR, trailing timesteps), the scheduler's own ``add_noise`` /
``get_velocity`` as for ``cogvideox_digits``. The model is not shipped (the zoo stays under 24 MiB): ``train`` writes it
to ``--dir`` (about 7 minutes on two cores), ``patterns`` runs fixed skip patterns on it through ``WanPipeline`` with
DDIM, each with the blocks' and with the output rebuilt (``benchmarks/fixed_patterns.py``'s engine), and prints pooled
PSNR / mean of the samples' PSNR against the uncached output; ``options`` runs DiCache's own decisions on it, JSON
option sets on top of the Wan preset (``benchmarks/run_options.py``); ``report`` runs ``benchmarks/quality.py`` on it,
every peer and DiCache family (its ``--weights`` takes the directory above the one ``train`` wrote, so train into a
directory named ``wan_digits``); ``merge`` renders reports of ``report`` as one, as the variant samples.

    .venv/bin/python benchmarks/ddpm_wan.py train --dir /tmp/wan_v
    .venv/bin/python benchmarks/ddpm_wan.py patterns --dir /tmp/wan_v --steps 50 FFF_F__F__F__F__F__F__F_F_F_F_F_F_F_F_F_F_F_F_F_FF
    .venv/bin/python benchmarks/ddpm_wan.py options --dir /tmp/wan_v --steps 20 '{"threshold": 0.3}'
    .venv/bin/python benchmarks/ddpm_wan.py train --dir /tmp/ddpm/wan_digits
    .venv/bin/python benchmarks/ddpm_wan.py report --dir /tmp/ddpm/wan_digits -- --steps 20 --seeds 0,1 --out bench_out/ddpm
    .venv/bin/python benchmarks/ddpm_wan.py merge bench_out/ddpm_all bench_out/ddpm bench_out/ddpm50

The variant lives in this process only, and only while it trains or samples (:func:`ddpm_variant`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import warnings
from typing import List, Optional, Sequence

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(1, os.path.dirname(_HERE))

import torch  # noqa: E402

NAME = "wan_digits"
#: CogVideoX-2b's DDIM noise schedule, v-prediction (without its SNR shift: diffusers' DDIMScheduler has none)
DDIM_V = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
              prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
              clip_sample=False, set_alpha_to_one=True)


@contextlib.contextmanager
def ddpm_variant():
    """Within: the zoo's ``wan_digits`` is its DDPM v-prediction variant, and diffusers' DDIM scheduler can drive
    ``WanPipeline`` (which calls ``set_begin_index`` and reads ``sigmas[i]`` for its cache context). Restored after."""
    import diffusers

    import dicache.zoo._specs as specs
    import dicache.zoo.train as train

    spec, flow_forward, cls = specs.SPECS[NAME], train.training_forward, diffusers.DDIMScheduler
    had_begin = "set_begin_index" in vars(cls)
    set_timesteps = cls.set_timesteps

    def forward(name, transformer, latents, level, *rest):
        # Wan's branch passes 1000·σ; here the level is the DDPM timestep itself, as the pipeline passes it
        return flow_forward(name, transformer, latents, level.float() / 1000.0, *rest)

    def with_sigmas(self, *args, **kwargs):
        set_timesteps(self, *args, **kwargs)
        self.sigmas = torch.zeros(len(self.timesteps) + 1)  # only passed on to cache_context; DiCache reads none

    specs.SPECS[NAME] = dataclasses.replace(spec, objective="v", scheduler_class="DDIMScheduler",
                                            scheduler_config=dict(DDIM_V))
    train.training_forward = forward
    if not had_begin:
        cls.set_begin_index = lambda self, begin_index=0: None  # DDIM always starts at the first timestep
    cls.set_timesteps = with_sigmas
    try:
        yield
    finally:
        specs.SPECS[NAME], train.training_forward, cls.set_timesteps = spec, flow_forward, set_timesteps
        if not had_begin:
            del cls.set_begin_index


def train_variant(out_dir: str, steps: Optional[int] = None, threads: int = 2) -> dict:
    import dicache.zoo.train as train

    with ddpm_variant():
        return train.train(NAME, steps=steps, out_dir=out_dir, threads=threads, progress=False)


def run_patterns(weights: str, steps: int, patterns: Sequence[str], seeds: Sequence[int], labels: Sequence[int],
                 options: Optional[dict] = None) -> List[dict]:
    """Each pattern with the blocks' and with the output rebuilt: rows of (pattern, reconstruct_at, fewer flops,
    pooled PSNR, mean of the samples' PSNR, the leading branch's pattern as run, each sample's PSNR in seed order).
    ``options``: more ``dicache.enable`` options on top of the Wan preset (``reconstruct_at`` is each row's)."""
    with ddpm_variant():
        return _run_patterns(weights, steps, patterns, seeds, labels, options)


def _run_patterns(weights, steps, patterns, seeds, labels, options=None):
    import dicache
    import fixed_patterns as fp
    import run_options as ro

    fresh, measure = ro.bench(NAME, steps, seeds, labels, weights)
    rows = []
    for pat in patterns:
        full = fp.check_pattern(pat, steps)
        for where in ("blocks", "output"):
            pipe, counter = fresh()
            dicache.enable(pipe, engine_factory=fp.pattern_engine(full), **dict(options or {}, reconstruct_at=where))
            m = measure(pipe, counter)
            rebuilt = sum(b.outputs_rebuilt for b in dicache.summary(pipe).branches.values())
            dicache.disable(pipe)
            rows.append(dict(pattern=full, reconstruct_at=where, rebuilt=rebuilt, fewer_flops=m["fewer_flops"],
                             psnr=m["psnr"], psnr_mean=m["psnr_mean"], ran=m["runs"][0].pattern.get("cond"),
                             sample_psnr=m["sample_psnr"]))
    return rows


def run_options(weights: str, steps: int, option_sets: Sequence[dict], seeds: Sequence[int], labels: Sequence[int]
                ) -> List[dict]:
    """DiCache's own decisions on the variant (``benchmarks/run_options.py``'s rows), each option set on top of the
    Wan preset."""
    import run_options as ro

    with ddpm_variant():
        return list(ro.run(NAME, steps, option_sets, seeds, labels, weights=weights))


def run_report(weights: str, quality_args: Sequence[str]) -> int:
    """``benchmarks/quality.py``'s report on the variant (every peer and DiCache family it runs), ``quality_args`` as
    that script takes them (``--steps``, ``--seeds``, ``--families``, ``--out``, …). ``weights`` is the directory
    ``train`` wrote, named ``wan_digits`` (``quality.py --weights`` takes the directory above it)."""
    import quality as Q

    weights = os.path.abspath(weights)
    if os.path.basename(weights) != NAME:
        raise ValueError(f"--dir must be a directory named {NAME} (train into …/{NAME}), got {weights!r}")
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()  # quality.py sets both for the process
    try:
        with ddpm_variant():
            return Q.main(list(quality_args) + ["--models", NAME, "--weights", os.path.dirname(weights)])
    finally:
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)


def merge_reports(dirs: Sequence[str], out: str) -> int:
    """``quality.py merge`` of reports of :func:`run_report`, rendered as the variant samples (the default's δ is the
    one of a DDPM-family schedule); rows from before the sampler columns record the variant's DDIM."""
    import quality as Q

    from dicache import zoo

    with ddpm_variant():
        return Q.merge(list(dirs), out, [NAME], sampler=zoo.make_scheduler(NAME))


def main(argv=None) -> int:
    """The command line; the process's grad mode and thread count are as they were afterwards (the subcommands set
    both, and tests call this in one process)."""
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    try:
        return _main(argv)
    finally:
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the DDPM variant into --dir")
    t.add_argument("--dir", required=True)
    t.add_argument("--train-steps", type=int, default=None, help="training steps (default: wan_digits's recipe)")
    t.add_argument("--threads", type=int, default=2)
    for cmd, help_ in (("patterns", "fixed skip patterns, the blocks' and the output rebuilt"),
                       ("options", "DiCache's own decisions, JSON option sets on top of the Wan preset")):
        p = sub.add_parser(cmd, help=help_)
        p.add_argument("--dir", required=True)
        p.add_argument("--steps", type=int, default=50)
        p.add_argument(cmd, nargs="+")  # the patterns or the option sets
        p.add_argument("--seeds", default="0,1,2,3")
        p.add_argument("--labels", default="0-9")
        if cmd == "patterns":
            p.add_argument("--per-sample", action="store_true", help="each sample's PSNR too (seed/index)")
            p.add_argument("--options", default=None,
                           help="JSON options for dicache.enable on top of the Wan preset (e.g. alignment_order)")
    r = sub.add_parser("report", help="quality.py's report (every peer and DiCache family) on the variant")
    r.add_argument("--dir", required=True, help=f"the trained variant, a directory named {NAME}")
    r.add_argument("quality_args", nargs=argparse.REMAINDER,
                   help="quality.py's arguments after --: --out, --steps, --seeds, --families, --threads, --no-plot")
    g = sub.add_parser("merge", help="quality.py merge of reports run on the variant: rows from before the sampler "
                                     "columns record the variant's DDIM")
    g.add_argument("out")
    g.add_argument("dirs", nargs="+", help="report directories of `report`")
    f = sub.add_parser("fragile", help="fragile_samples.py on the variant: the samples a nudge already changes")
    f.add_argument("--dir", required=True)
    f.add_argument("--steps", type=int, default=50)
    import fragile_samples as fs

    fs.add_arguments(f)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.cmd in ("patterns", "options", "fragile") and not os.path.isdir(args.dir):
        ap.error(f"--dir {args.dir!r} does not exist: train first (ddpm_wan.py train --dir …)")
    if args.cmd == "fragile":
        torch.set_num_threads(1)
        with ddpm_variant():
            return fs.run_main(ap, args, NAME, args.steps, weights=args.dir)
    if args.cmd == "report":
        try:
            return run_report(args.dir, [a for a in args.quality_args if a != "--"])
        except ValueError as e:
            ap.error(str(e))
    if args.cmd == "merge":
        return merge_reports(args.dirs, args.out)
    if args.cmd == "train":
        print(train_variant(args.dir, args.train_steps, args.threads))
        return 0
    import quality as Q
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    seeds, labels = Q._int_list(args.seeds), Q._int_list(args.labels)
    print(f"wan_digits on DDIM v-prediction, {args.steps} steps, seeds {args.seeds}, labels {args.labels}")
    import run_options as ro

    if args.cmd == "options":
        ro.print_rows(run_options(args.dir, args.steps, ro.parse_option_sets(ap, args.options), seeds, labels))
        return 0
    try:
        options = ro.parse_option_sets(ap, [args.options])[0] if args.options else None
        rows = run_patterns(args.dir, args.steps, args.patterns, seeds, labels, options)
    except ValueError as e:
        ap.error(str(e))
    for r in rows:
        print(f"{r['pattern']}  {r['reconstruct_at']:6s}  {r['fewer_flops']:.3f}×  {r['psnr']:6.2f} / {r['psnr_mean']:6.2f} dB"
              f"  ({r['rebuilt']} outputs rebuilt)", flush=True)
        if args.per_sample:
            import fixed_patterns as fp

            names = [f"s{sd}/{lab}" for sd in seeds for lab in labels]  # as fixed_patterns.py names them
            print(fp.per_sample_line(dict(zip(names, r["sample_psnr"]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
