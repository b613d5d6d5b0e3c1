#!/usr/bin/env python
"""Which samples a tiny perturbation of their trajectory already changes: the samples a report's pooled PSNR rests on.

    .venv/bin/python benchmarks/fragile_samples.py cogvideox_digits 50 --seeds 4,5
    .venv/bin/python benchmarks/fragile_samples.py wan_digits 50 --seeds 0,1,2,3 --at 5,10,15,20 --eps 1e-3
    .venv/bin/python benchmarks/fragile_samples.py wan_digits 50 --weights DIR   # DIR/wan_digits: train_zoo.py --out

No cache runs here. Each seed's batch is sampled once uncached, then once per step ``k`` of ``--at`` (default: a
tenth, a fifth, three tenths and two fifths of the steps) with the latents nudged at the end of step ``k``: each
sample's latent plus ``eps`` times its own RMS times Gaussian noise (a generator seeded per seed and step, so the
runs repeat). Each sample's PSNR against its uncached output is printed per step, with the lowest. The default
nudge, a thousandth of the latent's RMS, changes less than one step a cache skips (most samples come out at 60 dB or
more, where one skipped step leaves them at 50–70); a sample on a bifurcation of the sampler (two outcomes a hair
apart) comes out 15–30 dB lower: any cache that skips a step around there changes that sample's image, whichever
cache it is, and since PSNR over all samples pools the samples' squared errors, that one sample sets it. A sample
is *fragile* where its lowest PSNR is under ``--floor`` dB (55: a nudge already leaves it where one skipped step
leaves most samples) and more than ``--margin`` dB (15) under the median sample's lowest (on a model whose samples
all come out at 90 dB, one at 70 is no bifurcation). The last line lists them as ``seed:index`` (the index in the
batch, as ``quality.py patterns --worst`` names samples) for ``quality.py without REPORT --samples …``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings
from typing import Dict, List, Optional, Sequence

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(1, os.path.dirname(_HERE))

import torch  # noqa: E402

from dicache import zoo  # noqa: E402
from dicache.metrics import psnr_per_sample  # noqa: E402

#: The nudge, relative to each sample's latent RMS.
DEFAULT_EPS = 1e-3
#: Fragile: a sample's lowest PSNR this many dB under the median sample's lowest, and under this floor (dB).
DEFAULT_MARGIN = 15.0
DEFAULT_FLOOR = 55.0
#: Where the nudges go by default, as fractions of the steps (the early-middle steps, where a trajectory decides
#: its outcome; the last steps only add detail).
DEFAULT_AT = (0.1, 0.2, 0.3, 0.4)


def default_steps(steps: int) -> List[int]:
    """The steps :data:`DEFAULT_AT` names at ``steps`` steps (distinct, within [1, steps − 2])."""
    return sorted({min(max(1, round(f * steps)), steps - 2) for f in DEFAULT_AT})


def _nudge(at: int, eps: float, seed: int):
    """A ``callback_on_step_end`` that adds ``eps`` × each sample's RMS × Gaussian noise to the latents after step
    ``at`` (noise from a generator seeded by ``seed`` and ``at``)."""

    def callback(pipe, i, t, kwargs):
        if i != at:
            return {}
        lat = kwargs["latents"]
        g = torch.Generator("cpu").manual_seed(1_000_003 * int(seed) + int(at))
        noise = torch.randn(lat.shape, generator=g, dtype=torch.float32).to(lat.device, lat.dtype)
        rms = lat.float().pow(2).flatten(1).mean(1).sqrt().to(lat.dtype).view(-1, *([1] * (lat.dim() - 1)))
        return {"latents": lat + eps * rms * noise}

    return callback


def fragile(model: str, steps: int, seeds: Sequence[int], labels: Sequence[int], at: Optional[Sequence[int]] = None,
            eps: float = DEFAULT_EPS, weights: Optional[str] = None, progress=None) -> List[Dict]:
    """Per sample (seed, index in the batch, label): its PSNR against the uncached output after a nudge at each step
    of ``at`` (:func:`default_steps` when None), and the lowest."""
    if steps < 3:
        raise ValueError(f"steps must be >= 3, got {steps}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    at = default_steps(steps) if at is None else sorted(set(int(k) for k in at))
    if not at or at[0] < 0 or at[-1] > steps - 2:
        raise ValueError(f"at: steps within [0, {steps - 2}] (a nudge after the last step changes nothing), got {at}")
    with torch.no_grad():
        return _fragile(model, steps, seeds, labels, at, eps, weights, progress)


def _fragile(model, steps, seeds, labels, at, eps, weights, progress) -> List[Dict]:
    pipe = zoo.pipeline(model, zoo.load(model, path=weights))
    rows: List[Dict] = []
    for seed in seeds:
        kw = zoo.pipeline_call_kwargs(model, labels, seed=seed, num_inference_steps=steps, embeddings_path=weights)
        ref = zoo.images(model, pipe, pipe(**kw)[0], kw)
        per_step = []
        for k in at:
            kw = zoo.pipeline_call_kwargs(model, labels, seed=seed, num_inference_steps=steps, embeddings_path=weights)
            kw.update(callback_on_step_end=_nudge(k, eps, seed), callback_on_step_end_tensor_inputs=["latents"])
            per_step.append(psnr_per_sample(zoo.images(model, pipe, pipe(**kw)[0], kw), ref))
            if progress is not None:
                progress()
        for i, label in enumerate(labels):
            values = [p[i] for p in per_step]
            rows.append(dict(seed=int(seed), index=i, label=int(label), at=list(at), psnr=values, lowest=min(values)))
    return rows


def flag(rows: List[Dict], margin: float = DEFAULT_MARGIN, floor: float = DEFAULT_FLOOR) -> List[Dict]:
    """The fragile samples of :func:`fragile`'s rows: lowest PSNR under ``floor`` dB and more than ``margin`` dB under
    the median sample's lowest."""
    med = statistics.median(r["lowest"] for r in rows)
    return [r for r in rows if r["lowest"] < min(floor, med - margin)]


def table(rows: List[Dict], margin: float = DEFAULT_MARGIN, every: bool = False, floor: float = DEFAULT_FLOOR
          ) -> List[str]:
    """Markdown: the fragile samples (every sample with ``every``), their PSNR per nudged step and the median."""
    bad = flag(rows, margin, floor)
    show = rows if every else bad
    at = rows[0]["at"] if rows else []
    med = statistics.median(r["lowest"] for r in rows) if rows else float("nan")
    lines = ["| sample (seed:index) | label | " + " | ".join(f"nudged after step {k}" for k in at)
             + " | lowest | fragile |", "| --- | ---: | " + " | ".join("---:" for _ in at) + " | ---: | --- |"]
    for r in show:
        lines.append(f"| {r['seed']}:{r['index']} | {r['label']} | " + " | ".join(f"{v:.1f}" for v in r["psnr"])
                     + f" | {r['lowest']:.1f} | {'yes' if r in bad else ''} |")
    lines += ["", f"{len(bad)} of {len(rows)} samples fragile (lowest PSNR under {floor:g} dB and more than "
                  f"{margin:g} dB under the median sample's lowest, {med:.1f} dB)"]
    return lines


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--labels", default="0-9")
    ap.add_argument("--at", default=None, help="comma-separated steps to nudge after (default: %s of the steps)"
                    % ", ".join(f"{f:g}" for f in DEFAULT_AT))
    ap.add_argument("--eps", type=float, default=DEFAULT_EPS, help="the nudge, relative to each sample's RMS")
    ap.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="dB under the median sample's lowest")
    ap.add_argument("--floor", type=float, default=DEFAULT_FLOOR, help="dB: fragile only under it")
    ap.add_argument("--all", action="store_true", help="list every sample, not only the fragile ones")


def run_main(ap: argparse.ArgumentParser, args, model: str, steps: int, weights: Optional[str] = None) -> int:
    """Parse the shared arguments, run :func:`fragile` (with a progress bar) and print the table and the list."""
    import quality as Q
    from tqdm import tqdm

    seeds, labels = Q._int_list(args.seeds), Q._int_list(args.labels)
    try:
        at = None if args.at is None else Q._int_list(args.at)
    except (TypeError, ValueError) as e:
        ap.error(f"--at: {e}")
    if not args.margin > 0:
        ap.error(f"--margin must be > 0, got {args.margin}")
    n_at = len(at) if at is not None else len(default_steps(max(steps, 3)))
    with tqdm(total=len(seeds) * n_at, desc="fragile samples", unit="run") as bar:
        try:
            rows = fragile(model, steps, seeds, labels, at, args.eps, weights, progress=bar.update)
        except ValueError as e:
            ap.error(str(e))
    print(f"\n{model}, {steps} steps, seeds {args.seeds}, labels {args.labels}; nudge {args.eps:g} × RMS\n")
    print("\n".join(table(rows, args.margin, args.all, args.floor)))
    print("fragile: " + (",".join(f"{r['seed']}:{r['index']}" for r in flag(rows, args.margin, args.floor)) or "none"))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=zoo.NAMES)
    ap.add_argument("steps", type=int)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", default=None, help="directory with <model>/ trained by scripts/train_zoo.py --out "
                    "(as quality.py's; default: the shipped weights)")
    add_arguments(ap)
    args = ap.parse_args(argv)
    import quality as Q

    weights = Q.weights_argument(ap, args.weights, args.model)
    warnings.filterwarnings("ignore")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run_main(ap, args, args.model, args.steps, weights)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    raise SystemExit(main())
