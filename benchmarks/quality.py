#!/usr/bin/env python
"""Quality and speed of DiCache against other caches on the shipped zoo models.

    .venv/bin/python benchmarks/quality.py --out bench_out            # every model, step count and family: hours on one
                                                                      # core; split it (--models, --steps, --families)
                                                                      # over processes and merge
    .venv/bin/python benchmarks/quality.py --out /tmp/q --quick       # a smoke run (a few minutes)
    .venv/bin/python benchmarks/quality.py --out x --list             # what would run
    .venv/bin/python benchmarks/quality.py merge OUT DIR1 DIR2        # one report of runs split over processes
                                                                      # (a later DIR's family replaces an earlier one's;
                                                                      # a quality.md instead of a DIR: its rows;
                                                                      # --models M1,M2: only theirs)
    .venv/bin/python benchmarks/quality.py pool OUT DIR_A DIR_B       # the settings both ran, on both runs' seeds
    .venv/bin/python benchmarks/quality.py render DIR... [--check]    # each report's quality.md rendered again
                                                                      # from its rows by this code
    .venv/bin/python benchmarks/quality.py at DIR... --families A,B   # their PSNR interpolated at chosen savings
    .venv/bin/python benchmarks/quality.py default DIR...             # `dicache.enable(pipe)` against DiCache's front
                                                                      # (--family F --value V: another setting)
    .venv/bin/python benchmarks/quality.py spread DIR                 # each acceptance margin resampled over the
                                                                      # report's samples: how far it rests on them
    .venv/bin/python benchmarks/quality.py patterns DIR... --families A,B --savings 2.8,3.2
                                                                      # their settings there, a label per call
                                                                      # pattern: which patterns each δ list hits
    .venv/bin/python benchmarks/quality.py entries DIR...             # per family, the settings that skip after
                                                                      # unbalanced entries (quad_balance)
    .venv/bin/python benchmarks/quality.py rivals [DIR...]           # each DiCache family against the best of the
                                                                      # others: would one beat the preset's margin?

For each shipped model (``flux_digits``: FluxPipeline with true CFG; ``wan_digits``: WanPipeline with
CFG; ``hunyuan_digits``: HunyuanVideoPipeline with true CFG, the held-out model; ``sd3_digits``:
StableDiffusion3Pipeline with CFG batched, a held-out model of a family without a preset; ``cogvideox_digits``:
CogVideoXPipeline with CFG batched and a DDIM scheduler, a third held-out model, of a family without a preset and
not flow matching), each step count
(``--steps``, default 20 and 50) and each seed (``--seeds``), the model samples
all ``--labels`` in one batch through the real diffusers pipeline, with

* no cache (the reference every other output is compared with);
* uniform caching every k-th call, on dicache's hooks (``uniform_cache.py``);
* diffusers' own caches: FirstBlockCache, TaylorSeer, MagCache (calibrated first with its own
  calibration mode), SeaCache;
* cache-dit's DBCache (if ``cache-dit`` is installed);
* DiCache on its family preset at several thresholds, and the families that change one option each
  (``quality_methods.DICACHES``): the authors' settings, compute-budget mode (``target_speedup``),
  first- and second-order alignment, γ from the steps or the probe, separate CFG decisions, a cap of 2
  reuses in a row, a δ schedule, the last tenth of the steps computed, planned runs on the count of steps (the earlier rule), γ fixed to 1, probe depth 2 and 3,
  predictive skips off (the preset skips by prediction below 25 steps), and the run rule off (``run_power=0``
  with a cap of 2: the earlier preset).

Per method and setting it reports the flops executed (torch's ``FlopCounterMode`` over the pipeline call,
the same way for every cache), the block evaluations executed (``block_counter.py``), the wall time of a
separate uncounted run of the first seed, the speedup over no cache, and PSNR / SSIM against the uncached
output (``dicache.metrics``, over all seeds' samples); then each family's PSNR/SSIM at matched savings and
the lead of the best DiCache over the best peer at 2–3× fewer flops.
LPIPS is not computed: every implementation (lpips, torchmetrics, piq) needs pretrained AlexNet/VGG
weights downloaded at run time (this machine has no network, torchvision is not installed), and at
16×16 greyscale it would be meaningless anyway.

Writes ``OUT/quality.csv``, ``OUT/quality.md`` (with PSNR interpolated at matched savings),
``OUT/quality_pareto.png`` and ``OUT/quality_details.json`` (per run: times, counts, DiCache's per-branch
skip patterns, MagCache's calibrated ratios). Failing peers are rows with the reason, not crashes.

``--scheduler CLASS`` samples every model with another diffusers scheduler, built from the config of the model's
own (as a user swaps one in: ``CLASS.from_config(pipe.scheduler.config)``; CogVideoX-5b's ``CogVideoXDPMScheduler``
on ``cogvideox_digits``, say): a sampler the rules were not chosen on. The reports' model headings name it.

Models: the shipped weights (``dicache/zoo/weights/``) when present; ``--weights DIR`` takes
``DIR/<name>/`` written by ``scripts/train_zoo.py --out`` instead; ``--random-init`` (implied by
``--quick`` when no weights exist) uses untrained models of the same configuration.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(1, os.path.dirname(_HERE))

os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # cache-dit imports transformers (torchvision notices)

import torch  # noqa: E402

import dicache  # noqa: E402
from dicache import zoo  # noqa: E402
from dicache.api import _flow_sigmas  # noqa: E402
from dicache.hooks import session_of  # noqa: E402
from dicache.config import STEPS_GAMMA_MIN_STEPS  # noqa: E402
from dicache.state import balanced  # noqa: E402
from dicache.metrics import psnr, psnr_per_sample, ssim  # noqa: E402

import quality_methods as qm  # noqa: E402
from block_counter import BlockCounter, fractions  # noqa: E402

LPIPS_NOTE = "not computed: needs pretrained AlexNet/VGG weights downloaded at run time (offline machine)"


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------


def _has_weights(d: str) -> bool:
    return os.path.isfile(os.path.join(d, "config.json")) and os.path.isfile(
        os.path.join(d, "class_embeddings.safetensors")
    )


def random_model_dir(name: str, root: str, seed: int = 0) -> str:
    """An untrained model of the zoo configuration, written where ``zoo.load(name, path=...)`` reads it."""
    import diffusers
    from safetensors.torch import save_file

    from dicache.zoo._specs import NULL_CLASS, get_spec
    from dicache.zoo.train import CLASS_EMBEDDINGS_FILE

    spec = get_spec(name)
    out = os.path.join(root, name)
    if _has_weights(out):
        return out
    torch.manual_seed(seed)
    model = getattr(diffusers, spec.transformer_class)(**spec.config)
    model.save_pretrained(out)
    g = torch.Generator().manual_seed(seed)
    emb = {"prompt_embeds": torch.randn(NULL_CLASS + 1, spec.text_tokens, spec.text_dim, generator=g) * 0.5}
    if spec.pooled_dim:
        emb["pooled_prompt_embeds"] = torch.randn(NULL_CLASS + 1, spec.pooled_dim, generator=g) * 0.5
    save_file(emb, os.path.join(out, CLASS_EMBEDDINGS_FILE))
    return out


def trained_weights(root: str, name: str) -> str:
    """``--weights ROOT``: the directory ``scripts/train_zoo.py --out ROOT/name`` wrote ``name`` to; ValueError
    naming ``--weights`` where there is no model."""
    d = os.path.join(root, name)
    if not _has_weights(d):
        raise ValueError(f"--weights {root}: no model in {d}")
    return d


def weights_argument(ap, root: Optional[str], name: str) -> Optional[str]:
    """A script's ``--weights ROOT`` for model ``name``: None without it, else the model's directory
    (:func:`trained_weights`); the parser's error, naming ``--weights``, where there is no model."""
    if root is None:
        return None
    try:
        return trained_weights(root, name)
    except ValueError as e:
        ap.error(str(e))


def use_scheduler(names: Sequence[str], class_name: str, overrides: Optional[Dict] = None) -> None:
    """``--scheduler``: the zoo models ``names`` sample with the diffusers scheduler ``class_name`` from here on, built
    from the config of their own scheduler (keys it does not take are dropped, as ``from_config`` drops them), with
    ``overrides`` (``--scheduler-config``) on top. ValueError naming ``--scheduler`` for a name that is not a diffusers
    scheduler, or one that cannot be built from that config, and ``--scheduler-config`` for a key the class does not
    take."""
    import dataclasses
    import inspect

    import diffusers

    from dicache.zoo import _specs

    cls = getattr(diffusers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ValueError(f"--scheduler: {class_name!r} is not a diffusers scheduler class (e.g. CogVideoXDPMScheduler, "
                         "UniPCMultistepScheduler, FlowMatchEulerDiscreteScheduler)")
    for name in names:
        spec = _specs.get_spec(name)
        try:
            config = dict(cls.from_config(zoo.make_scheduler(name).config).config)
        except Exception as e:  # noqa: BLE001 - the scheduler's own error, named after the argument
            raise ValueError(f"--scheduler: {class_name} cannot be built from {name}'s scheduler config: {e}") from e
        accepted = inspect.signature(cls.__init__).parameters
        unknown = sorted(set(overrides or {}) - set(accepted) - {"self"})
        if unknown:
            raise ValueError(f"--scheduler-config: {class_name} takes no {unknown}")
        config = {k: v for k, v in config.items() if k in accepted}
        config.update(overrides or {})
        _specs.SPECS[name] = dataclasses.replace(spec, scheduler_class=class_name, scheduler_config=config)


def sampled_with(args) -> str:
    """The note of ``--scheduler`` (and ``--scheduler-config``) in the model headings (and ``run_options.py``'s first
    line)."""
    if not getattr(args, "scheduler", None):
        return ""
    extra = ", ".join(f"{k}={v}" for k, v in scheduler_overrides(args).items())
    return f", sampled with {args.scheduler}" + (f" ({extra})" if extra else "")


def add_scheduler_arguments(ap: argparse.ArgumentParser) -> None:
    """``--scheduler CLASS`` and ``--scheduler-config JSON``, for this script and those that sample as it does."""
    ap.add_argument("--scheduler", default=None, metavar="CLASS",
                    help="sample with this diffusers scheduler, built from the config of each model's own")
    ap.add_argument("--scheduler-config", default=None, metavar="JSON",
                    help="options of --scheduler on top of that config, "
                         "e.g. '{\"algorithm_type\": \"sde-dpmsolver++\"}'")


def apply_scheduler(args, names: Sequence[str]) -> None:
    """The zoo models ``names`` sample with ``--scheduler`` / ``--scheduler-config`` from here on, when given
    (:func:`use_scheduler`); ValueError naming the argument."""
    if args.scheduler or args.scheduler_config:
        use_scheduler(names, args.scheduler, scheduler_overrides(args))


def scheduler_overrides(args) -> Dict:
    """``--scheduler-config JSON``: the scheduler options on top of the model's config ({} without it); ValueError
    naming it for text that is not a JSON object, or without ``--scheduler``."""
    text = getattr(args, "scheduler_config", None)
    if not text:
        return {}
    if not getattr(args, "scheduler", None):
        raise ValueError("--scheduler-config needs --scheduler CLASS")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--scheduler-config: not JSON ({e}): {text!r}") from e
    if not isinstance(value, dict):
        example = '{"algorithm_type": "sde-dpmsolver++"}'
        raise ValueError(f"--scheduler-config must be a JSON object, e.g. '{example}', got {text!r}")
    return value


def resolve_model_path(name: str, args):
    """The directory to load ``name`` from (None: the shipped weights), and a description."""
    if args.weights:
        try:
            d = trained_weights(args.weights, name)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        return d, f"trained weights from {d}" + sampled_with(args)
    if _has_weights(zoo.weights_dir(name)):
        return None, "shipped weights" + sampled_with(args)
    if args.random_init or args.quick:
        root = os.path.join(tempfile.gettempdir(), "dicache_bench_random")
        return random_model_dir(name, root), "RANDOM-INIT (no shipped weights found)"
    raise SystemExit(
        f"no shipped weights for {name} in {zoo.weights_dir(name)}; pass --weights DIR (scripts/train_zoo.py --out) "
        "or --random-init"
    )


# ---------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------


@dataclass
class RunResult:
    seed: int
    wall_s: float
    cpu_s: float
    macs: List[int]
    calls: int
    images: torch.Tensor = field(repr=False)
    flops: int = 0
    pattern: Optional[Dict[str, str]] = None
    dicache_fraction: Optional[float] = None  # 1 - dicache.summary().saved_fraction, for the cross-check
    sample_psnr: Optional[List[float]] = None  # each sample's PSNR against the uncached run (set by row_for)


def _register_cpu_attention_flops() -> None:
    """FlopCounterMode knows the CUDA attention kernels; teach it the CPU one (same formula)."""
    from torch.utils import flop_counter as fc

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in fc.flop_registry or op.default in fc.flop_registry:
        return

    def _cpu_flash(query, key, value, *args, out_val=None, **kwargs):
        return fc.sdpa_flop_count(query.shape, key.shape, value.shape)

    fc.register_flop_formula(op, get_raw=True)(_cpu_flash)


def sample(pipe, name: str, labels: Sequence[int], seed: int, steps: int, path: Optional[str], counter: BlockCounter,
           count_flops: bool = True):
    """One pipeline run. ``count_flops``: under torch's FlopCounterMode (every matmul, conv and attention
    the run executes, whatever cache skips them); else timed (the counter's dispatch costs ~60 %)."""
    from torch.utils.flop_counter import FlopCounterMode

    kw = zoo.pipeline_call_kwargs(name, labels, seed=seed, num_inference_steps=steps, embeddings_path=path)
    counter.reset()
    # a scheduler that draws its noise in step() from the global generator (FluxPipeline and WanPipeline pass it no
    # generator: FlowMatchEulerDiscreteScheduler with stochastic_sampling) draws the same noise in every run of a seed:
    # seeded from it, not with it (the initial noise comes from a generator seeded with the seed itself, and a step
    # seeded alike would draw that noise again)
    torch.manual_seed(int(torch.randint(2**62, (1,), generator=torch.Generator().manual_seed(int(seed)))))
    flops = 0
    if count_flops:
        _register_cpu_attention_flops()
        with FlopCounterMode(display=False) as fcm:
            latents = pipe(**kw)[0]
        flops = fcm.get_total_flops()
        wall = cpu = float("nan")
    else:
        c0, t0 = time.process_time(), time.perf_counter()
        latents = pipe(**kw)[0]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    images = zoo.images(name, pipe, latents, kw)
    res = RunResult(seed, wall, cpu, list(counter.macs), counter.calls, images, flops)
    if session_of(pipe.transformer) is not None:
        s = dicache.summary(pipe)
        res.pattern = {b.name: b.pattern for b in s.branches.values()}
        res.dicache_fraction = 1.0 - s.saved_fraction
    else:  # any other cache: what each model call ran, as the block counter saw it (branches interleaved)
        res.pattern = {"calls": counter.call_pattern()}
    return res


# ---------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------

CSV_FIELDS = [
    "model", "steps", "family", "setting", "status", "flop_fraction", "savings", "fewer_flops", "block_fraction",
    "mac_fraction", "calls", "wall_s", "speedup", "cpu_s", "speedup_cpu", "psnr", "psnr_mean", "ssim", "lpips", "seeds",
    "labels",
    "weights", "sampler", "flow_sigmas", "note",
]


def median(v):
    return statistics.median(v) if v else float("nan")


def sampler_columns(scheduler) -> Dict:
    """The columns a row records of the scheduler its pipeline sampled with: ``sampler`` (its class) and
    ``flow_sigmas`` (whether it runs on flow-matching sigmas, which decides the default's δ:
    :func:`default_points`)."""
    return dict(sampler=type(scheduler).__name__, flow_sigmas=_flow_sigmas(scheduler))


def row_flow_sigmas(rows: List[Dict]) -> Optional[bool]:
    """Whether ``rows`` (of one model and step count) were sampled on flow-matching sigmas, as they recorded it;
    None for rows from before the column (the model's scheduler in this process then decides)."""
    got = {r["flow_sigmas"] for r in rows if isinstance(r.get("flow_sigmas"), bool)}
    if len(got) > 1:
        raise ValueError(f"rows of {rows[0]['model']} at {rows[0]['steps']} steps sampled with flow sigmas and without")
    return got.pop() if got else None


def row_for(model, steps, method_family, setting, status, runs: List[RunResult], ref_runs: List[RunResult],
            ref_wall: float, seeds, labels, weights, note="", ref_cpu: Optional[float] = None,
            timed: Optional[RunResult] = None) -> Dict:
    row = dict(model=model, steps=steps, family=method_family, setting=setting, status=status, seeds=len(seeds),
               labels=len(labels), weights=weights, lpips="", note=note)
    if not runs:
        row.update(flop_fraction="", fewer_flops="", block_fraction="", savings="", mac_fraction="", calls="",
                   wall_s="", speedup="",
                   cpu_s="", speedup_cpu="", psnr="", psnr_mean="", ssim="")
        return row
    ref_macs = [sum(col) for col in zip(*[r.macs for r in ref_runs])]
    macs = [sum(col) for col in zip(*[r.macs for r in runs])]
    bf, mf = fractions(macs, ref_macs)
    by_seed = {r.seed: r for r in ref_runs}
    out = torch.cat([r.images for r in runs])
    ref = torch.cat([by_seed[r.seed].images for r in runs])
    ff = sum(r.flops for r in runs) / sum(by_seed[r.seed].flops for r in runs)
    for r in runs:
        r.sample_psnr = psnr_per_sample(r.images, by_seed[r.seed].images)
    wall = timed.wall_s if timed is not None else float("nan")
    cpu = timed.cpu_s if timed is not None else float("nan")
    row.update(
        flop_fraction=ff, savings=1.0 - ff, fewer_flops=(1.0 / ff if ff > 0 else float("inf")), block_fraction=bf,
        mac_fraction=mf, calls=runs[0].calls, wall_s=wall, speedup=ref_wall / wall, cpu_s=cpu,
        speedup_cpu=(ref_cpu / cpu) if ref_cpu else "",
        psnr=psnr(out, ref), psnr_mean=statistics.fmean(v for r in runs for v in r.sample_psnr), ssim=ssim(out, ref),
    )
    checks = [r for r in runs if r.dicache_fraction is not None]
    if checks:
        per_run = []
        for r in checks:
            f, _ = fractions(r.macs, by_seed[r.seed].macs)
            per_run.append(abs(f - r.dicache_fraction))
        if max(per_run) > 1e-9:
            row["note"] = (row["note"] + "; " if row["note"] else "") + (
                f"dicache.summary disagrees with the counted block evaluations by {max(per_run):.4f}"
            )
    return row


@torch.no_grad()  # (restored on return: main also runs in-process)
def run_benchmark(args) -> List[Dict]:
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()

    families = None if not args.families else [f.strip() for f in args.families.split(",")]
    plan = []  # (model, path, desc, steps, methods)
    for name in args.models:
        path, desc = resolve_model_path(name, args)
        for steps in args.steps:
            plan.append((name, path, desc, steps, qm.build_methods(name, steps, quick=args.quick, families=families,
                                                                   values=args.values)))
    # per (model, steps): counted runs of every seed for no cache and each method, one timed run of the
    # first seed for each method and two for no cache (before and after), MagCache's calibration
    total = sum((len(args.seeds) + 1) * (1 + len(m)) + 1 + any(x.family == qm.MAGCACHE for x in m) for *_, m in plan)

    rows: List[Dict] = []
    details: List[Dict] = []
    capture = qm.WarningCapture()
    bar = tqdm(total=total, desc="quality", unit="run", dynamic_ncols=True)
    loaded: Dict[str, torch.nn.Module] = {}
    for name, path, desc, steps, methods in plan:
        if name not in loaded:
            loaded[name] = zoo.load(name, path=path)
            # one untimed warm-up call (lazy initialisation of the first pipeline run)
            warm = copy.deepcopy(loaded[name])
            zoo.pipeline(name, warm)(**zoo.pipeline_call_kwargs(name, args.labels[:1], 0, 2, embeddings_path=path))
            del warm
        base = loaded[name]
        weights = desc

        def fresh():
            tr = copy.deepcopy(base)
            return zoo.pipeline(name, tr), BlockCounter(tr)

        # the reference (timed again after the methods: its wall time is the median of both passes)
        bar.set_postfix_str(f"{name} {steps} steps: no cache")
        pipe, counter = fresh()
        ref_runs = []
        for seed in args.seeds:
            ref_runs.append(sample(pipe, name, args.labels, seed, steps, path, counter))
            bar.update(1)
        ref_timed = [sample(pipe, name, args.labels, args.seeds[0], steps, path, counter, count_flops=False)]
        bar.update(1)
        sampled_with_columns = sampler_columns(pipe.scheduler)
        del pipe, counter

        mag_cache: Dict[str, List[float]] = {}

        def calibration_kwargs():  # a generator of its own each time: every calibration call draws the same noise
            return zoo.pipeline_call_kwargs(name, args.labels, seed=args.calibration_seed, num_inference_steps=steps,
                                            embeddings_path=path)

        def calibrate_mag():
            if "ratios" not in mag_cache:
                p, c = fresh()
                mag_cache["ratios"] = qm.calibrate_mag(p, calibration_kwargs(), steps)
                c.remove()
                bar.update(1)
            return mag_cache["ratios"]

        ctx = qm.Context(model=name, steps=steps, backend=args.backend, calibrate_mag=calibrate_mag,
                         calibration_kwargs=calibration_kwargs)
        results = []  # (method, status, runs, note)
        for method in methods:
            bar.set_postfix_str(f"{name} {steps} steps: {method.family} {method.setting}")
            pipe, counter = fresh()
            runs: List[RunResult] = []
            status, note, counted = "ok", "", 0
            with capture.capturing():
                try:
                    method.enable(pipe, ctx)
                except qm.Unsupported as e:
                    status, note = "unsupported", str(e)
                except Exception as e:  # a peer's cache that crashes on this model: a row, not a crash
                    status, note = "error", f"enable failed: {type(e).__name__}: {e}"
                timed = None
                if status == "ok":
                    try:
                        for seed in args.seeds:
                            runs.append(sample(pipe, name, args.labels, seed, steps, path, counter))
                            bar.update(1)
                            counted += 1
                        timed = sample(pipe, name, args.labels, args.seeds[0], steps, path, counter, count_flops=False)
                        bar.update(1)
                        counted += 1
                        if not torch.equal(timed.images, runs[0].images):
                            note = "a second run of the same seed differs"
                    except Exception as e:
                        status, note = "error", f"run failed: {type(e).__name__}: {e}"
                        runs = []
                    if method.check is not None and status == "ok":
                        msg = method.check(pipe, ctx, capture.messages)
                        if msg:
                            status, note = ("fail-open" if msg.startswith("FAIL-OPEN") else status), msg
                    try:
                        method.disable(pipe)
                    except Exception as e:
                        note = (note + "; " if note else "") + f"disable failed: {type(e).__name__}: {e}"
                    others = sorted({m for m in capture.messages if "fail-open" not in m and "running full" not in m})
                    if others:
                        note = (note + "; " if note else "") + "warnings: " + " | ".join(others)[:300]
            bar.update(len(args.seeds) + 1 - counted)
            counter.remove()
            results.append((method, status, runs, note, timed))
            del pipe, counter

        bar.set_postfix_str(f"{name} {steps} steps: no cache (again)")
        pipe, counter = fresh()
        ref_note = ""
        again = sample(pipe, name, args.labels, args.seeds[0], steps, path, counter, count_flops=False)
        ref_timed.append(again)
        if not torch.equal(again.images, ref_runs[0].images):
            ref_note = "the uncached pipeline is not deterministic: a second run differs"
        bar.update(1)
        ref_walls = [r.wall_s for r in ref_timed]
        ref_cpus = [r.cpu_s for r in ref_timed]
        del pipe, counter
        ref_wall, ref_cpu = median(ref_walls), median(ref_cpus)
        first_row = len(rows)
        rows.append(row_for(name, steps, qm.NO_CACHE, "", "ok", ref_runs, ref_runs, ref_wall, args.seeds, args.labels,
                            weights, ref_note))
        rows[-1].update(wall_s=ref_wall, speedup=1.0, cpu_s=ref_cpu, speedup_cpu=1.0)
        details.append(dict(model=name, steps=steps, family=qm.NO_CACHE, setting="", ref_walls=ref_walls, ref_cpus=ref_cpus,
                            runs=[dict(seed=r.seed, flops=r.flops, calls=r.calls, macs=r.macs) for r in ref_runs]))
        for method, status, runs, note, timed in results:
            rows.append(row_for(name, steps, method.family, method.setting, status, runs, ref_runs, ref_wall,
                                args.seeds, args.labels, weights, note, ref_cpu=ref_cpu, timed=timed))
            details.append(dict(model=name, steps=steps, family=method.family, setting=method.setting, status=status,
                                note=note, params={k: str(v) for k, v in method.params.items()},
                                timed=None if timed is None else dict(seed=timed.seed, wall_s=timed.wall_s,
                                                                      cpu_s=timed.cpu_s),
                                runs=[dict(seed=r.seed, flops=r.flops, calls=r.calls, macs=r.macs, pattern=r.pattern,
                                           sample_psnr=[round(v, 3) for v in r.sample_psnr])
                                      for r in runs]))
        for r in rows[first_row:]:
            r.update(sampled_with_columns)
        if mag_cache:
            details.append(dict(model=name, steps=steps, family=qm.MAGCACHE, setting="calibration",
                                ratios=mag_cache["ratios"]))
    bar.close()
    return rows, details


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------


def _fmt(v, spec):
    if v == "" or v is None:
        return ""
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)


def write_csv(rows: List[Dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})


MATCHED = (1.5, 2.0, 2.5)
METRICS = ("psnr", "psnr_mean", "ssim")


def _number(v) -> bool:
    """A finite measured value (rows of older runs leave a newer column empty)."""
    return isinstance(v, (int, float)) and math.isfinite(v)


def _has_sample_mean(rows: List[Dict]) -> bool:
    """Whether any cached run of ``rows`` recorded the mean of its samples' PSNR (older runs did not)."""
    return any(_number(r.get("psnr_mean")) for r in rows if r["family"] != qm.NO_CACHE)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def psnr_at(rows: List[Dict], fewer: float, metric: str = "psnr") -> Optional[float]:
    """PSNR (or ``metric``: one of :data:`METRICS`) of one family's settings interpolated linearly in flop
    fraction at ``fewer``× fewer flops; None outside the range its settings cover (no extrapolation). Settings
    with the same flop fraction count as their best (the best δ at those savings)."""
    _check_metric(metric)
    best: Dict[float, float] = {}
    for r in rows:
        if r["status"] == "ok" and _number(r.get(metric)):
            best[r["flop_fraction"]] = max(best.get(r["flop_fraction"], -math.inf), r[metric])
    pts = sorted(best.items())
    target = 1.0 / fewer
    for (f0, p0), (f1, p1) in zip(pts, pts[1:]):
        if f0 <= target <= f1:
            return p0 if f1 == f0 else p0 + (p1 - p0) * (target - f0) / (f1 - f0)
    for f, p in pts:
        if abs(f - target) < 1e-9:
            return p
    return None


def front_at(rows: List[Dict], fewer: float, metric: str = "psnr") -> Optional[Tuple[float, float]]:
    """One family's Pareto front read as a staircase at ``fewer``× fewer flops: the best PSNR (or SSIM) of
    its settings that save at least that much, and that setting's savings (×); None when none does.

    Where :func:`psnr_at` interpolates between the two settings around ``fewer`` (so one unlucky setting
    next to it pulls the value down), this is what a user who wants at least ``fewer``× can pick."""
    _check_metric(metric)
    pts = [(r[metric], 1.0 / r["flop_fraction"]) for r in rows
           if r["status"] == "ok" and _number(r.get(metric)) and r.get("flop_fraction")
           and 1.0 / r["flop_fraction"] >= fewer * (1.0 - 1e-9)]
    return max(pts) if pts else None


def matched_table(rows: List[Dict], metric: str = "psnr") -> List[str]:
    """Per model and step count: each family's PSNR at 1.5×, 2× and 2.5× fewer flops."""
    keys = list(dict.fromkeys((r["model"], r["steps"]) for r in rows))
    head = "| method | " + " | ".join(f"{m.split('_')[0]} {st} @{x:g}×" for m, st in keys for x in MATCHED) + " |"
    lines = [head, "| --- |" + " ---: |" * (len(keys) * len(MATCHED))]
    for fam in qm.FAMILIES[1:]:
        cells = []
        for m, st in keys:
            fr = [r for r in rows if r["model"] == m and r["steps"] == st and r["family"] == fam]
            for x in MATCHED:
                v = psnr_at(fr, x, metric)
                cells.append("–" if v is None else (f"{v:.4f}" if metric == "ssim" else f"{v:.1f}"))
        if any(c != "–" for c in cells):
            lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    return lines


LEAD_AT = (2.0, 2.25, 2.5, 2.75, 3.0)


def lead_points(rows: List[Dict], front: bool = False, metric: str = "psnr") -> List[Dict]:
    """At each savings of :data:`LEAD_AT` per (model, steps): the best peer's and the best DiCache family's
    value and the preset's (family DICACHE), each interpolated in flop fraction (:func:`psnr_at`) or, with
    ``front``, read on its Pareto front (:func:`front_at`). Values are ``(dB, savings of the setting or
    None)`` or None; a point where neither side reaches is left out."""
    _check_metric(metric)

    def at(family_rows, x):
        if front:
            return front_at(family_rows, x, metric)
        v = psnr_at(family_rows, x, metric)
        return None if v is None else (v, None)

    points = []
    for m, st in dict.fromkeys((r["model"], r["steps"]) for r in rows):
        rs = [r for r in rows if r["model"] == m and r["steps"] == st]

        def best(families, x):
            vals = [(at([r for r in rs if r["family"] == f], x), f) for f in families]
            vals = [(v, f) for v, f in vals if v is not None]
            # on a tie the preset names the point (the budget families often land on its very setting)
            return max(vals, key=lambda t: (t[0][0], t[1] == qm.DICACHE)) if vals else (None, "–")

        for x in LEAD_AT:
            (pv, pf), (dv, df) = best(qm.PEERS, x), best(qm.DICACHES, x)
            if pv is None and dv is None:
                continue
            points.append(dict(model=m, steps=st, fewer=x, peer=pv, peer_family=pf, best=dv, best_family=df,
                               preset=at([r for r in rs if r["family"] == qm.DICACHE], x)))
    return points


def lead_table(rows: List[Dict], front: bool = False, metric: str = "psnr") -> List[str]:
    """At each savings ≥ 2×: the best DiCache family's PSNR against the best peer's, and the preset (family
    DICACHE) against the best DiCache (:func:`lead_points`), the front's settings shown with the savings they
    reach. ``metric``: ``"psnr"`` (over all samples) or ``"psnr_mean"`` (the mean of the samples' PSNR)."""
    if front:
        lines = ["| model | steps | at least | best peer | dB (×) | best DiCache | dB (×) | lead dB | preset dB (×) "
                 "| preset − best |"]
    else:
        lines = ["| model | steps | fewer flops | best peer | dB | best DiCache | dB | lead dB | preset dB "
                 "| preset − best |"]
    lines.append("| --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |")

    def cell(v):
        return "–" if v is None else f"{v[0]:.1f}" + ("" if v[1] is None else f" ({v[1]:.2f}×)")

    for p in lead_points(rows, front, metric):
        pv, dv, pre = p["peer"], p["best"], p["preset"]
        lead = f"{dv[0] - pv[0]:+.1f}" if pv is not None and dv is not None else "–"
        gap = f"{pre[0] - dv[0]:+.1f}" if pre is not None and dv is not None else "–"
        lines.append(f"| {p['model']} | {p['steps']} | {p['fewer']:g}× | {p['peer_family']} | {cell(pv)} "
                     f"| {p['best_family']} | {cell(dv)} | {lead} | {cell(pre)} | {gap} |")
    return lines


BUDGET_RULES = {qm.DICACHE_BUDGET: "replay", qm.DICACHE_BUDGET_ONLINE: "online"}


def budget_points(rows: List[Dict], metric: str = "psnr") -> List[Dict]:
    """Each compute-budget run (``rule`` replay or online): its target and the savings it reached, its value,
    the preset's (fixed δ) interpolated at those savings and on its front, and the best fixed-δ family's."""
    _check_metric(metric)
    fixed = [f for f in qm.DICACHES if f not in BUDGET_RULES]
    points = []
    for r in rows:
        if (r["family"] not in BUDGET_RULES or r["status"] != "ok" or not r.get("flop_fraction")
                or not _number(r.get(metric))):
            continue
        fewer = 1.0 / r["flop_fraction"]
        rs = [x for x in rows if x["model"] == r["model"] and x["steps"] == r["steps"]]
        vals = [(psnr_at([x for x in rs if x["family"] == f], fewer, metric), f) for f in fixed]
        vals = [(v, f) for v, f in vals if v is not None]
        bv, bf = max(vals) if vals else (None, "–")
        points.append(dict(model=r["model"], steps=r["steps"], rule=BUDGET_RULES[r["family"]],
                           target=float(r["setting"].split("=")[1].split()[0]), fewer=fewer, value=r[metric],
                           preset=psnr_at([x for x in rs if x["family"] == qm.DICACHE], fewer, metric),
                           front=front_at([x for x in rs if x["family"] == qm.DICACHE], fewer, metric),
                           best=bv, best_family=bf))
    return points


def budget_table(rows: List[Dict], metric: str = "psnr") -> List[str]:
    """Each compute-budget run (:func:`budget_points`): its target, the flops saving it reached (off target in %),
    its PSNR; against the preset with a fixed δ (family DICACHE: the same options, δ instead of the budget), which
    is what the budget replaces, interpolated at the same savings and on its front (the best δ that saves at least
    as much, :func:`front_at`); and, for reference, against the best of every fixed-δ DiCache family there.
    ``metric``: as in :func:`lead_table`."""
    lines = ["| model | steps | rule | target | fewer flops | off target (±10 %) | PSNR dB | preset, fixed δ, same "
             "savings dB | budget − fixed δ (≥ −0.5) | preset's front: best fixed δ saving at least as much, dB (×) "
             "| budget − front (≥ −0.5) | best fixed-δ family there | dB | budget − best |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]

    def mark(ok: bool) -> str:
        return "✓" if ok else "✗"

    for p in budget_points(rows, metric):
        got, pre, front, bv = p["value"], p["preset"], p["front"], p["best"]
        off = p["fewer"] / p["target"] - 1.0
        vs_pre = "–" if pre is None else f"{got - pre:+.1f} {mark(got - pre >= -0.5)}"
        front_cell = "–" if front is None else f"{front[0]:.1f} ({front[1]:.2f}×)"
        vs_front = "–" if front is None else f"{got - front[0]:+.1f} {mark(got - front[0] >= -0.5)}"
        lines.append(f"| {p['model']} | {p['steps']} | {p['rule']} | {p['target']:g}× | {p['fewer']:.2f}× "
                     f"| {100 * off:+.1f} % {mark(abs(off) <= 0.10)} | {got:.1f} | {'–' if pre is None else f'{pre:.1f}'} "
                     f"| {vs_pre} | {front_cell} | {vs_front} | {p['best_family']} | {'–' if bv is None else f'{bv:.1f}'} "
                     f"| {'–' if bv is None else f'{got - bv:+.1f}'} |")
    return lines


def _delta_of(setting: str) -> Optional[float]:
    """δ of a row of the preset's family (setting ``δ=0.4``), None for any other setting."""
    if not setting.startswith("δ=") or "," in setting:
        return None
    try:
        return float(setting[2:])
    except ValueError:
        return None


def _setting_value(family: str, setting: str) -> Optional[float]:
    """δ of a row of the preset's family (setting ``δ=0.4``) or the target of a budget row; None otherwise."""
    if family in BUDGET_RULES:
        return float(setting.split("=")[1].split()[0])
    return _delta_of(setting) if family == qm.DICACHE else None


def default_points(rows: List[Dict], metric: str = "psnr", default: Optional[Tuple[str, float]] = None) -> List[Dict]:
    """Per (model, steps): ``dicache.enable(pipe)`` with no options (:func:`quality_methods.default_of`: the
    preset's family at the preset's own δ at that step count (``probe_threshold`` where the probe decides), or the
    first call of the budget where the model's family has no preset;
    ``default``: another (family, δ or target) read as the default on every model): its savings and value; the best
    DiCache setting of any family that saves at least as much (the default sits on DiCache's front when nothing
    there scores higher); and the best peer's setting that does. Model and step counts whose rows lack the default
    are left out."""
    _check_metric(metric)
    points = []
    for m, st in dict.fromkeys((r["model"], r["steps"]) for r in rows):
        here = [r for r in rows if r["model"] == m and r["steps"] == st]
        family, value = default or qm.default_of(m, st, row_flow_sigmas(here))
        rs = [r for r in here if r["status"] == "ok" and r.get("flop_fraction") and _number(r.get(metric))]
        own = [r for r in rs if r["family"] == family and _setting_value(family, r["setting"]) is not None
               and math.isclose(_setting_value(family, r["setting"]), value)]
        if not own:
            continue
        d = own[0]
        fewer = 1.0 / d["flop_fraction"]

        def best(families):
            got = [(r[metric], 1.0 / r["flop_fraction"], r["family"], r["setting"]) for r in rs
                   if r["family"] in families and 1.0 / r["flop_fraction"] >= fewer * (1.0 - 1e-9)]
            return max(got, key=lambda t: (t[0], t[2] == family)) if got else None

        points.append(dict(model=m, steps=st, default=("δ=" if family == qm.DICACHE else "target_speedup=")
                           + f"{value:g}", fewer=fewer, value=d[metric], best=best(qm.DICACHES), peer=best(qm.PEERS)))
    return points


def default_table(rows: List[Dict], metric: str = "psnr", default: Optional[Tuple[str, float]] = None) -> List[str]:
    """:func:`default_points` as markdown: the default against DiCache's front and the peers' at its savings."""
    lines = ["| model | steps | default | fewer flops | dB | best DiCache saving at least as much | dB (×) "
             "| default − best (≥ −0.5) | best peer saving at least as much | dB (×) | default − peer |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: |"]
    for p in default_points(rows, metric, default):
        b, pe = p["best"], p["peer"]
        gap = p["value"] - b[0]
        peer_cells = ("– | – | –" if pe is None else
                      f"{pe[2]} ({pe[3]}) | {pe[0]:.1f} ({pe[1]:.2f}×) | {p['value'] - pe[0]:+.1f}")
        lines.append(f"| {p['model']} | {p['steps']} | {p['default']} | {p['fewer']:.2f}× | {p['value']:.1f} "
                     f"| {b[2]} ({b[3]}) | {b[0]:.1f} ({b[1]:.2f}×) | {gap:+.1f} {'✓' if gap >= -0.5 else '✗'} "
                     f"| {peer_cells} |")
    return lines


def _default_lines(rows: List[Dict], metric: str = "psnr") -> List[str]:
    """:func:`default_table` in a report, or a line saying why there is none (no run at the default's setting)."""
    if default_points(rows, metric):
        return default_table(rows, metric)
    return ["No run of this report is at the default's setting (its family at its δ or target): nothing to read."]


def criteria_counts(rows: List[Dict]) -> Dict[str, Dict[str, Optional[Tuple[int, int]]]]:
    """The issue's margins counted over the points from 2× to 3× (:func:`lead_points`, :func:`budget_points`), per
    metric (``"psnr"`` and, where the rows have it, ``"psnr_mean"``): ``{metric: {criterion: (met, of)}}``, a
    criterion with nothing to count None. Criteria: ``lead`` / ``lead_front`` (DiCache's best over the best peer by
    ≥ 1 dB, interpolated / on the fronts), ``preset`` / ``preset_front`` (the preset within 0.5 dB of DiCache's
    best), ``on_target`` (the budget within ±10 % of its target), ``replay`` / ``online`` and ``replay_front`` /
    ``online_front`` (each budget rule within 0.5 dB of the preset's fixed δ at the same savings, interpolated / on
    the preset's front), ``default`` (``dicache.enable(pipe)`` within 0.5 dB of DiCache's front at its savings);
    and ``lead_range``: (smallest, largest) lead in dB, interpolated, or None. The preset's margins count nothing
    where it is the rows' only DiCache family."""
    metrics = ["psnr"] + (["psnr_mean"] if _has_sample_mean(rows) else [])
    # where the preset is the only DiCache family of the rows, it is DiCache's best by construction: nothing to count
    rivals = bool({r["family"] for r in rows} & (set(qm.DICACHES) - {qm.DICACHE}))

    def count(flags):
        flags = list(flags)
        return (sum(bool(f) for f in flags), len(flags)) if flags else None

    out: Dict[str, Dict] = {}
    for m in metrics:
        c: Dict = {}
        for front, suffix in ((False, ""), (True, "_front")):
            pts = lead_points(rows, front, m)
            leads = [p["best"][0] - p["peer"][0] for p in pts if p["peer"] and p["best"]]
            c["lead" + suffix] = count(v >= 1.0 for v in leads)
            c["preset" + suffix] = count(p["preset"][0] - p["best"][0] >= -0.5 for p in pts
                                         if rivals and p["preset"] and p["best"])
            if not front:
                c["lead_range"] = (min(leads), max(leads)) if leads else None
        budget = budget_points(rows, m)
        c["on_target"] = count(abs(p["fewer"] / p["target"] - 1.0) <= 0.10 for p in budget)
        for rule in ("replay", "online"):
            here = [p for p in budget if p["rule"] == rule]
            c[rule] = count(p["value"] - p["preset"] >= -0.5 for p in here if p["preset"] is not None)
            c[rule + "_front"] = count(p["value"] - p["front"][0] >= -0.5 for p in here if p["front"] is not None)
        c["default"] = count(p["value"] - p["best"][0] >= -0.5 for p in default_points(rows, m))
        out[m] = c
    return out


def criteria_table(rows: List[Dict]) -> List[str]:
    """:func:`criteria_counts` as markdown, one column per metric."""
    counts = criteria_counts(rows)
    metrics = list(counts)
    names = {"psnr": "PSNR over all samples", "psnr_mean": "mean of the samples' PSNR"}
    lines = ["| criterion | " + " | ".join(names[m] for m in metrics) + " |", "| --- |" + " ---: |" * len(metrics)]

    def cell(c) -> str:
        return f"{c[0]} of {c[1]}" if c is not None else "0 of 0"

    def line(text, *keys):
        lines.append(f"| {text} | " + " | ".join(" / ".join(cell(counts[m][k]) for k in keys) for m in metrics)
                     + " |")

    for suffix, how in (("", "interpolated"), ("_front", "on the fronts")):
        line(f"lead ≥ 1 dB over the best peer, {how}", "lead" + suffix)
        line(f"preset within 0.5 dB of DiCache's best, {how}", "preset" + suffix)
    line("budget within ±10 % of its target", "on_target")
    line("budget within 0.5 dB of the fixed δ, interpolated: replay / online", "replay", "online")
    line("budget within 0.5 dB of the fixed δ, on the preset's front: replay / online", "replay_front",
         "online_front")
    if any(counts[m]["default"] is not None for m in metrics):
        line("the default (no options) within 0.5 dB of DiCache's front at its savings", "default")
    return lines


#: The reports the README's overview table reads (:func:`overview_table`), each with what it measures.
OVERVIEW_REPORTS = (
    ("seeds4", "Flux and Wan, 20 and 50 steps, seeds 0–3"),
    ("seeds6", "the same over six seeds"),
    ("heldout_hunyuan", "held-out model `hunyuan_digits` on its family's preset, 20 and 50 steps, seeds 0–3"),
    ("heldout_hunyuan6", "the same over six seeds"),
    ("steps30", "Flux and Wan at 30 steps, where nothing was tuned, seeds 0–3"),
    ("steps28", "Flux at 28 steps, FLUX.1's own default, seeds 0–3"),
    ("heldout_hunyuan30", "held-out `hunyuan_digits` at 30 steps, seeds 0–3"),
    ("heldout_sd3", "held-out `sd3_digits`, a family without a preset (the default budgets 2×), 20 and 50 steps, "
                    "seeds 0–3"),
    ("heldout_sd3_6", "the same over six seeds"),
    ("heldout_cogvideox", "held-out `cogvideox_digits`, no preset and not flow matching (DDIM, v-prediction), 20 and "
                          "50 steps, seeds 0–3"),
    ("heldout_cogvideox6", "the same over six seeds"),
    ("heldout_cogvideox_dpm", "held-out sampler: `cogvideox_digits` on CogVideoX-5b's `CogVideoXDPMScheduler`, which "
                              "adds noise at every step, 20 and 50 steps, seeds 0–3"),
    ("heldout_cogvideox_dpm6", "the same over six seeds"),
    ("heldout_ddpm_wan", "not shipped: Wan's transformer trained on DDIM (`benchmarks/ddpm_wan.py`), 20 and 50 steps, "
                         "seeds 0–3"),
    ("retrained_seed1", "not shipped: Flux, Wan and CogVideoX trained again from seed 1, 20 and 50 steps, seeds 0–3"),
    ("retrained_seed1_45", "the same on seeds 4–5"),
    ("smooth_flux", "not shipped: Flux trained with a smooth timestep embedding (`benchmarks/smooth_time.py`), 20 and "
                    "50 steps, seeds 0–3, the preset's δ list and the peers"),
)
#: The lines around the overview table in the README (``quality.py overview --write README.md``).
OVERVIEW_BEGIN = "<!-- overview: written by `benchmarks/quality.py overview --write README.md` -->"
OVERVIEW_END = "<!-- overview: end -->"


def overview_row(rows: List[Dict]) -> List[str]:
    """One report's cells of the README's overview table (:func:`criteria_counts`): each count pooled / on the mean
    of the samples' PSNR (the budget's: replay / first call, pooled; the same on the mean), the fronts in brackets,
    ``–`` where there is nothing to count; the lead's smallest and largest value, pooled, interpolated."""
    counts = criteria_counts(rows)
    p, m = counts["psnr"], counts.get("psnr_mean", {})

    def one(c) -> str:
        return "–" if c is None else f"{c[0]} of {c[1]}"

    def pair(a, b) -> str:  # "3 / 2 of 4"; "3 of 4 / 2 of 5" on different denominators; "–" for nothing counted
        if a is None and b is None:
            return "–"
        return f"{a[0]} / {b[0]} of {a[1]}" if a and b and a[1] == b[1] else f"{one(a)} / {one(b)}"

    def signed(v: float) -> str:
        return f"{v:+.1f}".replace("-", "−")

    lead = pair(p["lead"], m.get("lead"))
    if p["lead_range"] is not None:
        lead += f", {signed(p['lead_range'][0])} to {signed(p['lead_range'][1])} dB"
    if p["lead_front"] is not None:
        lead += f" ({pair(p['lead_front'], m.get('lead_front'))})"
    preset = pair(p["preset"], m.get("preset"))
    if p["preset_front"] is not None:
        preset += f" ({pair(p['preset_front'], m.get('preset_front'))})"
    budget = pair(p["replay"], p["online"])
    if m.get("replay") is not None or m.get("online") is not None:
        budget += f"; {pair(m.get('replay'), m.get('online'))}"
    return [lead, preset, one(p["on_target"]), budget, pair(p["default"], m.get("default"))]


def overview_table(results: str = os.path.join(_HERE, "results")) -> List[str]:
    """The README's overview of the reports (:data:`OVERVIEW_REPORTS`, under ``results``), rendered from their rows."""
    lines = ["| report (`benchmarks/results/…`) | DiCache's best leads the best peer by ≥ 1 dB: points, pooled / "
             "mean of the samples, the lead pooled (on the fronts) | the preset within 0.5 dB of DiCache's best "
             "(on the fronts) | `target_speedup` on target (±10 %) | …and within 0.5 dB of the fixed δ, replay / "
             "first call: pooled; mean of the samples | `dicache.enable(pipe)` with no options within 0.5 dB of "
             "DiCache's front at its savings |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, what in OVERVIEW_REPORTS:
        rows = read_csv(os.path.join(results, name, "quality.csv"))
        lines.append(f"| {what} (`{name}/`) | " + " | ".join(overview_row(rows)) + " |")
    return lines


def overview_in(text: str, table: Sequence[str]) -> str:
    """``text`` (the README) with the lines between :data:`OVERVIEW_BEGIN` and :data:`OVERVIEW_END` replaced by
    ``table``; ValueError if the markers are missing or out of order."""
    lines = text.split("\n")
    try:
        b, e = lines.index(OVERVIEW_BEGIN), lines.index(OVERVIEW_END)
    except ValueError:
        raise ValueError(f"the README has no overview markers: {OVERVIEW_BEGIN!r} … {OVERVIEW_END!r}") from None
    if e < b:
        raise ValueError("the README's overview markers are out of order")
    return "\n".join(lines[:b + 1] + list(table) + lines[e:])


def overview_main(argv: Sequence[str]) -> int:
    """``quality.py overview [--write README | --check README]``: the overview of the shipped reports (the issue's
    margins from 2× to 3×, :data:`OVERVIEW_REPORTS`) rendered from their rows; ``--write``: into the README between
    its markers; ``--check``: exit 1 if the README's table differs."""
    ap = argparse.ArgumentParser(prog="quality.py overview", description=overview_main.__doc__)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", metavar="README", help="write the table into this file between its markers")
    g.add_argument("--check", metavar="README", help="exit 1 if this file's table is not the rendered one")
    ap.add_argument("--results", default=os.path.join(_HERE, "results"), help="the reports' directory")
    a = ap.parse_args(argv)
    table = overview_table(a.results)
    path = a.write or a.check
    if path is None:
        print("\n".join(table))
        return 0
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        new = overview_in(text, table)
    except ValueError as e:
        ap.error(str(e))
    if a.check:
        print(f"{path}: overview {'up to date' if new == text else 'out of date'}")
        return 0 if new == text else 1
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    print(f"{path}: overview {'written' if new != text else 'up to date'}")
    return 0


def markdown(rows: List[Dict], meta: Dict) -> str:
    lines = [
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; {meta['threads']} torch thread(s); total {meta['seconds']:.0f} s  ",
        f"Seeds {meta['seeds']}, labels {meta['labels']} (one batch per seed); backend {meta['backend']}  ",
        "Flops = floating-point operations executed / uncached, counted by torch's FlopCounterMode over the "
        "whole pipeline call (every matmul, convolution and attention, whatever cache skipped the rest); blocks = "
        "block evaluations executed / uncached (linear-layer work per block). Wall times come from a separate "
        "run of the first seed without the counter: speedup = wall time of no cache (median of a run before and "
        "one after the methods) / of the method; speedup (CPU) the same with the process CPU time, which other "
        "processes on the machine disturb less; PSNR, SSIM against the uncached output over all samples (PSNR per "
        "sample, mean: the mean of each sample's PSNR). "
        f"LPIPS: {LPIPS_NOTE}.",
        "",
        "The margins at a glance, over the points from 2× to 3× fewer flops (the budget: its targets 1.5–3×); the "
        "tables below give each point:",
        "",
        *criteria_table(rows),
        "",
        "PSNR (dB) at matched savings: each family's settings interpolated linearly in flop fraction at 1.5×, 2× "
        "and 2.5× fewer flops (– : its settings do not reach there).",
        "",
        *matched_table(rows),
        "",
        "SSIM at matched savings, the same way.",
        "",
        *matched_table(rows, "ssim"),
        "",
        "The lead at ≥ 2× fewer flops: the best of DiCache's families against the best peer, both interpolated "
        "at the same savings; and the preset (`dicache.enable(pipe, threshold=δ)`, family DiCache) against the "
        "best DiCache.",
        "",
        *lead_table(rows),
        "",
        "The same read on the Pareto fronts: at each savings, the best setting of each that saves *at least* that "
        "much (with the savings it reaches). Interpolation charges a family for an unlucky setting next to the "
        "point; the front is what a user who wants at least that saving can pick.",
        "",
        *lead_table(rows, front=True),
        "",
        "The compute-budget mode (`target_speedup`, the preset's options with no δ), by its two rules: *replay* "
        "(family DiCache budget: one call on the calibration seed first, whose error profile the counted calls "
        "replay) and *online* (DiCache budget online: every call a first call). Each run against its target; "
        "against the preset with a fixed δ at the savings it reached (what the budget replaces: the same "
        "options, δ tuned by hand), interpolated and on the preset's front (the best fixed δ that saves at least as "
        "much); and, for reference, against the best of every fixed-δ DiCache family there "
        "(– : no fixed-δ run reaches there).",
        "",
        *budget_table(rows),
        "",
        "The default, `dicache.enable(pipe)` with no options (the preset at its own δ at that step count, "
        "`probe_threshold` where the probe decides; on a model whose family has no "
        "preset, the first call of the budget at 2×), against the best setting of any DiCache family that saves at "
        "least as much (it sits on DiCache's Pareto front when none scores higher) and the best peer's that does.",
        "",
        *_default_lines(rows),
        "",
    ]
    if _has_sample_mean(rows):
        lines += [
            "#### The same on the mean of the samples' PSNR",
            "",
            "The tables above take the PSNR of the squared error pooled over all samples, which the worst sample "
            "sets; the caching papers average the PSNR of each sample. The same comparisons on that mean "
            "(rows of runs that did not record it are left out):",
            "",
            *matched_table(rows, "psnr_mean"),
            "",
            *lead_table(rows, metric="psnr_mean"),
            "",
            *lead_table(rows, front=True, metric="psnr_mean"),
            "",
            *budget_table(rows, "psnr_mean"),
            "",
            *_default_lines(rows, "psnr_mean"),
            "",
        ]
    groups: Dict = {}
    for r in rows:
        groups.setdefault((r["model"], r["steps"]), []).append(r)
    for (model, steps), rs in groups.items():
        lines.append(f"### {model}, {steps} steps ({rs[0]['weights']})")
        lines.append("")
        lines.append("| method | setting | flops | fewer flops | blocks | wall s | speedup | CPU s | speedup (CPU) | PSNR dB "
                     "| PSNR per sample, mean dB | SSIM | note |")
        lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for r in rs:
            if r["status"] in ("unsupported", "error"):
                lines.append(f"| {r['family']} | {r['setting']} | – | – | – | – | – | – | – | – | – | – | "
                             f"**{r['status']}**: {r['note']} |")
                continue
            note = r["note"]
            if r["status"] != "ok":
                note = f"**{r['status']}** {note}"
            lines.append(
                f"| {r['family']} | {r['setting']} | {100 * r['flop_fraction']:.1f}% | {_fmt(r['fewer_flops'], '.2f')}× "
                f"| {100 * r['block_fraction']:.1f}% "
                f"| {r['wall_s']:.2f} | {r['speedup']:.2f}× | {r['cpu_s']:.2f} | {_fmt(r['speedup_cpu'], '.2f')}× "
                f"| {_fmt(r['psnr'], '.2f')} | {_fmt(r.get('psnr_mean', ''), '.2f') or '–'} | {r['ssim']:.4f} "
                f"| {note} |"
            )
        lines.append("")
    return "\n".join(lines)


_STYLE = {
    qm.UNIFORM: ("tab:gray", "s"), qm.FBC: ("tab:blue", "v"), qm.TAYLORSEER: ("tab:purple", "P"),
    qm.TAYLORSEER_LITE: ("tab:pink", "P"), qm.MAGCACHE: ("tab:green", "^"), qm.SEACACHE: ("tab:olive", "D"),
    qm.DBCACHE: ("tab:cyan", "X"), qm.DICACHE: ("tab:red", "o"), qm.DICACHE_PAPER: ("salmon", "o"),
    qm.DICACHE_BUDGET: ("deeppink", "*"), qm.DICACHE_BUDGET_ONLINE: ("hotpink", "x"),
    qm.DICACHE_ORDER2: ("darkred", "d"), qm.DICACHE_SEPARATE: ("tab:orange", "<"), qm.DICACHE_CAP2: ("tab:brown", ">"),
    qm.DICACHE_ORDER1: ("indianred", "d"), qm.DICACHE_SCHED: ("gold", "p"), qm.DICACHE_NOALIGN: ("rosybrown", "o"),
    qm.DICACHE_M2: ("peru", "h"), qm.DICACHE_M3: ("sienna", "8"), qm.DICACHE_NO_PREDICTIVE: ("crimson", "*"),
    qm.DICACHE_NORUN: ("lightcoral", "s"), qm.DICACHE_STEPS: ("maroon", "o"), qm.DICACHE_PROBE: ("firebrick", "o"),
    qm.DICACHE_PROBED: ("darkorange", "D"), qm.DICACHE_LAST10: ("orangered", "v"),
    qm.DICACHE_STEP_RUNS: ("mediumvioletred", "^"), qm.DICACHE_REACH1: ("dimgray", "s"),
    qm.DICACHE_REACH2: ("black", "o"), qm.DICACHE_NOREACH: ("slategray", "D"), qm.DICACHE_PER_SAMPLE: ("purple", "<"),
    qm.DICACHE_QUAD_REACH: ("darkgoldenrod", "P"), qm.DICACHE_QUAD_SPACED: ("olive", "X"),
    qm.DICACHE_QUAD_HALF: ("yellowgreen", "X"),
}


def plot(rows: List[Dict], path: str, title: str = "") -> bool:
    """One row per (model, steps): PSNR (and, where the rows have it, the mean of the samples' PSNR) and SSIM
    against fewer flops (×), every family a line; DiCache's families in reds, the dotted line at 2×."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    keys = list(dict.fromkeys((r["model"], r["steps"]) for r in rows))
    metrics = ("psnr", "ssim")
    if _has_sample_mean(rows):
        metrics = ("psnr", "psnr_mean", "ssim")
    labels_of = {"psnr": "PSNR vs no cache (dB)", "psnr_mean": "mean of the samples' PSNR (dB)",
                 "ssim": "SSIM vs no cache"}
    fig, axes = plt.subplots(len(keys), len(metrics), figsize=(6.5 * len(metrics), 3.6 * len(keys)), squeeze=False)
    for i, (model, st) in enumerate(keys):
        rs = [r for r in rows if r["model"] == model and r["steps"] == st and r["status"] == "ok"
              and r["family"] != qm.NO_CACHE]
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            for fam in qm.FAMILIES[1:]:
                pts = sorted((r["fewer_flops"], r[metric]) for r in rs if r["family"] == fam and _number(r.get(metric)))
                if not pts:
                    continue
                color, marker = _STYLE.get(fam, ("black", "o"))
                lw = 2.4 if fam == qm.DICACHE else (1.4 if fam in qm.PEERS else 1.0)
                ls = "-" if fam in qm.PEERS or fam == qm.DICACHE else "--"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, lw=lw, ls=ls, ms=5,
                        label=fam)
            ax.axvline(2.0, color="black", lw=0.8, ls=":")
            ax.set_title(f"{model}, {st} steps", fontsize=10)
            ax.set_xlabel("fewer flops than no cache (×)")
            ax.set_ylabel(labels_of[metric])
            ax.grid(alpha=0.3)
            if metric == "ssim":
                lo = min([r["ssim"] for r in rs if r["fewer_flops"] >= 1.9] or [0.9])
                ax.set_ylim(max(lo, 0.8) - 0.005, 1.0005)
    handles, labels = [], []
    for row in axes:
        for ax in row:
            for h, l in zip(*ax.get_legend_handles_labels()):
                if l not in labels:
                    handles.append(h)
                    labels.append(l)
    order = sorted(range(len(labels)), key=lambda k: qm.FAMILIES.index(labels[k]))
    fig.legend([handles[k] for k in order], [labels[k] for k in order], loc="center right", fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.4 / fig.get_figwidth(), 0.97 if title else 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------


def _int_list(text: str) -> List[int]:
    out: List[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


#: The budget rules' δ positions a study may move (``--replay-delta-position``, ``--online-delta-position``).
DELTA_POSITIONS = {"replay": "REPLAY_DELTA_POSITION", "online": "ONLINE_DELTA_POSITION"}


def sigma_weighted_step_sizes(step_sizes: Callable, a: float) -> Callable:
    """``--online-sigma-weight a``: the step sizes the pipeline tells the engine (``step_sizes(scheduler, n)``,
    ``dicache.api._step_sizes``) times ``1 + a/σ_k``: a study of the online budget rule's prediction
    ``c·|σ_k − σ_(k+1)|``, which misses the rise of the probe error over the last steps (σ → 0) on Flux and Wan."""

    def weighted(scheduler, n):
        sizes = step_sizes(scheduler, n)
        if sizes is None:
            return None
        sig = scheduler.sigmas.detach().float().cpu().tolist()
        return [d * (1.0 + a / max(sig[k], 1e-6)) for k, d in enumerate(sizes)]

    return weighted


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--steps", type=_int_list, default=None, help="step counts, e.g. 20,50 (default 20,50; quick 6)")
    ap.add_argument("--seeds", type=_int_list, default=None, help="seeds, e.g. 0,1 (default 0,1; quick 0)")
    ap.add_argument("--labels", type=_int_list, default=None, help="class labels, one batch (default 0-9; quick 0-2)")
    ap.add_argument("--models", default=",".join(zoo.NAMES), help="comma-separated zoo models")
    ap.add_argument("--families", default=None, help="only these method families (comma-separated; see --list)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 steps, 1 seed, 3 labels, 1 setting per family")
    ap.add_argument("--weights", default=None, help="directory with <model>/ trained by scripts/train_zoo.py --out")
    ap.add_argument("--random-init", action="store_true", help="untrained models when no weights are found")
    add_scheduler_arguments(ap)
    ap.add_argument("--backend", default="auto", help="dicache backend (default auto: the C++ cpu kernels on CPU when they build, else torch)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on these tiny models 2 threads gain ~10%% on free cores and run "
                         "20-50x slower when another process holds a core)")
    ap.add_argument("--calibration-seed", type=int, default=1000, help="seed of MagCache's calibration run and of the budget mode's first call")
    for rule, const in DELTA_POSITIONS.items():
        ap.add_argument(f"--{rule}-delta-position", type=float, default=None, metavar="P",
                        help=f"a study of the budget's {rule} rule: where in the range of δ that spends the budget it "
                             f"picks δ, 0 (smallest) to 1 (largest), in log scale (default: dicache.budget.{const})")
    ap.add_argument("--online-sigma-weight", type=float, default=None, metavar="A",
                    help="a study of the budget's online rule: the step sizes it predicts the errors from weighted "
                         "by 1 + A/σ (default: none)")
    ap.add_argument("--values", action="append", default=[], metavar="FAMILY=V1,V2",
                    help="a study: this family's settings in place of its list (repeatable)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--list", action="store_true", help="print the methods and settings that would run, and exit")
    args = ap.parse_args(argv)
    try:
        args.values = dict(qm.parse_values(v) for v in args.values)
    except ValueError as e:
        ap.error(f"--values: {e}")
    for rule in DELTA_POSITIONS:
        p = getattr(args, f"{rule}_delta_position")
        if p is not None and not 0.0 <= p <= 1.0:
            ap.error(f"--{rule}-delta-position: a number from 0 to 1, got {p}")
    if args.online_sigma_weight is not None and not (0.0 <= args.online_sigma_weight < math.inf):
        ap.error(f"--online-sigma-weight: a finite number >= 0, got {args.online_sigma_weight}")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in zoo.NAMES]
    if bad:
        ap.error(f"--models: unknown {bad}; available {list(zoo.NAMES)}")
    if args.steps is None:
        args.steps = [6] if args.quick else [20, 50]
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1]
    if args.labels is None:
        args.labels = [0, 1, 2] if args.quick else list(range(10))
    if args.families:
        bad = [f for f in args.families.split(",") if f.strip() not in qm.FAMILIES]
        if bad:
            ap.error(f"--families: unknown {bad}; available {list(qm.FAMILIES)}")
    return args


_NUMERIC = ("flop_fraction", "savings", "fewer_flops", "block_fraction", "mac_fraction", "wall_s", "speedup", "cpu_s",
            "speedup_cpu", "psnr", "psnr_mean", "ssim")


def read_csv(path: str) -> List[Dict]:
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for k in _NUMERIC:
                if r.get(k, "") != "":
                    r[k] = float(r[k])
            r["steps"] = int(r["steps"])
            if r.get("flow_sigmas", "") != "":
                r["flow_sigmas"] = r["flow_sigmas"] == "True"
            rows.append(r)
    return rows


def rows_from_report(path: str) -> Tuple[List[Dict], Dict]:
    """The rows and run description of a ``quality.md`` report (its per-setting tables), for :func:`merge`
    when the run's ``quality.csv`` is gone. Percentages come back with the report's 0.1 % rounding, so a
    value interpolated from them can move by 0.1 dB; no per-run details (skip patterns)."""
    with open(path) as f:
        text = f.read()
    rows: List[Dict] = []
    for sec in re.split(r"^### ", text, flags=re.M)[1:]:
        m = re.match(r"(\w+), (\d+) steps \((.*)\)", sec)
        if not m:
            continue
        for line in sec.splitlines()[1:]:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) not in (12, 13) or cells[0] in ("method", "---"):
                continue
            if len(cells) == 12:  # a report from before the per-sample column
                cells.insert(10, "–")
            fam, setting, flops, fewer, blocks, wall, sp, cpu, spc, ps, pm, ss, note = cells
            status, note = "ok", note
            bold = re.match(r"\*\*([^*]+)\*\*\s*(.*)", note)
            if bold:
                status, note = bold.groups()

            def num(v: str, scale: float = 1.0):
                return "" if v in ("", "–") else float(v.rstrip("×%")) * scale

            rows.append(dict(model=m.group(1), steps=int(m.group(2)), family=fam, setting=setting, status=status,
                             flop_fraction=num(flops, 0.01), fewer_flops=num(fewer), block_fraction=num(blocks, 0.01),
                             wall_s=num(wall), speedup=num(sp), cpu_s=num(cpu), speedup_cpu=num(spc),
                             psnr=math.inf if ps == "inf" else num(ps),
                             psnr_mean=math.inf if pm == "inf" else num(pm), ssim=num(ss), weights=m.group(3),
                             note=note))
    head = re.search(r"Command: `(.*)`  \nDate: (.*?); (\d+) torch thread\(s\); total (\d+) s  \n"
                     r"Seeds (\[.*?\]), labels (\[.*?\]) .*?backend (\w+)", text)
    if not rows or head is None:
        raise ValueError(f"{path}: not a quality.md report")
    cmd, date, threads, secs, seeds, labels, backend = head.groups()
    meta = dict(command=cmd, date=date, threads=int(threads), seconds=float(secs), seeds=json.loads(seeds),
                labels=json.loads(labels), backend=backend)
    return rows, meta


def merge(dirs: List[str], out: str, models: Optional[Sequence[str]] = None, sampler=None) -> int:
    """One report from runs split over processes (e.g. one model each, run side by side); ``models``: only
    their rows (a run of several models split between reports); ``sampler``: the scheduler that rows from before
    the sampler columns (:func:`sampler_columns`) sampled with, recorded in them (None: left empty)."""
    rows, runs, metas = [], [], []
    for d in dirs:
        if d.endswith(".md"):
            new, meta = rows_from_report(d)
            det = dict(meta=meta, runs=[])
        else:
            new = read_csv(os.path.join(d, "quality.csv"))
            with open(os.path.join(d, "quality_details.json")) as f:
                det = json.load(f)
        if models:
            new = [r for r in new if r["model"] in models]
        if sampler is not None:
            columns = sampler_columns(sampler)
            for r in new:
                if r.get("sampler", "") == "":
                    r.update(columns)
        # a later run of a (model, steps, family) replaces an earlier one (a family re-run with more settings)
        # (the first run's "no cache" row stays: the speedups of its other rows were measured against it)
        have = {(r["model"], r["steps"], r["family"]) for r in rows}
        new = [r for r in new if not (r["family"] == qm.NO_CACHE and (r["model"], r["steps"], r["family"]) in have)]
        keys = {(r["model"], r["steps"], r["family"]) for r in new}
        rows = [r for r in rows if (r["model"], r["steps"], r["family"]) not in keys] + new
        runs = [r for r in runs if (r["model"], r["steps"], r["family"]) not in keys] + [
            r for r in det["runs"] if (r["model"], r["steps"], r["family"]) in keys]
        metas.append(det["meta"])
    order = {f: i for i, f in enumerate(qm.FAMILIES)}

    def current(r) -> bool:  # a family the benchmark still runs at this model and step count
        return r["family"] == qm.NO_CACHE or (
            r["family"] in order and bool(qm.settings_for(r["model"], int(r["steps"])).get(r["family"])))

    stale = sorted({(r["family"], r["model"], int(r["steps"])) for r in rows if not current(r)})
    if stale:  # families an earlier version of the benchmark had there: not part of this report
        print("merge: dropping families no longer in the benchmark there: "
              + ", ".join(f"{f} ({m} {st})" for f, m, st in stale), file=sys.stderr)
        rows = [r for r in rows if current(r)]
        runs = [r for r in runs if current(r)]
    first = list(dict.fromkeys((r["model"], r["steps"]) for r in rows))
    rows.sort(key=lambda r: (first.index((r["model"], r["steps"])), order.get(r["family"], len(order))))
    meta = dict(metas[0])
    meta["command"] = " + ".join(f"`{m['command']}`" for m in metas).strip("`")
    meta["seconds"] = max(m["seconds"] for m in metas)
    meta["parts"] = metas
    return write_report(out, rows, runs, meta)


def write_report(out: str, rows: List[Dict], runs: List[Dict], meta: Dict, what: str = "") -> int:
    """``quality.csv``, ``quality.md``, ``quality_details.json`` and the plot of a merged or pooled report."""
    os.makedirs(out, exist_ok=True)
    write_csv(rows, os.path.join(out, "quality.csv"))
    md = markdown(rows, meta)
    with open(os.path.join(out, "quality.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(out, "quality_details.json"), "w") as f:
        json.dump(dict(meta=meta, runs=runs), f, indent=1, default=str)
    plot(rows, os.path.join(out, "quality_pareto.png"),
         title=f"PSNR and SSIM vs flops saved{what} ({len(meta['seeds'])} seeds × {len(meta['labels'])} labels)")
    print(md)
    return 0


def stale_reports(dirs: Sequence[str], write: bool = False) -> List[str]:
    """The report directories whose ``quality.md`` differs from what this code renders from their own rows and
    header (``quality.csv``, ``quality_details.json``'s ``meta``); ``write``: render those again (the rows, the
    details and the plot are left as they are)."""
    stale = []
    for d in dirs:
        rows = read_csv(os.path.join(d, "quality.csv"))
        with open(os.path.join(d, "quality_details.json")) as f:
            meta = json.load(f)["meta"]
        md = markdown(rows, meta) + "\n"
        path = os.path.join(d, "quality.md")
        with open(path) as f:
            if f.read() == md:
                continue
        stale.append(d)
        if write:
            with open(path, "w") as f:
                f.write(md)
    return stale


def render_main(argv: Sequence[str]) -> int:
    """``quality.py render REPORT_DIR… [--check]``: render each report's ``quality.md`` again from its rows with
    this code (tables added or changed since it was written), its numbers unchanged; ``--check``: only list the
    reports whose file is out of date (exit 1 if any is)."""
    ap = argparse.ArgumentParser(prog="quality.py render", description=render_main.__doc__)
    ap.add_argument("reports", nargs="+", help="report directories (quality.csv, quality_details.json, quality.md)")
    ap.add_argument("--check", action="store_true", help="list the out-of-date reports, write nothing")
    a = ap.parse_args(argv)
    names = ("quality.csv", "quality_details.json", "quality.md")
    for d in a.reports:
        missing = [n for n in names if not os.path.isfile(os.path.join(d, n))]
        if missing:
            ap.error(f"not a report directory: no {', '.join(missing)} in {d!r}")
    stale = stale_reports(a.reports, write=not a.check)
    for d in stale:
        print(f"{d}: {'out of date' if a.check else 'rendered again'}")
    if not stale:
        print(f"{len(a.reports)} report(s) up to date")
    return 1 if a.check and stale else 0


def pool_rows(a: List[Dict], b: List[Dict], seeds_a: int = 1, seeds_b: int = 1) -> List[Dict]:
    """The rows of two runs of the same settings on different seeds, as one run over all their samples.

    Only the (model, steps, family, setting) of both are kept. PSNR pools the mean squared error over the samples
    (each part weighted by its seed count), the per-sample mean PSNR (where both parts have it), SSIM and the
    flop and block fractions are the weighted means (the
    uncached flops do not depend on the seed); wall and CPU times stay those of the first part (its first
    seed). A row that is not ``ok`` in either part keeps that part's status. ``seeds_a``/``seeds_b``: the seed
    count of a row that does not say (rows a merge recovered from a report's tables)."""
    index = {(r["model"], r["steps"], r["family"], r["setting"]): r for r in b}
    out = []
    for ra in a:
        rb = index.get((ra["model"], ra["steps"], ra["family"], ra["setting"]))
        if rb is None:
            continue
        if ra["status"] != "ok" or rb["status"] != "ok":
            out.append(dict(ra) if ra["status"] != "ok" else dict(rb))
            continue
        na, nb = int(ra.get("seeds") or seeds_a), int(rb.get("seeds") or seeds_b)
        wa, wb = na / (na + nb), nb / (na + nb)
        r = dict(ra, seeds=na + nb)
        for k in ("flop_fraction", "block_fraction", "mac_fraction", "psnr_mean", "ssim"):
            if ra.get(k, "") != "" and rb.get(k, "") != "":
                r[k] = wa * float(ra[k]) + wb * float(rb[k])
            else:
                r[k] = ""
        mse = wa * 10.0 ** (-float(ra["psnr"]) / 10.0) + wb * 10.0 ** (-float(rb["psnr"]) / 10.0)
        r["psnr"] = math.inf if mse == 0 else -10.0 * math.log10(mse)
        r["savings"] = 1.0 - r["flop_fraction"]
        r["fewer_flops"] = 1.0 / r["flop_fraction"]
        out.append(r)
    return out


def pool(out: str, a: str, b: str) -> int:
    """One report of the settings two runs share, on the seeds of both (:func:`pool_rows`)."""
    parts = []
    for d in (a, b):
        with open(os.path.join(d, "quality_details.json")) as f:
            parts.append((read_csv(os.path.join(d, "quality.csv")), json.load(f)))
    (ra, da), (rb, db) = parts
    rows = pool_rows(ra, rb, len(da["meta"]["seeds"]), len(db["meta"]["seeds"]))
    runs_b = {(r["model"], r["steps"], r["family"], r["setting"]): r for r in db["runs"]}
    keep = {(r["model"], r["steps"], r["family"], r["setting"]) for r in rows}
    runs = []
    for r in da["runs"]:
        key = (r["model"], r["steps"], r["family"], r["setting"])
        if key in keep and key in runs_b:
            runs.append(dict(r, runs=r.get("runs", []) + runs_b[key].get("runs", [])))
    meta = dict(da["meta"])
    meta["command"] = f"{da['meta']['command']}` pooled with `{db['meta']['command']}"
    meta["seeds"] = list(da["meta"]["seeds"]) + [s for s in db["meta"]["seeds"] if s not in da["meta"]["seeds"]]
    meta["seconds"] = da["meta"]["seconds"] + db["meta"]["seconds"]
    meta["parts"] = [da["meta"], db["meta"]]
    return write_report(out, rows, runs, meta, what=", pooled")


AT_SAVINGS = (1.5, 2.0, 2.25, 2.5, 2.75, 3.0)


def at_table(rows: List[Dict], families: Sequence[str], savings: Sequence[float] = AT_SAVINGS,
             steps: Optional[Sequence[int]] = None) -> List[str]:
    """Markdown: each family's PSNR interpolated at each savings (:func:`psnr_at`), pooled / per-sample mean, per
    model and step count; – where its settings do not reach there."""
    def cell(v):
        return "–" if v is None else f"{v:.1f}"

    out = ["| model | steps | family | " + " | ".join(f"{x:g}×" for x in savings) + " |",
           "| --- | ---: | --- | " + " | ".join("---:" for _ in savings) + " |"]
    per_sample = _has_sample_mean(rows)
    for model, st in sorted({(r["model"], r["steps"]) for r in rows}):
        if steps and st not in steps:
            continue
        for fam in families:
            fr = [r for r in rows if r["model"] == model and r["steps"] == st and r["family"] == fam]
            if not fr:
                continue
            cells = []
            for x in savings:
                a = cell(psnr_at(fr, x))
                cells.append(f"{a} / {cell(psnr_at(fr, x, 'psnr_mean'))}" if per_sample else a)
            out.append(f"| {model} | {st} | {fam} | " + " | ".join(cells) + " |")
    return out


def at_main(argv: Sequence[str]) -> int:
    """``quality.py at REPORT_DIR [...] --families A,B [--savings 2,2.5] [--steps 50]``: the families' PSNR
    interpolated at those savings, from one or more reports' quality.csv (pooled / mean of the samples' PSNR)."""
    ap = argparse.ArgumentParser(prog="quality.py at", description=at_main.__doc__)
    ap.add_argument("reports", nargs="+", help="report directories (quality.csv)")
    ap.add_argument("--families", required=True, help="comma-separated families, as in the report")
    ap.add_argument("--savings", type=lambda t: [float(v) for v in t.split(",")], default=list(AT_SAVINGS))
    ap.add_argument("--steps", type=_int_list, default=None)
    a = ap.parse_args(argv)
    rows, _ = _read_reports(ap, a.reports, details=False)
    families = [f.strip() for f in a.families.split(",") if f.strip()]
    missing = [f for f in families if not any(r["family"] == f for r in rows)]
    if missing:
        ap.error(f"--families: {missing} not in the reports; they hold {sorted({r['family'] for r in rows})}")
    print("\n".join(at_table(rows, families, a.savings, a.steps)))
    return 0


def default_main(argv: Sequence[str]) -> int:
    """``quality.py default REPORT_DIR [...] [--family F --value V]``: ``dicache.enable(pipe)`` with no options
    against DiCache's front and the best peer at its savings, on each model and step count of the reports, on both
    PSNR readings; with ``--family``/``--value`` another setting (a δ, or a budget's target) read as the default."""
    ap = argparse.ArgumentParser(prog="quality.py default", description=default_main.__doc__)
    ap.add_argument("reports", nargs="+", help="report directories (quality.csv)")
    ap.add_argument("--family", default=None, help="a DiCache family of the reports (with --value)")
    ap.add_argument("--value", type=float, default=None, help="its δ, or its target for a budget family")
    a = ap.parse_args(argv)
    if (a.family is None) != (a.value is None):
        ap.error("--family and --value go together")
    if a.family is not None and a.family not in qm.DICACHES:
        ap.error(f"--family must be one of {list(qm.DICACHES)}, got {a.family!r}")
    rows, _ = _read_reports(ap, a.reports, details=False)
    default = None if a.family is None else (a.family, a.value)
    lines = []
    for metric, name in (("psnr", "PSNR over all samples"), ("psnr_mean", "mean of the samples' PSNR")):
        if metric == "psnr_mean" and not _has_sample_mean(rows):
            continue
        table = default_table(rows, metric, default)
        ok = sum(ln.split("|")[8].strip().endswith("✓") for ln in table[2:])
        lines += [f"{name}: within 0.5 dB of DiCache's front at {ok} of {len(table) - 2}", "", *table, ""]
    print("\n".join(lines))
    return 0


def call_patterns(run: Dict) -> Optional[Tuple]:
    """The calls a setting made (every seed's pattern per branch, in seed order) from a report's per-run details,
    or None where the run recorded none (failed runs; peers in reports before the thirtieth round, since which a
    peer's run records what each model call ran, ``{"calls": …}``, from the block counter)."""
    key = []
    for r in sorted(run.get("runs") or [], key=lambda r: int(r["seed"])):
        pat = r.get("pattern")
        if not isinstance(pat, dict) or not pat:
            return None
        key.append((int(r["seed"]), tuple(sorted(pat.items()))))
    return tuple(key) or None


def worst_samples(run: Dict, n: int) -> List[Tuple[float, int, int]]:
    """The ``n`` samples of a setting with the lowest PSNR, as (PSNR, seed, index of the sample in the batch), from a
    report's per-run details (none where the run recorded no per-sample PSNR)."""
    got = [(float(v), int(r["seed"]), i) for r in run.get("runs") or [] for i, v in enumerate(r.get("sample_psnr") or [])]
    return sorted(got)[:n]


def patterns_table(rows: List[Dict], runs: List[Dict], families: Sequence[str], lo: float, hi: float,
                   steps: Optional[Sequence[int]] = None, worst: int = 0) -> List[str]:
    """Markdown: the families' settings that save between ``lo``× and ``hi``× fewer flops, by savings, each with a
    label of the calls it made (the same label: the same pattern on every seed and branch), and per model and step
    count which labels each family hits: where two rules make the same patterns at different δ, the front of one
    can miss a pattern the other's δ list happens to land on. ``worst`` > 0 adds each setting's ``worst`` lowest
    samples (``PSNR@seed:index``, the index of the sample in its batch) and per model and step count how many
    settings have each sample among them: the few samples that set the PSNR over all samples."""
    by_key = {(r["model"], str(r["steps"]), r["family"], r["setting"]): r for r in runs}
    per_sample = _has_sample_mean(rows)
    out = ["| model | steps | fewer flops | PSNR dB | family | setting | calls |" + (" lowest samples |" if worst else ""),
           "| --- | ---: | ---: | ---: | --- | --- | --- |" + (" --- |" if worst else "")]
    notes: List[str] = []
    for model, st in sorted({(r["model"], r["steps"]) for r in rows}):
        if steps and int(st) not in steps:
            continue
        sel = [r for r in rows if r["model"] == model and r["steps"] == st and r["family"] in families
               and r.get("status") == "ok" and lo - 1e-9 <= float(r["fewer_flops"]) <= hi + 1e-9]
        if not sel:
            continue
        labels: Dict[Tuple, str] = {}
        hits: Dict[str, set] = {f: set() for f in families}
        lowest: Dict[Tuple[int, int], int] = {}  # (seed, index) -> settings with it among their lowest
        for r in sorted(sel, key=lambda r: (float(r["fewer_flops"]), families.index(r["family"]))):
            run = by_key.get((model, str(st), r["family"], r["setting"]), {})
            pat = call_patterns(run)
            lab = "?" if pat is None else labels.setdefault(pat, _label(len(labels)))
            hits[r["family"]].add(lab)
            psnr = f"{float(r['psnr']):.1f}" + (f" / {float(r['psnr_mean']):.1f}" if per_sample else "")
            line = f"| {model} | {st} | {float(r['fewer_flops']):.2f}× | {psnr} | {r['family']} | {r['setting']} | {lab} |"
            if worst:
                low = worst_samples(run, worst)
                for _, seed, i in low:
                    lowest[(seed, i)] = lowest.get((seed, i), 0) + 1
                line += " " + (", ".join(f"{v:.1f}@{seed}:{i}" for v, seed, i in low) or "–") + " |"
            out.append(line)
        parts = []
        for f in families:
            own = sorted(hits[f] - set().union(*(hits[g] for g in families if g != f)) - {"?"})
            parts.append(f"{f}: {len(hits[f] - {'?'})} patterns" + (f", only it: {', '.join(own)}" if own else ""))
        notes.append(f"* {model} {st}: " + "; ".join(parts))
        if lowest:
            often = sorted(lowest.items(), key=lambda kv: (-kv[1], kv[0]))
            notes.append(f"* {model} {st}, among the {worst} lowest samples of the {len(sel)} settings: "
                         + ", ".join(f"{seed}:{i} ({k})" for (seed, i), k in often))
    return out + [""] + notes


def _label(i: int) -> str:
    """``a``, ``b``, …, ``z``, ``aa``, ``ab``, …"""
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(ord("a") + r) + s
    return s


def _read_reports(ap: argparse.ArgumentParser, dirs: Sequence[str], details: bool = True
                  ) -> Tuple[List[Dict], List[Dict]]:
    """The rows (quality.csv) and per-run details (quality_details.json; ``details=False``: none, and not needed) of
    report directories, in order (``ap`` reports a directory without them)."""
    rows: List[Dict] = []
    runs: List[Dict] = []
    names = ("quality.csv", "quality_details.json") if details else ("quality.csv",)
    for d in dirs:
        paths = [os.path.join(d, n) for n in names]
        if not all(os.path.isfile(p) for p in paths):
            ap.error(f"not a report directory ({' and '.join(names)}): {d!r}")
        rows += read_csv(paths[0])
        if details:
            with open(paths[1]) as f:
                runs += json.load(f)["runs"]
    return rows, runs


def unbalanced_skips(pattern: str, ratio: float) -> List[int]:
    """The skipped calls of a pattern (``F`` computed) whose three newest computed calls are unbalanced
    (``quad_balance``: where the preset takes the line instead of the quadratic)."""
    computed: List[int] = []
    out: List[int] = []
    for k, c in enumerate(pattern):
        if c == "F":
            computed.append(k)
        elif len(computed) >= 3 and not balanced(*computed[-3:], ratio):
            out.append(k)
    return out


def entries_main(argv: Sequence[str]) -> int:
    """``quality.py entries REPORT_DIR [...] [--balance 0.5]``: per model, step count and family, how many of the
    DiCache settings put a skip after three unbalanced computed calls on some seed's pattern (``quad_balance``):
    the rows a change of that rule can move. Only at step counts where the presets take γ from the steps on every
    scheduler (25 and more; on a DDPM-family one they take it at every count, and ``quad_balance="auto"`` leaves its
    entries unbounded); a family whose γ comes from the probe (``DiCache probe γ``) or whose order is fixed is counted
    too, and the rule leaves it alone."""
    ap = argparse.ArgumentParser(prog="quality.py entries", description=entries_main.__doc__)
    ap.add_argument("reports", nargs="+", help="report directories (quality.csv and quality_details.json)")
    ap.add_argument("--balance", type=float, default=0.5, help="the ratio of quad_balance (default 0.5)")
    a = ap.parse_args(argv)
    if not 0 < a.balance <= 1:
        ap.error(f"--balance: a number in (0, 1], got {a.balance}")
    _, runs = _read_reports(ap, a.reports)
    total: Dict[Tuple[str, int, str], int] = {}
    hit: Dict[Tuple[str, int, str], int] = {}
    for det in runs:
        if int(det["steps"]) < STEPS_GAMMA_MIN_STEPS or not det["family"].startswith("DiCache"):
            continue
        key = (det["model"], int(det["steps"]), det["family"])
        patterns = [q for r in det.get("runs", []) for q in (r.get("pattern") or {}).values()]
        if not patterns:
            continue
        total[key] = total.get(key, 0) + 1
        hit[key] = hit.get(key, 0) + any(unbalanced_skips(q, a.balance) for q in patterns)
    print("| model | steps | family | settings | with a skip after unbalanced entries |")
    print("| --- | ---: | --- | ---: | ---: |")
    for key in sorted(total):
        print(f"| {key[0]} | {key[1]} | {key[2]} | {total[key]} | {hit[key]} |")
    return 0


def patterns_main(argv: Sequence[str]) -> int:
    """``quality.py patterns REPORT_DIR [...] --families A,B --savings LO,HI [--steps 50] [--worst N]``: the families'
    settings between LO× and HI× fewer flops with a label per call pattern and, with ``--worst``, their N lowest
    samples (:func:`patterns_table`)."""
    ap = argparse.ArgumentParser(prog="quality.py patterns", description=patterns_main.__doc__)
    ap.add_argument("reports", nargs="+", help="report directories (quality.csv and quality_details.json)")
    ap.add_argument("--families", required=True, help="comma-separated families, as in the report")
    ap.add_argument("--savings", required=True, help="LO,HI: the range of fewer flops (×) to list")
    ap.add_argument("--steps", type=_int_list, default=None)
    ap.add_argument("--worst", type=int, default=0,
                    help="list each setting's N lowest samples (PSNR@seed:index) and how often each sample is among them")
    a = ap.parse_args(argv)
    if a.worst < 0:
        ap.error(f"--worst: a count >= 0, got {a.worst}")
    try:
        lo, hi = (float(v) for v in a.savings.split(","))
    except ValueError:
        ap.error(f"--savings: two numbers LO,HI, got {a.savings!r}")
    if not 1.0 <= lo <= hi:
        ap.error(f"--savings: 1 <= LO <= HI, got {a.savings!r}")
    rows, runs = _read_reports(ap, a.reports)
    families = [f.strip() for f in a.families.split(",") if f.strip()]
    missing = [f for f in families if not any(r["family"] == f for r in rows)]
    if missing:
        ap.error(f"--families: {missing} not in the reports; they hold {sorted({r['family'] for r in rows})}")
    print("\n".join(patterns_table(rows, runs, families, lo, hi, a.steps, a.worst)))
    return 0


def sample_errors(rows: List[Dict], runs: List[Dict]) -> Dict[int, torch.Tensor]:
    """{index of a row in ``rows``: its samples' squared errors (``10^(−PSNR/10)``, float64), in seed and label
    order} from a report's per-run details; rows without every sample's PSNR are left out."""
    by_key = {(r["model"], int(r["steps"]), r["family"], r["setting"]): r for r in runs}
    out: Dict[int, torch.Tensor] = {}
    for i, row in enumerate(rows):
        det = by_key.get((row["model"], int(row["steps"]), row["family"], row["setting"]))
        if row["family"] == qm.NO_CACHE or row.get("status") != "ok" or det is None:
            continue
        values: List[float] = []
        for run in sorted(det.get("runs", []), key=lambda r: int(r["seed"])):
            sp = run.get("sample_psnr")
            sp = json.loads(sp.replace("inf", "Infinity")) if isinstance(sp, str) else sp
            if not sp:
                values = []
                break
            values += [float(v) for v in sp]
        if values:
            out[i] = torch.tensor([10.0 ** (-v / 10.0) for v in values], dtype=torch.float64)
    return out


def _resampled(rows: List[Dict], errors: Dict[int, torch.Tensor], draws: Dict[Tuple[str, int], torch.Tensor]
               ) -> List[Dict]:
    """``rows`` with PSNR over all samples and the mean of the samples' PSNR recomputed on the drawn samples of
    their (model, steps) (the same draw for every row there: the settings are compared on the same samples)."""
    out = []
    for i, row in enumerate(rows):
        e = errors.get(i)
        if e is None:
            out.append(row)
            continue
        d = e[draws[(row["model"], int(row["steps"]))]]
        mse = float(d.mean())
        per = [math.inf if v == 0 else -10.0 * math.log10(v) for v in d.tolist()]
        out.append(dict(row, psnr=math.inf if mse == 0 else -10.0 * math.log10(mse), psnr_mean=statistics.fmean(per)))
    return out


def rows_with_samples(rows: List[Dict], runs: List[Dict], what: str
                      ) -> Tuple[List[Dict], Dict[int, torch.Tensor], Dict[Tuple[str, int], int]]:
    """(the rows that can be recomputed sample by sample, their samples' squared errors by index in those rows
    (:func:`sample_errors`), the number of samples per (model, steps)): rows without their samples' PSNR are left out
    with a warning naming ``what`` leaves them (the reference, failed and unsupported runs count for nothing in
    the margins and stay)."""
    errors = sample_errors(rows, runs)
    sizes: Dict[Tuple[str, int], int] = {}
    for i, e in errors.items():
        key = (rows[i]["model"], int(rows[i]["steps"]))
        if sizes.setdefault(key, len(e)) != len(e):
            raise ValueError(f"{key}: runs with different numbers of samples ({sizes[key]} and {len(e)})")
    if not sizes:
        raise ValueError("no run of the report has its samples' PSNR (quality_details.json from before them?)")
    keep = [i for i, r in enumerate(rows) if i in errors or r["family"] == qm.NO_CACHE or r.get("status") != "ok"
            or (r["model"], int(r["steps"])) not in sizes]
    if len(keep) < len(rows):
        dropped = sorted({f"{r['family']} ({r['model']} {r['steps']})" for i, r in enumerate(rows) if i not in keep})
        warnings.warn(f"{what}: runs without their samples' PSNR left out: " + ", ".join(dropped))
    return [rows[i] for i in keep], {j: errors[i] for j, i in enumerate(keep) if i in errors}, sizes


def report_seeds(runs: List[Dict], model: str, steps: int) -> List[int]:
    """The seeds of a report's runs of ``model`` at ``steps``, in the order :func:`sample_errors` lays their samples
    out (ascending)."""
    return sorted({int(r["seed"]) for det in runs if det["model"] == model and int(det["steps"]) == int(steps)
                   for r in det.get("runs") or []})


def without_samples(rows: List[Dict], runs: List[Dict],
                    samples: Dict[Optional[int], Sequence[Tuple[int, int]]]) -> List[Dict]:
    """The report's rows with PSNR over all samples and the mean of the samples' PSNR recomputed without the named
    samples: ``samples`` maps a step count (None: every one) to (seed, index in its batch) pairs, as
    ``patterns --worst`` and ``fragile_samples.py`` name them. Rows without their samples' PSNR are left out."""
    kept, errors, sizes = rows_with_samples(rows, runs, "without")
    missing = [k for k in samples if k is not None and k not in {st for _, st in sizes}]
    if missing:
        raise ValueError(f"samples: the report has no run at {missing} steps (it has {sorted({st for _, st in sizes})})")
    for key, pairs in samples.items():
        known = {sd for (m, st) in sizes if key is None or st == key for sd in report_seeds(runs, m, st)}
        unknown = sorted({int(sd) for sd, _ in pairs} - known)
        if unknown:
            raise ValueError(f"samples: seeds {unknown} are not among the report's seeds {sorted(known)}"
                             + ("" if key is None else f" at {key} steps"))
    draws: Dict[Tuple[str, int], torch.Tensor] = {}
    for (model, st), n in sizes.items():
        seeds = report_seeds(runs, model, st)
        if not seeds or n % len(seeds):
            raise ValueError(f"{model} {st}: {n} samples do not split evenly over the seeds {seeds}")
        per = n // len(seeds)
        drop = {(int(a), int(b)) for key in (None, st) for a, b in samples.get(key, ())}
        bad = sorted((sd, i) for sd, i in drop if sd in seeds and not 0 <= i < per)
        if bad:
            raise ValueError(f"samples: index out of range for {model} {st} ({per} samples per seed): {bad}")
        skip = {seeds.index(sd) * per + i for sd, i in drop if sd in seeds}
        if len(skip) == n:
            raise ValueError(f"samples: that leaves no sample of {model} {st}")
        draws[(model, st)] = torch.tensor([j for j in range(n) if j not in skip], dtype=torch.long)
    return _resampled(kept, errors, draws)


def parse_samples(texts: Sequence[str]) -> Dict[Optional[int], List[Tuple[int, int]]]:
    """``without``'s ``--samples`` values, each ``[STEPS=]SEED:INDEX,…`` (no ``STEPS=``: at every step count), as
    :func:`without_samples` takes them; ValueError on anything else."""
    out: Dict[Optional[int], List[Tuple[int, int]]] = {}
    for text in texts:
        steps, _, pairs = text.rpartition("=")
        try:
            key = int(steps) if steps else None
            got = [tuple(int(v) for v in part.split(":")) for part in pairs.split(",") if part.strip()]
        except ValueError:
            got = []
        if not got or any(len(p) != 2 for p in got):
            raise ValueError(f"[STEPS=]SEED:INDEX,… such as 50=5:7,4:6, got {text!r}")
        out.setdefault(key, []).extend(got)
    return out


def margins(rows: List[Dict], metric: str) -> Dict[Tuple, float]:
    """The acceptance margins of one report, by point: ``("lead", model, steps, x)``: best DiCache − best peer,
    ``("preset", …)``: preset − best DiCache (interpolated, :func:`lead_points`); ``("budget", model, steps,
    rule, target)``: budget − the preset's fixed δ at the same savings (:func:`budget_points`)."""
    out: Dict[Tuple, float] = {}
    for p in lead_points(rows, metric=metric):
        key = (p["model"], p["steps"], p["fewer"])
        if p["best"] is not None and p["peer"] is not None:
            out[("lead",) + key] = p["best"][0] - p["peer"][0]
        if p["best"] is not None and p["preset"] is not None:
            out[("preset",) + key] = p["preset"][0] - p["best"][0]
    for p in budget_points(rows, metric):
        if p["preset"] is not None:
            out[("budget", p["model"], p["steps"], p["rule"], p["target"])] = p["value"] - p["preset"]
    return out


#: What each margin must reach (acceptance of the study: lead ≥ 1 dB, preset and budget ≥ −0.5 dB).
MARGIN_GOALS = {"lead": 1.0, "preset": -0.5, "budget": -0.5}


def spread(rows: List[Dict], runs: List[Dict], resamples: int = 1000, seed: int = 0, level: float = 0.9,
           metric: str = "psnr") -> List[Dict]:
    """How far each acceptance margin (:func:`margins`) rests on which samples were drawn: the report's samples
    resampled with replacement ``resamples`` times (a paired bootstrap: one draw per model and step count, shared by
    every setting), each margin recomputed. Per point: the measured margin, the central ``level`` interval of the
    resampled ones and the share of resamples that meet its goal (:data:`MARGIN_GOALS`)."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    _check_metric(metric)
    kept, errors, sizes = rows_with_samples(rows, runs, "spread")
    measured = margins(kept, metric)
    gen = torch.Generator().manual_seed(seed)
    samples: Dict[Tuple, List[float]] = {k: [] for k in measured}
    for _ in range(resamples):
        draws = {k: torch.randint(0, n, (n,), generator=gen) for k, n in sizes.items()}
        for k, v in margins(_resampled(kept, errors, draws), metric).items():
            if k in samples:
                samples[k].append(v)
    out = []
    for k, v in measured.items():
        vals = sorted(samples[k])
        lo = vals[int(math.floor((1.0 - level) / 2 * (len(vals) - 1)))]
        hi = vals[int(math.ceil((1.0 + level) / 2 * (len(vals) - 1)))]
        goal = MARGIN_GOALS[k[0]]
        out.append(dict(kind=k[0], point=k[1:], measured=v, low=lo, high=hi, goal=goal,
                        share=sum(x >= goal for x in vals) / len(vals)))
    return out


def spread_main(argv: Sequence[str]) -> int:
    """``quality.py spread REPORT_DIR [--resamples 1000] [--seed 0] [--level 0.9]``: each acceptance margin of a
    report (lead, preset, budget) with the interval its samples leave it (:func:`spread`), on both PSNR readings."""
    ap = argparse.ArgumentParser(prog="quality.py spread", description=spread_main.__doc__)
    ap.add_argument("report", help="report directory (quality.csv and quality_details.json)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--level", type=float, default=0.9)
    a = ap.parse_args(argv)
    if a.resamples < 1:
        ap.error(f"--resamples: a count >= 1, got {a.resamples}")
    if not 0.0 < a.level < 1.0:
        ap.error(f"--level: a number in (0, 1), got {a.level}")
    paths = [os.path.join(a.report, n) for n in ("quality.csv", "quality_details.json")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        ap.error(f"not a report directory: no {', '.join(os.path.basename(p) for p in missing)} in {a.report!r}")
    rows = read_csv(paths[0])
    with open(paths[1]) as f:
        runs = json.load(f)["runs"]
    names = {"lead": "best DiCache − best peer (≥ +1)", "preset": "preset − best DiCache (≥ −0.5)",
             "budget": "budget − fixed δ, same savings (≥ −0.5)"}
    pct = f"{100 * a.level:g} %"
    lines = [f"Resampled {a.resamples}× (seed {a.seed}): each margin with the central {pct} of its resampled values "
             "and the share of resamples that meet the goal; PSNR over all samples, then the mean of the samples' PSNR.",
             "", f"| margin | model | steps | point | pooled dB | {pct} | meets | per sample dB | {pct} | meets |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    res = {m: {(r["kind"], r["point"]): r for r in spread(rows, runs, a.resamples, a.seed, a.level, m)}
           for m in ("psnr", "psnr_mean")}
    for key, p in res["psnr"].items():
        kind, pt = key
        where = f"{pt[2]} {pt[3]:g}×" if kind == "budget" else f"{pt[2]:g}×"
        cells = []
        for m in ("psnr", "psnr_mean"):
            r = res[m].get(key)
            cells += ["–", "–", "–"] if r is None else [
                f"{r['measured']:+.1f}", f"{r['low']:+.1f} … {r['high']:+.1f}", f"{100 * r['share']:.0f} %"]
        lines.append(f"| {names[kind]} | {pt[0]} | {pt[1]} | {where} | " + " | ".join(cells) + " |")
    lines += ["", *spread_summary(res), ""]
    print("\n".join(lines))
    return 0


def without_main(argv: Sequence[str]) -> int:
    """``quality.py without REPORT_DIR --samples [STEPS=]SEED:INDEX,… [--samples …]``: the report's margins at a
    glance (:func:`criteria_table`) and its lead table, with every sample and without the named ones (the samples
    ``benchmarks/fragile_samples.py`` finds fragile: their outcome flips with a nudge, so whichever cache skips a step
    there, PSNR over all samples reads that one sample). ``STEPS=``: only at that step count."""
    ap = argparse.ArgumentParser(prog="quality.py without", description=without_main.__doc__)
    ap.add_argument("report", help="report directory (quality.csv and quality_details.json)")
    ap.add_argument("--samples", action="append", required=True,
                    help="[STEPS=]SEED:INDEX,… (index in the seed's batch; STEPS=: only at that step count)")
    a = ap.parse_args(argv)
    try:
        samples = parse_samples(a.samples)
    except ValueError as e:
        ap.error(f"--samples: {e}")
    rows, runs = _read_reports(ap, [a.report])
    try:
        left = without_samples(rows, runs, samples)
    except ValueError as e:
        ap.error(str(e))
    named = "; ".join(("" if k is None else f"{k} steps: ") + ", ".join(f"{sd}:{i}" for sd, i in v)
                      for k, v in samples.items())
    print("\n".join([f"{a.report}: every sample", "", *criteria_table(rows), "", f"without {named}", "",
                     *criteria_table(left), "", f"The lead without {named}, PSNR over all samples:", "",
                     *lead_table(left), ""]))
    return 0


def spread_summary(res: Dict[str, Dict[Tuple, Dict]]) -> List[str]:
    """Per margin and PSNR reading (``res``: metric → the points of :func:`spread`): how many points meet the goal
    as measured, and of those that miss it how many still meet it within the interval (the goal under its upper
    end: which samples were drawn could decide it) and how many miss it throughout."""
    lines = ["| margin | reading | points | meet as measured | misses within the interval | misses throughout |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    readings = {"psnr": "over all samples", "psnr_mean": "mean of the samples"}
    for kind in MARGIN_GOALS:
        for metric, pts in res.items():
            ps = [p for (k, _), p in pts.items() if k == kind]
            if not ps:
                continue
            meet = [p for p in ps if p["measured"] >= p["goal"] - 1e-9]
            within = [p for p in ps if p not in meet and p["high"] >= p["goal"]]
            lines.append(f"| {kind} | {readings.get(metric, metric)} | {len(ps)} | {len(meet)} | {len(within)} "
                         f"| {len(ps) - len(meet) - len(within)} |")
    return lines


def rival_gaps(rows: List[Dict], metric: str = "psnr") -> Dict[str, List[float]]:
    """What the preset's margin asks of one configuration, asked of every DiCache family of one report: at each point
    of :data:`LEAD_AT` (per model and step count) that the family and another DiCache family reach, its value minus
    the best of the others' (each interpolated: :func:`psnr_at`), by family. The margin compares the preset with the
    best of every family, itself included: where the families' curves cross from point to point (one to three
    samples set the pooled PSNR) that best lies above each of them. A family within 0.5 dB of the others' best more
    often than the preset would make the better preset."""
    _check_metric(metric)
    out: Dict[str, List[float]] = {}
    for m, st in dict.fromkeys((r["model"], r["steps"]) for r in rows):
        rs = [r for r in rows if r["model"] == m and r["steps"] == st]
        for x in LEAD_AT:
            vals = {f: psnr_at([r for r in rs if r["family"] == f], x, metric) for f in qm.DICACHES}
            vals = {f: v for f, v in vals.items() if v is not None}
            for f, v in vals.items():
                others = [w for g, w in vals.items() if g != f]
                if others:
                    out.setdefault(f, []).append(v - max(others))
    return out


def rivals_table(reports: Sequence[List[Dict]]) -> List[str]:
    """Per DiCache family, over the points of several reports' rows (:func:`rival_gaps`, each report's points
    apart): how often it is within 0.5 dB of the best of the other families there, and the median of its gap to
    them, on PSNR over all samples and on the mean of the samples' PSNR (reports without the latter count on the
    former only); families in the order of ``quality_methods.DICACHES`` (the preset first)."""
    gaps: Dict[str, Dict[str, List[float]]] = {m: {} for m in ("psnr", "psnr_mean")}
    for rows in reports:
        for metric in gaps:
            for f, g in rival_gaps(rows, metric).items():
                gaps[metric].setdefault(f, []).extend(g)

    def cells(g: Optional[List[float]]) -> List[str]:
        if not g:
            return ["–", "–"]
        return [f"{sum(v >= MARGIN_GOALS['preset'] - 1e-9 for v in g)} of {len(g)}", f"{statistics.median(g):+.1f}"]

    lines = ["| family | within 0.5 dB of the other families' best, pooled | median gap, pooled (dB) "
             "| within 0.5 dB, mean of the samples | median gap, mean of the samples (dB) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for f in qm.DICACHES:
        if f in gaps["psnr"] or f in gaps["psnr_mean"]:
            lines.append(f"| {f} | " + " | ".join(cells(gaps["psnr"].get(f)) + cells(gaps["psnr_mean"].get(f)))
                         + " |")
    return lines


def rivals_main(argv: Sequence[str]) -> int:
    """``quality.py rivals [REPORT_DIR…] [--results DIR]``: whether one DiCache configuration would meet the preset's
    margin (within 0.5 dB of DiCache's best, 2× to 3× fewer flops) more often than the preset does: each family
    against the best of the others on each report's points, summed over the reports (none named: those of the
    README's overview, :data:`OVERVIEW_REPORTS`, under ``--results``)."""
    ap = argparse.ArgumentParser(prog="quality.py rivals", description=rivals_main.__doc__)
    ap.add_argument("reports", nargs="*", help="report directories (quality.csv); none: the overview's")
    ap.add_argument("--results", default=os.path.join(_HERE, "results"), help="where the overview's reports are")
    a = ap.parse_args(argv)
    dirs = a.reports or [os.path.join(a.results, name) for name, _ in OVERVIEW_REPORTS]
    reports = [_read_reports(ap, [d], details=False)[0] for d in dirs]
    print("\n".join([f"Each DiCache family against the best of the others at {', '.join(f'{x:g}×' for x in LEAD_AT)} "
                      f"fewer flops, over {len(dirs)} report(s):", "", *rivals_table(reports), ""]))
    return 0


def merge_main(argv: Sequence[str]) -> int:
    """``quality.py merge OUT DIR… [--models M1,M2]``: one report of runs done in separate processes
    (:func:`merge`)."""
    ap = argparse.ArgumentParser(prog="quality.py merge", description=merge_main.__doc__)
    ap.add_argument("out")
    ap.add_argument("dirs", nargs="+", help="report directories (or a quality.md)")
    ap.add_argument("--models", help="comma-separated: only these models' rows")
    a = ap.parse_args(argv)
    return merge(a.dirs, a.out, a.models.split(",") if a.models else None)


def pool_main(argv: Sequence[str]) -> int:
    """``quality.py pool OUT DIR_A DIR_B``: the settings both ran, on the seeds of both (:func:`pool`)."""
    if len(argv) != 3:
        print("usage: quality.py pool OUT DIR_A DIR_B", file=sys.stderr)
        return 2
    return pool(*argv)


#: ``quality.py NAME …``: the commands that read or combine reports rather than run the benchmark
SUBCOMMANDS = {"at": at_main, "spread": spread_main, "without": without_main, "render": render_main,
               "default": default_main, "entries": entries_main, "patterns": patterns_main, "merge": merge_main,
               "pool": pool_main, "overview": overview_main, "rivals": rivals_main}


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        return SUBCOMMANDS[sys.argv[1]](sys.argv[2:])
    args = parse_args(argv)
    try:
        apply_scheduler(args, args.models)
    except ValueError as e:
        print(f"quality.py: error: {e}", file=sys.stderr)
        return 2
    if args.list:
        for name in args.models:
            for steps in args.steps:
                for m in qm.build_methods(name, steps, quick=args.quick, values=args.values):
                    print(f"{name:12} {steps:3d}  {m.family:24} {m.setting}")
        return 0
    os.makedirs(args.out, exist_ok=True)
    for rule, const in DELTA_POSITIONS.items():
        if getattr(args, f"{rule}_delta_position") is not None:
            import dicache.budget

            setattr(dicache.budget, const, getattr(args, f"{rule}_delta_position"))
    if args.online_sigma_weight is not None:
        import dicache.api

        dicache.api._step_sizes = sigma_weighted_step_sizes(dicache.api._step_sizes, args.online_sigma_weight)
    t0 = time.perf_counter()
    rows, details = run_benchmark(args)
    seconds = time.perf_counter() - t0
    # the script run (this one, or one that runs it on a variant: benchmarks/ddpm_wan.py report) and its arguments
    command = " ".join([".venv/bin/python", os.path.relpath(os.path.abspath(sys.argv[0]), os.getcwd())] + sys.argv[1:])
    meta = dict(
        command=command, date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), threads=args.threads,
        seconds=seconds, seeds=args.seeds, labels=args.labels, backend=args.backend, steps=args.steps,
        models=args.models, torch=torch.__version__, python=platform.python_version(),
    )
    try:
        import diffusers

        meta["diffusers"] = diffusers.__version__
        import cache_dit

        meta["cache_dit"] = cache_dit.__version__
    except ImportError:
        pass
    write_csv(rows, os.path.join(args.out, "quality.csv"))
    md = markdown(rows, meta)
    with open(os.path.join(args.out, "quality.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(args.out, "quality_details.json"), "w") as f:
        json.dump(dict(meta=meta, runs=details), f, indent=1, default=str)
    if not args.no_plot:
        plot(rows, os.path.join(args.out, "quality_pareto.png"),
             title=f"PSNR and SSIM vs flops saved ({len(args.seeds)} seeds × {len(args.labels)} labels)")
    print(md)
    print(f"wrote {args.out}/quality.csv, quality.md, quality_pareto.png, quality_details.json in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
